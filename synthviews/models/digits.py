"""``digits``: the built-in default model, a small StyleGAN2 trained by this project on real handwritten digits.

The weights (``synthviews/weights/digits_stylegan2.safetensors``, 1.1 MB)
ship inside the package, so ``load_model("digits")`` needs no download. They
were trained with ``synthviews train-gan`` (the project's own StyleGAN2, no
NVIDIA weights involved) on the training split of scikit-learn's digits
(BSD-licensed), so they carry this project's licence (MIT), not StyleGAN2's.

The default policy is the one ``synthviews analyze --model digits`` chose
(``synthviews/weights/digits_policy.yaml``; the report is under
``benchmarks/results/digits_analysis``).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import ConfigError
from ._registry import register_model
from .stylegan2 import StyleGAN2

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
WEIGHTS = WEIGHTS_DIR / "digits_stylegan2.safetensors"
POLICY = WEIGHTS_DIR / "digits_policy.yaml"


@register_model("digits")
class DigitsStyleGAN2(StyleGAN2):
    """The shipped digits StyleGAN2 (32x32, 1 channel, z = w = 64, 8 W+ rows) as an MLVGM.

    Options are those of :class:`StyleGAN2` except the weights, which are the
    shipped file. The default 4 groups split the 8 W+ rows as 0_2, 2_4, 4_6,
    6_8 (coarse to fine): with the style mixing used in training, the first
    groups decide which digit it is and its layout, the last ones the stroke.
    """

    family = "digits"
    license = "mit"
    license_link = None

    def __init__(self, groups="4", truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                 noise_mode: str = "const", prior_truncation=None, resolution=None, crop=None, device=None):
        if not WEIGHTS.is_file():
            raise ConfigError(f"the digits weights {WEIGHTS} are missing from this installation; reinstall synthviews")
        super().__init__(path=WEIGHTS, groups=groups, truncation_psi=truncation_psi,
                         truncation_cutoff=truncation_cutoff, noise_mode=noise_mode,
                         prior_truncation=prior_truncation, resolution=resolution, crop=crop, device=device)
        self.source = {"path": f"synthviews/weights/{WEIGHTS.name}", "sha256": self.source["sha256"]}

    def default_policy_spec(self) -> dict:
        """The MI-chosen policy for the default groups; StyleGAN2's generic fallback for other groupings."""
        if POLICY.is_file() and self.group_names == ("0_2", "2_4", "4_6", "6_8"):
            return yaml.safe_load(POLICY.read_text())
        return super().default_policy_spec()

    def default_policy_origin(self) -> str:
        if POLICY.is_file() and self.group_names == ("0_2", "2_4", "4_6", "6_8"):
            return "chosen by `synthviews analyze --model digits` (synthviews/weights/digits_policy.yaml)"
        return super().default_policy_origin()
