"""synthviews: positive views for self-supervised learning from multi-latent generators.

The public names load on first use (PEP 562), so that ``synthviews`` and its command
line start without importing torch: a Ctrl-C during start-up is then handled by the CLI.
"""

from importlib import import_module

from .errors import ConfigError

__version__ = "0.1.0"

_LAZY = {
    "LatentGroup": ".latents", "Streams": ".latents", "TruncatedNormal": ".latents",
    "MLVGM": ".models", "available_models": ".models", "from_module": ".models", "load_model": ".models",
    "register_model": ".models",
    "Policy": ".policies", "load_policy": ".policies", "save_policy": ".policies",
    "ViewSampler": ".views",
    "generate": ".store.writer",
}

__all__ = ["ConfigError", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'synthviews' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
