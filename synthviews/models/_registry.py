"""Model registry: ``load_model(name, **kwargs)`` for every MLVGM family.

A family is a factory (usually the model class) registered under a name,
either with :func:`register_model` or, for third-party packages, through the
``synthviews.models`` entry-point group (``name = "pkg.module:factory"``).
Family modules import this module, never the package ``__init__``, so that
registering a family cannot import the others.
"""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points
from typing import Callable

from ..errors import ConfigError
from .base import MLVGM

_FAMILIES: dict[str, Callable[..., MLVGM]] = {}


def register_model(name: str, factory: Callable[..., MLVGM] | None = None):
    """Register ``factory`` under ``name``; usable as ``@register_model("name")``."""

    def add(f):
        if name in _FAMILIES and _FAMILIES[name] is not f:
            raise ValueError(f"model family {name!r} is already registered")
        _FAMILIES[name] = f
        return f

    return add(factory) if factory is not None else add


def _load_entry_points() -> None:
    for ep in entry_points(group="synthviews.models"):
        if ep.name not in _FAMILIES:
            _FAMILIES[ep.name] = ep.load()


def available_models() -> list[str]:
    _load_entry_points()
    return sorted(_FAMILIES)


def load_model(name: str, **kwargs) -> MLVGM:
    """Build a registered model; unknown names or options raise ConfigError."""
    if name not in _FAMILIES:
        _load_entry_points()
    if name not in _FAMILIES:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    factory = _FAMILIES[name]
    params = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            known = ", ".join(p for p in params if p != "self") or "none"
            raise ConfigError(f"model {name!r} has no option {', '.join(unknown)}; its options: {known}")
    return factory(**kwargs)

