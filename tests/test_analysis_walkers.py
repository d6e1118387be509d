import argparse
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

import synthviews as sv
from synthviews.analysis import Settings, WalkerPolicy, WalkerSettings, analyze, load_walker, save_walker, train_walker
from synthviews.cli import main
from synthviews.cli.analysis import add_commands
from synthviews.policies import load_policy
from synthviews.policies.walker import FORMAT, Walker
from synthviews.views import ViewSampler

SMALL = WalkerSettings(steps=40, batch=32, warmup=10, eval_every=10, patience=10, eval_pairs=64, resolution=16,
                       lr_walker=5e-3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy16):
    out = tmp_path_factory.mktemp("walkers") / "shape.pt"
    return out, train_walker(toy16, "shape", out, SMALL, device="cpu")


def test_a_walker_lowers_mi_below_the_unperturbed_ceiling_with_finite_delta(trained):
    _, r = trained
    history = {h["step"]: h for h in r["history"]}
    start = history[SMALL.warmup]  # the walker has not moved yet: x' ~ x, the critic's ceiling
    assert start["delta_mean"] < 0.1 and start["bound"] > 2.0
    assert r["bound"] < start["bound"] - 0.5
    assert 0.5 < r["delta_mean"] < 50 and math.isfinite(r["delta_std"])
    assert r["log_n"] == pytest.approx(math.log(SMALL.batch))


def test_the_checkpoint_reloads_and_generates_identically(trained, toy16):
    out, _ = trained
    policy_file = out.with_suffix(".yaml")
    a = ViewSampler(toy16, str(policy_file), views=1, seed=4).sample(range(6))
    b = ViewSampler(toy16, load_policy(policy_file), views=1, seed=4)
    assert torch.equal(a.images, b.sample(range(6)).images)
    parts = [b.sample(range(0, 1)), b.sample(range(1, 6))]  # the batch never changes a sample
    assert torch.equal(torch.cat([p.images for p in parts]), a.images)
    assert not torch.equal(a.images[:, 0], a.images[:, 1])
    assert (a.deltas[:, :, toy16.group_names.index("shape")] > 0).all()
    # The policy path matches the batched training path up to float rounding.
    walker, meta = load_walker(out)
    assert meta["model_id"] == toy16.model_id and meta["step"] == trained[1]["best_step"]
    with torch.no_grad():
        assert torch.allclose(walker(a.anchor)["shape"], walker.noise(a.anchor)["shape"], atol=1e-5)


def test_more_than_one_positive_needs_a_per_view_scale(trained, toy16, tmp_path):
    """T(z) is deterministic: K > 1 identical positives are refused; scale: [lo, hi] makes them differ."""
    out, _ = trained
    fixed = load_policy(out.with_suffix(".yaml"))
    with pytest.raises(sv.ConfigError, match="every positive would be the same image.*scale: \\[0.5, 1.5\\]"):
        ViewSampler(toy16, fixed, views=2, seed=4).sample(range(3))
    assert main(["generate", "--model", "toy", "--model-opt", "resolution=16", "--device", "cpu", "--policy",
                 str(out.with_suffix(".yaml")), "--samples", "2", "--views", "2", "--out", str(tmp_path / "d"),
                 "--no-progress"]) == 2

    ranged = out.with_name("ranged.yaml")
    ranged.write_text(out.with_suffix(".yaml").read_text() + "scale: [0.5, 1.5]\n")
    policy = load_policy(ranged)
    assert policy.to_dict()["scale"] == [0.5, 1.5] and "scale" not in fixed.to_dict()
    assert policy.policy_id != fixed.policy_id
    a = ViewSampler(toy16, policy, views=3, seed=4).sample(range(6))
    for i in range(6):  # K distinct positives per anchor
        positives = {a.images[i, v].numpy().tobytes() for v in (1, 2, 3)}
        assert len(positives) == 3
    # Reproducible: same seed, index and view, same positive, whatever the batch.
    again = ViewSampler(toy16, load_policy(ranged), views=3, seed=4)
    assert torch.equal(torch.cat([again.sample([i]).images for i in range(6)]), a.images)
    # Each positive is the learned step times its factor in [0.5, 1.5].
    step = ViewSampler(toy16, fixed, views=1, seed=4).latents(range(6)).deltas[:, 0]
    ratio = a.deltas / step[:, None]
    g = toy16.group_names.index("shape")
    assert (ratio[:, :, g] > 0.5 - 1e-4).all() and (ratio[:, :, g] < 1.5 + 1e-4).all()
    assert ratio[:, :, g].std() > 0.05


