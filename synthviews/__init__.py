"""synthviews: positive views for self-supervised learning from multi-latent generators."""

from .errors import ConfigError
from .latents import LatentGroup, Streams, TruncatedNormal
from .models import MLVGM, available_models, from_module, load_model, register_model

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "LatentGroup", "Streams", "TruncatedNormal",
    "MLVGM", "available_models", "from_module", "load_model", "register_model",
]
