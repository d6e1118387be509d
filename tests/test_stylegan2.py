"""StyleGAN2 network against the compat goldens, and the MLVGM wrapper."""

import json

import pytest
import torch

from synthviews.errors import ConfigError
from synthviews.models import load_model
from synthviews.models.stylegan2.model import PostProcess, StyleGAN2, parse_groups
from synthviews.models.stylegan2.networks import Generator, generator_config, load_weights

TOL = 1e-4


def sg(compat_dir):
    return compat_dir / "stylegan2"


def kwargs_of(compat_dir, name):
    return json.loads((sg(compat_dir) / f"{name}_config.json").read_text())["constructor_kwargs"]


def maxdiff(a, b):
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=[1, 2, 3])
def tiny(request, compat_dir):
    """(generator with tiny{n} weights, golden dict, n)."""
    n = request.param
    g = Generator(**kwargs_of(compat_dir, f"tiny{n}"))
    load_weights(g, torch.load(sg(compat_dir) / f"tiny{n}_state_dict.pt", weights_only=True), "tiny")
    return g.eval(), torch.load(sg(compat_dir) / f"tiny{n}_golden.pt", weights_only=True), n


def manifest(compat_dir, name):
    return [(n, list(s), d) for n, s, d in json.loads((sg(compat_dir) / f"manifest_{name}.json").read_text())]


