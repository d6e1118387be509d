"""synthviews.models.weights: the one reader of weights and checkpoint files, same rules for every family."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from synthviews.errors import ConfigError
from synthviews.models.weights import flat_tensors, read_tensors, read_torch


def test_suffixes_are_case_insensitive(tmp_path):
    state = {"a": torch.arange(4.0), "b": torch.ones(2, 3)}
    torch.save(state, tmp_path / "w.PT")
    got, meta = read_tensors(tmp_path / "w.PT", "weights")
    assert meta == {} and all(torch.equal(got[k], state[k]) for k in state)
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "w.SafeTensors"), metadata={"k": "v"})
    got, meta = read_tensors(tmp_path / "w.SafeTensors", "weights")
    assert meta == {"k": "v"} and all(torch.equal(got[k], state[k]) for k in state)
    torch.save(state, tmp_path / "w.bin")  # e.g. a converted release: any other suffix is a torch file
    got, meta = read_tensors(tmp_path / "w.bin", "weights")
    assert meta == {} and all(torch.equal(got[k], state[k]) for k in state)
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"weights .*w\.ckpt.* not a torch file"):
        read_tensors(tmp_path / "w.ckpt", "weights")


def test_every_family_says_the_same_about_the_same_bad_file(tmp_path):
    import synthviews as sv

    bad = tmp_path / "x.pt"
    bad.write_bytes(os.urandom(64).replace(b"\x80", b"\x81").replace(b"PK", b"PQ"))
    messages = []
    for family, what in (("bigbigan", "BigBiGAN weights"), ("stylegan2", "StyleGAN2 checkpoint")):
        with pytest.raises(ConfigError) as e:
            sv.load_model(family, path=bad)
        messages.append(str(e.value).removeprefix(what))
    with pytest.raises(ConfigError) as e:
        read_torch(bad, "walker checkpoint")
    assert messages[0] == messages[1] == str(e.value).removeprefix("walker checkpoint").replace("tensor checkpoint",
                                                                                                 "state dict")
    assert "is not a torch file" in messages[0] and "cannot be read" in messages[0]


def test_read_torch_reads_plain_checkpoints_and_runs_no_code(tmp_path):
    obj = {"format": "x/1", "step": 3, "weights": {"w": torch.zeros(2)}, "groups": [["a", 2]]}
    torch.save(obj, tmp_path / "c.pt")
    got = read_torch(tmp_path / "c.pt", "checkpoint")
    assert got["step"] == 3 and got["groups"] == [["a", 2]] and torch.equal(got["weights"]["w"], torch.zeros(2))

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save({"format": "x/1", "weights": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match=r"evil\.pt: torch\.load\(weights_only=True\) could not read it: it is not a "
                                          r"plain tensor checkpoint: it holds Python objects"):
        read_torch(tmp_path / "evil.pt", "checkpoint")
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "p.pt").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ConfigError, match=r"p\.pt is a plain pickle"):
        read_torch(tmp_path / "p.pt", "checkpoint")
    with pytest.raises(ConfigError, match=r"checkpoint .*missing\.pt does not exist"):
        read_torch(tmp_path / "missing.pt", "checkpoint")
    with pytest.raises(ConfigError, match="is 10 bytes; the limit is 5"):
        (tmp_path / "big.pt").write_bytes(b"0123456789")
        read_torch(tmp_path / "big.pt", "checkpoint", max_bytes=5)


def test_tensors_must_be_flat_dense_and_finite(tmp_path):
    with pytest.raises(ConfigError, match=r"w is not a flat state dict: entries 'G' are not tensors"):
        flat_tensors({"G": {"a": torch.zeros(1)}}, "w")
    torch.save({"a": torch.full((2,), float("nan"))}, tmp_path / "nan.pt")
    with pytest.raises(ConfigError, match="tensor a holds NaN or infinite values"):
        read_tensors(tmp_path / "nan.pt", "weights")
    torch.save({"a": torch.zeros(1).expand(10**6)}, tmp_path / "expanded.pt")
    with pytest.raises(ConfigError, match="not stored densely"):
        read_tensors(tmp_path / "expanded.pt", "weights")


def test_the_safetensors_header_gives_shapes_and_bounds_what_loading_allocates(tmp_path):
    from safetensors.torch import save_file

    from synthviews.models.weights import safetensors_header

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(4, 25, dtype=torch.float16), "b": torch.zeros(5, dtype=torch.bfloat16)}, str(path))
    assert safetensors_header(path, "weights") == {"a": (4, 25), "b": (5,)}
    assert path.stat().st_size < 400  # 210 bytes of data, but 420 as float32: the bound is on what loading allocates
    with pytest.raises(ConfigError, match=r"weights .*: its 105 values take 420 bytes as float32, over the limit of 400"):
        safetensors_header(path, "weights", max_bytes=400)
    save_file({"a": torch.zeros(2), "n": torch.zeros(3, dtype=torch.int64)}, str(path))
    with pytest.raises(ConfigError, match=r"tensor 'n' is I64; only F32, F16, BF16 tensors are read here"):
        safetensors_header(path, "weights")
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad}")
    with pytest.raises(ConfigError, match="not a valid .safetensors file"):
        safetensors_header(path, "weights")


def test_safetensors_bytes_do_not_depend_on_the_process(tmp_path):
    """The library writes its metadata map in a per-process order; ours is sorted, so the same weights and
    metadata give the same bytes in every process, and the file reads back as written."""
    import subprocess
    import sys

    from safetensors import safe_open

    code = ("import sys, torch; from synthviews.models.weights import safetensors_bytes; "
            "t = {'b': torch.arange(6, dtype=torch.float32).reshape(2, 3), 'a': torch.ones(3, dtype=torch.float16)}; "
            "m = {'stylegan2_config': '{}', 'synthviews_license': 'mit', 'z': '\\u00e9', 'a': 'x'}; "
            "open(sys.argv[1], 'wb').write(safetensors_bytes(t, m))")
    outs = []
    for i in range(4):  # the library's order changed between about every other process
        path = tmp_path / f"{i}.safetensors"
        subprocess.run([sys.executable, "-c", code, str(path)], check=True)
        outs.append(path.read_bytes())
    assert all(o == outs[0] for o in outs)
    with safe_open(str(tmp_path / "0.safetensors"), framework="pt") as f:
        assert f.metadata() == {"stylegan2_config": "{}", "synthviews_license": "mit", "z": "\u00e9", "a": "x"}
        assert torch.equal(f.get_tensor("b"), torch.arange(6, dtype=torch.float32).reshape(2, 3))
        assert f.get_tensor("a").dtype == torch.float16
    header = outs[0][8:8 + int.from_bytes(outs[0][:8], "little")]
    assert header.index(b'"a":"x"') < header.index(b'"stylegan2_config"') < header.index(b'"z"')
