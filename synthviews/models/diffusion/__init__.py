"""The ``diffusion`` family: local diffusers UNet folders as MLVGMs (see :mod:`.model`).

Importing this package registers the family; diffusers itself is imported only when a model is built.
"""

from .model import Diffusion, parse_step_groups

__all__ = ["Diffusion", "parse_step_groups"]
