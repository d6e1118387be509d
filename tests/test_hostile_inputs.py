"""Hostile inputs: bounded in time and memory, and one line from the CLI (issue 12, part 3).

The corpus (CLI values, policy files, walker files, model files and configs, dataset
folders) runs in ONE subprocess through ``synthviews.cli.main(argv)``: a case gets
5 s (SIGALRM; a hard faulthandler exit catches a hang in C code), RLIMIT_AS of its
starting size + 1 GiB (so a 2.5 GB allocation fails instead of succeeding), and its
peak RSS is measured (VmHWM, reset per case through /proc/self/clear_refs). Every case
must exit 2 with one line on stderr and no traceback. Run by hand::

    python tests/test_hostile_inputs.py OUT.json   # prints the summary, writes per-case results
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import pickle
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
import traceback
import zipfile
from pathlib import Path

import pytest

CASE_SECONDS = 5
CASE_BYTES = 1 << 30
MAX_STDERR = 400  # "synthviews VERB: error: " + a message capped at 300 characters (+ a path or two)
DELETE = object()

# verify may also answer a damaged shard with exit 1 and the problem listed on stdout.
MAY_LIST_PROBLEMS = ("shard-json-",)


# --- building the corpus ---------------------------------------------------------------------

def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def _sparse(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _torch_save(path: Path, obj) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def _deflated(src: Path, dst: Path) -> Path:
    """The torch zip ``src`` re-packed with compressed records (what a zip bomb needs)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    return dst


def _alias_bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]")
    return "kind: gaussian\n" + "\n".join(lines) + "\n"


