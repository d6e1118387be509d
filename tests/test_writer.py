import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthviews.cli import main
from synthviews.errors import ConfigError
from synthviews.store.manifest import merge, read_manifest
from synthviews.store.tarshards import iter_tar_samples
from synthviews.store.verify import verify
from synthviews.store.writer import generate

SMALL = dict(model="toy", samples=60, views=2, shard_size=25, seed=3, batch_size=16, model_kwargs={"resolution": 16})


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ds"
    generate(out, **SMALL)
    return out


def test_layout_manifest_and_fields(reference):
    names = sorted(p.name for p in reference.iterdir())
    assert names == ["README.md", "preview.png", "synthviews.json", "train-000000.tar", "train-000001.tar",
                     "train-000002.tar"]
    manifest = read_manifest(reference)
    entry = manifest["splits"]["train"]
    assert entry["complete"] and entry["num_shards"] == 3
    assert [(r["first_index"], r["count"]) for r in entry["shards"]] == [(0, 25), (25, 25), (50, 10)]
    config = entry["config"]
    assert config["model"]["weights_sha256"] and config["model"]["model_id"].startswith("toy-")
    assert config["image"] == {"format": "jpg", "quality": 95, "shape": [3, 16, 16]}  # no encoder: the CPU one
    samples = list(iter_tar_samples(reference / "train-000001.tar"))
    key, fields = samples[0]
    assert key == "000000025" and sorted(fields) == ["json", "view0.jpg", "view1.jpg", "view2.jpg"]
    meta = json.loads(fields["json"])
    assert meta["index"] == 25 and meta["seed"] == 3 and meta["views"] == 2
    assert set(meta["delta"]) == {"shape", "pose", "color", "texture", "inert"}
    assert meta["delta"]["shape"] == [0.0, 0.0] and all(d > 0 for d in meta["delta"]["pose"])
    assert Image.open(io.BytesIO(fields["view0.jpg"])).size == (16, 16)
    card = (reference / "README.md").read_text()
    for text in ("license: mit", "size_categories", "machine-generated", "path: train-*.tar", "preview.png"):
        assert text in card
    assert verify(reference) == []


def test_same_command_same_bytes_whatever_batch_size_and_workers(tmp_path, reference):
    out = tmp_path / "again"
    generate(out, **{**SMALL, "batch_size": 7}, workers=3)
    assert _files(out) == _files(reference)


def test_independent_jobs_and_merge_give_the_same_dataset(tmp_path, reference):
    out = tmp_path / "jobs"
    for rank in (1, 0):
        generate(out, **SMALL, rank=rank, world_size=2)
    assert read_manifest(out) is None  # nothing merged yet
    half = tmp_path / "half"
    generate(half, **SMALL, rank=0, world_size=2)
    with pytest.raises(ConfigError, match=r"missing 1 of 3 shards \(train-000001.tar\)"):
        merge(half, "train")
    assert main(["merge", str(out)]) == 0
    assert _files(out) == _files(reference)


def test_a_single_process_run_finishes_what_independent_jobs_started(tmp_path, reference):
    out = tmp_path / "mixed"
    generate(out, **SMALL, rank=1, world_size=2)
    generate(out, **SMALL)  # does shards 0 and 2, folds rank 1's progress file into the manifest
    assert _files(out) == _files(reference)


def test_png_webp_and_latents(tmp_path):
    for fmt in ("png", "webp"):
        out = tmp_path / fmt
        generate(out, **{**SMALL, "samples": 10}, format=fmt, save_latents=True)
        assert verify(out) == []
        _, fields = next(iter_tar_samples(out / "train-000000.tar"))
        assert f"view2.{fmt}" in fields
        latents = np.load(io.BytesIO(fields["latents.npy"]), allow_pickle=False)
        assert latents.shape == (3, 20) and latents.dtype == np.float32


def test_a_different_configuration_is_refused_and_the_same_one_resumes(tmp_path, reference):
    out = tmp_path / "ds"
    generate(out, **SMALL)
    before = _files(out)
    with pytest.raises(ConfigError, match="different configuration.*seed is 3 there but 4 now"):
        generate(out, **{**SMALL, "seed": 4})
    generate(out, **SMALL, resume=True)  # complete already: nothing changes
    assert _files(out) == before


