"""Walkers for models with large codes (diffusion, VDVAE): sizes up to the families' code cap, bounded by
the walker's parameter bytes, and end to end on diffusion models (train, save, load, sample, preview)."""

import time
from pathlib import Path

import pytest
import torch
from tiny_diffusion import make_folder

import synthviews as sv
from synthviews._util.checks import MAX_CODE, MAX_WALKER_BYTES
from synthviews.analysis import WalkerSettings, load_walker, train_walker
from synthviews.analysis.preview import preview
from synthviews.errors import ConfigError
from synthviews.policies import load_policy
from synthviews.policies import walker as walker_module
from synthviews.policies.walker import FORMAT, Walker, save_walker, walker_bytes
from synthviews.views import ViewSampler

TINY = WalkerSettings(steps=2, batch=2, warmup=0, eval_every=2, patience=5, eval_pairs=2, resolution=16, hidden=8,
                      lr_walker=1e-2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_walker_state(d=20, h=4, o=6) -> dict:
    return {"net.0.weight": torch.zeros(h, d), "net.0.bias": torch.zeros(h),
            "net.2.weight": torch.zeros(o, h), "net.2.bias": torch.zeros(o)}


def _file(path: Path, **changes) -> Path:
    obj = {"format": FORMAT, "version": 1, "latent_dim": 20, "hidden": 4, "groups": [["color", 6]],
           "weights": _tiny_walker_state(), **changes}
    torch.save(obj, path)
    return path


# --- sizes and bounds ----------------------------------------------------------------

def test_a_walker_for_a_51200_value_diffusion_code_saves_loads_and_is_batch_invariant(tmp_path):
    torch.manual_seed(0)
    walker = Walker(51_200, {"steps36_49": 13_312}, hidden=64, init_scale=1.0)
    save_walker(tmp_path / "w.pt", walker, {"model_id": "x"})
    loaded, meta = load_walker(tmp_path / "w.pt")
    assert (loaded.latent_dim, loaded.hidden, loaded.groups) == (51_200, 64, {"steps36_49": 13_312})
    assert meta["model_id"] == "x"
    assert all(torch.equal(a, b) for a, b in zip(walker.state_dict().values(), loaded.state_dict().values()))
    z = torch.randn(5, 51_200)
    whole = loaded.noise(z)["steps36_49"]
    assert whole.shape == (5, 13_312) and whole.dtype == torch.float32
    rows = torch.cat([loaded.noise(z[i:i + 1])["steps36_49"] for i in range(5)])
    assert torch.equal(whole, rows)  # a sample's noise never depends on its batch
    with torch.no_grad():
        assert torch.allclose(loaded(z)["steps36_49"], whole, atol=1e-4)


def test_the_bound_is_the_walker_file_limit():
    assert walker_bytes(51_200, 64, 13_312) < 20 * 2**20  # digits-ddpm, last step range, hidden 64
    assert walker_bytes(32_800_000, 1, 2_000_000) < MAX_WALKER_BYTES  # a VDVAE-sized anchor, hidden 1
    assert walker_bytes(MAX_CODE, 1, 1) > MAX_WALKER_BYTES  # the code cap alone would not bound it


@pytest.mark.parametrize("case, changes, message", [
    ("huge-latent-no-tensors", dict(latent_dim=MAX_CODE, hidden=4096),
     r"1,048,576 MiB of float32 parameters, over the 256 MiB limit"),
    ("product-over", dict(latent_dim=2**25, hidden=2, groups=[["g", 2**25]]), r"MiB limit"),
    ("wide-hidden-over", dict(latent_dim=51_200, hidden=4096, groups=[["g", 13_312]]), r"MiB limit"),
    ("latent-over-code-cap", dict(latent_dim=MAX_CODE + 1), r"latent_dim must be an integer in \[1, 67,108,864\]"),
    ("group-over-code-cap", dict(groups=[["g", MAX_CODE + 1]]), r"groups\[0\] size must be an integer"),
    ("groups-sum-over", dict(groups=[["a", MAX_CODE], ["b", 1]]), r"summing to at most 67,108,864"),
    ("hidden-over", dict(hidden=4097), r"hidden must be an integer in \[1, 4,096\]"),
    ("in-bounds-without-tensors", dict(latent_dim=51_200, hidden=64, groups=[["g", 13_312]]),
     r"net.0.weight must be a float tensor of shape \[64, 51200\], got \[4, 20\]"),
])
def test_a_hostile_tiny_file_claiming_huge_sizes_is_one_line_and_allocates_nothing(tmp_path, monkeypatch, case,
                                                                                   changes, message):
    path = _file(tmp_path / f"{case}.pt", **changes)
    assert path.stat().st_size < 10_000

    def never(*args, **kwargs):
        raise AssertionError("a Walker was built from a refused file")

    monkeypatch.setattr(walker_module, "Walker", never)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=message) as e:
        load_walker(path)
    assert time.perf_counter() - start < 2.0
    text = str(e.value)
    assert "\n" not in text and str(path) in text and len(text) <= 300