def _set(d: dict, path: tuple, value) -> dict:
    d = copy.deepcopy(d)
    node = d
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return d


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def build_corpus(root: Path) -> list[tuple[str, list[str]]]:
    """(name, argv) of every hostile case; files are made under ``root``."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    import synthviews as sv

    cases: list[tuple[str, list[str]]] = []
    png = str(root / "out.png")
    gen_out = root / "gen"

    # -- CLI values --------------------------------------------------------------------------
    base_gen = ["generate", "--model", "toy", "--model-opt", "resolution=16", "--no-progress", "--device", "cpu"]
    for name, extra in [
        ("samples-1e12", ["--samples", str(10**12)]), ("samples-0", ["--samples", "0"]),
        ("samples-neg", ["--samples", "-1"]), ("samples-over", ["--samples", str(10**9 + 1)]),
        ("samples-text", ["--samples", "many"]), ("samples-float", ["--samples", "1e3"]),
        ("too-many-shards", ["--samples", str(10**9), "--shard-size", "1"]),
        ("views-1e9", ["--views", str(10**9)]), ("views-0", ["--views", "0"]), ("views-65", ["--views", "65"]),
        ("seed-2e70", ["--seed", str(2**70)]), ("seed-2e63", ["--seed", str(2**63)]),
        ("seed-2e64", ["--seed", str(2**64)]), ("seed-neg", ["--seed", "-1"]),
        ("shard-size-0", ["--shard-size", "0"]), ("shard-size-1e7", ["--shard-size", str(10**7)]),
        ("batch-0", ["--batch-size", "0"]), ("batch-1e9", ["--batch-size", str(10**9)]),
        ("block-0", ["--decode-block", "0"]), ("block-1e6", ["--decode-block", str(10**6)]),
        ("workers-0", ["--workers", "0"]), ("workers-1e6", ["--workers", str(10**6)]),
        ("quality-0", ["--quality", "0"]), ("quality-101", ["--quality", "101"]),
        ("quality-huge", ["--quality", str(10**20)]), ("quality-png", ["--format", "png", "--quality", "5"]),
        ("format-gif", ["--format", "gif"]), ("split-dots", ["--split", "../x"]), ("split-upper", ["--split", "A"]),
        ("rank-over", ["--rank", "5", "--world-size", "2"]), ("rank-alone", ["--rank", "0"]),
        ("world-1e9", ["--rank", "0", "--world-size", str(10**9)]), ("amp-fp64", ["--amp", "fp64"]),
        ("device-bogus", ["--device", "tpu9"]), ("model-opt-bad", ["--model-opt", "noequals"]),
        ("model-opt-alias", ["--model-opt", "resolution=&a [*a, *a]"]),
        ("model-opt-res-huge", ["--model-opt", "resolution=1000000000"]),
        ("model-opt-unknown", ["--model-opt", "colour=3"]),
        ("model-opt-long", ["--model-opt", "resolution=" + "9" * 20000]),
    ]:
        cases.append((f"generate {name}", base_gen + ["--out", str(gen_out / name)] + extra))
    _write(root / "file-not-dir", "x")
    cases.append(("generate out-is-file", base_gen + ["--samples", "2", "--out", str(root / "file-not-dir")]))
    cases.append(("generate model-unknown", ["generate", "--model", "nope", "--out", str(gen_out / "m")]))

    base_prev = ["preview", "--model", "toy", "--model-opt", "resolution=16", "--device", "cpu", "--out", png]
    for name, extra in [
        ("samples-1e7", ["--samples", str(10**7)]), ("samples-0", ["--samples", "0"]),
        ("samples-257", ["--samples", "257"]), ("views-1e9", ["--views", str(10**9)]),
        ("views-65", ["--views", "65"]), ("seed-2e70", ["--seed", str(2**70)]), ("seed-2e63", ["--seed", str(2**63)]),
        ("start-neg", ["--start", "-1"]), ("start-2e70", ["--start", str(2**70)]),
        ("start-2e63", ["--start", str(2**63)]), ("amp-fp16-cpu", ["--amp", "fp16"]),
    ]:
        cases.append((f"preview {name}", base_prev + extra))
    cases.append(("preview out-jpg", base_prev[:-1] + [str(root / "x.jpg")]))
    (root / "a-folder.png").mkdir()
    cases.append(("preview out-dir", base_prev[:-1] + [str(root / "a-folder.png")]))
    cases.append(("info model-unknown", ["info", "--model", "nope"]))
    cases.append(("info stylegan2-no-path", ["info", "--model", "stylegan2"]))
    cases.append(("verb-unknown", ["frobnicate"]))

    # -- policy files ---------------------------------------------------------------------------
    pol = root / "policies"
    policy_cases: dict[str, Path] = {}

    def policy(name, text, suffix=".yaml"):
        policy_cases[name] = _write(pol / f"{name}{suffix}", text)

    policy("alias-bomb", _alias_bomb())
    policy("alias-simple", "kind: gaussian\ndefault: &s {std: 1}\ngroups: {color: *s}\n")
    policy("anchor-only", "kind: gaussian\ndefault: &s {std: 1}\n")
    policy("merge-key", "base: &b {std: 1}\nkind: gaussian\ngroups: {color: {<<: *b}}\n")
    policy("dup-top", "kind: gaussian\nkind: random_subset\n")
    policy("dup-nested", "kind: gaussian\ngroups:\n  color: 1\n  color: 2\n")
    policy("dup-json", '{"kind": "gaussian", "kind": "gaussian"}', ".json")
    policy("big-file", "kind: gaussian\n" + "#" * (2 << 20) + "\n")
    policy("not-utf8", b"kind: gaussian\n\xff\xfe\n")
    policy("deep-yaml", "kind: gaussian\ngroups: " + _nested(50_000) + "\n")
    policy("deep-json", '{"kind": "gaussian", "groups": ' + _nested(100_000) + "}", ".json")
    policy("deep-yaml-100", "kind: gaussian\nx: " + _nested(100) + "\n")
    policy("json-nan", '{"kind": "gaussian", "default": {"std": NaN}}', ".json")
    policy("json-inf", '{"kind": "gaussian", "default": {"std": Infinity}}', ".json")
    policy("json-1e400", '{"kind": "gaussian", "default": {"std": 1e400}}', ".json")
    policy("json-bad", '{"kind": "gaussian",', ".json")
    policy("yaml-bad", "kind: [gaussian\n")
    policy("yaml-tab", "kind:\tgaussian\n\t- x\n")
    policy("std-1e300", "kind: gaussian\ndefault: {std: 1e300}\n")
    policy("std-1e300-short", "kind: gaussian\ndefault: 1.0e+300\n")
    policy("std-inf", "kind: gaussian\ndefault: {std: .inf}\n")
    policy("std-nan", "kind: gaussian\ndefault: {std: .nan}\n")
    policy("std-neg", "kind: gaussian\ndefault: {std: -1}\n")
    policy("std-text", "kind: gaussian\ndefault: {std: '1'}\n")
    policy("std-bool", "kind: gaussian\ndefault: {std: true}\n")
    policy("std-list", "kind: gaussian\ndefault: {std: [1]}\n")
    policy("std-bigint", f"kind: gaussian\ndefault: {{std: {10**400}}}\n")
    policy("std-missing", "kind: gaussian\ndefault: {mean: 1}\n")
    policy("mean-huge", "kind: gaussian\ndefault: {std: 1, mean: 1e5}\n")
    policy("trunc-0", "kind: gaussian\ndefault: {std: 1, truncation: 0}\n")
    policy("trunc-neg", "kind: gaussian\ndefault: {std: 1, truncation: -2}\n")
    policy("trunc-huge", "kind: gaussian\ndefault: {std: 1, truncation: 1e300}\n")
    policy("trunc-inf", "kind: gaussian\ndefault: {std: 1, truncation: .inf}\n")
    policy("trunc-text", "kind: gaussian\ndefault: {std: 1, truncation: wide}\n")
    policy("noise-key", "kind: gaussian\ndefault: {std: 1, sigma: 2}\n")
    policy("noise-text", "kind: gaussian\ndefault: loud\n")
    policy("kind-unknown", "kind: banana\n")
    policy("kind-missing", "groups: {color: 1}\n")
    policy("kind-list", "kind: [gaussian]\n")
    policy("kind-huge", "kind: " + "x" * 500_000 + "\n")
    policy("top-list", "- kind: gaussian\n")
    policy("top-string", "gaussian\n")
    policy("top-null", "")
    policy("top-number", "3\n")
    policy("groups-list", "kind: gaussian\ngroups: [color]\n")
    policy("group-unknown", "kind: gaussian\ngroups: {colour: 1}\n")
    policy("group-name-huge", "kind: gaussian\ngroups: {" + "g" * 400_000 + ": 1}\n")
    policy("group-many", "kind: gaussian\ngroups: {" + ", ".join(f"g{i}: 1" for i in range(20_000)) + "}\n")
    policy("key-unknown", "kind: gaussian\nfoo: 1\n")
    policy("key-huge", "kind: gaussian\n" + "k" * 300_000 + ": 1\n")
    policy("python-tag", "kind: !!python/object/apply:os.system ['true']\n")
    policy("binary-tag", "kind: !!binary aGVsbG8=\n")
    policy("set-key", "kind: gaussian\n? [a, b]\n: 1\n")
    policy("rs-p-2", "kind: random_subset\np: 2\nstd: [0.1, 1]\n")
    policy("rs-p-nan", "kind: random_subset\np: .nan\nstd: [0.1, 1]\n")
    policy("rs-p-text", "kind: random_subset\np: half\nstd: [0.1, 1]\n")
    policy("rs-std-one", "kind: random_subset\np: 0.5\nstd: [1]\n")
    policy("rs-std-reversed", "kind: random_subset\np: 0.5\nstd: [2, 1]\n")
    policy("rs-std-huge", "kind: random_subset\np: 0.5\nstd: [0, 1e300]\n")
    policy("rs-std-long", "kind: random_subset\np: 0.5\nstd: [" + ", ".join(["1"] * 100_000) + "]\n")
    policy("rs-groups-str", "kind: random_subset\np: 0.5\nstd: [0, 1]\ngroups: color\n")
    policy("rs-groups-unknown", "kind: random_subset\np: 0.5\nstd: [0, 1]\ngroups: [colour]\n")
    policy("rs-missing-p", "kind: random_subset\nstd: [0, 1]\n")
    policy("rs-trunc-text", "kind: random_subset\np: 0.5\nstd: [0, 1]\ntruncation: x\n")
    _fifo(pol / "fifo.yaml")
    policy_cases["fifo"] = pol / "fifo.yaml"
    (pol / "dir.yaml").mkdir()
    policy_cases["directory"] = pol / "dir.yaml"
    policy_cases["missing"] = pol / "missing.yaml"
    policy_cases["dev-zero"] = Path("/dev/zero")
    policy_cases["sparse-huge"] = _sparse(pol / "sparse.yaml", 5 << 30)

    # -- walker files (through walker policies) -------------------------------------------------
    wk = root / "walkers"
    walker_files: dict[str, Path] = {}
    good = {"format": "synthviews-walker", "version": 1, "latent_dim": 20, "hidden": 4, "groups": [["color", 6]],
            "weights": {"net.0.weight": torch.zeros(4, 20), "net.0.bias": torch.zeros(4),
                        "net.2.weight": torch.zeros(6, 4), "net.2.bias": torch.zeros(6)}}

    def walker(name, obj):
        walker_files[name] = _torch_save(wk / f"{name}.pt", obj)

    walker("hidden-1e9", {**good, "hidden": 10**9})
    walker("latent-1e9", {**good, "latent_dim": 10**9})
    walker("latent-60000", {**good, "latent_dim": 60_000})
    walker("group-size-1e9", {**good, "groups": [["color", 10**9]]})
    walker("groups-dict", {**good, "groups": {"color": 6}})
    walker("groups-int-name", {**good, "groups": [[1, 6]]})
    walker("groups-triple", {**good, "groups": [["color", 6, 1]]})
    walker("groups-many", {**good, "groups": [[f"g{i}", 1] for i in range(500)]})
    walker("groups-dup", {**good, "groups": [["color", 3], ["color", 3]]})
    walker("hidden-neg", {**good, "hidden": -1})
    walker("hidden-float", {**good, "hidden": 4.5})
    walker("hidden-bool", {**good, "hidden": True})
    walker("hidden-missing", {k: v for k, v in good.items() if k != "hidden"})
    walker("weights-missing", {k: v for k, v in good.items() if k != "weights"})
    walker("weights-list", {**good, "weights": [1, 2]})
    walker("weights-shape", {**good, "weights": {**good["weights"], "net.0.weight": torch.zeros(5, 20)}})
    walker("weights-int", {**good, "weights": {**good["weights"], "net.0.bias": torch.zeros(4, dtype=torch.int64)}})
    walker("weights-1e30", {**good, "weights": {**good["weights"], "net.2.weight": torch.full((6, 4), 1e30)}})
    walker("weights-nan", {**good, "weights": {**good["weights"], "net.2.bias": torch.full((6,), float("nan"))}})
    walker("weights-extra", {**good, "weights": {**good["weights"], "x": torch.zeros(1)}})
    walker("weights-expanded", {**good, "hidden": 100_000, "weights": {
        "net.0.weight": torch.zeros(1).expand(100_000, 20), "net.0.bias": torch.zeros(1).expand(100_000),
        "net.2.weight": torch.zeros(1).expand(6, 100_000), "net.2.bias": torch.zeros(6)}})
    walker("expanded-in-bounds", {**good, "hidden": 4096, "weights": {
        "net.0.weight": torch.zeros(1).expand(4096, 20), "net.0.bias": torch.zeros(1).expand(4096),
        "net.2.weight": torch.zeros(1).expand(6, 4096), "net.2.bias": torch.zeros(6)}})
    walker("format-wrong", {**good, "format": "other"})
    walker("a-list", [1, 2, 3])
    walker("module", torch.nn.Linear(2, 2))
    walker_files["truncated"] = _write(wk / "truncated.pt", walker_files["hidden-1e9"].read_bytes()[:300])
    walker_files["random-bytes"] = _write(wk / "random.pt", np.random.default_rng(0).bytes(2000))
    walker_files["empty"] = _write(wk / "empty.pt", b"")
    walker_files["plain-pickle"] = _write(wk / "plain.pt", pickle.dumps({"format": "synthviews-walker"}))
    walker_files["deflated"] = _deflated(walker_files["hidden-1e9"], wk / "deflated.pt")
    walker_files["fifo"] = _fifo(wk / "fifo.pt")
    (wk / "dir.pt").mkdir()
    walker_files["directory"] = wk / "dir.pt"
    walker_files["sparse-huge"] = _sparse(wk / "sparse.pt", 300 << 20)
    walker_files["dev-zero"] = Path("/dev/zero")
    for name, path in walker_files.items():
        policy(f"walker-{name}", json.dumps({"kind": "walker", "walkers": [str(path)]}), ".json")
    policy("walker-sha-int", json.dumps({"kind": "walker", "walkers": [{"path": "x.pt", "sha256": 5}]}), ".json")
    policy("walker-scale-huge", json.dumps({"kind": "walker", "walkers": ["x.pt"], "scale": 1e300}), ".json")
    policy("walker-scale-rev", json.dumps({"kind": "walker", "walkers": ["x.pt"], "scale": [2, 1]}), ".json")
    policy("walker-scale-bigint", '{"kind": "walker", "walkers": ["x.pt"], "scale": ' + "9" * 500 + "}", ".json")
    policy("walker-none", json.dumps({"kind": "walker", "walkers": []}), ".json")
    policy("walker-path-int", json.dumps({"kind": "walker", "walkers": [5]}), ".json")
    policy("walker-path-long", json.dumps({"kind": "walker", "walkers": ["p" * 100_000]}), ".json")
    policy("walker-path-nul", json.dumps({"kind": "walker", "walkers": ["a\u0000b.pt"]}), ".json")

    for name, path in policy_cases.items():
        cases.append((f"policy {name}", base_prev + ["--samples", "1", "--views", "1", "--policy", str(path)]))
    cases.append(("policy generate alias-bomb", base_gen + ["--out", str(gen_out / "pa"), "--samples", "2",
                                                            "--policy", str(policy_cases["alias-bomb"])]))
    cases.append(("policy generate std-1e300", base_gen + ["--out", str(gen_out / "pb"), "--samples", "2",
                                                           "--policy", str(policy_cases["std-1e300"])]))

    # -- StyleGAN2 files ----------------------------------------------------------------------------
    sg = root / "stylegan2"
    cfg = {"z_dim": 8, "w_dim": 8, "img_resolution": 8, "img_channels": 1,
           "mapping_kwargs": {"num_layers": 1}, "synthesis_kwargs": {"channel_base": 64, "channel_max": 8}}
    tiny = {"mapping.w_avg": torch.zeros(8)}
    sg_files: dict[str, Path] = {}

    def st(name, config=None, tensors=None, meta=None):
        path = sg / f"{name}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {} if config is None else {"stylegan2_config": config if isinstance(config, str) else json.dumps(config)}
        metadata.update(meta or {})
        save_file(tensors or tiny, str(path), metadata=metadata)
        sg_files[name] = path

    st("z-60000", {**cfg, "z_dim": 60_000})
    st("w-1e9", {**cfg, "w_dim": 10**9})
    st("res-2e20", {**cfg, "img_resolution": 2**20})
    st("res-not-pow2", {**cfg, "img_resolution": 100})
    st("channels-1e6", {**cfg, "img_channels": 10**6})
    st("chmax-1e6", {**cfg, "synthesis_kwargs": {"channel_base": 2**30, "channel_max": 10**6}})
    st("params-over", {**cfg, "z_dim": 4096, "w_dim": 4096, "img_resolution": 4096,
                       "synthesis_kwargs": {"channel_base": 2**20, "channel_max": 4096}})
    st("layers-1e6", {**cfg, "mapping_kwargs": {"num_layers": 10**6}})
    st("features-1e9", {**cfg, "mapping_kwargs": {"layer_features": 10**9}})
    st("fp16-1e9", {**cfg, "synthesis_kwargs": {"num_fp16_res": 10**9}})
    st("clamp-inf", '{"z_dim": 8, "w_dim": 8, "img_resolution": 8, "synthesis_kwargs": {"conv_clamp": Infinity}}')
    st("z-nan", '{"z_dim": NaN, "w_dim": 8, "img_resolution": 8}')
    st("z-float", {**cfg, "z_dim": 8.5})
    st("z-text", {**cfg, "z_dim": "8"})
    st("z-bool", {**cfg, "z_dim": True})
    st("z-1e18", '{"z_dim": 1e18, "w_dim": 8, "img_resolution": 8}')
    st("config-list", [1, 2])
    st("config-string", "\"stylegan2\"")
    st("config-bad-json", "{\"z_dim\": 8,")
    st("config-deep", _nested(100_000))
    st("config-deep-100", '{"z_dim": 8, "w_dim": 8, "img_resolution": 8, "x": ' + _nested(100) + "}")
    st("config-dup", '{"z_dim": 8, "z_dim": 600000, "w_dim": 8, "img_resolution": 8}')
    st("config-missing", {"w_dim": 8, "img_resolution": 8})
    st("config-unknown", {**cfg, "foo": 1})
    st("mapping-list", {**cfg, "mapping_kwargs": [1]})
    st("lrmul-huge", {**cfg, "mapping_kwargs": {"lr_multiplier": 1e300}})
    st("constructor-kwargs-list", {"constructor_kwargs": [1]})
    st("policy-bad-json", cfg, meta={"synthviews_policy": "{"})
    st("policy-list", cfg, meta={"synthviews_policy": "[1]"})
    st("license-huge", cfg, meta={"synthviews_license": "x" * 100_000})
    st("no-config")
    st("wrong-tensors", cfg, tensors={"mapping.w_avg": torch.zeros(9)})
    sg_files["header-huge"] = _write(sg / "header.safetensors", struct.pack("<Q", 2**62) + b"{}")
    sg_files["header-garbage"] = _write(sg / "garbage.safetensors", struct.pack("<Q", 10) + b"not json!!")
    sg_files["empty-st"] = _write(sg / "empty.safetensors", b"")
    sg_files["fifo-st"] = _fifo(sg / "fifo.safetensors")
    sg_files["sparse-st"] = _sparse(sg / "sparse.safetensors", 9 << 30)
    (sg / "dir.safetensors").mkdir()
    sg_files["dir-st"] = sg / "dir.safetensors"
    # .pt state dicts with a sibling config
    sg_files["pt-expanded"] = _torch_save(sg / "expanded.pt", {"mapping.w_avg": torch.zeros(1).expand(10**9)})
    _write(sg / "expanded.json", json.dumps(cfg))
    sg_files["pt-module"] = _torch_save(sg / "module.pt", torch.nn.Linear(2, 2))
    sg_files["pt-list"] = _torch_save(sg / "list.pt", [torch.zeros(1)])
    sg_files["pt-nontensor"] = _torch_save(sg / "nontensor.pt", {"a": 1})
    sg_files["pt-truncated"] = _write(sg / "truncated.pt", sg_files["pt-module"].read_bytes()[:200])
    sg_files["pt-random"] = _write(sg / "random.pt", np.random.default_rng(1).bytes(4000))
    sg_files["pt-deflated"] = _deflated(sg_files["pt-list"], sg / "deflated.pt")
    sg_files["pt-fifo"] = _fifo(sg / "fifo.pt")
    sg_files["pt-sparse"] = _sparse(sg / "sparse.pt", 9 << 30)
    sg_files["pt-nan"] = _torch_save(sg / "nan.pt", {"mapping.w_avg": torch.full((8,), float("nan"))})
    _write(sg / "nan.json", json.dumps(cfg))
    for name, text in [("cfg-z-60000", json.dumps({**cfg, "z_dim": 60_000})), ("cfg-bomb", _alias_bomb()),
                       ("cfg-dup", "z_dim: 8\nz_dim: 9\nw_dim: 8\nimg_resolution: 8\n"),
                       ("cfg-nan", '{"z_dim": NaN}'), ("cfg-big", "#" * (2 << 20)),
                       ("cfg-deep", _nested(100_000)), ("cfg-list", "[1, 2]")]:
        suffix = ".yaml" if name in ("cfg-bomb", "cfg-dup", "cfg-big") else ".json"
        path = sg / name / f"weights{suffix}"
        _write(path, text)
        sg_files[name] = _torch_save(sg / name / "weights.pt", {"mapping.w_avg": torch.zeros(8)})
    # network pickles (.pkl): read by the restricted unpickler
    sg_files["pkl-code"] = _write(sg / "code.pkl", b"cos\nsystem\n(S'true'\ntR.")
    sg_files["pkl-random"] = _write(sg / "random.pkl", np.random.default_rng(2).bytes(3000))
    sg_files["pkl-dict"] = _write(sg / "dict.pkl", pickle.dumps({"D": 1}))
    sg_files["pkl-gema-int"] = _write(sg / "gema.pkl", pickle.dumps({"G_ema": 1}))
    sg_files["pkl-deep"] = _write(sg / "deep.pkl", b"\x80\x02" + b"(" * 100_000 + b"t" * 100_000 + b".")
    sg_files["pkl-empty"] = _write(sg / "empty.pkl", b"")
    sg_files["pkl-fifo"] = _fifo(sg / "fifo.pkl")
    sg_files["pkl-sparse"] = _sparse(sg / "sparse.pkl", 9 << 30)
    sg_files["unknown-suffix"] = _write(sg / "weights.bin", b"x")
    for name, path in sg_files.items():
        cases.append((f"stylegan2 {name}", ["info", "--model", "stylegan2", "--path", str(path)]))
    cases.append(("stylegan2 config-opt-z-60000", ["info", "--model", "stylegan2", "--path", str(sg_files["no-config"]),
                                                   "--model-opt", "config={z_dim: 60000, w_dim: 8, img_resolution: 8}"]))
    cases.append(("stylegan2 config-opt-file-bomb", ["info", "--model", "stylegan2", "--path",
                                                     str(sg_files["no-config"]), "--model-opt",
                                                     f"config={sg / 'cfg-bomb' / 'weights.yaml'}"]))

    # -- BigBiGAN files -----------------------------------------------------------------------------
    bg = root / "bigbigan"
    bg_files: dict[str, Path] = {}
    bg_files["ch-1e6"] = _torch_save(bg / "ch.pth", {"output_layer.2.weight": torch.zeros(1).expand(3, 10**6, 3, 3)})
    bg_files["ch-132"] = _torch_save(bg / "ch132.pth", {"output_layer.2.weight": torch.zeros(3, 132, 3, 3)})
    bg_files["dimz-huge"] = _torch_save(bg / "dimz.pth", {"linear.weight": torch.zeros(1).expand(16, 10**7)})
    bg_files["classes-1e8"] = _torch_save(bg / "classes.pth", {"shared.weight": torch.zeros(1).expand(10**8, 128)})
    bg_files["classes-dense"] = _torch_save(bg / "classes2.pth", {"shared.weight": torch.zeros(20_000, 2)})
    bg_files["nontensor"] = _torch_save(bg / "nontensor.pth", {"a": 1})
    bg_files["nested"] = _torch_save(bg / "nested.pth", {"state_dict": {"a": torch.zeros(1)}})
    bg_files["module"] = _torch_save(bg / "module.pth", torch.nn.Linear(2, 2))
    bg_files["a-list"] = _torch_save(bg / "list.pth", [1])
    bg_files["truncated"] = _write(bg / "truncated.pth", bg_files["ch-1e6"].read_bytes()[:100])
    bg_files["random"] = _write(bg / "random.pth", np.random.default_rng(3).bytes(5000))
    bg_files["empty"] = _write(bg / "empty.pth", b"")
    bg_files["deflated"] = _deflated(bg_files["ch-1e6"], bg / "deflated.pth")
    bg_files["fifo"] = _fifo(bg / "fifo.pth")
    bg_files["sparse"] = _sparse(bg / "sparse.pth", 9 << 30)
    (bg / "dir.pth").mkdir()
    bg_files["directory"] = bg / "dir.pth"
    bg_files["dev-zero"] = Path("/dev/zero")
    bg_files["st-header-huge"] = _write(bg / "header.safetensors", struct.pack("<Q", 2**62) + b"{}")
    for name, path in bg_files.items():
        cases.append((f"bigbigan {name}", ["info", "--model", "bigbigan", "--path", str(path)]))
    for name, opt in [("ch-1e6", "ch=1000000"), ("ch-0", "ch=0"), ("ch-text", "ch=wide"),
                      ("dimz-1e9", "config={dim_z: 1200000000}"), ("classes-1e9", "config={n_classes: 1000000000}"),
                      ("shared-1e9", "config={shared_dim: 1000000000}"), ("class-neg", "config={class_index: -1}"),
                      ("config-list", "config=[1]"), ("seed-huge", f"seed={2**70}")]:
        cases.append((f"bigbigan opt-{name}", ["info", "--model", "bigbigan", "--model-opt", "random_weights=true",
                                               "--model-opt", opt]))

    # -- dataset folders ---------------------------------------------------------------------------
    ds = root / "datasets"
    base = ds / "base"
    from synthviews.store.writer import generate

    generate(base, sv.load_model("toy", resolution=16), samples=4, views=1, shard_size=2, format="png",
                device="cpu")
    manifest = json.loads((base / "synthviews.json").read_text())
    entry = manifest["splits"]["train"]
    c = ("splits", "train", "config")
    r0 = ("splits", "train", "shards", 0)
    mutations = {
        "samples-1e18": _set(manifest, c + ("samples",), 1e18),
        "samples-int-1e18": _set(manifest, c + ("samples",), 10**18),
        "samples-text": _set(manifest, c + ("samples",), "4"),
        "samples-neg": _set(manifest, c + ("samples",), -4),
        "samples-null": _set(manifest, c + ("samples",), None),
        "samples-list": _set(manifest, c + ("samples",), [4]),
        "samples-missing": _set(manifest, c + ("samples",), DELETE),
        "shard-size-0": _set(manifest, c + ("shard_size",), 0),
        "shard-size-1-many": _set(_set(manifest, c + ("shard_size",), 1), c + ("samples",), 10**9),
        "views-1e9": _set(manifest, c + ("views",), 10**9),
        "views-missing": _set(manifest, c + ("views",), DELETE),
        "seed-2e70": _set(manifest, c + ("seed",), 2**70),
        "image-missing": _set(manifest, c + ("image",), DELETE),
        "image-list": _set(manifest, c + ("image",), [1]),
        "format-gif": _set(manifest, c + ("image", "format"), "gif"),
        "shape-short": _set(manifest, c + ("image", "shape"), [3, 16]),
        "shape-huge": _set(manifest, c + ("image", "shape"), [3, 10**9, 16]),
        "quality-1000": _set(manifest, c + ("image", "quality"), 1000),
        "save-latents-text": _set(manifest, c + ("save_latents",), "no"),
        "model-missing": _set(manifest, c + ("model",), DELETE),
        "model-id-huge": _set(manifest, c + ("model", "model_id"), "m" * 1_000_000),
        "model-family-int": _set(manifest, c + ("model", "family"), 3),
        "policy-list": _set(manifest, c + ("policy",), [1]),
        "policy-deep": _set(manifest, c + ("policy",), json.loads('{"a": ' + _nested(900) + "}")),
        "amp-int": _set(manifest, c + ("amp",), 5),
        "split-mismatch": _set(manifest, c + ("split",), "test"),
        "config-missing": _set(manifest, c, DELETE),
        "config-list": _set(manifest, c, [1]),
        "shards-dict": _set(manifest, ("splits", "train", "shards"), {"0": 1}),
        "shards-missing": _set(manifest, ("splits", "train", "shards"), DELETE),
        "record-traversal": _set(manifest, r0 + ("name",), "../../../etc/passwd"),
        "record-name-int": _set(manifest, r0 + ("name",), 7),
        "record-shard-neg": _set(manifest, r0 + ("shard",), -1),
        "record-shard-1e9": _set(manifest, r0 + ("shard",), 10**9),
        "record-shard-dup": _set(manifest, ("splits", "train", "shards", 1), entry["shards"][0]),
        "record-bytes-text": _set(manifest, r0 + ("bytes",), "many"),
        "record-bytes-1e30": _set(manifest, r0 + ("bytes",), 1e30),
        "record-sha-bad": _set(manifest, r0 + ("sha256",), "xyz"),
        "record-count-0": _set(manifest, r0 + ("count",), 0),
        "record-first-1e30": _set(manifest, r0 + ("first_index",), 10**30),
        "record-missing-key": _set(manifest, r0 + ("sha256",), DELETE),
        "record-list": _set(manifest, r0, [1, 2]),
        "num-shards-1e9": _set(manifest, ("splits", "train", "num_shards"), 10**9),
        "num-shards-wrong": _set(manifest, ("splits", "train", "num_shards"), 7),
        "complete-text": _set(manifest, ("splits", "train", "complete"), "yes"),
        "splits-list": _set(manifest, ("splits",), [1]),
        "splits-empty-name": _set(manifest, ("splits",), {"": entry}),
        "splits-traversal": _set(manifest, ("splits",), {"../x": entry}),
        "splits-many": _set(manifest, ("splits",), {f"s{i}": {} for i in range(2000)}),
        "format-version-2": _set(manifest, ("format_version",), 2),
        "format-version-missing": _set(manifest, ("format_version",), DELETE),
    }
    texts = {name: json.dumps(m) for name, m in mutations.items()}
    raw = json.dumps(manifest)
    texts.update({
        "samples-nan": raw.replace('"samples": 4', '"samples": NaN'),
        "samples-inf": raw.replace('"samples": 4', '"samples": Infinity'),
        "seed-nan": raw.replace('"seed": 0', '"seed": NaN'),
        "dup-keys": raw.replace('"samples": 4', '"samples": 4, "samples": 1000000000000'),
        "nested-deep": '{"format_version": 1, "splits": ' + _nested(200_000) + "}",
        "nested-100": '{"format_version": 1, "x": ' + _nested(100) + ', "splits": {}}',
        "not-json": "{not json",
        "empty": "",
        "a-list": "[1, 2]",
        "a-string": '"synthviews"',
        "not-utf8": "\udcff",
        "huge-number": raw.replace('"samples": 4', '"samples": ' + "9" * 5000),
    })
    dataset_dirs: dict[str, Path] = {}
    for name, text in texts.items():
        d = ds / name
        shutil.copytree(base, d)
        data = text.encode("utf-8", "surrogateescape")
        (d / "synthviews.json").write_bytes(data)
        dataset_dirs[name] = d
    for name, make in [("manifest-fifo", lambda p: _fifo(p)), ("manifest-dir", lambda p: p.mkdir()),
                       ("manifest-sparse", lambda p: _sparse(p, 100 << 20)),
                       ("manifest-dev-zero", lambda p: p.symlink_to("/dev/zero"))]:
        d = ds / name
        shutil.copytree(base, d)
        (d / "synthviews.json").unlink()
        make(d / "synthviews.json")
        dataset_dirs[name] = d
    # a shard whose sample json the library parses (verify)

    for name, payload in [("shard-json-list", b"[1, 2]"), ("shard-json-nan", b'{"index": NaN}'),
                          ("shard-json-deep", _nested(100_000).encode())]:
        d = ds / name
        shutil.copytree(base, d)
        shard = d / "train-000000.tar"
        members = []
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                data = tar.extractfile(m).read()
                members.append((m, payload if m.name.endswith(".json") else data))
        with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
            for m, data in members:
                m.size = len(data)
                tar.addfile(m, io.BytesIO(data))
        m2 = copy.deepcopy(manifest)
        m2["splits"]["train"]["shards"][0]["bytes"] = shard.stat().st_size
        m2["splits"]["train"]["shards"][0]["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
        (d / "synthviews.json").write_text(json.dumps(m2))
        cases.append((f"{name} verify", ["verify", str(d)]))
    for name, d in dataset_dirs.items():
        cases += [(f"dataset {name} verify", ["verify", str(d)]), (f"dataset {name} info", ["info", str(d)]),
                  (f"dataset {name} merge", ["merge", str(d), "--split", "train"]),
                  (f"dataset {name} push", ["push", str(d), "user/name", "--dry-run"]),
                  (f"dataset {name} generate", base_gen + ["--out", str(d), "--samples", "4", "--views", "1",
                                                           "--shard-size", "2", "--format", "png"])]
    # rank progress files (merge reads them; info lists them)
    progress = {
        "samples-1e18": _set(entry, ("config", "samples"), 1e18),
        "config-missing": _set(entry, ("config",), DELETE),
        "shards-missing": _set(entry, ("shards",), DELETE),
        "record-traversal": _set(entry, ("shards", 0, "name"), "../../x"),
        "record-bytes-text": _set(entry, ("shards", 0, "bytes"), "x"),
        "a-list": [1],
        "views-text": _set(entry, ("config", "views"), "2"),
    }
    ptexts = {n: json.dumps(p) for n, p in progress.items()}
    ptexts.update({"not-json": "{", "nan": json.dumps(entry).replace('"samples": 4', '"samples": NaN'),
                   "nested-deep": _nested(100_000)})
    for name, text in ptexts.items():
        d = ds / f"progress-{name}"
        shutil.copytree(base, d)
        (d / "synthviews.json").unlink()
        _write(d / "synthviews.train.rank000-of-002.json", text)
        cases += [(f"progress {name} merge", ["merge", str(d)]),
                  (f"progress {name} generate", base_gen + ["--out", str(d), "--samples", "4", "--views", "1",
                                                            "--shard-size", "2", "--format", "png",
                                                            "--rank", "1", "--world-size", "2"])]
    d = ds / "progress-fifo"
    shutil.copytree(base, d)
    (d / "synthviews.json").unlink()
    _fifo(d / "synthviews.train.rank000-of-002.json")
    cases.append(("progress fifo merge", ["merge", str(d)]))
    return cases


# --- running it ------------------------------------------------------------------------------

class _Timeout(BaseException):
    """Raised by SIGALRM; a BaseException so no ``except Exception`` in the code under test eats it."""


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident set size
        return True
    except OSError:
        return False


def run_case(argv: list[str]) -> dict:
    from synthviews.cli import main

    out, err = io.StringIO(), io.StringIO()
    result = {"rc": None, "exception": None}

    def alarm(signum, frame):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, alarm)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (min(_status("VmSize") + CASE_BYTES, hard) if hard > 0 else
                                            _status("VmSize") + CASE_BYTES, hard))
    measured = _reset_peak()
    start_rss = _status("VmRSS")
    t0 = time.perf_counter()
    signal.alarm(CASE_SECONDS)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            result["rc"] = main(argv)
    except SystemExit as e:
        result["rc"] = e.code if isinstance(e.code, int) else 2
    except _Timeout:
        result["exception"] = f"timeout after {CASE_SECONDS} s"
    except BaseException as e:  # noqa: BLE001 - every escape is a finding
        result["exception"] = "".join(traceback.format_exception_only(type(e), e)).strip()[-500:]
    finally:
        signal.alarm(0)
        result["seconds"] = time.perf_counter() - t0
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, old)
    result["peak_mib"] = (_status("VmHWM") - start_rss) / 2**20 if measured else None
    result["stderr"] = err.getvalue()[:2000]
    result["stdout"] = out.getvalue()[-300:]
    return result


def judge(name: str, r: dict) -> list[str]:
    """What is wrong with one case's result (empty: it held)."""
    problems = []
    if r["exception"]:
        problems.append(f"escaped: {r['exception']}")
    listed = name.startswith(MAY_LIST_PROBLEMS) and r["rc"] == 1 and not r["stderr"]
    if r["rc"] != 2 and not listed:
        problems.append(f"exit status {r['rc']}, expected 2")
    lines = r["stderr"].splitlines()
    if len(lines) != 1 and not listed:
        problems.append(f"{len(lines)} stderr lines: {r['stderr'][:300]!r}")
    elif lines and len(lines[0]) > MAX_STDERR:
        problems.append(f"stderr line of {len(lines[0])} characters")
    if "Traceback" in r["stderr"]:
        problems.append("traceback on stderr")
    if r["seconds"] > CASE_SECONDS:
        problems.append(f"took {r['seconds']:.1f} s")
    if r["peak_mib"] is not None and r["peak_mib"] > CASE_BYTES / 2**20:
        problems.append(f"peak memory +{r['peak_mib']:.0f} MiB")
    return problems