def names_shapes_dtypes(module):
    return [(n, list(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in module.state_dict().items()]


# --- network ---------------------------------------------------------------------

def test_tiny_names_shapes_match_manifest(tiny, compat_dir):
    g, _, n = tiny
    assert names_shapes_dtypes(g) == manifest(compat_dir, f"tiny{n}")
    state = torch.load(sg(compat_dir) / f"tiny{n}_state_dict.pt", weights_only=True)
    assert all(torch.equal(g.state_dict()[k], v) for k, v in state.items())


@torch.no_grad()
def test_mapping_goldens(tiny):
    g, gold, _ = tiny
    assert maxdiff(g.mapping(gold["z"]), gold["ws_psi1"]) <= TOL
    assert maxdiff(g.mapping(gold["z"], truncation_psi=0.7), gold["ws_psi07"]) <= TOL
    assert maxdiff(g.mapping(gold["z"], 0.7, truncation_cutoff=4), gold["ws_psi07_cutoff4"]) <= TOL
    assert maxdiff(g.mapping(gold["mix_za"]), gold["mix_ws_a"]) <= TOL
    assert maxdiff(g.mapping(gold["mix_zb"]), gold["mix_ws_b"]) <= TOL


@torch.no_grad()
def test_synthesis_goldens(tiny):
    g, gold, _ = tiny
    for ws, noise, img in [("ws_psi1", "const", "img_psi1_const"), ("ws_psi07", "const", "img_psi07_const"),
                           ("ws_psi07_cutoff4", "const", "img_psi07_cutoff4_const"),
                           ("ws_psi1", "none", "img_psi1_none"), ("ws_psi07", "none", "img_psi07_none")]:
        assert maxdiff(g.synthesis(gold[ws], noise_mode=noise), gold[img]) <= TOL, img
    # Full generator call: mapping then synthesis.
    assert maxdiff(g(gold["z"], truncation_psi=0.7), gold["img_psi07_const"]) <= TOL


@torch.no_grad()
def test_w_plus_mixing_goldens(tiny):
    g, gold, _ = tiny
    a, b = g.mapping(gold["mix_za"]), g.mapping(gold["mix_zb"])
    for k in (2, 4, 6):
        ws = torch.cat([a[:, :k], b[:, k:]], dim=1)
        assert maxdiff(ws, gold[f"mix_k{k}_ws"]) <= TOL
        assert maxdiff(g.synthesis(ws), gold[f"mix_k{k}_img"]) <= TOL
    ws = a.clone()
    ws[:, 2:5] = b[:, 2:5]
    assert maxdiff(ws, gold["chunk_2_5_ws"]) <= TOL
    assert maxdiff(g.synthesis(ws), gold["chunk_2_5_img"]) <= TOL


@torch.no_grad()
def test_debug_tensors(tiny):
    """Layer-by-layer intermediates, so a mismatch points at the layer that caused it."""
    g, gold, _ = tiny
    z = gold["z"][:2]
    x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()
    assert maxdiff(x, gold["dbg_mapping_normalized_z"]) <= TOL
    for i in range(g.mapping.num_layers):
        x = getattr(g.mapping, f"fc{i}")(x)
        assert maxdiff(x, gold[f"dbg_mapping_out.mapping.fc{i}"]) <= TOL
    ws = gold["ws_psi1"][:2]
    x = img = None
    row = 0
    for block in g.synthesis.blocks():
        name = f"synthesis.b{block.resolution}"
        layers = ["conv1", "torgb"] if block.resolution == 4 else ["conv0", "conv1", "torgb"]
        for j, layer in enumerate(layers):
            styles = getattr(block, layer).affine(ws[:, row + j])
            assert maxdiff(styles, gold[f"dbg_styles.{name}.{layer}.affine"]) <= TOL
        x, img = block(x, img, ws[:, row:row + block.num_conv + 1])
        row += block.num_conv
        assert maxdiff(x, gold[f"dbg_block_x.{name}"]) <= TOL
        assert maxdiff(img, gold[f"dbg_block_img.{name}"]) <= TOL


@torch.no_grad()
def test_conv_clamp_and_fp16_blocks(compat_dir):
    tiny_gens = {}
    for n in (1, 2, 3):
        g = Generator(**kwargs_of(compat_dir, f"tiny{n}"))
        load_weights(g, torch.load(sg(compat_dir) / f"tiny{n}_state_dict.pt", weights_only=True), "tiny")
        tiny_gens[n] = g
    gold2 = torch.load(sg(compat_dir) / "tiny2_golden.pt", weights_only=True)
    ws = gold2["ws_psi1"]
    # tiny3: clamp 0.5 bounds every block's features and changes the image.
    x = img = None
    row = 0
    for block in tiny_gens[3].synthesis.blocks():
        x, img = block(x, img, ws[:, row:row + block.num_conv + 1])
        row += block.num_conv
        assert x.abs().max() <= 0.5
    assert maxdiff(tiny_gens[3].synthesis(ws), tiny_gens[1].synthesis(ws)) > 0.1
    # tiny2: num_fp16_res=2 makes b16/b32 fp16 blocks unless forced to fp32.
    assert [b.use_fp16 for b in tiny_gens[2].synthesis.blocks()] == [False, False, True, True]
    fp32 = tiny_gens[2].synthesis(ws)
    assert torch.equal(fp32, tiny_gens[2].synthesis(ws, force_fp32=True))
    fp16 = tiny_gens[2].synthesis(ws, force_fp32=False)
    assert fp16.dtype == torch.float32
    assert 0 < maxdiff(fp16, fp32) < 1e-2  # fp16 really ran, with fp16-sized differences
    assert maxdiff(fp16, gold2["native_fp16_img_psi1_const"]) < 1e-2
    one = tiny_gens[2].synthesis(ws[:1], force_fp32=False)  # batch of one: fused modulation path
    assert maxdiff(one, fp32[:1]) < 1e-2


def test_the_papers_cars_policy_only_for_the_cars_setting(compat_dir):
    cars = StyleGAN2(config=sg(compat_dir) / "stylegan2_configf_512_config.json", postprocess="cars")
    spec = cars.default_policy_spec()
    assert [spec["groups"][n]["std"] for n in cars.group_names] == [0.2, 0.1, 0.8, 0.8]
    assert all(spec["groups"][n]["truncation"] == 1.0 for n in cars.group_names)
    assert "LSUN Cars" in cars.default_policy_origin()
    ffhq_like = StyleGAN2(config=sg(compat_dir) / "stylegan2_configf_512_config.json")  # same network, no cars recipe
    assert ffhq_like.default_policy_spec() == {"kind": "gaussian", "default": {"std": 0.25}}


def test_a_file_synthviews_wrote_carries_its_licence_and_policy(compat_dir, tmp_path, capsys):
    from synthviews.cli import main
    from synthviews.models.stylegan2.checkpoint import embed_policy, save_safetensors

    src = load_model("stylegan2", path=sg(compat_dir) / "tiny1_state_dict.pt", config=sg(compat_dir) / "tiny1_config.json")
    path = tmp_path / "mine.safetensors"
    save_safetensors(path, src.state_dict(), src.config["config"], license="mit")
    mine = load_model("stylegan2", path=path)
    assert (mine.license, mine.license_link) == ("mit", None)
    assert mine.describe()["license"] == "mit" and "generic" in mine.default_policy_origin()
    policy = {"kind": "gaussian", "groups": {"0_2": "fixed", "6_8": {"std": 1.5, "truncation": 2.0}}}
    embed_policy(path, policy)
    again = load_model("stylegan2", path=path)
    assert again.default_policy_spec() == policy and again.license == "mit" and again.weights_sha256() == src.weights_sha256()
    assert "metadata" in again.default_policy_origin()
    assert main(["info", "--model", "stylegan2", "--path", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "license: mit" in shown and "stored in the checkpoint's metadata" in shown
    other = load_model("stylegan2", path=path, groups="layers")  # the policy names groups this split lacks
    assert other.default_policy_spec() == {"kind": "gaussian", "default": {"std": 0.25}}
    assert main(["analyze", "--model", "stylegan2", "--path", str(sg(compat_dir) / "tiny1_state_dict.pt"),
                 "--embed-policy", "--out", str(tmp_path / "rep")]) == 2
    assert "--embed-policy needs --path FILE.safetensors" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="only a .safetensors"):
        embed_policy(sg(compat_dir) / "tiny1_state_dict.pt", policy)


def test_configf_512_random_weights_match_manifest(compat_dir):
    """The real 512 config-f (LSUN Car / FFHQ-512) built with random weights, through the wrapper."""
    info = json.loads((sg(compat_dir) / "stylegan2_configf_512_config.json").read_text())
    g = StyleGAN2(config=sg(compat_dir) / "stylegan2_configf_512_config.json", postprocess="cars")
    assert names_shapes_dtypes(g) == manifest(compat_dir, "stylegan2_configf_512")
    assert g.group_names == ("0_4", "4_8", "8_12", "12_16")
    assert [grp.space for grp in g.groups] == [f"z -> w layers {s}-{s + 3}" for s in (0, 4, 8, 12)]
    assert g.image_shape == (3, 128, 128) and g.latent_dim == 512
    assert sum(p.numel() for p in g.parameters()) == info["num_parameters"] == 30_276_583
    assert sum(b.numel() for b in g.buffers()) == info["num_buffer_elements"]
    assert g.num_ws == info["num_ws"] == 16
    assert {str(b.resolution): b.conv1.weight.shape[0] for b in g.synthesis.blocks()} == info["block_channels"]
    assert g.config["config"] == info["constructor_kwargs"]  # the compat kwargs are already in full form
    # ADA-trained 512 pickles: fp16 blocks and clamp, same names and shapes.
    ada = {**info["constructor_kwargs"],
           "synthesis_kwargs": {**info["constructor_kwargs"]["synthesis_kwargs"], "num_fp16_res": 4, "conv_clamp": 256}}
    with torch.device("meta"):
        assert names_shapes_dtypes(Generator(**ada)) == manifest(compat_dir, "stylegan2_configf_512")


@pytest.mark.parametrize("bad, match", [
    ({"c_dim": 10}, "conditional"),
    ({"img_resolution": 48}, "power of two"),
    ({"channel_base": 1}, "unknown generator option"),
    ({"synthesis_kwargs": {"architecture": "resnet"}}, "architecture"),
    ({"mapping_kwargs": {"num_layers": 0}}, "num_layers"),
    ({"synthesis_kwargs": {"conv_clamp": -1}}, "conv_clamp"),
])
def test_bad_generator_config(compat_dir, bad, match):
    with pytest.raises(ConfigError, match=match):
        generator_config({**kwargs_of(compat_dir, "tiny1"), **bad})


# --- post-processing -------------------------------------------------------------

def test_cars_postprocess_golden(compat_dir):
    gold = torch.load(sg(compat_dir) / "cars_preprocess_golden.pt", weights_only=True)
    i = torch.arange(512, dtype=torch.float64)[:, None]
    j = torch.arange(512, dtype=torch.float64)[None, :]
    x = torch.stack([torch.sin(0.05 * (c + 1) * i) * torch.cos(0.03 * j) for c in range(3)])[None].float()
    assert abs(x.double().sum().item() - gold["input_sum"].item()) < 1e-6
    assert torch.equal(x[0, :, 0, :], gold["input_row0"])
    post = PostProcess.cars()
    assert maxdiff(post.crop_resize(x), gold["cropped_resized"]) <= 1e-6
    out = post(x)
    assert out.shape == (1, 3, 128, 128)
    assert maxdiff(out, (gold["cropped_resized"] * 127.5 + 128).clamp(0, 255) / 255) <= 1e-6
    assert post.output_shape(3, 512, 512) == (3, 128, 128)


# --- the MLVGM wrapper -----------------------------------------------------------

@pytest.fixture(scope="module")
def model(compat_dir):
    return load_model("stylegan2", path=sg(compat_dir) / "tiny1_state_dict.pt",
                      config=sg(compat_dir) / "tiny1_config.json")


@pytest.fixture(scope="module")
def gold1(compat_dir):
    return torch.load(sg(compat_dir) / "tiny1_golden.pt", weights_only=True)


def test_wrapper_basics(model, compat_dir):
    assert model.family == "stylegan2" and model.license == "other"
    assert model.license_link == "https://nvlabs.github.io/stylegan2/license.html"
    assert model.group_names == ("0_2", "2_4", "4_6", "6_8")  # num_ws 8 in 4 equal ranges
    assert [g.size for g in model.groups] == [64] * 4
    assert model.groups[0].space == "z -> w layers 0-1"
    assert model.latent_dim == 64 and model.image_shape == (3, 32, 32)
    assert model.prior.truncation is None
    path = sg(compat_dir) / "tiny1_state_dict.pt"
    assert model.source["path"] == str(path) and len(model.source["sha256"]) == 64
    assert names_shapes_dtypes(model) == manifest(compat_dir, "tiny1")  # official names, no prefix
    assert not any(p.requires_grad for p in model.parameters())
    json.dumps(model.config)
    json.dumps(model.describe())
    assert model.describe()["license"] == "other" and model.describe()["license_link"] == model.license_link


@torch.no_grad()
def test_decode_matches_golden(model, gold1):
    ws = model.compose(gold1["z"], {})
    assert maxdiff(ws, gold1["ws_psi1"]) <= TOL
    img = model.decode(ws)
    assert img.dtype == torch.float32 and img.shape == (8, 3, 32, 32)
    assert 0 <= img.min() and img.max() <= 1
    assert maxdiff(img, PostProcess()(gold1["img_psi1_const"])) <= TOL


@torch.no_grad()
def test_zero_noise_reproduces_anchor(model, gold1):
    z = gold1["z"]
    anchor = model.compose(z, {})
    zero = {name: torch.zeros(8, 64, dtype=torch.float64) for name in model.group_names}
    perturbed = model.compose(z, zero)
    assert torch.equal(perturbed, anchor)
    assert torch.equal(model.decode(perturbed), model.decode(anchor))


@torch.no_grad()
def test_perturbing_a_group_changes_only_its_layers(model, gold1):
    z = gold1["z"][:4]
    anchor = model.compose(z, {})
    noise = torch.randn(4, 64, generator=torch.Generator().manual_seed(5))
    for name, (start, end) in zip(model.group_names, model.ranges):
        ws = model.compose(z, {name: noise})
        changed = (ws != anchor).any(dim=2).any(dim=0)  # (num_ws,)
        assert changed.tolist() == [start <= r < end for r in range(model.num_ws)], name
        expected = model.mapping(z + noise)[:, start:end]
        assert torch.equal(model.group_code(ws, name), expected.flatten(1))
        assert model.group_code(ws, name).shape == (4, (end - start) * 64)
        assert not torch.equal(model.decode(ws), model.decode(anchor))
    with pytest.raises(KeyError):
        model.compose(z, {"nope": noise})


def test_gradients_reach_the_noise(model, gold1):
    """Learned walkers backpropagate through compose and decode to the noise."""
    noise = torch.zeros(2, 64, requires_grad=True)
    model.decode(model.compose(gold1["z"][:2], {"2_4": noise})).sum().backward()
    assert noise.grad is not None and noise.grad.abs().sum() > 0


@torch.no_grad()
def test_wrapper_truncation(compat_dir, gold1):
    m = load_model("stylegan2", path=sg(compat_dir) / "tiny1_state_dict.pt",
                   config=sg(compat_dir) / "tiny1_config.json", truncation_psi=0.7, truncation_cutoff=4,
                   noise_mode="none", prior_truncation=0.9)
    assert maxdiff(m.compose(gold1["z"], {}), gold1["ws_psi07_cutoff4"]) <= TOL
    g2 = torch.load(sg(compat_dir) / "tiny1_golden.pt", weights_only=True)
    m2 = load_model("stylegan2", path=sg(compat_dir) / "tiny1_state_dict.pt",
                    config=sg(compat_dir) / "tiny1_config.json", truncation_psi=0.7, noise_mode="none")
    assert maxdiff(m2.decode(m2.compose(g2["z"], {})), PostProcess()(g2["img_psi07_none"])) <= TOL
    assert m.prior.truncation == 0.9


def test_groups_parsing():
    assert parse_groups("4", 16) == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert parse_groups(4, 14) == [(0, 3), (3, 7), (7, 10), (10, 14)]
    assert parse_groups("layers", 3) == [(0, 1), (1, 2), (2, 3)]
    assert parse_groups("0_2,2_8", 8) == [(0, 2), (2, 8)]
    assert parse_groups([[2, 8], (0, 2)], 8) == [(0, 2), (2, 8)]
    for bad, match in [("0_3,2_8", "overlaps"), ("0_2,3_8", "no group"), ("0_2,2_6", "no group"),
                       ("0_2,2_9", "out of bounds"), ("a_b", "not understood"), (0, "cannot split"),
                       ([[0, 8, 1]], "not understood"), (None, "not understood"), ("4_4,0_8", "out of bounds")]:
        with pytest.raises(ConfigError, match=match):
            parse_groups(bad, 8)


def test_groups_refuse_digits_int_cannot_read():
    """'²' passes str.isdigit() but int() refuses it: a ConfigError, not a ValueError (CLI traceback)."""
    for bad in ("²", " ² ", "٣", "9" * 5000):
        with pytest.raises(ConfigError, match="not understood"):
            parse_groups(bad, 8)
    assert parse_groups(" 2 ", 8) == [(0, 4), (4, 8)]


def test_group_options_and_policy(compat_dir):
    base = dict(path=sg(compat_dir) / "tiny1_state_dict.pt", config=sg(compat_dir) / "tiny1_config.json")
    default = load_model("stylegan2", **base)
    # not the LSUN Cars generator: the paper's Cars stds would be a guess, so the generic baseline
    assert default.default_policy_spec() == {"kind": "gaussian", "default": {"std": 0.25}}
    assert "generic" in default.default_policy_origin() and "synthviews analyze" in default.default_policy_origin()
    layers = load_model("stylegan2", groups="layers", **base)
    assert layers.group_names == tuple(f"{i}_{i + 1}" for i in range(8))
    assert layers.default_policy_spec() == {"kind": "gaussian", "default": {"std": 0.25}}
    custom = load_model("stylegan2", groups="0_1,1_8", **base)
    assert custom.group_names == ("0_1", "1_8") and custom.config["groups"] == [[0, 1], [1, 8]]
    with pytest.raises(ConfigError, match="overlaps"):
        load_model("stylegan2", groups="0_2,1_8", **base)
    with pytest.raises(ConfigError, match="noise_mode"):
        load_model("stylegan2", noise_mode="random", **base)
    with pytest.raises(ConfigError, match="cars"):
        load_model("stylegan2", postprocess="cars", **base)  # the cars recipe is for 512 px only
    with pytest.raises(ConfigError, match="no option"):
        load_model("stylegan2", grups="4", **base)


@torch.no_grad()
def test_generic_crop_and_resize(compat_dir, gold1):
    base = dict(path=sg(compat_dir) / "tiny1_state_dict.pt", config=sg(compat_dir) / "tiny1_config.json")
    m = load_model("stylegan2", crop=24, resolution=16, **base)
    assert m.image_shape == (3, 16, 16)
    img = m.decode(m.compose(gold1["z"][:2], {}))
    assert img.shape == (2, 3, 16, 16)
    box = load_model("stylegan2", crop=[0, 4, 20, 28], resolution=[10, 14], **base)
    assert box.image_shape == (3, 10, 14)
    assert load_model("stylegan2", crop=[2, 2, 8, 8], **base).decode(m.compose(gold1["z"][:1], {})).shape == (1, 3, 8, 8)
    with pytest.raises(ConfigError, match="does not fit"):
        load_model("stylegan2", crop=40, **base)
    with pytest.raises(ConfigError, match="resolution"):
        load_model("stylegan2", resolution=-3, **base)


def test_config_round_trip_and_model_id(model, compat_dir):
    again = load_model("stylegan2", path=model.source["path"], **model.config)
    assert again.model_id == model.model_id
    other = load_model("stylegan2", path=model.source["path"], config=model.config["config"], truncation_psi=0.5)
    assert other.model_id != model.model_id  # truncation is part of what makes the data


def test_random_weights_and_rng(compat_dir):
    before = torch.get_rng_state()
    a = StyleGAN2(config=kwargs_of(compat_dir, "tiny1"))
    b = StyleGAN2(config=kwargs_of(compat_dir, "tiny1"), device="cpu")
    assert torch.equal(torch.get_rng_state(), before)  # construction leaves the caller's RNG alone
    assert a.weights_sha256() == b.weights_sha256() and a.source is None
    with pytest.raises(ConfigError, match="path= .* or config="):
        StyleGAN2()


def test_weights_argument(compat_dir, gold1):
    state = torch.load(sg(compat_dir) / "tiny1_state_dict.pt", weights_only=True)
    m = StyleGAN2(config=kwargs_of(compat_dir, "tiny1"), weights=state)
    with torch.no_grad():
        assert maxdiff(m.compose(gold1["z"], {}), gold1["ws_psi1"]) <= TOL
    del state["synthesis.b8.conv0.weight"]
    with pytest.raises(ConfigError, match="missing 1 tensor.*synthesis.b8.conv0.weight"):
        StyleGAN2(config=kwargs_of(compat_dir, "tiny1"), weights=state)


@pytest.mark.slow
@torch.no_grad()
def test_configf_512_synthesis_cars(compat_dir):
    """One 512 px image from random config-f weights through the cars recipe (a few seconds on CPU)."""
    m = StyleGAN2(config=sg(compat_dir) / "stylegan2_configf_512_config.json", postprocess="cars", prior_truncation=0.9)
    img = m.decode(m.compose(torch.randn(1, 512), {"8_12": torch.randn(1, 512)}))
    assert img.shape == (1, 3, 128, 128) and 0 <= img.min() and img.max() <= 1


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
def test_fused_and_unfused_modulated_conv_agree(up, demodulate):
    """The GPU path (one grouped conv with per-sample kernels) and the CPU path (scaled activations
    around one shared kernel, demodulation from a matmul) are the same maths."""
    from synthviews.models.stylegan2.networks import fir_filter, modulated_conv2d

    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(3, 8, 6, 6, generator=g), torch.randn(5, 8, 3, 3, generator=g)
    styles = torch.randn(3, 8, generator=g) + 1
    out = [modulated_conv2d(x, weight, styles, demodulate, up=up, f=fir_filter(), fused=fused) for fused in (True, False)]
    assert out[0].shape == (3, 5, 6 * up, 6 * up)
    torch.testing.assert_close(out[0], out[1], rtol=1e-4, atol=1e-4)


# --- one forward for training and inference --------------------------------------------

@torch.no_grad()
def test_random_noise_comes_from_the_given_generator(tiny):
    g, gold, _ = tiny
    ws = gold["ws_psi1"]
    draw = lambda seed: g.synthesis(ws, noise_mode="random", generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(1), draw(1))  # reproducible: the training RNG decides the noise
    assert not torch.equal(draw(1), draw(2))
    assert not torch.equal(draw(1), g.synthesis(ws, noise_mode="const"))
    torch.manual_seed(5)
    a = g.synthesis(ws, noise_mode="random")  # no generator: torch's global RNG, as before
    torch.manual_seed(5)
    assert torch.equal(a, g.synthesis(ws, noise_mode="random"))
    # the generator only feeds "random": the inference modes ignore it
    assert torch.equal(g.synthesis(ws, noise_mode="const", generator=torch.Generator().manual_seed(3)),
                       g.synthesis(ws, noise_mode="const"))


@torch.no_grad()
def test_both_modulated_conv_forms_give_the_goldens(tiny):
    g, gold, _ = tiny
    for fused in (True, False):
        assert maxdiff(g.synthesis(gold["ws_psi1"], noise_mode="const", fused_modconv=fused),
                       gold["img_psi1_const"]) <= TOL