@pytest.mark.parametrize("scale", [0, -1, [1.5, 0.5], [0, 0], "big", [1, 2, 3], True])
def test_bad_walker_scales_are_refused(trained, tmp_path, scale):
    out, _ = trained
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"kind": "walker", "walkers": [str(out)], "scale": scale}))
    with pytest.raises(sv.ConfigError, match="p.json: walker policy: scale must be"):
        load_policy(path)


def test_walker_policy_paths_are_relative_to_the_policy_file(trained, toy16, tmp_path, monkeypatch):
    out, _ = trained
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(out, moved / out.name)
    shutil.copy(out.with_suffix(".yaml"), moved / "shape.yaml")
    monkeypatch.chdir(tmp_path)
    policy = load_policy(moved / "shape.yaml")
    assert isinstance(policy, WalkerPolicy) and policy.to_dict()["walkers"][0]["path"] == "shape.pt"
    original = ViewSampler(toy16, load_policy(out.with_suffix(".yaml")), seed=1).sample(range(3)).images
    assert torch.equal(ViewSampler(toy16, policy, seed=1).sample(range(3)).images, original)
    # A checkpoint replaced after the policy was written is refused, naming the file.
    walker, meta = load_walker(moved / "shape.pt")
    with torch.no_grad():
        walker.net[2].bias.add_(1.0)
    save_walker(moved / "shape.pt", walker, meta)
    with pytest.raises(sv.ConfigError, match="shape.pt has changed"):
        load_policy(moved / "shape.yaml")


