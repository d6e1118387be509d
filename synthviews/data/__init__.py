"""Training-side data: ShardViews (read shards), ContinuousViews (generate on the fly),
T_x augmentation presets, SSL-framework output formats and a ready ``loader``."""

from .augment import Augment
from .continuous import ContinuousViews
from .formats import OUTPUTS
from .loader import ViewsLoader, loader
from .shards import ShardError, ShardViews

__all__ = ["ShardViews", "ShardError", "ContinuousViews", "loader", "ViewsLoader", "OUTPUTS", "Augment"]
