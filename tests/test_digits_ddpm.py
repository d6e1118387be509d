"""The shipped digits-ddpm: loads from the package, is the diffusion family's sampler on the project's weights."""

import numpy as np
import pytest
import torch
import yaml

import synthviews as sv
from synthviews.errors import ConfigError
from synthviews.views import ViewSampler

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def ddpm():
    return sv.load_model("digits-ddpm", steps=4)  # 4 steps: the real weights, a short trajectory


def test_it_loads_from_the_package_with_its_licence_and_a_relative_source(ddpm):
    from synthviews.models.digits_ddpm import WEIGHTS

    assert ddpm.family == "digits-ddpm" and ddpm.license == "mit"
    assert ddpm.image_shape == (1, 32, 32)
    assert ddpm.group_names[0] == "init" and len(ddpm.group_names) == 4  # init + one range per noisy step
    assert ddpm.source["path"] == "synthviews/weights/digits_ddpm" and len(ddpm.source["sha256"]) == 64
    assert (WEIGHTS / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size < 8 * 2**20  # a few MB
    assert sv.load_model("digits-ddpm").group_names == ("init", "steps0_12", "steps12_24", "steps24_36",
                                                        "steps36_49")  # the default: 50 steps


def test_views_look_like_digits_not_noise():
    """Trained weights: as much dark background and bright stroke as the real digits have (train split:
    55% of pixels < 0.25, 14% > 0.75); random weights give flat grey, undertrained ones blur."""
    model = sv.load_model("digits-ddpm", steps=25)
    batch = ViewSampler(model, views=1, seed=0, threads=1).sample(np.arange(8))
    images = batch.images[:, 0, 0]  # (8, 32, 32) anchors
    dark = (images < 0.25).float().mean().item()
    bright = (images > 0.75).float().mean().item()
    assert abs(dark - 0.55) < 0.08 and abs(bright - 0.14) < 0.05, (dark, bright)
    assert not torch.equal(batch.images[:, 0], batch.images[:, 1])  # the positive differs


def test_class_label_is_not_an_option_and_missing_weights_are_one_line(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="class_label"):
        sv.load_model("digits-ddpm", class_label=3)
    import synthviews.models.digits_ddpm as mod

    monkeypatch.setattr(mod, "WEIGHTS", tmp_path / "gone")
    with pytest.raises(ConfigError, match="digits-ddpm weights .* are missing"):
        sv.load_model("digits-ddpm")


def test_the_default_policy_is_the_analysed_one_for_the_analysed_sampling_only():
    """The shipped policy was measured on 50 DDPM steps in the default groups: other settings change what a
    group does (a different step range, another sampler), so they get the generic policy, and say so."""
    from synthviews.models.digits_ddpm import POLICY
    from synthviews.policies import resolve_policy

    default = sv.load_model("digits-ddpm")
    spec = default.default_policy_spec()
    assert spec == yaml.safe_load(POLICY.read_text()) and set(spec["groups"]) == set(default.group_names)
    assert "digits_ddpm_policy.yaml" in default.default_policy_origin()
    assert resolve_policy(None, default).to_dict() == sv.load_policy(POLICY).to_dict()
    generic = {"kind": "gaussian", "default": {"std": 0.25}}
    for other in (sv.load_model("digits-ddpm", steps=4), sv.load_model("digits-ddpm", sampler="ddim"),
                  sv.load_model("digits-ddpm", groups=2), sv.load_model("digits-ddpm", unit_noise=False)):
        assert other.default_policy_spec() == generic and "generic" in other.default_policy_origin()
