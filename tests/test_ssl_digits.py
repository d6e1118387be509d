"""benchmarks/ssl_digits.py: the SimCLR-on-digits experiment runs end to end and writes its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ssl_digits.py"


def _run(tmp_path, *args):
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--threads", "1", *args],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().startswith("SimCLR on digits")
    return result, done.stdout


def test_real_and_random_rows_give_probe_accuracies(tmp_path):
    result, stdout = _run(tmp_path, "--rows", "af", "--steps", "3", "--batch", "16", "--seeds", "2")
    assert set(result["rows"]) == {"a", "f"}
    for row in result["rows"].values():
        for metric in ("linear", "knn"):
            assert len(row[metric]["top1"]) == 2 and all(0.5 < a <= 1 for a in row[metric]["top1"])  # chance: 0.1
    assert result["rows"]["f"]["final_loss"] == [None, None]
    assert "| (a) | real digits" in stdout


@pytest.mark.slow
def test_quick_experiment_runs_every_row(tmp_path):
    result, _ = _run(tmp_path, "--quick")
    assert list(result["rows"]) == list("abcdefg")
    assert result["settings"]["steps"] == 20 and result["rows"]["d"]["name"].startswith("MI policy")
    assert all(0.5 < row["linear"]["mean"] <= 1 for row in result["rows"].values())
