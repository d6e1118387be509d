"""VDVAE (openai/vdvae): networks <- checkpoint reading <- the MLVGM wrapper."""

from .model import VDVAE

__all__ = ["VDVAE"]
