"""``digits-ddpm``: the built-in diffusion model, a small DDPM trained by this project on real handwritten digits.

The weights (``synthviews/weights/digits_ddpm/``, a diffusers pipeline folder:
``unet/`` safetensors + config, ``scheduler/``) ship inside the package, so
``load_model("digits-ddpm")`` needs no download; it needs diffusers
(``pip install 'synthviews[diffusion]'``). They were trained with
``synthviews train-ddpm`` on the same training split of scikit-learn's digits
(BSD-licensed) as the ``digits`` GAN, so they carry this project's licence
(MIT). Sampling, groups and options are those of the ``diffusion`` family
(:class:`~synthviews.models.diffusion.Diffusion`).

The default policy is the one ``synthviews analyze --model digits-ddpm``
chose for the default sampling (50 ancestral DDPM steps, ``init`` + 4 step
ranges, unit-variance noise): ``synthviews/weights/digits_ddpm_policy.yaml``,
report under ``benchmarks/results/digits_ddpm_analysis``. Other sampling
settings change what a group does, so they get the generic policy.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import ConfigError
from ._registry import register_model
from .base import GENERIC_POLICY_ORIGIN
from .diffusion import Diffusion

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "digits_ddpm"
POLICY = WEIGHTS.parent / "digits_ddpm_policy.yaml"
ANALYSED_GROUPS = ("init", "steps0_12", "steps12_24", "steps24_36", "steps36_49")


@register_model("digits-ddpm")
class DigitsDDPM(Diffusion):
    """The shipped digits DDPM (32x32, 1 channel, 1000 training timesteps) as an MLVGM.

    Options are those of the ``diffusion`` family except ``path`` (the shipped
    folder) and ``class_label`` (the model is unconditional). Default: 50
    ancestral DDPM steps in ``init`` + 4 step ranges.
    """

    family = "digits-ddpm"
    license = "mit"
    license_link = None

    def __init__(self, steps: int = 50, sampler: str | None = None, eta: float = 1.0, groups=None,
                 unit_noise: bool = True, unet_batch: int = 16, device=None):
        if not (WEIGHTS / "unet").is_dir():
            raise ConfigError(f"the digits-ddpm weights {WEIGHTS} are missing from this installation; "
                              "reinstall synthviews")
        super().__init__(path=WEIGHTS, steps=steps, sampler=sampler, eta=eta, groups=groups, unit_noise=unit_noise,
                         unet_batch=unet_batch, device=device)
        self.source = {"path": f"synthviews/weights/{WEIGHTS.name}", "sha256": self.source["sha256"]}

    def _analysed(self) -> bool:
        """Whether this is the sampling the shipped policy was measured on."""
        c = self.config
        return (POLICY.is_file() and c["sampler"] == "ddpm" and c["steps"] == 50 and c["unit_noise"]
                and self.group_names == ANALYSED_GROUPS)

    def default_policy_spec(self) -> dict:
        """The MI-chosen policy for the default sampling; the generic one for any other."""
        return yaml.safe_load(POLICY.read_text()) if self._analysed() else super().default_policy_spec()

    def default_policy_origin(self) -> str:
        if self._analysed():
            return "chosen by `synthviews analyze --model digits-ddpm` (synthviews/weights/digits_ddpm_policy.yaml)"
        return f"{GENERIC_POLICY_ORIGIN} (the shipped policy holds for 50 DDPM steps in the default groups only)"
