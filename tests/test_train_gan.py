"""train_gan: the digits split, a few training steps, exact resume, export, CLI errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from synthviews import cli  # noqa: E402
from synthviews.cli.train import add_commands as add_train_gan_command  # noqa: E402
from synthviews.errors import ConfigError  # noqa: E402
from synthviews.models import load_model  # noqa: E402
from synthviews.models.digits import WEIGHTS  # noqa: E402  (the shipped file)
from synthviews.train.digits import NUM_IMAGES, load_digits_split, split_indices  # noqa: E402
from synthviews.train.discriminator import Discriminator  # noqa: E402
from synthviews.train.gan import (  # noqa: E402
    CHECKPOINT,
    EXPORT,
    Trainer,
    augment,
    preset,
    read_checkpoint,
    synthesize,
    train,
)


@pytest.fixture(scope="module")
def reals():
    return load_digits_split("train", 8 * 4)[0][:64]


def tiny(**kw):
    return preset("tiny", **kw)


# --- the split ---------------------------------------------------------------------

def test_split_is_fixed_disjoint_and_stratified():
    a, b = split_indices(), split_indices()
    assert np.array_equal(a["train"], b["train"]) and np.array_equal(a["test"], b["test"])
    assert len(a["train"]) == 1347 and len(a["test"]) == 450
    assert not set(a["train"]) & set(a["test"])
    assert sorted(np.concatenate([a["train"], a["test"]])) == list(range(NUM_IMAGES))
    _, labels = load_digits_split("all", 8)
    labels = labels.numpy()
    overall = np.bincount(labels, minlength=10) / len(labels)
    for part in ("train", "test"):
        share = np.bincount(labels[a[part]], minlength=10) / len(a[part])
        assert np.abs(share - overall).max() < 0.01  # stratified: class shares as in the whole set
    # the validation split partitions train, stratified too
    assert len(a["fit"]) == 1010 and len(a["val"]) == 337 and not set(a["fit"]) & set(a["val"])
    assert sorted(np.concatenate([a["fit"], a["val"]])) == sorted(a["train"])
    for part in ("fit", "val"):
        share = np.bincount(labels[a[part]], minlength=10) / len(a[part])
        assert np.abs(share - overall).max() < 0.015
    assert load_digits_split("val", 8)[0].shape == (337, 1, 8, 8)
    # a pinned fingerprint: the split must never change silently
    assert a["test"][:5].tolist() == [1364, 1579, 1023, 1176, 1151]
    assert a["val"][:5].tolist() == [1316, 334, 825, 398, 319]


def test_digits_images_and_labels():
    x, y = load_digits_split("test")
    assert x.shape == (450, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0 and float(x.max()) <= 1 and float(x.max()) > 0.9
    assert set(y.tolist()) == set(range(10))
    x8, y8 = load_digits_split("test", 8)
    assert torch.equal(y8, y) and x8.shape == (450, 1, 8, 8)
    # bilinear, align_corners=False: the mean brightness is kept
    assert torch.allclose(x.mean(dim=[2, 3]), x8.mean(dim=[2, 3]), atol=0.03)
    with pytest.raises(ConfigError):
        load_digits_split("validation")


# --- pieces --------------------------------------------------------------------------

def test_training_forward_matches_the_inference_synthesis():
    t = Trainer(tiny(), torch.rand(8, 1, 32, 32))
    g = t.G
    with torch.no_grad():
        for p in g.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # noise strengths and biases away from 0
        ws = g.mapping(torch.randn(3, g.z_dim))
        ws = ws + torch.randn_like(ws)  # different rows, as with style mixing
        assert torch.allclose(synthesize(g.synthesis, ws, False), g.synthesis(ws, noise_mode="const"), atol=1e-4)


def test_the_trainer_runs_the_models_own_synthesis(monkeypatch):
    """No private copy of the forward: the fakes come from G.synthesis, with random noise from the run's RNG."""
    t = Trainer(tiny(), torch.rand(8, 1, 32, 32))
    calls = []
    real = type(t.G.synthesis).forward

    def spy(self, ws, **kwargs):
        calls.append((self, kwargs))
        return real(self, ws, **kwargs)

    monkeypatch.setattr(type(t.G.synthesis), "forward", spy)
    with torch.no_grad():
        t.fakes(4)
    assert len(calls) == 1 and calls[0][0] is t.G.synthesis
    assert calls[0][1]["noise_mode"] == "random" and calls[0][1]["generator"] is t.rng


