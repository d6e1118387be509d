"""MI analysis: which latent groups carry the semantics, measured, and the policy that follows.

``analyze(model, out)`` writes a report folder; ``train_walker`` learns a
COP-Gen walker; importing this package registers the ``walker`` policy kind.
"""

from .choice import classify
from .mi import Settings, sweep
from .report import analyze
from .walkers import Walker, WalkerPolicy, WalkerSettings, load_walker, save_walker, train_walker

__all__ = ["analyze", "sweep", "classify", "Settings", "Walker", "WalkerPolicy", "WalkerSettings", "train_walker",
           "load_walker", "save_walker"]