def test_a_hostile_file_is_refused_through_a_walker_policy_file(tmp_path):
    path = _file(tmp_path / "w.pt", latent_dim=MAX_CODE, hidden=4096)
    policy = tmp_path / "p.yaml"
    policy.write_text(f"kind: walker\nwalkers: [{path.name}]\n")
    with pytest.raises(ConfigError, match=r"walker checkpoint .*w\.pt: .*over the 256 MiB limit"):
        load_policy(policy)


# --- end to end on diffusion models ------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A random-weight 16 px RGB DDPM pipeline folder: 768 values a slot."""
    pytest.importorskip("diffusers")
    return make_folder(tmp_path_factory.mktemp("diffusion"), channels=3)


def test_train_save_load_sample_and_preview_a_walker_on_a_diffusion_code_over_4096(tiny_folder, tmp_path):
    model = sv.load_model("diffusion", path=tiny_folder, steps=6)  # x_T + 5 noisy steps of 768 values
    assert model.latent_dim == 6 * 768 > 4096  # over the old cap
    group = model.group_names[-1]
    out = tmp_path / "w.pt"
    r = train_walker(model, group, out, TINY, device="cpu")
    assert r["steps"] == TINY.steps and r["delta_mean"] > 0  # the walker moved: gradients went through decode
    walker, meta = load_walker(out)
    assert walker.latent_dim == model.latent_dim and walker.groups == {group: model.group(group).size}
    torch.manual_seed(TINY.seed)  # the walker train_walker starts from (built first under this seed)
    start = Walker(model.latent_dim, walker.groups, TINY.hidden)
    assert not torch.equal(walker.net[2].weight, start.net[2].weight)  # gradients reached it through decode
    assert meta["family"] == model.family
    policy = load_policy(out.with_suffix(".yaml"))
    sampler = ViewSampler(model, policy, views=1, seed=3)
    batch = sampler.sample(range(3))
    moved = batch.deltas[:, 0, model.group_names.index(group)]
    assert (moved > 0).all() and batch.deltas[:, 0, :model.group_names.index(group)].eq(0).all()
    again = ViewSampler(model, load_policy(out.with_suffix(".yaml")), views=1, seed=3)
    assert torch.equal(torch.cat([again.sample([i]).images for i in range(3)]), batch.images)
    assert preview(sampler, tmp_path / "grid.png", samples=2).stat().st_size > 0


def test_train_walker_refuses_a_walker_it_could_not_load_before_training(tiny_folder, tmp_path):
    model = sv.load_model("diffusion", path=tiny_folder, steps=100)  # 100 x 768 values a code
    with pytest.raises(ConfigError, match=r"walker for diffusion init: .* over the 255 MiB limit"):
        train_walker(model, "init", tmp_path / "w.pt", WalkerSettings(hidden=4096), device="cpu")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ConfigError, match="walker hidden must be at most 4,096"):
        WalkerSettings(hidden=4097)


def test_a_walker_on_the_built_in_digits_ddpm_with_few_steps(tmp_path):
    pytest.importorskip("diffusers")
    model = sv.load_model("digits-ddpm", steps=5)  # 5 x 1024 values a code: over the old 4096 cap
    assert model.latent_dim == 5 * 1024
    group = model.group_names[-1]
    r = train_walker(model, group, tmp_path / "w.pt", TINY, device="cpu")
    assert r["delta_mean"] > 0
    walker, _ = load_walker(tmp_path / "w.pt")
    assert walker.latent_dim == 5 * 1024
    batch = ViewSampler(model, load_policy(tmp_path / "w.yaml"), views=1, seed=0).sample(range(2))
    assert batch.images.shape == (2, 2, 1, 32, 32) and not torch.equal(batch.images[:, 0], batch.images[:, 1])
