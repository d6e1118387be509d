"""StyleGAN2 (NVlabs): networks <- checkpoint reading <- the MLVGM wrapper."""

from .model import StyleGAN2

__all__ = ["StyleGAN2"]
