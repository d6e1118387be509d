"""The ``critic_t_x`` sweep setting: T_x-augmented critic inputs (COP-Gen's critic on SSL views)."""

import pytest
import torch

import synthviews as sv
from synthviews.analysis import Settings, sweep
from synthviews.analysis.mi import T_X_PRESETS, augment_seed, critic_transform
from synthviews.cli import main
from synthviews.data.augment import PRESETS
from synthviews.errors import ConfigError

TINY = dict(stds=(0.5,), pairs=128, eval_pairs=128, batch=32, eval_batch=64, steps=10, seeds=1, resolution=16)
GROUPS = ["shape", "inert"]  # inert changes no pixel: its cell reuses the reference's numbers


@pytest.fixture(scope="module")
def toy():
    return sv.load_model("toy")


def numbers(result):
    return [(c["group"], c["std"], c["batches"], c["train_loss"]) for c in [result["reference"]] + result["cells"]]


@pytest.fixture(scope="module")
def plain(toy):
    return sweep(toy, groups=GROUPS, settings=Settings.quick(**TINY), device="cpu")


def test_default_is_no_augmentation(toy, plain):
    assert Settings().critic_t_x == "none" and plain["settings"]["critic_t_x"] == "none"
    explicit = sweep(toy, groups=GROUPS, settings=Settings.quick(critic_t_x="none", **TINY), device="cpu")
    assert numbers(explicit) == numbers(plain)
    assert critic_transform(Settings(), 0, "train") is None


def test_simclr_is_reproducible_and_changes_the_reference(toy, plain):
    s = Settings.quick(critic_t_x="simclr", **TINY)
    a = sweep(toy, groups=GROUPS, settings=s, device="cpu")
    b = sweep(toy, groups=GROUPS, settings=s, device="cpu")
    assert a["settings"]["critic_t_x"] == "simclr"
    assert numbers(a) == numbers(b)
    assert a["reference"]["mi"] != plain["reference"]["mi"]
    # MI(T(x); T'(x)) is below MI(x; x) = the unaugmented ceiling on this toy model
    assert a["reference"]["mi"] < plain["reference"]["mi"]


def test_transform_seeds_are_deterministic_and_per_side():
    s = Settings.quick(critic_t_x="simclr", **TINY)
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    t = critic_transform(s, 3, "train")
    assert torch.equal(t(x, 5, 0), critic_transform(s, 3, "train")(x, 5, 0))
    assert not torch.equal(t(x, 5, 0), t(x, 5, 1))   # anchor and positive get independent views
    assert not torch.equal(t(x, 5, 0), t(x, 6, 0))   # and every step new ones
    assert t(x, 5, 0).shape == x.shape
    assert len({augment_seed(seed, phase, i, side) for seed in (0, 1) for phase in ("train", "eval")
                for i in range(3) for side in (0, 1)}) == 24


def test_bad_preset_is_one_clear_config_error():
    with pytest.raises(ConfigError) as e:
        Settings(critic_t_x="simclrr")
    message = str(e.value)
    assert "\n" not in message and "critic_t_x" in message and "simclrr" in message and "no_color" in message


def test_presets_match_augment():
    assert tuple(T_X_PRESETS) == tuple(PRESETS)


def test_cli_flag(capsys):
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    assert "--critic-t-x" in capsys.readouterr().out


def test_inert_cell_reuses_the_augmented_reference(toy):
    r = sweep(toy, groups=["inert"], settings=Settings.quick(critic_t_x="simclr", **TINY), device="cpu")
    assert r["cells"][0]["identical"] and r["cells"][0]["batches"] == r["reference"]["batches"]
