"""MI analysis: which latent groups carry the semantics, measured, and the policy that follows.

``analyze(model, out)`` writes a report folder; ``train_walker`` learns a
COP-Gen walker. The walker network, its files and the ``walker`` policy kind
belong to :mod:`synthviews.policies.walker`; they are re-exported here.
"""

from ..policies.walker import Walker, WalkerPolicy, load_walker, save_walker
from .choice import classify
from .mi import Settings, sweep
from .report import analyze
from .walkers import WalkerSettings, train_walker

__all__ = ["analyze", "sweep", "classify", "Settings", "Walker", "WalkerPolicy", "WalkerSettings", "train_walker",
           "load_walker", "save_walker"]
