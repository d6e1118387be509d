"""benchmarks/ssl_digits.py: probes, paired statistics and the experiment end to end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ssl_digits.py"


@pytest.fixture(scope="module")
def ssl():
    spec = importlib.util.spec_from_file_location("ssl_digits_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path, *args):
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().startswith("Contrastive training on digits")
    return result, done.stdout


# --- statistics and probes ----------------------------------------------------

def test_paired_ci_of_a_constant_difference_is_that_difference(ssl):
    ref = np.random.default_rng(0).random((5, 20))
    ci = ssl.paired_ci(ref + 0.03, ref)
    assert ci["diff"] == pytest.approx(0.03) and ci["lo"] == pytest.approx(0.03) and ci["hi"] == pytest.approx(0.03)
    assert ci["significant"]


def test_paired_ci_pairs_by_seed_and_draw(ssl):
    rng = np.random.default_rng(1)
    ref = rng.random((5, 20))  # large spread between cells, shared by both rows
    row = ref + 0.01 + rng.normal(0, 0.002, ref.shape)
    ci = ssl.paired_ci(row, ref)
    assert ci["significant"] and 0.009 < ci["lo"] < ci["diff"] < ci["hi"] < 0.011
    unpaired = ssl.paired_ci(row, ref[::-1, ::-1])  # the same values in another order: pairing lost
    assert not unpaired["significant"]
    assert ssl.paired_ci(row, ref) == ci  # seeded: the same interval every time


def test_paired_ci_of_noise_contains_zero(ssl):
    rng = np.random.default_rng(2)
    ci = ssl.paired_ci(rng.normal(0, 1, (5, 20)), np.zeros((5, 20)))
    assert ci["lo"] < 0 < ci["hi"] and not ci["significant"]
    one_draw = ssl.paired_ci(np.array([[0.01], [0.02], [0.03]]), np.zeros((3, 1)))  # full-label probes: seeds only
    assert one_draw["lo"] >= 0.01 and one_draw["hi"] <= 0.03


def test_label_draws_are_fixed_stratified_and_distinct(ssl):
    labels = np.repeat(np.arange(10), 30)
    for n in ssl.FEW:
        draws = ssl.label_draws(labels, n)
        assert len(draws) == ssl.DRAWS
        for idx in draws:
            assert len(set(idx.tolist())) == 10 * n
            assert np.array_equal(np.bincount(labels[idx], minlength=10), np.full(10, n))
        assert all(np.array_equal(a, b) for a, b in zip(draws, ssl.label_draws(labels, n)))
        assert len({tuple(d.tolist()) for d in draws}) == ssl.DRAWS


def test_evaluate_scores_every_probe_on_the_validation_split(ssl):
    torch.manual_seed(0)
    scores = ssl.evaluate(ssl.Encoder(8).eval(), "val")
    assert set(scores) == set(ssl.METRICS)
    assert all(len(scores[f"few{n}"]) == ssl.DRAWS for n in ssl.FEW)
    assert len(scores["linear"]) == len(scores["knn"]) == 1
    values = np.concatenate([scores[m] for m in ssl.METRICS])
    assert ((values > 0.15) & (values <= 1)).all()  # chance is 0.1; random conv features are much better
    assert np.mean(scores["few1"]) < np.mean(scores["few10"]) < np.mean(scores["linear"]) + 0.02


def test_summary_pairs_rows_by_seed(ssl):
    def run(acc):
        return {"scores": {m: [acc] * (ssl.DRAWS if m.startswith("few") else 1) for m in ssl.METRICS}}

    result = {"rows": {"a": {}, "b": {}, "e": {}},
              "runs": {"a": {"0": run(0.8), "1": run(0.9)}, "b": {"0": run(0.82), "1": run(0.92)},
                       "e": {"0": run(0.85), "1": run(0.95)}}}
    ssl.summarise(result)
    e = result["rows"]["e"]
    assert e["few5"]["per_seed"] == [0.85, 0.95] and e["few5"]["mean"] == pytest.approx(0.9)
    assert e["vs"]["a"]["few5"]["diff"] == pytest.approx(0.05) and e["vs"]["a"]["few5"]["significant"]
    assert e["vs"]["b"]["linear"]["diff"] == pytest.approx(0.03)
    assert "a" not in result["rows"]["a"]["vs"]


# --- end to end -------------------------------------------------------------------

def test_real_and_random_rows_end_to_end(tmp_path):
    result, stdout = _run(tmp_path, "--rows", "ar", "--steps", "12", "--batch", "16", "--seeds", "2", "--jobs", "2",
                          "--draws", "4")
    assert set(result["rows"]) == {"a", "r"} and result["settings"]["split"] == "val"
    assert set(result["runs"]["a"]) == {"0", "1"}
    for row in result["rows"].values():
        for metric in ("few1", "few5", "few10", "linear", "knn"):
            assert len(row[metric]["per_seed"]) == 2 and all(0.15 < a <= 1 for a in row[metric]["per_seed"])
    assert result["runs"]["r"]["0"]["final_loss"] is None
    assert set(result["rows"]["r"]["vs"]["a"]) == set(("few1", "few5", "few10", "linear", "knn"))
    assert "| (a) | real digits" in stdout and "Paired difference vs (a)" in stdout
    # the same settings give the same numbers: seeded training, fixed draws, one thread per job (seed 0
    # alone in one job here, beside seed 1 and the r row in two jobs above)
    again, _ = _run(tmp_path / "again", "--rows", "a", "--steps", "12", "--batch", "16", "--seeds", "1",
                    "--jobs", "1", "--draws", "4")
    assert again["runs"]["a"]["0"]["scores"] == result["runs"]["a"]["0"]["scores"]


@pytest.mark.slow
def test_quick_experiment_runs_every_row(tmp_path):
    result, _ = _run(tmp_path, "--quick")
    assert list(result["rows"]) == list("abcdefghr")
    assert result["settings"]["steps"] == 12 and result["settings"]["draws"] == 3
    assert result["rows"]["e"]["name"].startswith("MI-chosen")
    assert set(result["class_kept"]) == {"mi", "genrep", "copgen", "learned"}
    assert all(0 <= k <= 1 for k in result["class_kept"].values())
    assert set(result["walkers"]["walkers"]) == {"all", "2_4", "4_6", "6_8"}
    assert all(0.15 < row["linear"]["mean"] <= 1 for row in result["rows"].values())


def test_compare_pairs_one_row_across_runs(ssl, tmp_path):
    def results(acc, kept):
        scores = {m: [acc] * (ssl.DRAWS if m.startswith("few") else 1) for m in ssl.METRICS}
        runs = {"e": {str(s): {"scores": {m: [v + 0.01 * s for v in vals] for m, vals in scores.items()}}
                      for s in range(3)}}
        return {"runs": runs, "class_kept": {"mi": kept}}

    paths = []
    for name, acc, kept in (("base", 0.8, 0.7), ("stricter", 0.78, 0.85)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(results(acc, kept)))
        paths.append(str(tmp_path / name / "results.json"))
    text = ssl.compare(paths, "e")
    assert "| base | 70.0% | 81.00 |" in text
    assert "| stricter | 85.0% | 79.00 (**-2.00 [-2.00, -2.00]**)" in text
    with pytest.raises(SystemExit, match="no row"):
        ssl.compare(paths, "a")
    ddpm = json.loads(Path(paths[1]).read_text())
    ddpm["settings"] = {"model": "digits-ddpm"}
    Path(paths[1]).write_text(json.dumps(ddpm))
    assert "| digits-ddpm stricter | 85.0% |" in ssl.compare(paths, "e")
    assert "Row (a)" not in ssl.compare(paths, "e")
    for path, acc in zip(paths, (0.9, 0.91)):  # with real-data runs: row (a) shows the runs' own difference
        r = json.loads(Path(path).read_text())
        r["runs"]["a"] = {s: {"scores": {m: [acc] * len(v) for m, v in run["scores"].items()}}
                          for s, run in r["runs"]["e"].items()}
        Path(path).write_text(json.dumps(r))
    text = ssl.compare(paths, "e")
    assert text.index("Row (e)") < text.index("Row (a), real digits") < text.index("| digits-ddpm stricter | - | 91.00 (**+1.00")
    assert ssl.compare(paths, "a").count("| digits-ddpm stricter |") == 1


def test_model_option_picks_the_generator_its_groups_and_its_folder(ssl):
    args = ssl.parse(["--split", "test", "--model", "digits-ddpm", "--rows", "abf"])
    assert args.out == "benchmarks/results/ssl_digits/digits-ddpm/test"
    assert args.learned_groups == ["init", "steps12_24", "steps24_36", "steps36_49"]
    plain = ssl.parse(["--split", "test"])
    assert plain.model == "digits" and plain.out == "benchmarks/results/ssl_digits/test"
    assert plain.learned_groups == ["2_4", "4_6", "6_8"]
    with pytest.raises(SystemExit):
        ssl.parse(["--model", "toy"])


@pytest.mark.slow  # 40-60 s: the DDPM decodes a whole block of 16 anchors at 50 steps
def test_ddpm_rows_end_to_end(tmp_path):
    result, stdout = _run(tmp_path, "--model", "digits-ddpm", "--rows", "be", "--anchors", "8", "--positives", "1",
                          "--steps", "3", "--batch", "4", "--seeds", "1", "--jobs", "1", "--draws", "2")
    assert result["model_id"].startswith("digits-ddpm") and result["settings"]["model"] == "digits-ddpm"
    assert "generated rows from `digits-ddpm`" in stdout
    assert result["policy_mi"]["groups"]["steps0_12"] == "fixed"  # the DDPM's own MI-chosen policy
    assert 0 <= result["class_kept"]["mi"] <= 1
