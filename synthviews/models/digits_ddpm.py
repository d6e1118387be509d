"""``digits-ddpm``: the built-in diffusion model, a small DDPM trained by this project on real handwritten digits.

The weights (``synthviews/weights/digits_ddpm/``, a diffusers pipeline folder:
``unet/`` safetensors + config, ``scheduler/``) ship inside the package, so
``load_model("digits-ddpm")`` needs no download; it needs diffusers
(``pip install 'synthviews[diffusion]'``). They were trained with
``synthviews train-ddpm`` on the same training split of scikit-learn's digits
(BSD-licensed) as the ``digits`` GAN, so they carry this project's licence
(MIT). Sampling, groups and options are those of the ``diffusion`` family
(:class:`~synthviews.models.diffusion.Diffusion`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ._registry import register_model
from .diffusion import Diffusion

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "digits_ddpm"


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