def test_discriminator_and_augment_shapes():
    d = Discriminator(32, 1, 128, 8)
    assert d(torch.randn(6, 1, 32, 32)).shape == (6,)
    x = torch.arange(2 * 32 * 32, dtype=torch.float32).reshape(2, 1, 32, 32)
    rng = torch.Generator().manual_seed(0)
    assert torch.equal(augment(x, 0.0, 2, rng), x)
    y = augment(x, 1.0, 2, rng)
    assert y.shape == x.shape
    for b in range(2):  # an integer shift: the centre is a translated copy
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(y[b, 0, 4:-4, 4:-4], x[b, 0, 4 - dy:28 - dy, 4 - dx:28 - dx])]
        assert found


# --- training ------------------------------------------------------------------------

def test_a_few_steps_stay_finite(reals):
    t = Trainer(tiny(), reals)
    before = {k: v.clone() for k, v in t.G.state_dict().items()}
    for _ in range(4):
        stats = t.train_step()
        assert all(math.isfinite(v) for v in stats.values())
    assert "R1" in stats or t.opts.r1_interval > 1
    for module in (t.G, t.G_ema, t.D):
        assert all(torch.isfinite(v).all() for v in module.state_dict().values())
    after = t.G.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # G learned something
    assert not torch.equal(t.G_ema.mapping.w_avg, torch.zeros_like(t.G_ema.mapping.w_avg))


