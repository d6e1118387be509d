"""Settings fields that carry their own help, so the CLI flags are built from the dataclass.

A field made with :func:`setting` holds its default and one line of help; ``synthviews.cli``
adds ``--name`` for it with that help and the default written out, so the two cannot drift.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


def setting(default: Any, help: str, *, type: Callable | None = None, choices=None, flag: str | None = None):
    """A dataclass field with ``default`` and CLI ``help``; ``type`` parses the flag's text (default: the
    default's own type), ``flag`` overrides the flag name (default: ``--field-name``)."""
    meta = {"help": help, "type": type, "choices": choices, "flag": flag}
    if isinstance(default, (list, dict, set, bool)):
        raise TypeError("a setting's default must be an immutable non-bool value (a bool wants a store_true flag)")
    return dataclasses.field(default=default, metadata={"setting": meta})


def described_fields(cls) -> list[dataclasses.Field]:
    """The fields of ``cls`` made with :func:`setting`, in declaration order."""
    return [f for f in dataclasses.fields(cls) if "setting" in f.metadata]


def show_default(value) -> str:
    """A default as a user types it: ``0.1,0.5`` for a tuple, ``none`` for None, ``0.001`` for 1e-3."""
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return ",".join(show_default(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def parse_floats(text: str) -> tuple[float, ...]:
    """``0.1,0.5,2`` as a tuple of floats (e.g. the text of ``--stds``); ValueError says what is wrong."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError("expected at least one number")
    return values


def parse_truncation(text: str) -> float | None:
    """A number of stds, or ``none``/``null`` for no cut (the text of ``--truncation``)."""
    if text.lower() in ("none", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number of stds or 'none', got {text!r}") from None