def run_corpus(results_path: Path, root: Path) -> None:
    import faulthandler

    import torch

    torch.set_num_threads(1)
    cases = build_corpus(root)
    progress = results_path.with_suffix(".progress")
    results = []
    for name, argv in cases:
        progress.write_text(name)  # a hard exit below names the case that hung
        faulthandler.dump_traceback_later(CASE_SECONDS * 4, exit=True)
        r = run_case(argv)
        faulthandler.cancel_dump_traceback_later()
        r.update(name=name, argv=[a[:200] for a in argv], problems=judge(name, r))
        results.append(r)
    results_path.write_text(json.dumps(results, indent=1))


def _summary(results: list[dict]) -> str:
    held = [r for r in results if not r["problems"]]
    lines = [f"{len(held)} of {len(results)} hostile cases held; slowest "
             f"{max(r['seconds'] for r in results):.2f} s, largest peak "
             f"+{max((r['peak_mib'] or 0) for r in results):.0f} MiB"]
    lines += [f"  {r['name']}: {'; '.join(r['problems'])}" for r in results if r["problems"]]
    return "\n".join(lines)


def test_hostile_corpus(tmp_path):
    results_path = tmp_path / "results.json"
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, __file__, str(results_path), str(tmp_path / "corpus")],
                          capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0 or not results_path.exists():
        hung = results_path.with_suffix(".progress")
        pytest.fail(f"corpus runner died (rc {proc.returncode}) during "
                    f"{hung.read_text() if hung.exists() else '?'}: {proc.stderr[-3000:]}")
    results = json.loads(results_path.read_text())
    assert len(results) >= 200
    failed = [r for r in results if r["problems"]]
    assert not failed, _summary(results)