def test_verify_catches_truncation_flipped_bytes_and_missing_shards(tmp_path, reference, capsys):
    import shutil

    out = tmp_path / "broken"
    shutil.copytree(reference, out)
    assert main(["verify", str(out)]) == 0
    data = (out / "train-000000.tar").read_bytes()
    (out / "train-000000.tar").write_bytes(data[:len(data) // 2])
    flipped = bytearray((out / "train-000001.tar").read_bytes())
    flipped[3000] ^= 0xFF
    (out / "train-000001.tar").write_bytes(bytes(flipped))
    (out / "train-000002.tar").unlink()
    problems = verify(out)
    text = "\n".join(problems)
    assert "train-000000.tar" in text and "truncated" in text
    assert "train-000001.tar: sha256 does not match" in text
    assert "train-000002.tar: missing" in text
    assert main(["verify", str(out)]) == 1
    assert capsys.readouterr().out.strip().endswith(f"{len(problems)} problem(s)")


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "synthviews", *args], capture_output=True, text=True, cwd=cwd)


GEN = ["generate", "--samples", "300", "--views", "2", "--shard-size", "20", "--batch-size", "5", "--seed", "1",
       "--model-opt", "resolution=48", "--no-progress"]


def test_kill_9_then_rerun_is_byte_identical_to_an_uninterrupted_run(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "synthviews", *GEN, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        manifest = read_manifest(out) if (out / "synthviews.json").exists() else None
        if manifest and len(manifest["splits"]["train"]["shards"]) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    manifest = read_manifest(out)
    assert not manifest["splits"]["train"]["complete"], "the run finished before it could be killed"
    # No truncated shard is ever visible: every visible shard is whole and listed.
    listed = {r["name"] for r in manifest["splits"]["train"]["shards"]}
    visible = {p.name for p in out.glob("train-*.tar")}
    assert visible - listed <= {f"train-{len(listed):06d}.tar"}  # renamed, manifest not yet updated
    assert all("incomplete" in p for p in verify(out))

    (out / ".synthviews.json.12345.abcd1234.tmp").write_text("{")  # as if killed inside an atomic write
    assert _cli(*GEN, "--out", str(out), "--resume").returncode == 0
    assert _cli(*GEN, "--out", str(ref)).returncode == 0
    assert _files(out) == _files(ref)
    assert verify(out) == []


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--samples", "90", "--shard-size", "20", "--views", "1", "--model-opt", "resolution=16", "--no-progress",
            "--device", "cpu"]
    assert _cli("generate", *args, "--out", str(one)).returncode == 0
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "synthviews", "generate", *args, "--out", str(two)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _files(one) == _files(two)


@pytest.mark.parametrize("args, message", [
    (["--out", "afile"], "exists and is not a folder"),
    (["--policy", "bad.yaml"], "unknown latent group"),
    (["--model", "nope"], "unknown model 'nope'"),
    (["--views", "0"], "views"),
    (["--out", "foreign", "--resume"], "nothing to resume"),
    (["--out", "foreign"], "not empty and holds no synthviews dataset"),
    (["--quality", "0"], "quality"),
    (["--format", "png", "--quality", "90"], "does not apply to png"),
    (["--shard-size", "0"], "shard size"),
    (["--split", "Train.1"], "split name"),
    (["--rank", "2", "--world-size", "2"], "--rank must be in"),
    (["--rank", "1"], "both --rank and --world-size"),
])
def test_bad_inputs_exit_2_with_one_line_and_leave_nothing(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "bad.yaml").write_text("kind: gaussian\ngroups:\n  nope: 1\n")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert main(["generate", "--samples", "10", "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_the_dataset_loads_with_webdataset_and_hugging_face(reference, tmp_path, monkeypatch):
    import webdataset as wds

    samples = list(wds.WebDataset(str(reference / "train-{000000..000002}.tar"), shardshuffle=False).decode("torchrgb"))
    assert len(samples) == 60 and samples[0]["view2.jpg"].shape == (3, 16, 16)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from datasets import load_dataset

    cache = str(tmp_path / "hf-cache")
    for ds in (load_dataset(str(reference), split="train", cache_dir=cache),
               load_dataset("webdataset", data_files={"train": str(reference / "train-*.tar")}, split="train",
                            cache_dir=cache)):
        assert ds.num_rows == 60
        assert {"view0.jpg", "view1.jpg", "view2.jpg", "json"} <= set(ds.column_names)
        assert ds[0]["json"]["index"] == 0
