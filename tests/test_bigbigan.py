"""BigBiGAN generator: compat goldens, checkpoint layout, bad files, MLVGM behaviour."""

import hashlib
import json
import os
import pickle

import pytest
import torch

import synthviews as sv
from synthviews.errors import ConfigError
from synthviews.models.bigbigan import BigBiGAN  # registers "bigbigan"

TOL = 1e-4


@pytest.fixture(scope="module")
def bb(compat_dir):
    return compat_dir / "bigbigan"


@pytest.fixture(scope="module")
def tiny(bb):
    return sv.load_model("bigbigan", path=bb / "tiny_state_dict.pt")


@pytest.fixture(scope="module")
def golden(bb):
    return torch.load(bb / "tiny_golden.pt", weights_only=True)


def _manifest(model):
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]


# --- goldens ------------------------------------------------------------------

def test_tiny_file_loads_with_sizes_read_from_it(tiny, bb):
    assert tiny.config["ch"] == 8 and tiny.config["dim_z"] == 120
    sha = hashlib.sha256((bb / "tiny_state_dict.pt").read_bytes()).hexdigest()
    assert tiny.source == {"path": str(bb / "tiny_state_dict.pt"), "sha256": sha}
    assert tiny.model_id == sv.load_model("bigbigan", path=bb / "tiny_state_dict.pt").model_id


def test_image_matches_golden_for_the_whole_batch(tiny, golden):
    with torch.no_grad():
        img = tiny(golden["z"])
    assert (img - golden["img"]).abs().max() <= TOL
    x = tiny.decode(golden["z"])  # the MLVGM output: clip((img + 1) / 2, 0, 1)
    assert x.shape == (8, 3, 128, 128) and x.min() >= 0 and x.max() <= 1
    assert (x - ((golden["img"] + 1) / 2).clamp(0, 1)).abs().max() <= TOL


