import argparse
import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import synthviews as sv
from synthviews.analysis import Settings, analyze, classify, sweep
from synthviews.analysis.choice import choose_policy, write_policy
from synthviews.analysis.mi import cell_policy, confidence, estimate, torch_threads
from synthviews.analysis.plots import nice_ticks
from synthviews.analysis.report import ranking
from synthviews.cli import main
from synthviews.cli.analysis import add_commands
from synthviews.policies import GaussianPolicy, load_policy

# Small enough for the default run: 16 px toy, tiny critic training.
TINY = Settings(stds=(0.5, 2.0), pairs=128, eval_pairs=128, batch=32, eval_batch=64, steps=10, seeds=2,
                resolution=16, gen_batch=128)


@pytest.fixture(scope="module")
def report(tmp_path_factory, toy16):
    out = tmp_path_factory.mktemp("analysis") / "toy"
    result = analyze(toy16, out, settings=TINY, device="cpu", preview_samples=3)
    return out, result


def test_analyze_writes_the_report_folder(report):
    out, result = report
    for name in ("report.md", "results.json", "results.csv", "policy.yaml", "preview.png", "mi_vs_std.png",
                 "mi_vs_delta.png"):
        assert (out / name).is_file(), name
    for name in ("preview.png", "mi_vs_std.png", "mi_vs_delta.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG"
    assert json.loads((out / "results.json").read_text())["reference"]["mi"] == result["reference"]["mi"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["group"] for r in rows] == ["reference"] + [g for g in result["groups"] for _ in TINY.stds]
    text = (out / "report.md").read_text()
    assert f"log N = {math.log(64):.3f}" in text and "N = 64" in text and "![preview](preview.png)" in text
    for g in result["groups"]:
        assert f"| {g} | **" in text  # one call per group, with its reason


def test_every_cell_has_a_ci_delta_and_pixel_change(report):
    _, result = report
    cells = result["cells"]
    assert len(cells) == 5 * len(TINY.stds)
    for c in cells + [result["reference"]]:
        assert len(c["batches"]) == TINY.seeds * (TINY.eval_pairs // TINY.eval_batch)
        assert len(c["per_seed"]) == TINY.seeds
        assert math.isfinite(c["mi"]) and c["ci"] > 0
        assert c["mi"] <= math.log(TINY.eval_batch)
    by = {(c["group"], c["std"]): c for c in cells}
    # Delta grows with std and matches the truncated-normal noise size; inert changes no pixel.
    assert by["pose", 0.5]["delta_mean"] < by["pose", 2.0]["delta_mean"]
    assert by["inert", 2.0]["pixel_change"] == 0 and by["inert", 2.0]["delta_mean"] > 2
    assert by["color", 2.0]["pixel_change"] > by["texture", 2.0]["pixel_change"] > 0


def test_the_chosen_policy_loads_and_previews_in_the_cli(report, tmp_path):
    out, result = report
    policy = load_policy(out / "policy.yaml")
    assert isinstance(policy, GaussianPolicy)
    calls = {c["group"]: c for c in result["calls"]}
    for g in result["groups"]:
        spec = policy.spec_for(g)
        assert (spec is None) == (calls[g]["tolerated_std"] == 0)
        if spec is not None:
            assert spec.std == calls[g]["tolerated_std"] and spec.truncation == TINY.truncation
    assert policy.spec_for("inert").std == max(TINY.stds)  # changes nothing: always the largest std
    text = (out / "policy.yaml").read_text()
    assert text.count("\n  # ") >= 2 * len(result["groups"])  # every number says where it came from
    png = tmp_path / "p.png"
    assert main(["preview", "--model", "toy", "--model-opt", "resolution=16", "--policy", str(out / "policy.yaml"),
                 "--samples", "2", "--views", "2", "--device", "cpu", "--out", str(png)]) == 0
    assert main(["generate", "--model", "toy", "--model-opt", "resolution=16", "--policy", str(out / "policy.yaml"),
                 "--samples", "3", "--views", "1", "--device", "cpu", "--out", str(tmp_path / "shards"),
                 "--no-progress"]) == 0


def test_results_are_reproducible(report, toy16):
    _, result = report
    again = sweep(toy16, ["pose"], TINY, device="cpu")
    assert again["reference"]["batches"] == result["reference"]["batches"]
    first = [c for c in result["cells"] if c["group"] == "pose"]
    assert [c["batches"] for c in again["cells"]] == [c["batches"] for c in first]
    assert [c["delta_mean"] for c in again["cells"]] == [c["delta_mean"] for c in first]


def test_a_group_that_changes_no_pixel_reuses_the_reference_exactly(toy16):
    # The shortcut must give what training would: the very same data, seeds and critic.
    with torch_threads(1):
        ref = estimate(toy16, GaussianPolicy(), TINY, 3, torch.device("cpu"))
        trained = estimate(toy16, cell_policy("inert", 1.0, 2.0), TINY, 3, torch.device("cpu"), reference=None)
    assert trained["identical"] and trained["bounds"] == ref["bounds"]


def _fake_result(curves: dict, stds=(0.1, 0.5, 1.0, 2.0), ceiling=4.0):
    cells = [{"group": g, "std": s, "mi": ceiling * r, "ci": 0.01, "delta_mean": s, "delta_std": 0.1 * s,
              "pixel_change": 0.01, "per_seed": [ceiling * r], "identical": False}
             for g, rs in curves.items() for s, r in zip(stds, rs)]
    return {"reference": {"mi": ceiling, "ci": 0.01}, "cells": cells, "groups": list(curves),
            "model_groups": list(curves) + ["unused"], "settings": {"stds": list(stds), "truncation": 2.0,
                                                                    "eval_batch": 64},
            "log_n": math.log(64), "model": {"model_id": "fake"}}


def test_calls_and_policy_follow_the_documented_rule(tmp_path):
    result = _fake_result({
        "sem": [0.95, 0.7, 0.5, 0.2],      # below 90% already at std 0.5: semantic, tolerated 0.1
        "sem0": [0.8, 0.5, 0.4, 0.1],      # below at the smallest std: semantic and fixed
        "mid": [1.0, 0.97, 0.92, 0.85],    # falls below only at 2: in between, tolerated 1.0
        "under": [1.0, 1.0, 0.99, 0.97],   # >= 95% at the largest std: under-used, largest std
        "bumpy": [1.0, 0.85, 0.95, 0.96],  # a dip counts: tolerated stops before it
    })
    calls = {c.group: c for c in classify(result, target=0.9, near=0.95)}
    assert {g: c.kind for g, c in calls.items()} == {"sem": "semantic", "sem0": "semantic", "mid": "in between",
                                                     "under": "under-used", "bumpy": "semantic"}
    assert {g: c.tolerated_std for g, c in calls.items()} == {"sem": 0.1, "sem0": 0.0, "mid": 1.0, "under": 2.0,
                                                              "bumpy": 0.1}
    policy = write_policy(tmp_path / "policy.yaml", choose_policy(result, list(calls.values()), 0.9))
    assert policy.to_dict()["groups"] == {
        "sem": {"std": 0.1, "truncation": 2.0}, "sem0": "fixed", "mid": {"std": 1.0, "truncation": 2.0},
        "under": {"std": 2.0, "truncation": 2.0}, "bumpy": {"std": 0.1, "truncation": 2.0}, "unused": "fixed"}
    assert ranking(result, 2.0)[0][0] == "sem0" and ranking(result, 2.0)[-1][0] == "under"


def test_policy_file_keeps_group_names_yaml_would_read_as_numbers(tmp_path):
    # StyleGAN2 groups are named like 0_2 and 2_4: unquoted, YAML reads them as the integers 2 and 24.
    result = _fake_result({"0_2": [0.8, 0.5, 0.4, 0.1], "2_4": [1.0, 1.0, 0.99, 0.97]})
    result["model_groups"] = ["0_2", "2_4", "yes"]
    policy = write_policy(tmp_path / "policy.yaml", choose_policy(result, classify(result, 0.9, 0.95), 0.9))
    assert policy.to_dict()["groups"] == {"0_2": "fixed", "2_4": {"std": 2.0, "truncation": 2.0}, "yes": "fixed"}


def test_unquoted_numeric_group_names_get_a_hint(tmp_path):
    import synthviews as sv
    from synthviews.policies import resolve_policy

    bad = tmp_path / "p.yaml"
    bad.write_text("kind: gaussian\ngroups:\n  2_4: 0.5\n")
    with pytest.raises(sv.ConfigError, match="quote such names"):
        resolve_policy(bad, sv.load_model("stylegan2", groups="0_2,2_4", config={
            "z_dim": 8, "w_dim": 8, "img_resolution": 8, "img_channels": 1, "mapping_kwargs": {"num_layers": 1},
            "synthesis_kwargs": {"channel_base": 64, "channel_max": 8}}))


@pytest.mark.parametrize("kwargs, message", [
    (dict(stds=(0.5, -1)), "stds"),
    (dict(stds=()), "stds"),
    (dict(batch=1), "batch"),
    (dict(pairs=32, batch=64), "cannot exceed"),
    (dict(seeds=1, eval_pairs=256, eval_batch=256), ">= 2 held-out batches"),
    (dict(critic="vit"), "unknown critic"),
    (dict(truncation=0), "truncation"),
])
def test_bad_settings_name_the_problem(kwargs, message):
    with pytest.raises(sv.ConfigError, match=message):
        Settings(**kwargs)


def test_threads_are_restored():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(sv.ConfigError, match="threads"):
        with torch_threads(0):
            pass


def test_confidence_and_ticks():
    mean, half = confidence([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.30 * 1.0 / math.sqrt(3))
    assert confidence(np.full(100, 5.0)) == (5.0, 0.0)
    assert nice_ticks(0.0, 5.3) == [0, 2, 4]
    assert nice_ticks(0.37, 0.52) == pytest.approx([0.4, 0.45, 0.5])


def _cli(*argv):
    parser = argparse.ArgumentParser(prog="synthviews")
    add_commands(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(list(argv))
    return args.run(args)


def test_analyze_command(tmp_path, capsys):
    out = tmp_path / "rep"
    assert _cli("analyze", "--model", "toy", "--model-opt", "resolution=16", "--groups", "inert,pose",
                "--stds", "1", "--pairs", "64", "--eval-pairs", "64", "--batch", "32", "--eval-batch", "32",
                "--steps", "5", "--critic-resolution", "16", "--device", "cpu", "--out", str(out),
                "--no-progress") == 0
    printed = capsys.readouterr().out
    assert "inert" in printed and "under-used" in printed and "report.md" in printed
    result = json.loads((out / "results.json").read_text())
    assert result["groups"] == ["inert", "pose"] and result["settings"]["stds"] == [1.0]
    policy = load_policy(out / "policy.yaml").to_dict()
    assert policy["groups"]["shape"] == "fixed"  # not analysed: left alone


@pytest.mark.parametrize("argv, message", [
    (["--groups", "nope"], "unknown latent group"),
    (["--stds", "0"], "stds"),
    (["--target-mi", "1.5"], "target MI fraction"),
])
def test_analyze_command_user_errors(tmp_path, argv, message):
    with pytest.raises(sv.ConfigError, match=message):
        _cli("analyze", "--quick", "--device", "cpu", "--out", str(tmp_path / "r"), *argv)
    assert not (tmp_path / "r").exists()


def test_sweep_runs_on_stylegan2_groups():
    # A real MLVGM (random weights): groups are W+ ranges, delta is measured in W.
    model = sv.load_model("stylegan2", config={"z_dim": 16, "w_dim": 16, "img_resolution": 8, "img_channels": 3,
                                                "mapping_kwargs": {"num_layers": 2},
                                                "synthesis_kwargs": {"channel_base": 64, "channel_max": 16}},
                          groups=2)
    s = Settings(stds=(1.0,), pairs=32, eval_pairs=32, batch=16, eval_batch=16, steps=2, seeds=2, resolution=8)
    result = sweep(model, settings=s, device="cpu")
    assert [c["group"] for c in result["cells"]] == list(model.group_names)
    assert all(c["delta_mean"] > 0 and c["pixel_change"] > 0 for c in result["cells"])


# --- the toy model's ground truth, with the quick setting ------------------------

@pytest.fixture(scope="module")
def quick_toy():
    return sweep(sv.load_model("toy"), settings=Settings.quick(), device="cpu")


@pytest.mark.slow
def test_quick_analysis_recovers_inert_and_texture(quick_toy):
    result = quick_toy
    ref = result["reference"]
    by = {(c["group"], c["std"]): c for c in result["cells"]}
    calls = {c.group: c for c in classify(result)}
    for std in Settings.quick().stds:
        inert = by["inert", std]
        assert abs(inert["mi"] - ref["mi"]) <= inert["ci"]  # at the ceiling, within its CI
        texture = by["texture", std]
        assert abs(texture["mi"] - ref["mi"]) <= texture["ci"] + ref["ci"]  # fine detail: MI barely moves
    assert calls["inert"].kind == "under-used" and calls["texture"].kind == "under-used"
    for std in Settings.quick().stds:  # everything that changes the layout or colours drops more than texture
        drops = dict(ranking(result, std))
        assert min(drops["shape"], drops["pose"], drops["color"]) > drops["texture"]


@pytest.mark.slow
def test_quick_analysis_recovers_the_documented_order(quick_toy):
    result = quick_toy
    documented = ["shape", "pose", "color", "texture", "inert"]
    cells = {(c["group"], c["std"]): c for c in result["cells"]}
    for std in Settings.quick().stds:
        drops = dict(ranking(result, std))
        assert max(drops, key=drops.get) == "shape"
        for a, b in zip(documented, documented[1:]):  # each not significantly below the next one
            assert drops[a] >= drops[b] - cells[a, std]["ci"] - cells[b, std]["ci"], (std, a, b)


def test_settings_fields_carry_their_cli_help():
    from synthviews._util.settings import described_fields, parse_floats, parse_truncation
    from synthviews.analysis.walkers import WalkerSettings

    fields = {f.name: f.metadata["setting"] for f in described_fields(Settings)}
    assert set(fields) == {"stds", "truncation", "pairs", "eval_pairs", "batch", "eval_batch", "steps", "seeds",
                           "seed", "critic", "resolution", "lr", "critic_t_x"}
    assert fields["resolution"]["flag"] == "--critic-resolution" and fields["critic"]["choices"] == ("small", "resnet18")
    assert all(meta["help"] and "default" not in meta["help"] for meta in fields.values())
    assert fields["stds"]["type"] is parse_floats and fields["truncation"]["type"] is parse_truncation
    assert parse_floats("0.5, 2") == (0.5, 2.0) and parse_truncation("none") is None and parse_truncation("3") == 3.0
    for bad in ("", "a,b"):
        with pytest.raises(ValueError, match="expected"):
            parse_floats(bad)
    walker = {f.name for f in described_fields(WalkerSettings)}
    assert walker == {"steps", "batch", "warmup", "eval_every", "patience", "min_gain", "eval_pairs", "hidden",
                      "critic", "resolution", "lr_critic", "lr_walker", "seed"}


def test_the_sweep_checks_group_names_as_policies_do(toy16):
    with pytest.raises(sv.ConfigError, match="^MI sweep: unknown latent group\\(s\\) 'nope' for model 'toy'"):
        sweep(toy16, ["nope"], TINY, device="cpu")
    with pytest.raises(sv.ConfigError, match="no latent group given"):
        sweep(toy16, [], TINY, device="cpu")
