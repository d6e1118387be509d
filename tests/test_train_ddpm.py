"""train_ddpm: a few steps of a tiny UNet, exact resume, the diffusers export, option/path errors, the CLI."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

pytest.importorskip("sklearn")
diffusers = pytest.importorskip("diffusers")

from synthviews.cli.train import add_commands  # noqa: E402
from synthviews.errors import ConfigError  # noqa: E402
from synthviews.train import ddpm, gan, loop  # noqa: E402
from synthviews.train.ddpm import CHECKPOINT, EXPORT, Trainer, preset, read_checkpoint, sample, train  # noqa: E402
from synthviews.train.digits import load_digits_split  # noqa: E402

SHIPPED = ddpm.Path(ddpm.__file__).resolve().parents[1] / "weights" / "digits_ddpm"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reals():
    return load_digits_split("train", 8)[0][:32]


def tiny(**kw):
    return preset("tiny", **kw)


def run(path, reals, steps, options=None, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("log_every", 1)
    kw.setdefault("sample_steps", 5)
    return train(path, tiny() if options is None and not kw.get("resume") else options, steps=steps, reals=reals,
                 **kw)


def weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- options -------------------------------------------------------------------------

def test_options_and_presets_check_their_values():
    o = preset("digits")
    assert o.beta_schedule == "squaredcos_cap_v2" and o.num_train_timesteps == 1000 and o.resolution == 32
    cfg = o.unet_config()
    assert cfg["down_block_types"] == ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"]
    assert cfg["up_block_types"] == ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]  # mirrored
    for bad, match in [({"batch": 0}, "batch"), ({"lr": 0.0}, "lr"), ({"ema_decay": 1.0}, "ema_decay"),
                       ({"beta_schedule": "cubic"}, "beta_schedule"), ({"norm_num_groups": 3}, "divisible"),
                       ({"attention": (True,)}, "one entry per level"), ({"resolution": 7}, "divisible"),
                       ({"batch": 2.5}, "integer"), ({"lr": float("nan")}, "number"), ({"depth": 3}, "unknown")]:
        with pytest.raises(ConfigError, match=match):
            preset("tiny", **bad)
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")


def test_digits_network_is_cpu_sized():
    t = Trainer(preset("digits"), torch.rand(4, 1, 32, 32))
    n = sum(p.numel() for p in t.unet.parameters())
    assert 0.5e6 < n < 2e6
    assert float(t.reals.min()) >= -1 and float(t.reals.max()) <= 1  # the [-1, 1] convention
    with pytest.raises(ConfigError, match="training images"):
        Trainer(preset("digits"), torch.rand(4, 1, 16, 16))


# --- training ------------------------------------------------------------------------

def test_a_few_steps_learn_and_stay_finite(reals):
    t = Trainer(tiny(), reals)
    before = weights(t.unet)
    losses = [t.train_step()["loss"] for _ in range(4)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not same(before, weights(t.unet)) and not same(weights(t.ema), weights(t.unet))
    assert t.step == 4 and t.nimg == 16


def test_same_seed_same_weights_other_seed_other_weights(reals):
    a, b, c = Trainer(tiny(), reals), Trainer(tiny(), reals), Trainer(tiny(seed=1), reals)
    for t in (a, b, c):
        for _ in range(2):
            t.train_step()
    assert same(weights(a.ema), weights(b.ema)) and not same(weights(a.ema), weights(c.ema))


def test_checkpoint_resume_is_exact(tmp_path, reals):
    # 32 images in batches of 4: an epoch is 8 steps; new orders are drawn before steps 9 and 17. The split
    # at 10 falls mid-epoch in the second order (a fresh trainer holds the first one), so a resume that
    # lost the data order (or its position) fails here; the refresh at 17 checks the restored RNG.
    full = run(tmp_path / "full", reals, 20)
    run(tmp_path / "part", reals, 10)
    state = read_checkpoint(tmp_path / "part" / CHECKPOINT)  # weights_only load
    assert state["step"] == 10 and state["format"] == ddpm.FORMAT and state["pos"] == 8
    resumed = run(tmp_path / "part", reals, None, resume=True)  # None: the goal of the run so far, 10
    assert resumed.step == 10
    resumed = run(tmp_path / "part", reals, 20, resume=True)
    assert resumed.step == 20 and resumed.nimg == full.nimg
    for name in ("unet", "ema"):
        assert same(weights(getattr(full, name)), weights(getattr(resumed, name))), name
    assert str(full.opt.state_dict()) == str(resumed.opt.state_dict())
    log = lambda run: [(e["step"], e["loss"], e["grad_norm"]) for e in  # noqa: E731
                       map(json.loads, (tmp_path / run / "log.jsonl").read_text().splitlines())]
    assert log("full") == log("part")  # steps 1-10 before, 11-20 after the resume
    assert (tmp_path / "part" / "samples-000020.png").is_file()


def test_time_driven_checkpoints_and_stops_resume_exactly(tmp_path, reals):
    """checkpoint_minutes tiny: a checkpoint after every step; max_minutes tiny: stop after one step."""
    full = run(tmp_path / "full", reals, 4, checkpoint_minutes=1e-9)
    assert sorted(p.name for p in (tmp_path / "full").glob("samples-*.png")) == [
        f"samples-{k:06d}.png" for k in range(1, 5)]
    for k in range(4):
        t = run(tmp_path / "bits", reals, 4, resume=k > 0, max_minutes=1e-9)
        assert t.step == k + 1 and read_checkpoint(tmp_path / "bits" / CHECKPOINT)["step"] == k + 1
    assert t.target_steps == 4 and t.nimg == full.nimg
    for name in ("unet", "ema"):
        assert same(weights(getattr(full, name)), weights(getattr(t, name))), name
    assert str(full.opt.state_dict()) == str(t.opt.state_dict())


class _Diverging:
    """A stub trainer whose second step reports a NaN loss."""

    def __init__(self):
        self.step, self.nimg, self.elapsed, self.saved = 0, 0, 0.0, []

    def train_step(self):
        self.step += 1
        return {"loss": 1.0 if self.step == 1 else float("nan")}

    def save(self, path):
        self.saved.append(path)
        path.write_bytes(b"state")


def test_a_non_finite_statistic_saves_and_stops(tmp_path):
    t, checkpoints = _Diverging(), []
    with pytest.raises(RuntimeError, match="loss became nan at step 2"):
        loop.run(t, tmp_path, 10, lambda: checkpoints.append(t.step), verb="stub", postfix={"loss": "loss"},
                 checkpoint_minutes=1e6, max_minutes=None, log_every=1, progress=False)
    assert t.step == 2 and t.saved == [tmp_path / "checkpoint-nonfinite.pt"] and not checkpoints
    assert [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [1]


def test_export_is_a_diffusers_ddpm_pipeline(tmp_path, reals):
    export = tmp_path / "w" / "digits_ddpm"
    t = run(tmp_path / "run", reals, 2, export=export)
    for folder in (export, tmp_path / "run" / EXPORT):
        unet = diffusers.UNet2DModel.from_pretrained(folder / "unet", use_safetensors=True, local_files_only=True)
        assert same(weights(unet), weights(t.ema))  # the EMA weights are what ships
        sched = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
        assert sched.config.num_train_timesteps == 50 and sched.config.prediction_type == "epsilon"
        assert sched.config.beta_schedule == "squaredcos_cap_v2" and sched.config.clip_sample
        index = json.loads((folder / "model_index.json").read_text())
        assert index["_class_name"] == "DDPMPipeline" and index["unet"] == ["diffusers", "UNet2DModel"]
        assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
        assert index["_synthviews"]["pixels"]["output"] == "(sample / 2 + 0.5).clamp(0, 1)"
        assert index["_synthviews"]["license"] == "mit"
        assert sorted(p.name for p in (folder / "unet").iterdir()) == ["config.json",
                                                                       "diffusion_pytorch_model.safetensors"]
        weights_file = folder / "unet" / "diffusion_pytorch_model.safetensors"
        assert weights_file.stat().st_mode & 0o044 == 0o044  # readable by everyone once installed
    pipe = diffusers.DDPMPipeline.from_pretrained(export, use_safetensors=True, local_files_only=True)
    assert isinstance(pipe.unet, diffusers.UNet2DModel)
    # re-export replaces the folder whole, leaving no temporaries beside it
    (export / "stale.txt").write_text("x")
    t.export(export)
    assert not (export / "stale.txt").exists()
    assert sorted(p.name for p in export.parent.iterdir()) == ["digits_ddpm"]


def test_sample_is_seeded_and_in_the_unit_range(reals):
    t = Trainer(tiny(), reals)
    a = sample(t.ema, t.scheduler, 3, steps=5, seed=1)
    assert a.shape == (3, 1, 8, 8) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, sample(t.ema, t.scheduler, 3, steps=5, seed=1))
    assert not torch.equal(a, sample(t.ema, t.scheduler, 3, steps=5, seed=2))
    assert len(t.scheduler.timesteps) == 50  # the trainer's own scheduler is left alone


# --- where an export may go ---------------------------------------------------------

def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_an_export_never_replaces_the_run_or_a_foreign_folder(tmp_path, reals):
    runs = tmp_path / "runs"
    out = runs / "x"
    run(out, reals, 1)
    before = _tree(runs)
    for export, match in [(out, "is the run directory"), (runs, "contains it"), (tmp_path, "contains it"),
                          (out / "mine", "inside the run"), (out / "pipeline" / "unet", "inside the run")]:
        with pytest.raises(ConfigError, match=match):
            run(out, reals, 2, resume=True, export=export)
        with pytest.raises(ConfigError, match=match):  # export() checks too
            run(out, reals, 1, resume=True).export(export, out)
    with pytest.raises(ConfigError, match="temporary"):
        run(runs / ".y.old", reals, 1, export=runs / "y")
    assert _tree(runs) == before  # nothing deleted, nothing renamed
    # a non-empty folder whose model_index.json is someone else's (a downloaded pipeline)
    sd = tmp_path / "sd"
    sd.mkdir()
    (sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (sd / "unet").mkdir()
    with pytest.raises(ConfigError, match="not an export of train-ddpm"):
        run(tmp_path / "r", reals, 1, export=sd)
    with pytest.raises(ConfigError, match="not an export of train-ddpm"):
        Trainer(tiny(), reals).export(sd)
    assert _tree(sd) == ["model_index.json", "unet"]
    # the user's own files in out/pipeline: refused when the run starts, before any checkpoint
    own = tmp_path / "own"
    (own / EXPORT).mkdir(parents=True)
    (own / EXPORT / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=f"{EXPORT} is not empty and holds no model_index.json"):
        run(own, reals, 1)
    assert _tree(own) == [EXPORT, f"{EXPORT}/notes.txt"]
    # out/pipeline itself and a previous export elsewhere are fine
    run(out, reals, 2, resume=True, export=out / EXPORT)
    run(tmp_path / "r", reals, 1, export=tmp_path / "exp")
    t = run(out, reals, 3, resume=True, export=tmp_path / "exp")
    assert json.loads((tmp_path / "exp" / "model_index.json").read_text())["_synthviews"]["steps"] == t.step == 3


def test_a_crash_between_the_renames_is_repaired_by_the_next_export(tmp_path, reals, monkeypatch):
    t = Trainer(tiny(), reals)
    folder = tmp_path / "exp"
    t.export(folder)
    t.train_step()
    real_rename = ddpm.Path.rename

    def crash_on_the_second(self, target):
        if self.name == ".exp.tmp":
            raise OSError("simulated crash")
        return real_rename(self, target)

    monkeypatch.setattr(ddpm.Path, "rename", crash_on_the_second)
    with pytest.raises(OSError, match="simulated"):
        t.export(folder)
    monkeypatch.undo()
    assert not folder.exists() and (tmp_path / ".exp.old" / "model_index.json").is_file()  # the good copy
    assert json.loads((tmp_path / ".exp.old" / "model_index.json").read_text())["_synthviews"]["steps"] == 0
    ddpm.shutil.rmtree(tmp_path / ".exp.tmp")
    (tmp_path / ".exp.tmp").write_text("a leftover that is a file")
    index = lambda: json.loads((folder / "model_index.json").read_text())["_synthviews"]  # noqa: E731
    Trainer(tiny(), reals).export(tmp_path / "other")  # an export elsewhere leaves .exp.old alone
    assert (tmp_path / ".exp.old").is_dir()
    # the next export first renames the old copy back (then checks it as a previous export): a crash
    # while it builds the new copy leaves the old one in place
    def crash_while_building(*args, **kwargs):
        raise OSError("simulated crash while building")

    monkeypatch.setattr(t.ema, "save_pretrained", crash_while_building)
    with pytest.raises(OSError, match="while building"):
        t.export(folder)
    monkeypatch.undo()
    assert index()["steps"] == 0 and not (tmp_path / ".exp.old").exists() and (tmp_path / ".exp.tmp").is_dir()
    t.export(folder)
    assert index()["steps"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "other"]
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet", use_safetensors=True, local_files_only=True)
    assert same(weights(unet), weights(t.ema))


# --- errors --------------------------------------------------------------------------

def test_bad_paths_and_resumes_raise_config_error(tmp_path, reals):
    with pytest.raises(ConfigError, match="does not exist"):
        run(tmp_path / "none", reals, 2, resume=True)
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        run(afile, reals, 1)
    with pytest.raises(ConfigError, match="(?i)not a directory"):
        run(afile / "sub", reals, 1)
    with pytest.raises(ConfigError, match="export folder .* not a directory"):
        run(tmp_path / "r1", reals, 1, export=afile)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="no model_index.json"):
        run(tmp_path / "r2", reals, 1, export=foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable"):
        run(tmp_path / "r3", reals, 1, resume=bad)
    gan_like = tmp_path / "gan.pt"
    torch.save({"format": "synthviews-train-gan/1"}, gan_like)
    with pytest.raises(ConfigError, match="not a train-ddpm checkpoint"):
        run(tmp_path / "r4", reals, 1, resume=gan_like)
    with pytest.raises(ConfigError, match="steps"):
        run(tmp_path / "r5", reals, -1)
    run(tmp_path / "again", reals, 1)
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        run(tmp_path / "again", reals, 2)
    with pytest.raises(ConfigError, match="differ"):
        run(tmp_path / "again", reals, 2, options=tiny(lr=0.01), resume=True)
    for bad in ({"log_every": 0}, {"log_every": 1.5}, {"max_minutes": 0}, {"max_minutes": float("nan")},
                {"max_minutes": float("inf")}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            run(tmp_path / "r6", reals, 1, **bad)
        with pytest.raises(ConfigError, match=next(iter(bad))):  # the GAN trainer shares the check
            gan.train(tmp_path / "r6", gan.preset("tiny"), steps=1, reals=torch.rand(4, 1, 32, 32),
                      progress=False, **bad)
    assert not (tmp_path / "r6").exists()


def test_a_checkpoint_with_bad_contents_is_a_config_error(tmp_path, reals):
    run(tmp_path / "ok", reals, 1)
    good = read_checkpoint(tmp_path / "ok" / CHECKPOINT)
    no_unet = {k: v for k, v in good.items() if k != "unet"}
    other_unet = {**good, "unet": {k: v for k, v in good["unet"].items() if "attention" not in k}}  # another layout
    for name, state in [("empty", {"format": ddpm.FORMAT}), ("options", {**good, "options": {"depth": 3}}),
                        ("no_unet", no_unet), ("other_unet", other_unet), ("step", {**good, "step": "x"})]:
        path = tmp_path / f"{name}.pt"
        torch.save(state, path)
        with pytest.raises(ConfigError, match=f"checkpoint {path} has the train-ddpm format but not its contents") as e:
            run(tmp_path / name, reals, 2, resume=path)
        assert "\n" not in str(e.value)


def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="synthviews")
    add_commands(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as e:
        return str(e)


def test_cli_errors_and_a_tiny_run(tmp_path, monkeypatch, capsys):
    missing = _run_cli(["train-ddpm", "--out", str(tmp_path / "x"), "--resume", "--no-progress"])
    assert isinstance(missing, str) and "does not exist" in missing
    afile = tmp_path / "f"
    afile.write_text("")
    bad_out = _run_cli(["train-ddpm", "--out", str(afile), "--preset", "tiny", "--steps", "1", "--no-progress"])
    assert isinstance(bad_out, str) and "not a directory" in bad_out
    with pytest.raises(SystemExit):
        _run_cli(["train-ddpm", "--beta-schedule", "cubic"])
    import synthviews.train.digits as digits

    real = digits.load_digits_split
    monkeypatch.setattr(digits, "load_digits_split", lambda split, res: tuple(t[:16] for t in real(split, res)))
    monkeypatch.setitem(ddpm.PRESETS, "tiny", {**ddpm.PRESETS["tiny"], "num_train_timesteps": 4})  # 4-step grids
    out = tmp_path / "run"
    assert _run_cli(["train-ddpm", "--out", str(out), "--preset", "tiny", "--steps", "2", "--lr", "0.001",
                     "--no-progress", "--threads", "1", "--export", str(tmp_path / "exp")]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert (tmp_path / "exp" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert read_checkpoint(out / CHECKPOINT)["options"]["lr"] == 0.001
    conflict = _run_cli(["train-ddpm", "--out", str(out), "--resume", "--lr", "0.1", "--no-progress"])
    assert isinstance(conflict, str) and "lr" in conflict
    assert _run_cli(["train-ddpm", "--out", str(out), "--resume", "--steps", "3", "--no-progress"]) == 0
    assert read_checkpoint(out / CHECKPOINT)["step"] == 3
    capsys.readouterr()
    # an early stop: the preview points at the run's pipeline, not at the export that was not written
    assert _run_cli(["train-ddpm", "--out", str(out), "--resume", "--steps", "5", "--max-minutes", "1e-9",
                     "--export", str(tmp_path / "exp2"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "stopped at step 4 of 5" in printed and f"--path {out / EXPORT} " in printed and "exp2" not in printed
    assert not (tmp_path / "exp2").exists()


# --- the shipped weights -------------------------------------------------------------

def test_shipped_pipeline_loads():
    st = SHIPPED / "unet" / "diffusion_pytorch_model.safetensors"
    assert st.stat().st_size <= 8 * 2 ** 20
    unet = diffusers.UNet2DModel.from_pretrained(SHIPPED / "unet", use_safetensors=True, local_files_only=True)
    assert unet.config.sample_size == 32 and unet.config.in_channels == 1
    sched = diffusers.DDPMScheduler.from_pretrained(SHIPPED / "scheduler", local_files_only=True)
    assert sched.config.num_train_timesteps == 1000
    index = json.loads((SHIPPED / "model_index.json").read_text())
    assert index["_synthviews"]["license"] == "mit" and index["_synthviews"]["steps"] > 0
    assert index["_synthviews"]["trainer"] == ddpm.FORMAT  # a later export may replace the folder
    # the shipped configs are the digits preset's: what train-ddpm --preset digits builds
    o = preset("digits")
    for file, ours, cls in [("unet/config.json", o.unet_config(), diffusers.UNet2DModel),
                            ("scheduler/scheduler_config.json", o.scheduler_config(), diffusers.DDPMScheduler)]:
        shipped = json.loads((SHIPPED / file).read_text())
        assert {k: shipped[k] for k in ours} == ours, file
        built = cls.from_config(ours).config if cls is diffusers.DDPMScheduler else cls(**ours).config
        public = lambda cfg: {k: v for k, v in dict(cfg).items() if not k.startswith("_")}  # noqa: E731
        assert public(shipped) == json.loads(json.dumps(public(built))), file