def test_walker_policy_in_preview_and_generate(trained, tmp_path):
    out, _ = trained
    policy = str(out.with_suffix(".yaml"))
    common = ["--model", "toy", "--model-opt", "resolution=16", "--policy", policy, "--device", "cpu"]
    assert main(["preview", *common, "--samples", "2", "--views", "1", "--out", str(tmp_path / "p.png")]) == 0
    assert main(["generate", *common, "--samples", "3", "--views", "1", "--out", str(tmp_path / "d"),
                 "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "d" / "synthviews.json").read_text())
    assert "walker" in json.dumps(manifest)
    # Wrong model: the walker's group sizes do not fit a StyleGAN2's.
    other = sv.load_model("stylegan2", config={"z_dim": 8, "w_dim": 8, "img_resolution": 8,
                                                "mapping_kwargs": {"num_layers": 1},
                                                "synthesis_kwargs": {"channel_base": 32, "channel_max": 8}})
    with pytest.raises(sv.ConfigError, match="unknown latent group"):
        ViewSampler(other, policy)


def test_rerunning_resumes_instead_of_retraining(trained, toy16):
    out, r = trained
    before = out.read_bytes()
    again = train_walker(toy16, "shape", out, SMALL, device="cpu")
    assert again["steps"] == r["steps"] and again["history"] == r["history"] and out.read_bytes() == before
    with pytest.raises(sv.ConfigError, match="another model, groups or settings"):
        train_walker(toy16, "shape", out, WalkerSettings(**{**SMALL.__dict__, "hidden": 8}), device="cpu")


def test_early_stopping_and_checkpoint_safety(toy16, tmp_path):
    s = WalkerSettings(steps=50, batch=16, warmup=2, eval_every=2, patience=1, min_gain=100.0, eval_pairs=32,
                       resolution=16)
    r = train_walker(toy16, ["pose", "texture"], tmp_path / "w.pt", s, device="cpu")
    assert r["stopped_early"] and r["steps"] == 6 and r["best_step"] == 4  # first walker eval, then no gain
    walker, _ = load_walker(tmp_path / "w.pt")
    assert walker.groups == {"pose": 3, "texture": 4}

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save({"format": FORMAT, "weights": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(sv.ConfigError, match="plain tensor checkpoint"):
        load_walker(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(sv.ConfigError, match="does not exist"):
        load_walker(tmp_path / "missing.pt")


@pytest.mark.parametrize("d, message", [
    ({"kind": "walker"}, "non-empty list"),
    ({"kind": "walker", "walkers": [3]}, "each entry"),
    ({"kind": "walker", "walkers": ["a.pt"], "std": 1}, "unknown key"),
])
def test_bad_walker_policy_files(tmp_path, d, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(d))
    with pytest.raises(sv.ConfigError, match=message):
        load_policy(path)


def test_walker_starts_near_zero():
    walker = Walker(20, {"color": 6}, hidden=16)
    assert walker.noise(torch.randn(5, 20))["color"].abs().max() < 0.1


def _cli(*argv):
    parser = argparse.ArgumentParser(prog="synthviews")
    add_commands(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(list(argv))
    return args.run(args)


def test_train_walker_command(tmp_path, capsys):
    out = tmp_path / "w" / "pose.pt"
    tiny = ["--model", "toy", "--model-opt", "resolution=16", "--device", "cpu", "--steps", "4", "--warmup", "2",
            "--eval-every", "2", "--eval-pairs", "32", "--batch", "16", "--critic-resolution", "16", "--no-progress"]
    assert _cli("train-walker", *tiny, "--groups", "pose", "--out", str(out)) == 0
    assert "InfoNCE bound" in capsys.readouterr().out
    assert out.is_file() and out.with_suffix(".yaml").is_file() and (out.parent / "pose.state.pt").is_file()
    with pytest.raises(sv.ConfigError, match="unknown latent group"):
        _cli("train-walker", *tiny, "--groups", "nope", "--out", str(out))
    with pytest.raises(sv.ConfigError, match="must end in .pt"):
        _cli("train-walker", *tiny, "--groups", "pose", "--out", str(tmp_path / "w.txt"))


def test_analyze_with_walkers_reports_table_1(toy16, tmp_path):
    s = Settings(stds=(1.0,), pairs=64, eval_pairs=64, batch=32, eval_batch=32, steps=4, seeds=2, resolution=16)
    ws = WalkerSettings(steps=4, batch=16, warmup=2, eval_every=2, eval_pairs=32, resolution=16)
    result = analyze(toy16, tmp_path / "r", groups=["inert", "color"], settings=s, walkers=True,
                     walker_settings=ws, device="cpu", preview_samples=2)
    rows = {w["groups"][0]: w for w in result["walkers"]}
    assert set(rows) == {"inert", "color"}
    for w in rows.values():
        assert math.isfinite(w["bound"]) and w["delta_mean"] >= 0 and math.isfinite(w["fresh_mi"])
    assert rows["inert"]["pixel_change"] == 0  # a walker on a group that changes nothing changes nothing
    text = (tmp_path / "r" / "report.md").read_text()
    assert "Learned walkers (Table 1 mode)" in text and "| inert |" in text
    assert (tmp_path / "r" / "walkers" / "color.pt").is_file()


@pytest.mark.slow
def test_resuming_gives_the_walker_an_uninterrupted_run_gives(toy16, tmp_path):
    s = WalkerSettings(steps=30, batch=16, warmup=5, eval_every=5, patience=20, eval_pairs=32, resolution=16)
    train_walker(toy16, "pose", tmp_path / "a.pt", WalkerSettings(**{**s.__dict__, "steps": 15}), device="cpu")
    a = train_walker(toy16, "pose", tmp_path / "a.pt", s, device="cpu")
    b = train_walker(toy16, "pose", tmp_path / "b.pt", s, device="cpu")
    assert a["history"] == b["history"]
    wa, wb = load_walker(tmp_path / "a.pt")[0], load_walker(tmp_path / "b.pt")[0]
    assert all(torch.equal(x, y) for x, y in zip(wa.state_dict().values(), wb.state_dict().values()))


def test_the_walker_policy_file_is_written_by_save_policy(trained, tmp_path):
    from synthviews.analysis.walkers import WALKER_POLICY_NOTE, write_walker_policy

    out, _ = trained
    path = tmp_path / "sub" / "combined.yaml"
    path.parent.mkdir()
    policy = write_walker_policy(path, [out])
    text = path.read_text()
    assert text.startswith("".join(f"# {line}\n" for line in WALKER_POLICY_NOTE.splitlines()) + "kind: walker\n")
    assert isinstance(policy, WalkerPolicy) and policy.to_dict() == load_policy(path).to_dict()
    assert policy.entries[0]["path"] == Path(os.path.relpath(out.resolve(), path.parent.resolve())).as_posix()


def test_a_torch_file_that_is_not_a_walker_is_refused(tmp_path):
    torch.save({"format": "something-else", "weights": {}}, tmp_path / "other.pt")
    with pytest.raises(sv.ConfigError, match="not a synthviews walker checkpoint"):
        load_walker(tmp_path / "other.pt")