def test_intermediate_tensors_match_golden(tiny, golden):
    taps = {"dbg_linear_out": "linear", "dbg_output_layer_out_pre_tanh": "output_layer"}
    taps.update({f"dbg_blocks.{i}.0_out": f"blocks.{i}.0" for i in range(5)})
    taps["dbg_blocks.3.1_out"] = "blocks.3.1"
    seen, hooks = {}, []
    for key, name in taps.items():
        hook = lambda m, args, out, key=key: seen.__setitem__(key, out[:1])  # noqa: E731
        hooks.append(tiny.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            tiny(golden["z"])
    finally:
        for h in hooks:
            h.remove()
    for key in taps:
        assert seen[key].shape == golden[key].shape, key
        assert (seen[key] - golden[key]).abs().max() <= TOL, key
    assert torch.equal(tiny.shared.weight[:1], golden["y_shared_class0"])


def test_spectral_norm_divisors_match_golden(tiny, golden):
    sigmas = {k.removeprefix("dbg_sigma."): v for k, v in golden.items() if k.startswith("dbg_sigma.")}
    assert len(sigmas) == 41
    for name, expected in sigmas.items():
        assert abs(tiny.get_submodule(name).sigma().item() - expected.item()) <= 1e-5, name


def test_chunk_perturbation_golden_through_compose(tiny, golden):
    anchor, perturbed = golden["z"][:2], golden["z_chunkpert_1_3"]
    delta = perturbed - anchor
    assert delta[:, :20].abs().max() == 0 and delta[:, 60:].abs().max() == 0  # only chunks 1 and 2
    code = tiny.compose(anchor, {"chunk1": delta[:, 20:40], "chunk2": delta[:, 40:60]})
    assert torch.allclose(code, perturbed, atol=1e-6)
    x = tiny.decode(code)
    assert (x - ((golden["img_chunkpert_1_3"] + 1) / 2).clamp(0, 1)).abs().max() <= TOL
    assert torch.equal(tiny.compose(anchor, {"chunk1": torch.zeros(2, 20)}), anchor)


# --- layout -------------------------------------------------------------------

def test_tiny_layout_matches_manifest(bb):
    assert _manifest(BigBiGAN(ch=8, random_weights=True)) == json.loads((bb / "manifest_tiny.json").read_text())


def test_real_128_layout_matches_manifest_with_random_weights(bb):
    model = BigBiGAN(random_weights=True)  # defaults = the real model
    assert _manifest(model) == json.loads((bb / "manifest_bigbigan_128_full.json").read_text())
    counts = json.loads((bb / "bigbigan_128_full_config.json").read_text())
    assert sum(p.numel() for p in model.parameters()) == counts["num_parameters"]
    assert sum(b.numel() for b in model.buffers()) == counts["num_buffer_elements"]


def test_random_weights_are_seeded():
    a, b, c = BigBiGAN(ch=4, random_weights=True), BigBiGAN(ch=4, random_weights=True), BigBiGAN(ch=4, seed=1, random_weights=True)
    assert a.model_id == b.model_id != c.model_id
    assert a.model_id != BigBiGAN(config={"ch": 8}, random_weights=True).model_id


def test_in_memory_weights(tiny, tiny_sd):
    model = BigBiGAN(weights=tiny_sd)
    assert model.weights_sha256() == tiny.weights_sha256() and model.source is None
    with pytest.raises(sv.ConfigError, match="either path= .* or weights="):
        BigBiGAN(path="x.pth", weights=tiny_sd)
    with pytest.raises(sv.ConfigError, match="not a flat state dict"):
        BigBiGAN(weights={"G": tiny_sd})


def test_safetensors_file_loads_the_same(tiny, golden, tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    path = tmp_path / "g.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    model = sv.load_model("bigbigan", path=path)
    assert model.weights_sha256() == tiny.weights_sha256()
    assert model.source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    z = golden["z"][:2]
    assert torch.equal(model.decode(z), tiny.decode(z))


# --- MLVGM behaviour ----------------------------------------------------------

def test_groups_prior_policy_and_license(tiny):
    assert tiny.group_names == tuple(f"chunk{k}" for k in range(6))
    assert all(g.size == 20 for g in tiny.groups)
    assert tiny.group("chunk0").space == "z[0:20]" and "linear" in tiny.group("chunk0").description
    assert "block 4" in tiny.group("chunk5").description
    assert (tiny.prior.mean, tiny.prior.std, tiny.prior.truncation) == (0.0, 1.0, 2.0)
    policy = tiny.default_policy_spec()["groups"]
    assert policy["chunk0"] == "fixed"
    assert all(policy[f"chunk{k}"] == {"std": 1.0, "truncation": 2.0} for k in range(1, 6))
    assert tiny.license == "apache-2.0"
    json.dumps(tiny.describe())


def test_every_chunk_changes_the_image(tiny, golden):
    z = golden["z"][:1]
    base = tiny.decode(z)
    for g in tiny.groups:
        x = tiny.decode(tiny.compose(z, {g.name: torch.full((1, 20), 0.5)}))
        assert (x - base).abs().max() > 1e-3, g.name


def test_decode_is_differentiable_in_z(tiny, golden):
    z = golden["z"][:1].clone().requires_grad_()
    tiny.decode(z).mean().backward()
    assert torch.isfinite(z.grad).all() and (z.grad.abs().reshape(6, 20).sum(1) > 0).all()


def test_bf16_autocast_and_channels_last_run(bb, golden):
    fast = sv.load_model("bigbigan", path=bb / "tiny_state_dict.pt", amp="bf16", channels_last=True)
    ref = ((golden["img"][:2] + 1) / 2).clamp(0, 1)
    x = fast.decode(golden["z"][:2])
    assert x.dtype == torch.float32 and (x - ref).abs().mean() < 0.05
    assert (x - ref).abs().max() > TOL  # really ran in bf16


def test_outer_autocast_still_applies_without_model_amp(tiny, golden):
    """ViewSampler(amp=...) wraps decode in autocast; the model must not switch it off."""
    z = golden["z"][:2]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = tiny.decode(z)
    assert not torch.equal(x, tiny.decode(z)) and (x - tiny.decode(z)).abs().mean() < 0.05


@pytest.mark.slow
def test_torch_compile_matches_eager(tiny, bb, golden):
    compiled = sv.load_model("bigbigan", path=bb / "tiny_state_dict.pt", compile=True)
    z = golden["z"][:2]
    assert (compiled.decode(z) - tiny.decode(z)).abs().max() <= TOL


# --- bad inputs ---------------------------------------------------------------

def _save(tmp_path, sd, name="g.pt"):
    path = tmp_path / name
    torch.save(sd, path)
    return path


@pytest.fixture
def tiny_sd(bb):
    return torch.load(bb / "tiny_state_dict.pt", weights_only=True)


def test_truncated_file(bb, tmp_path):
    data = (bb / "tiny_state_dict.pt").read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(sv.ConfigError, match="cannot be read.*truncated"):
        sv.load_model("bigbigan", path=path)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(sv.ConfigError, match="cannot be read"):
        sv.load_model("bigbigan", path=path)
    bad = tmp_path / "noise.safetensors"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(sv.ConfigError, match="cannot be read"):
        sv.load_model("bigbigan", path=bad)


def test_missing_file(tmp_path):
    with pytest.raises(sv.ConfigError, match="does not exist"):
        sv.load_model("bigbigan", path=tmp_path / "nope.pth")


def test_missing_key_is_named(tiny_sd, tmp_path):
    del tiny_sd["blocks.2.0.conv1.u0"]
    with pytest.raises(sv.ConfigError, match=r"1 missing key\(s\): 'blocks.2.0.conv1.u0'"):
        sv.load_model("bigbigan", path=_save(tmp_path, tiny_sd))


def test_unexpected_key_is_named(tiny_sd, tmp_path):
    tiny_sd["blocks.9.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(sv.ConfigError, match=r"unexpected key\(s\): 'blocks.9.0.conv1.weight'"):
        sv.load_model("bigbigan", path=_save(tmp_path, tiny_sd))


def test_shape_mismatch_is_named(tiny_sd, tmp_path):
    tiny_sd["blocks.1.0.bn1.gain.weight"] = torch.zeros(128, 147)
    with pytest.raises(sv.ConfigError, match=r"shape mismatch.*blocks.1.0.bn1.gain.weight is \[128, 147\]"):
        sv.load_model("bigbigan", path=_save(tmp_path, tiny_sd))


def test_width_override_that_contradicts_the_file(bb):
    with pytest.raises(sv.ConfigError, match="shape mismatch"):
        sv.load_model("bigbigan", path=bb / "tiny_state_dict.pt", ch=16)


def test_other_family_state_dict(compat_dir, tmp_path):
    sg2 = compat_dir / "stylegan2" / "tiny1_state_dict.pt"
    path = sg2 if sg2.is_file() else _save(tmp_path, {"mapping.fc0.weight": torch.zeros(4, 4)})
    with pytest.raises(sv.ConfigError, match="not a BigBiGAN generator state dict.*another model family"):
        sv.load_model("bigbigan", path=path)


def test_prefixed_keys_get_a_hint(tiny_sd, tmp_path):
    path = _save(tmp_path, {f"module.{k}": v for k, v in tiny_sd.items()})
    with pytest.raises(sv.ConfigError, match="prefix 'module.'"):
        sv.load_model("bigbigan", path=path)


def test_nested_checkpoint_is_refused_with_advice(tiny_sd, tmp_path):
    path = _save(tmp_path, {"G": tiny_sd, "epoch": 3})
    with pytest.raises(sv.ConfigError, match="not a flat state dict.*'G', 'epoch'"):
        sv.load_model("bigbigan", path=path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_code_in_a_model_file_is_never_run(tmp_path):
    marker = tmp_path / "was_run"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    for protocol in (2, 4):  # torch.save's zip format, and a raw pickle
        path = tmp_path / f"evil{protocol}.pth"
        if protocol == 2:
            torch.save({"linear.weight": Evil()}, path)
        else:
            path.write_bytes(pickle.dumps({"linear.weight": Evil()}, protocol=protocol))
        with pytest.raises(sv.ConfigError, match="never runs code|cannot be read"):
            sv.load_model("bigbigan", path=path)
        assert not marker.exists()


def test_pickled_module_gets_advice(tmp_path):
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(sv.ConfigError, match=r"holds Python objects.*never runs code.*state_dict\(\)"):
        sv.load_model("bigbigan", path=path)


@pytest.mark.parametrize("kwargs, message", [
    ({"config": {"resolution": 256}}, "only the 128 px"),
    ({"config": {"G_ch": 8}}, "unknown config key"),
    ({"ch": 6}, "multiple of 4"),
    ({"ch": 0}, "positive integer"),
    ({"config": {"dim_z": 100}}, "6 equal chunks"),
    ({"amp": "fp8"}, "unknown precision"),
    ({"amp": "fp16"}, "fp16 autocast needs a CUDA device"),
    ({"device": "nonsense"}, "unknown device"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(sv.ConfigError, match=message):
        BigBiGAN(**{"ch": 4, "random_weights": True, **kwargs})


def test_no_weights_is_refused_unless_random_weights_are_asked_for(tmp_path, capsys):
    from synthviews.cli import main

    with pytest.raises(ConfigError, match="no weights given.*random_weights=True"):
        sv.load_model("bigbigan")
    assert main(["generate", "--model", "bigbigan", "--samples", "2", "--out", str(tmp_path / "ds")]) == 2
    assert "--path" in capsys.readouterr().err and not (tmp_path / "ds").exists()
    random = sv.load_model("bigbigan", ch=4, random_weights=True)
    assert random.describe()["source"] == {"random_weights": True, "seed": 0}  # manifests say what made the data
    with pytest.raises(ConfigError, match="exclude each other"):
        sv.load_model("bigbigan", path=tmp_path / "x.pth", random_weights=True)
