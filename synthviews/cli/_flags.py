"""Flags from settings dataclasses: one ``--flag`` per field made with ``_util.settings.setting``."""

from __future__ import annotations

import argparse

from .._util.settings import described_fields, show_default


def flag_name(field) -> str:
    return field.metadata["setting"]["flag"] or "--" + field.name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, cls, only=None, defaults=None) -> None:
    """Add a flag for every described field of ``cls`` (or those named in ``only``). A flag left out
    parses to None, so :func:`given` keeps the dataclass default; ``defaults`` shows other defaults
    in the help (e.g. of a preset) without changing what is parsed."""
    for field in described_fields(cls):
        if only is not None and field.name not in only:
            continue
        meta = field.metadata["setting"]
        shown = (defaults or {}).get(field.name, field.default)
        kind = meta["type"] or (type(field.default) if field.default is not None else str)
        parser.add_argument(flag_name(field), dest=field.name, type=kind, choices=meta["choices"], default=None,
                            help=f"{meta['help']} (default: {show_default(shown)})")


def given(args: argparse.Namespace, cls) -> dict:
    """The described fields of ``cls`` that the command line set (unset ones keep the defaults)."""
    return {f.name: getattr(args, f.name) for f in described_fields(cls) if getattr(args, f.name, None) is not None}