def test_checkpoint_resume_is_exact(tmp_path, reals):
    # 64 images in batches of 4: new data orders before steps 17 and 33; the split at 20 falls mid-epoch in
    # the second order, so a resume that lost the data order fails (a fresh trainer holds the first one).
    full = train(tmp_path / "full", tiny(), steps=36, reals=reals, progress=False, log_every=1)
    part = train(tmp_path / "part", tiny(), steps=20, reals=reals, progress=False, log_every=1)
    assert part.step == 20
    state = read_checkpoint(tmp_path / "part" / CHECKPOINT)  # weights_only load
    assert state["step"] == 20 and isinstance(state["opt_D"], dict)
    resumed = train(tmp_path / "part", None, steps=36, resume=True, reals=reals, progress=False, log_every=1)
    assert resumed.step == 36 and resumed.nimg == full.nimg
    for name in ("G", "G_ema", "D"):
        a, b = getattr(full, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    losses = lambda run: [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]  # noqa: E731
    keys = ("step", "loss_G", "loss_D", "D_real", "D_fake")
    per_step = lambda run: [tuple(e[k] for k in keys) for e in losses(run)]  # noqa: E731
    assert per_step("full") == per_step("part")  # steps 1-20 before, 21-36 after the resume
    assert (tmp_path / "part" / "samples-000036.png").is_file()


def test_export_loads_with_the_stylegan2_loader(tmp_path, reals):
    export = tmp_path / "w" / "g.safetensors"
    t = train(tmp_path / "run", tiny(), steps=2, export=export, reals=reals, progress=False)
    for path in (export, tmp_path / "run" / EXPORT):
        model = load_model("stylegan2", path=str(path))
        z = torch.randn(3, model.latent_dim)
        img = model.decode(model.compose(z, {}))
        assert img.shape == (3, 1, 32, 32) and float(img.min()) >= 0 and float(img.max()) <= 1
    assert torch.equal(model.synthesis.b4.const, t.G_ema.synthesis.b4.const)


# --- errors --------------------------------------------------------------------------

def test_bad_inputs_raise_config_error(tmp_path, reals):
    with pytest.raises(ConfigError, match="does not exist"):
        train(tmp_path / "none", None, steps=2, resume=True, reals=reals, progress=False)
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        train(afile, tiny(), steps=1, reals=reals, progress=False)
    with pytest.raises(ConfigError, match="(?i)not a directory"):
        train(afile / "sub", tiny(), steps=1, reals=reals, progress=False)
    with pytest.raises(ConfigError, match=".safetensors"):
        train(tmp_path / "r", tiny(), steps=1, export=tmp_path / "g.pt", reals=reals, progress=False)
    with pytest.raises(ConfigError):
        train(tmp_path / "r2", tiny(), steps=1, export=afile / "g.safetensors", reals=reals, progress=False)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable"):
        train(tmp_path / "r3", None, steps=1, resume=bad, reals=reals, progress=False)
    with pytest.raises(ConfigError):
        preset("huge")
    with pytest.raises(ConfigError):
        preset("tiny", batch=0)
    train(tmp_path / "again", tiny(), steps=1, reals=reals, progress=False)
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        train(tmp_path / "again", tiny(), steps=2, reals=reals, progress=False)
    with pytest.raises(ConfigError, match="differ"):
        train(tmp_path / "again", tiny(lr=0.01), steps=2, resume=True, reals=reals, progress=False)


def _parser():
    import argparse

    parser = argparse.ArgumentParser(prog="synthviews")
    verbs = parser.add_subparsers(dest="verb", required=True)
    add_train_gan_command(verbs)
    return parser


def _run_cli(argv):
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as e:
        return str(e)


def test_cli_errors_and_a_tiny_run(tmp_path, monkeypatch, capsys):
    missing = _run_cli(["train-gan", "--out", str(tmp_path / "x"), "--resume", "--no-progress"])
    assert isinstance(missing, str) and "does not exist" in missing
    afile = tmp_path / "f"
    afile.write_text("")
    bad_out = _run_cli(["train-gan", "--out", str(afile), "--preset", "tiny", "--steps", "1", "--no-progress"])
    assert isinstance(bad_out, str) and "not a directory" in bad_out
    bad_export = _run_cli(["train-gan", "--out", str(tmp_path / "y"), "--preset", "tiny", "--steps", "1",
                           "--export", str(tmp_path / "g.bin"), "--no-progress"])
    assert isinstance(bad_export, str) and ".safetensors" in bad_export
    # a real (tiny) run on 64 images through the command line, then a resume with a conflicting option
    import synthviews.train.digits as digits

    real = digits.load_digits_split
    monkeypatch.setattr(digits, "load_digits_split", lambda split, res: tuple(t[:64] for t in real(split, res)))
    out = tmp_path / "run"
    assert _run_cli(["train-gan", "--out", str(out), "--preset", "tiny", "--steps", "2", "--no-progress",
                     "--export", str(tmp_path / "e.safetensors")]) == 0
    assert (tmp_path / "e.safetensors").is_file() and (out / CHECKPOINT).is_file()
    import synthviews as sv

    trained = sv.load_model("stylegan2", path=tmp_path / "e.safetensors")  # the project's own model, not NVIDIA's
    assert trained.license == "mit" and trained.license_link is None
    assert "generic" in trained.default_policy_origin()  # not the LSUN Cars stds
    conflict = _run_cli(["train-gan", "--out", str(out), "--resume", "--lr", "0.1", "--no-progress"])
    assert isinstance(conflict, str) and "lr" in conflict
    assert _run_cli(["train-gan", "--out", str(out), "--resume", "--steps", "3", "--no-progress"]) == 0
    assert read_checkpoint(out / CHECKPOINT)["step"] == 3
    assert _run_cli(["train-gan", "--out", str(out), "--resume", "--no-progress"]) == 0  # keeps its goal of 3
    assert read_checkpoint(out / CHECKPOINT)["step"] == 3 and read_checkpoint(out / CHECKPOINT)["target_steps"] == 3
    if hasattr(cli, "build_parser"):  # once wired into synthviews.cli, the verb parses there too
        try:
            cli.build_parser().parse_args(["train-gan", "--out", str(out), "--resume"])
        except SystemExit:
            pass


# --- the shipped weights -------------------------------------------------------------

@pytest.mark.skipif(not WEIGHTS.is_file(), reason="shipped digits weights not present")
def test_shipped_weights_load_and_make_digits():
    assert WEIGHTS.stat().st_size <= 5 * 2 ** 20
    model = load_model("stylegan2", path=str(WEIGHTS))
    assert model.image_shape == (1, 32, 32)
    m = load_model("digits")
    assert m.family == "digits" and m.license == "mit"
    z = torch.randn(4, m.latent_dim, generator=torch.Generator().manual_seed(0))
    img = m.decode(m.compose(z, {}))
    assert img.shape == (4, 1, 32, 32) and 0 <= float(img.min()) and float(img.max()) <= 1
    assert float(img.std()) > 0.1  # not a flat image
    with pytest.raises(ConfigError, match="no option path"):
        load_model("digits", path="x.safetensors")  # the weights are the shipped file


def test_evaluate_generator_reports_shares_and_groups(tmp_path, reals):
    from synthviews.train.digits import evaluate_generator

    train(tmp_path / "run", tiny(), steps=1, reals=reals, progress=False)
    model = load_model("stylegan2", path=str(tmp_path / "run" / EXPORT))
    report = evaluate_generator(model, samples=20, batch=10)
    assert report["test_accuracy"] > 0.95  # the classifier itself is good on real test digits
    assert abs(sum(report["class_shares"]) - 1) < 1e-3 and 1 <= report["classes_present"] <= 10
    assert 0 < report["mean_confidence"] <= 1
    assert set(report["groups"]) == {g.name for g in model.groups}
    json.dumps(report)  # plain numbers only
