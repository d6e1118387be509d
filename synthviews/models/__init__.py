"""Generator families (MLVGMs) and the registry that builds them by name."""

from . import bigbigan, diffusion, digits, digits_ddpm, stylegan2, toy, vdvae  # noqa: F401  (registers the built-in families)
from ._registry import available_models, load_model, register_model
from .adapter import ModuleMLVGM, from_module
from .base import MLVGM, ChunkedLatents

__all__ = ["MLVGM", "ChunkedLatents", "ModuleMLVGM", "from_module", "register_model", "load_model", "available_models"]