def test_strict_yaml_refuses_aliases_and_duplicates():
    from synthviews._util.checks import load_yaml
    from synthviews.errors import ConfigError

    assert load_yaml("a: 1\nb: [1, 2]\n", "x") == {"a": 1, "b": [1, 2]}
    for text, message in [("a: &x 1\nb: *x\n", "anchors and aliases"), ("a: 1\na: 2\n", "duplicate key"),
                          ("a: {b: 1, b: 2}\n", "duplicate key"), (_alias_bomb(), "anchors and aliases")]:
        with pytest.raises(ConfigError, match=message):
            load_yaml(text, "policy file p.yaml")


def test_limits_fit_real_checkpoints():
    """A config-f StyleGAN2 at 1024 px and the full BigBiGAN stay within the bounds."""
    from synthviews.models.bigbigan import DEFAULT_CONFIG, _resolve_config
    from synthviews.models.stylegan2.networks import generator_config

    generator_config({"z_dim": 512, "w_dim": 512, "img_resolution": 1024,
                      "synthesis_kwargs": {"channel_base": 32768, "channel_max": 512}})
    assert _resolve_config(DEFAULT_CONFIG) == DEFAULT_CONFIG


def test_good_inputs_still_work(tmp_path):
    """Controls: what the corpus refuses is near what must keep working."""
    from synthviews.cli import main

    policy = tmp_path / "p.yaml"
    policy.write_text("kind: gaussian\ndefault: {std: 1000, truncation: 2}\ngroups: {'color': 0.5}\n")
    assert main(["preview", "--model", "toy", "--model-opt", "resolution=16", "--samples", "2", "--views", "1",
                 "--seed", str(2**63 - 1), "--policy", str(policy), "--out", str(tmp_path / "p.png")]) == 0
    assert main(["generate", "--model", "toy", "--model-opt", "resolution=16", "--samples", "4", "--views", "1",
                 "--shard-size", "2", "--format", "png", "--seed", str(2**63 - 1), "--no-progress",
                 "--out", str(tmp_path / "ds")]) == 0
    assert main(["verify", str(tmp_path / "ds")]) == 0
    assert main(["info", str(tmp_path / "ds")]) == 0


if __name__ == "__main__":
    results_file, corpus_root = Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else "hostile-corpus")
    if corpus_root.exists():
        shutil.rmtree(corpus_root)
    corpus_root.mkdir(parents=True)
    run_corpus(results_file, corpus_root)
    print(_summary(json.loads(results_file.read_text())))


def test_a_non_finite_delta_never_becomes_invalid_json():
    import numpy as np

    from synthviews.errors import ConfigError
    from synthviews.store.format import encode_sample

    views = np.zeros((2, 4, 4, 1), dtype=np.uint8)
    assert b'"index":3' in encode_sample(3, views, {"index": 3, "delta": {"g": [1.0]}}, "png", None)["json"]
    with pytest.raises(ConfigError, match="sample 3: a perturbation size is not finite"):
        encode_sample(3, views, {"index": 3, "delta": {"g": [float("inf")]}}, "png", None)
