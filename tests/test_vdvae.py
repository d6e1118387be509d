"""VDVAE decoder: compat goldens, checkpoint layout, bad files and configs, MLVGM behaviour, CLI."""

import json
import pickle

import numpy as np
import pytest
import torch

import synthviews as sv
from synthviews.cli import main
from synthviews.errors import ConfigError
from synthviews.latents import sample_prior
from synthviews.models.vdvae import VDVAE
from synthviews.models.vdvae.checkpoint import generator_state, infer_release
from synthviews.models.vdvae.model import parse_groups
from synthviews.models.vdvae.networks import (
    MAX_CODE,
    RELEASES,
    Decoder,
    block_specs,
    dmol_component,
    generator_shapes,
    resolve_hparams,
    uint8_levels,
)

TOL = 1e-4
N_TINY = 11
TAGS = ("manual", "partial_k4_t0.5", "uncond_t1", "uncond_t0.8", "uncond_tlist")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vd(compat_dir):
    return compat_dir / "vdvae"


@pytest.fixture(scope="module")
def tiny_cfg(vd):
    return json.loads((vd / "tiny_config.json").read_text())


@pytest.fixture(scope="module")
def tiny(vd):
    return sv.load_model("vdvae", path=vd / "tiny_state_dict.pt", config=vd / "tiny_config.json")


@pytest.fixture(scope="module")
def golden(vd):
    return torch.load(vd / "tiny_golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def official(vd):
    return torch.load(vd / "tiny_state_dict.pt", weights_only=True)


def _eps(golden, tag):
    return [golden.get(f"{tag}_eps.{i}") for i in range(N_TINY)]


def _max_err(a, b) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# --- goldens ------------------------------------------------------------------------------

def test_explicit_latents_give_the_golden_activations_block_by_block(tiny, golden):
    traces, zs = {}, []
    z = [golden[f"manual_z.{i}"] for i in range(N_TINY)]
    with torch.no_grad():
        px_z = tiny.decoder([None] * N_TINY, [1.0] * N_TINY, z, traces=traces, zs=zs)
        params = tiny.decoder.out_net(px_z)
    assert _max_err(px_z, golden["manual_px_z"]) <= TOL
    assert _max_err(params, golden["manual_dmol_params"]) <= TOL
    assert all(torch.equal(a, b) for a, b in zip(zs, z))  # explicit z are used as they are
    for i in (0, 2, 5, 7, 9):
        for key in ("x_in", "prior_mean", "prior_logstd", "prior_xpp", "z_proj_out", "out"):
            assert _max_err(traces[i][key][:2], golden[f"dbg_manual.block{i}.{key}"]) <= TOL, (i, key)


@pytest.mark.parametrize("tag,t,k", [("uncond_t1", 1.0, 0), ("uncond_t0.8", 0.8, 0), ("partial_k4_t0.5", 0.5, 4),
                                     ("uncond_tlist", None, 0)])
def test_prior_sampling_from_eps_matches_the_golden(tiny, golden, tiny_cfg, tag, t, k):
    temps = tiny_cfg["golden"]["uncond_tlist"]["t_per_block"] if t is None else [t] * N_TINY
    eps = _eps(golden, "uncond_t1" if tag == "uncond_t0.8" else tag)
    zs = []
    with torch.no_grad():
        px_z = tiny.decoder(eps, temps, [golden[f"manual_z.{i}"] for i in range(k)], zs=zs)
    assert _max_err(px_z, golden[f"{tag}_px_z"]) <= TOL
    if f"{tag}_z.0" in golden:
        assert max(_max_err(a, golden[f"{tag}_z.{i}"]) for i, a in enumerate(zs)) <= TOL


@pytest.mark.parametrize("tag", TAGS)
def test_output_sampling_with_the_recorded_uniforms_gives_the_golden_bytes(tiny, golden, tag):
    with torch.no_grad():
        params = tiny.decoder.out_net(golden[f"{tag}_px_z"])
        x = tiny.sample_pm1(params, gumbel_u=golden[f"{tag}_dmol_gumbel_uniform"],
                            logistic_u=golden[f"{tag}_dmol_logistic_uniform"])
    k = dmol_component(params, golden[f"{tag}_dmol_gumbel_uniform"], tiny.num_mixtures)
    assert torch.equal(k.float(), golden[f"{tag}_dmol_selected_component"])
    assert _max_err(x, golden[f"{tag}_sample_pm1"]) <= TOL
    assert torch.equal(uint8_levels(x), golden[f"{tag}_image_uint8"])


def test_end_to_end_the_image_bytes_are_the_originals(tiny, golden):
    """Our decoder's own activations, then the head with the original's uniforms: the same uint8 images."""
    z = [golden[f"manual_z.{i}"] for i in range(N_TINY)]
    with torch.no_grad():
        x = tiny.sample_pm1(tiny.dmol_params([None] * N_TINY, z), gumbel_u=golden["manual_dmol_gumbel_uniform"],
                            logistic_u=golden["manual_dmol_logistic_uniform"])
    assert torch.equal(uint8_levels(x), golden["manual_image_uint8"])


def test_decode_of_a_code_is_the_documented_composition(tiny, golden):
    """decode(code) = eps of every block (t = 1) then the head with u = 1e-5 + (1 - 2e-5) * Phi(pixels code)."""
    eps = _eps(golden, "uncond_t1")
    pixels = torch.randn(4, 32, 32, 6, generator=torch.Generator().manual_seed(5))
    code = torch.cat([e.flatten(1) for e in eps] + [pixels.flatten(1)], dim=1)
    assert code.shape == (4, tiny.latent_dim)
    with torch.no_grad():
        img = tiny.decode(code)
        u = 1e-5 + (1 - 2e-5) * torch.special.ndtr(pixels)
        x = tiny.sample_pm1(tiny.decoder.out_net(golden["uncond_t1_px_z"]), gumbel_u=u[..., :3], logistic_u=u[..., 3:])
    assert img.shape == (4, 3, 32, 32) and img.dtype == torch.float32
    levels = img * 255
    assert torch.equal(levels, levels.round()) and 0 <= img.min() and img.max() <= 1
    expected = uint8_levels(x).permute(0, 3, 1, 2)
    assert (levels - expected).abs().max() <= 1  # the px_z here is the golden's, within 1e-6 of ours
    assert (levels != expected).float().mean() < 1e-3
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        levels = tiny.decode(code) * 255
    assert levels.dtype == torch.float32 and torch.equal(levels, levels.round())


@pytest.mark.parametrize("temperature,tag", [(0.8, "uncond_t0.8"), ("tlist", "uncond_tlist")])
def test_the_temperature_option_reproduces_the_goldens(vd, golden, tiny_cfg, temperature, tag):
    t = tiny_cfg["golden"]["uncond_tlist"]["t_per_block"] if temperature == "tlist" else temperature
    model = sv.load_model("vdvae", path=vd / "tiny_state_dict.pt", config=vd / "tiny_config.json", temperature=t)
    eps = _eps(golden, "uncond_t1" if tag == "uncond_t0.8" else tag)
    with torch.no_grad():
        params = model.dmol_params(eps)
    assert _max_err(params, model.decoder.out_net(golden[f"{tag}_px_z"])) <= TOL
    assert model.config["temperature"] == t


def test_temperature_per_group_and_its_errors(vd):
    kw = dict(path=vd / "tiny_state_dict.pt", config=vd / "tiny_config.json")
    m = sv.load_model("vdvae", temperature={"res1": 0.5, "res32": 0.0}, **kw)
    assert m.temperatures == [0.5, 0.5] + [1.0] * 7 + [0.0, 0.0]
    zero = sv.load_model("vdvae", temperature=0, **kw)
    traces, zs = {}, []
    with torch.no_grad():
        zero.decoder([torch.randn(1, *s) for s in zero.block_shapes], zero.temperatures, traces=traces, zs=zs)
    assert all(torch.equal(z, traces[i]["prior_mean"]) for i, z in enumerate(zs))  # t = 0: z is the prior mean
    with pytest.raises(ConfigError, match="unknown group.*res2"):
        sv.load_model("vdvae", temperature={"res2": 0.5}, **kw)
    with pytest.raises(ConfigError, match="one value per latent block \\(11\\)"):
        sv.load_model("vdvae", temperature=[1.0, 0.5], **kw)
    with pytest.raises(ConfigError, match="temperature must be a number"):
        sv.load_model("vdvae", temperature=-1, **kw)


# --- latent groups ------------------------------------------------------------------------

def test_default_groups_are_the_resolutions_coarse_to_fine(tiny):
    assert tiny.group_names == ("res1", "res4", "res8", "res16", "res32", "pixels")
    assert [e - s for _, s, e in tiny.group_blocks] == [2, 3, 2, 2, 2]
    assert [g.size for g in tiny.groups] == [2 * 8, 3 * 8 * 16, 2 * 8 * 64, 2 * 8 * 256, 2 * 8 * 1024, 32 * 32 * 6]
    assert tiny.latent_dim == 21_904 + 6144  # the spec's latent dims + H*W*(M + 3) output uniforms


@pytest.mark.parametrize("release,blocks,mixins", [("imagenet32", [2, 5, 10, 20, 41], [2, 7, 17, 37]),
                                                    ("ffhq256", [2, 4, 5, 10, 22, 14, 8, 1], [2, 6, 11, 21, 43, 57, 65])])
def test_real_groups_follow_the_spec_table(release, blocks, mixins):
    specs = block_specs(resolve_hparams(RELEASES[release], release))
    groups = parse_groups("resolutions", specs)
    assert [e - s for _, s, e in groups] == blocks
    assert [name for name, _, _ in groups] == [f"res{r}" for r in sorted({s.res for s in specs})]
    assert [s.index for s in specs if s.mixin is not None] == [start for _, start, _ in groups[1:]] == mixins


@pytest.mark.parametrize("groups,names", [
    ("blocks", [f"block{i}" for i in range(11)]),
    ("0_2,2_11", ["blocks0_2", "blocks2_11"]),
    ([[0, 5], [5, 11]], ["blocks0_5", "blocks5_11"]),
    (3, ["blocks0_3", "blocks3_7", "blocks7_11"]),
])
def test_other_group_splits(vd, groups, names):
    m = sv.load_model("vdvae", path=vd / "tiny_state_dict.pt", config=vd / "tiny_config.json", groups=groups,
                      output="mean")
    assert list(m.group_names) == names and sum(g.size for g in m.groups) == m.latent_dim == 21_904


@pytest.mark.parametrize("groups,match", [("0_2,3_11", "does not continue at block 2"), ("0_2", "blocks 2..10"),
                                          ("layers", "not understood"), (12, "into 12 groups"),
                                          ("²", "not understood"), ("0_²,2_11", "not understood"),
                                          ("9" * 5000, "not understood"), (" 12 ", "into 12 groups")])
def test_bad_group_splits(vd, groups, match):
    with pytest.raises(ConfigError, match=match):
        sv.load_model("vdvae", path=vd / "tiny_state_dict.pt", config=vd / "tiny_config.json", groups=groups)


def test_option_typos_are_found_before_the_checkpoint_is_read(tmp_path):
    with pytest.raises(ConfigError, match="VDVAE groups"):
        sv.load_model("vdvae", path=tmp_path / "not-read.th", config="imagenet32", groups="resolution")
    with pytest.raises(ConfigError, match="temperature"):
        sv.load_model("vdvae", path=tmp_path / "not-read.th", config="imagenet32", temperature={"res64": 1})


def test_compose_adds_noise_to_eps_and_group_code_is_eps(tiny):
    anchor = sample_prior(tiny.prior, sv.Streams(0), range(2), tiny.latent_dim)
    assert torch.equal(tiny.compose(anchor, {}), anchor)
    noise = torch.ones(2, tiny.group("res8").size)
    code = tiny.compose(anchor, {"res8": noise})
    assert torch.allclose(tiny.group_code(code, "res8") - tiny.group_code(anchor, "res8"), noise, atol=1e-6)
    assert torch.equal(tiny.group_code(code, "res4"), tiny.group_code(anchor, "res4"))
    eps, _ = tiny.split(code)
    assert torch.equal(eps[5].flatten(1), tiny.group_code(code, "res8")[:, :8 * 64])


def test_each_group_changes_the_image_and_pixels_changes_only_the_sampling(tiny):
    anchor = sample_prior(tiny.prior, sv.Streams(1), range(2), tiny.latent_dim)
    with torch.no_grad():
        base = tiny.decode(anchor)
        for g in tiny.groups:
            moved = tiny.decode(tiny.compose(anchor, {g.name: torch.full((2, g.size), 0.5)}))
            assert (moved - base).abs().max() > 0.05, g.name
        eps, pixels = tiny.split(anchor)
        params = tiny.dmol_params(eps)
    moved = tiny.compose(anchor, {"pixels": torch.full((2, tiny.group("pixels").size), 0.5)})
    eps2, pixels2 = tiny.split(moved)
    assert all(torch.equal(a, b) for a, b in zip(eps, eps2)) and not torch.equal(pixels, pixels2)
    assert params.shape == (2, 32, 32, 30)


def test_output_mean_is_deterministic_and_has_no_pixels_group(vd, tiny):
    m = sv.load_model("vdvae", path=vd / "tiny_state_dict.pt", config=vd / "tiny_config.json", output="mean")
    assert "pixels" not in m.group_names and m.latent_dim == tiny.latent_dim - 6144
    code = sample_prior(m.prior, sv.Streams(0), range(3), m.latent_dim)
    with torch.no_grad():
        a, b = m.decode(code), m.decode(code)
        params = m.dmol_params(m.split(code)[0])
    assert torch.equal(a, b) and a.shape == (3, 3, 32, 32)
    # the most likely component's mean, coupled: R is its clipped mean
    k = params[..., :3].argmax(-1)
    mu_r = params[..., 3:6].gather(-1, k[..., None]).squeeze(-1).clamp(-1, 1)
    assert torch.equal(a[:, 0] * 255, uint8_levels(mu_r))
    assert m.model_id != tiny.model_id


def test_views_are_batch_invariant_and_the_model_pickles(tiny):
    sampler = sv.ViewSampler(tiny, views=2, seed=3, block=4)
    whole = sampler.sample(range(10)).images
    parts = torch.cat([sampler.sample(range(s, min(s + 3, 10))).images for s in range(0, 10, 3)])
    assert whole.shape == (10, 3, 3, 32, 32) and torch.equal(whole, parts)
    again = pickle.loads(pickle.dumps(tiny))
    assert again.model_id == tiny.model_id
    assert torch.equal(sv.ViewSampler(again, views=2, seed=3, block=4).sample([7]).images, whole[7:8])
    deltas = sampler.latents(range(4)).deltas
    assert deltas.shape == (4, 2, 6) and (deltas > 0).all()  # the default policy moves every group


def test_continuous_views_stream_the_model(tiny):
    from synthviews.data import ContinuousViews

    ds = ContinuousViews(tiny, views=1, epoch_samples=8, batch_size=4, t_x=None, seed=2)
    batches = list(ds)
    assert len(batches) == 2
    views, index = batches[0]
    assert torch.equal(index, torch.arange(4)) and views[0].shape == (4, 3, 32, 32)


def test_describe_reports_the_mit_licence_and_the_file(tiny, vd):
    d = tiny.describe()
    assert d["family"] == "vdvae" and d["license"] == "mit" and "openai/vdvae" in d["license_link"]
    assert d["source"]["path"] == str(vd / "tiny_state_dict.pt") and len(d["source"]["sha256"]) == 64
    assert d["config"]["hparams"]["dec_blocks"] == "1x2,4m1,4x2,8m4,8x1,16m8,16x1,32m16,32x1"


# --- checkpoint layout --------------------------------------------------------------------

def _names_shapes(manifest):
    return [(name, tuple(shape)) for name, shape, _ in manifest]


@pytest.mark.parametrize("name,release", [("imagenet32", "imagenet32"), ("ffhq256", "ffhq256"), ("tiny", None)])
def test_the_manifests_match_the_names_and_shapes_the_loader_expects(vd, tiny_cfg, name, release):
    manifest = json.loads((vd / f"manifest_{name}.json").read_text())
    hparams = RELEASES[release] if release else tiny_cfg["hparams"]
    expected = list(generator_shapes(resolve_hparams(hparams, name)).items())
    state = {k: torch.empty(0) for k, _ in _names_shapes(manifest)}
    kept = list(generator_state(state, "manifest"))  # the loader's own filter: encoder and posterior heads out
    assert kept == [k for k, _ in expected]  # same names, same (official) order
    assert [s for k, s in _names_shapes(manifest) if k in dict(expected)] == [s for _, s in expected]
    meta = {k: torch.empty(s, device="meta") for k, s in _names_shapes(manifest) if k in dict(expected)}
    assert infer_release(meta) == release
    n_gen = sum(int(np.prod(s)) for _, s in expected)
    configs = json.loads((vd / "real_configs.json").read_text())
    assert n_gen == (configs[release] if release else tiny_cfg)["n_params_generator_only"]


@pytest.mark.parametrize("release", list(RELEASES))
def test_every_release_config_has_the_published_block_counts_and_sizes(vd, release):
    real = json.loads((vd / "real_configs.json").read_text())[release]
    cfg = resolve_hparams(RELEASES[release], release)
    assert cfg == resolve_hparams(real["hparams"], release)  # the built-in hparams are the release's
    shapes = generator_shapes(cfg)
    assert sum(int(np.prod(s)) for s in shapes.values()) == real["n_params_generator_only"]
    specs = block_specs(cfg)
    counts = {}
    for s in specs:
        counts[str(s.res)] = counts.get(str(s.res), 0) + 1
    assert counts == real["latent_blocks_per_resolution"] and len(specs) == real["n_latent_blocks"]
    assert sum(cfg["zdim"] * s.res**2 for s in specs) == real["latent_dims_total"]


@pytest.mark.parametrize("release", [*RELEASES, "tiny"])
def test_the_built_decoder_has_the_names_shapes_and_order_the_checks_expect(tiny_cfg, release):
    """generator_shapes (what files are checked against) and the module (what load_state_dict fills)
    must agree tensor for tensor; on the meta device, so even ffhq1024 costs no memory."""
    cfg = resolve_hparams(tiny_cfg["hparams"] if release == "tiny" else RELEASES[release], release)
    with torch.device("meta"):
        decoder = Decoder(cfg)
    built = [(f"decoder.{k}", tuple(v.shape)) for k, v in decoder.state_dict().items()]
    assert built == list(generator_shapes(cfg).items())


def test_a_load_parses_the_block_string_twice_at_most(vd, monkeypatch):
    """Once to check the config, once for the latents, the file check and the module (it was ~10 times)."""
    import synthviews.models.vdvae.model as model_module
    import synthviews.models.vdvae.networks as networks

    calls = []
    counted = lambda *a, **k: calls.append(1) or block_specs(*a, **k)  # noqa: E731
    monkeypatch.setattr(networks, "block_specs", counted)
    monkeypatch.setattr(model_module, "block_specs", counted)
    sv.load_model("vdvae", path=vd / "tiny_state_dict.pt", config=vd / "tiny_config.json")
    assert 1 <= len(calls) <= 2


def test_the_official_ema_layout_loads_by_path(tiny, official):
    assert len(official) == 368 and any(k.startswith("encoder.") for k in official)
    assert tiny.source["path"].endswith("tiny_state_dict.pt")
    sd = tiny.decoder.state_dict()
    compared = [k for k in official if k.removeprefix("decoder.") in sd]
    assert len(compared) == len(sd) == len(generator_shapes(tiny.hparams))  # every generator tensor, once
    assert all(torch.equal(sd[k.removeprefix("decoder.")], official[k]) for k in compared)


def test_module_prefixed_training_file_loads_to_the_same_model(tiny, official, tmp_path, vd):
    path = tmp_path / "tiny-model.th"
    torch.save({f"module.{k}": v for k, v in official.items()}, path)
    m = sv.load_model("vdvae", path=path, config=vd / "tiny_config.json")
    assert m.weights_sha256() == tiny.weights_sha256()
    w = sv.load_model("vdvae", weights=official, config=vd / "tiny_config.json")
    assert w.weights_sha256() == tiny.weights_sha256() and w.source is None


def test_config_from_a_mapping_or_a_yaml_file(tiny, tiny_cfg, official, tmp_path):
    import yaml

    m = sv.load_model("vdvae", weights=official, config=tiny_cfg["hparams"])
    assert m.config == tiny.config
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_cfg["hparams"]))
    assert sv.load_model("vdvae", weights=official, config=tmp_path / "tiny.yaml").config == tiny.config


def _bad(tmp_path, state, name="bad.th"):
    path = tmp_path / name
    torch.save(state, path)
    return path


@pytest.mark.parametrize("change,match", [
    (lambda sd: sd.pop("decoder.dec_blocks.3.prior.c2.weight"), "1 missing tensor.*dec_blocks.3.prior.c2.weight"),
    (lambda sd: sd.__setitem__("decoder.extra", torch.zeros(1)), "1 unexpected tensor.*decoder.extra"),
    (lambda sd: sd.__setitem__("decoder.gain", torch.zeros(1, 16, 1, 1)), "decoder.gain is \\[1, 16, 1, 1\\]"),
    (lambda sd: sd.__setitem__("decoder.bias", torch.zeros(1, 32, 1, 1, dtype=torch.int32)), "non-float"),
])
def test_mismatching_files_name_the_problem(official, tmp_path, vd, change, match):
    sd = dict(official)
    change(sd)
    path = _bad(tmp_path, sd)
    with pytest.raises(ConfigError, match=match) as e:
        sv.load_model("vdvae", path=path, config=vd / "tiny_config.json")
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_encoder_and_posterior_heads_are_ignored(official, tmp_path, vd, tiny):
    sd = {k: v for k, v in official.items() if not k.startswith("encoder.") and ".enc." not in k}
    assert len(sd) < len(official)
    m = sv.load_model("vdvae", path=_bad(tmp_path, sd, "gen-only.pt"), config=vd / "tiny_config.json")
    assert m.weights_sha256() == tiny.weights_sha256()


def test_wrong_config_for_a_file(vd):
    with pytest.raises(ConfigError, match="does not match the VDVAE generator of config 'imagenet32'.*trained with"):
        sv.load_model("vdvae", path=vd / "tiny_state_dict.pt", config="imagenet32")
    with pytest.raises(ConfigError, match="give config=.*match none of the built-in configs"):
        sv.load_model("vdvae", path=vd / "tiny_state_dict.pt")


def test_files_that_are_no_vdvae_checkpoint(tmp_path, compat_dir, vd):
    with pytest.raises(ConfigError, match="not a VDVAE state dict.*another model family"):
        sv.load_model("vdvae", path=compat_dir / "bigbigan" / "tiny_state_dict.pt", config="imagenet32")
    path = _bad(tmp_path, {"vae.decoder.gain": torch.ones(1)})
    with pytest.raises(ConfigError, match="prefix 'vae.'; strip it"):
        sv.load_model("vdvae", path=path, config="imagenet32")
    with pytest.raises(ConfigError, match="never runs code"):
        sv.load_model("vdvae", path=_bad(tmp_path, {"decoder.gain": ConfigError("x")}), config="imagenet32")
    with pytest.raises(ConfigError, match="missing.th"):
        sv.load_model("vdvae", path=tmp_path / "missing.th", config="imagenet32")


@pytest.mark.parametrize("config,match", [
    ("imagenet33", "neither a built-in config .*imagenet32"),
    ("nothere.json", "does not exist"),
    ({"image_size": 32, "width": 8, "dec_blocks": "1x2,4m1,32m4", "widht": 3}, "unknown VDVAE hparam.*widht"),
    ({"image_size": 32, "width": 8}, "dec_blocks missing"),
    ({"image_size": 32, "width": 8, "dec_blocks": "1x2,4q1,32m4"}, "'4q1' is not RxK"),
    ({"image_size": 32, "width": 8, "dec_blocks": "1x2,32m3"}, "lower resolution that divides it"),
    ({"image_size": 64, "width": 8, "dec_blocks": "1x2,32m1"}, "no block at image_size 64"),
    ({"image_size": 32, "width": 8, "dec_blocks": "1x2,32m1", "custom_width_str": "1:4"}, "has only 4"),
    ({"image_size": 32, "width": 8, "dec_blocks": "1x2,32m1", "num_mixtures": 0}, "num_mixtures must be"),
    ({"image_size": 32, "width": 8, "dec_blocks": "1x2,4m0,32m4"}, "block 2 \\(4m0\\).*lower resolution"),
    ({"image_size": 32, "width": 8, "dec_blocks": "1x2,32m1,32x" + "9" * 5000}, "'32x99999.* is not RxK"),
    ({"image_size": 32, "width": 8, "dec_blocks": "1x²,32m1"}, "'1x²' is not RxK"),
    ({"image_size": 32, "width": 8, "dec_blocks": "1x2,32m1", "custom_width_str": "1:" + "9" * 5000},
     "is not 'resolution:width'"),
    ({"image_size": 32, "width": 8, "dec_blocks": "1x2,32m1", "custom_width_str": "²:8"}, "'²:8' is not"),
    ({"image_size": 4096, "width": 8, "zdim": 1024, "dec_blocks": "1x2,4096m1,4096x900"},
     "latent code of 15,479,280,240,640 values.*limit of 67,108,864"),
])
def test_bad_configs_name_the_problem(config, match):
    with pytest.raises(ConfigError, match=match) as e:
        sv.load_model("vdvae", config=config, random_weights=True)
    assert len(str(e.value)) < 300 and "\n" not in str(e.value)


def test_the_code_length_cap_is_the_pixels_and_every_blocks_eps():
    """At 2048 px the pixels group alone is 2048^2 * 13 = 54.5 M values: under the cap; a block at 2048
    with zdim 4 adds 16.8 M and goes over. ffhq1024 (32.8 M) is the largest release."""
    ok = {"image_size": 2048, "width": 4, "zdim": 1, "num_mixtures": 10, "dec_blocks": "1,2048m1"}
    cfg = resolve_hparams(ok, "ok")
    assert sum(cfg["zdim"] * s.res**2 for s in block_specs(cfg)) + 2048**2 * 13 <= MAX_CODE
    with pytest.raises(ConfigError, match=f"latent code of {2048**2 * 17 + 4:,} values.*{MAX_CODE:,}"):
        resolve_hparams({**ok, "zdim": 4}, "big")


def test_messages_about_what_a_file_holds_stay_short(official, tmp_path, vd):
    """Names taken from a config or a state dict (thousands of them, or kilobytes long) are cut in errors."""
    hparams = {f"extra{i}": 1 for i in range(2000)} | {"image_size": 32, "width": 8, "dec_blocks": "1x2,32m1"}
    with pytest.raises(ConfigError, match="unknown VDVAE hparam.*'extra0', 'extra1', 'extra2' and 1997 more") as e:
        sv.load_model("vdvae", config=hparams, random_weights=True)
    assert len(str(e.value)) < 300
    path = _bad(tmp_path, {**official, "decoder." + "k" * 5000: torch.zeros(1)})
    with pytest.raises(ConfigError, match="1 unexpected tensor.*kkk\\.\\.\\.") as e:
        sv.load_model("vdvae", path=path, config=vd / "tiny_config.json")
    assert len(str(e.value)) < 300 + len(str(path))
    with pytest.raises(ConfigError, match="unknown group.*and 1997 more; groups: res1") as e:
        sv.load_model("vdvae", config={"image_size": 32, "width": 8, "dec_blocks": "1x2,32m1"}, random_weights=True,
                      temperature={"g" * 1000 + str(i): 1.0 for i in range(2000)})
    assert len(str(e.value)) < 300


def test_weights_options_exclude_each_other(vd, official):
    with pytest.raises(ConfigError, match="no weights given"):
        sv.load_model("vdvae", config="imagenet32")
    with pytest.raises(ConfigError, match="exclude each other"):
        sv.load_model("vdvae", path=vd / "tiny_state_dict.pt", weights=official, config="imagenet32")
    with pytest.raises(ConfigError, match="output must be"):
        sv.load_model("vdvae", config="imagenet32", random_weights=True, output="median")
    for not_a_bool in (1, 0.0, "true"):
        with pytest.raises(ConfigError, match="random_weights must be true or false"):
            sv.load_model("vdvae", config="imagenet32", random_weights=not_a_bool)


def test_random_weights_are_seeded_and_leave_the_global_rng_alone(tiny_cfg):
    state = torch.random.get_rng_state()
    a = sv.load_model("vdvae", config=tiny_cfg["hparams"], random_weights=True, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = sv.load_model("vdvae", config=tiny_cfg["hparams"], random_weights=True, seed=1)
    c = sv.load_model("vdvae", config=tiny_cfg["hparams"], random_weights=True, seed=2)
    assert a.model_id == b.model_id != c.model_id and a.source == {"random_weights": True, "seed": 1}


# --- CLI and analysis ---------------------------------------------------------------------

def _official_file(model: VDVAE, manifest: list, path) -> None:
    """Save ``model``'s weights as the official EMA file lays them out: encoder and posterior heads
    (random here), then the generator, in the manifest's order."""
    own = {f"decoder.{k}": v for k, v in model.decoder.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    torch.save({name: own[name] if name in own else 0.01 * torch.randn(shape, generator=gen)
                for name, shape, _ in manifest}, path)


def test_cli_preview_generate_and_info(tmp_path, vd, tiny_cfg, capsys):
    path = tmp_path / "tiny-model-ema.th"
    _official_file(VDVAE(config=tiny_cfg["hparams"], random_weights=True, seed=4),
                   json.loads((vd / "manifest_tiny.json").read_text()), path)
    config = str(vd / "tiny_config.json")
    args = ["--model", "vdvae", "--path", str(path), "--config", config]
    assert main(["preview", *args, "--samples", "2", "--views", "2", "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0
    assert main(["generate", *args, "--samples", "8", "--out", str(tmp_path / "ds"), "--no-progress"]) == 0
    model = json.loads((tmp_path / "ds" / "synthviews.json").read_text())["splits"]["train"]["config"]["model"]
    assert model["family"] == "vdvae" and model["license"] == "mit" and model["source"]["path"] == str(path)
    assert "license: mit" in (tmp_path / "ds" / "README.md").read_text()
    capsys.readouterr()
    assert main(["info", *args]) == 0
    out = capsys.readouterr().out
    assert "res32" in out and "pixels" in out and "license: mit" in out
    assert main(["info"]) == 0 and "vdvae" in capsys.readouterr().out


@pytest.mark.parametrize("extra,match", [
    (["--config", "imagenet33"], "neither a built-in config"),
    (["--config", "imagenet32"], "does not match the VDVAE generator of config 'imagenet32'"),
    (["--config", "imagenet32", "--model-opt", "config=cifar10"], "--config and --model-opt config"),
    ([], "give config="),
])
def test_cli_errors_for_a_wrong_file_or_config(vd, capsys, extra, match):
    assert main(["info", "--model", "vdvae", "--path", str(vd / "tiny_state_dict.pt"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err


def test_cli_config_still_reaches_stylegan2(tmp_path, compat_dir, capsys):
    config = compat_dir / "stylegan2" / "tiny1_config.json"
    assert main(["info", "--model", "stylegan2", "--config", str(config)]) == 0
    assert "0_" in capsys.readouterr().out
    assert sv.load_model("stylegan2", config=json.loads(config.read_text())).family == "stylegan2"


def test_cli_analyze_quick_measures_the_resolution_groups(tiny, vd, tmp_path, capsys):
    """``analyze --quick`` by CLI on the tiny file, cut further (64 pairs, 5 steps): about 10 s."""
    out = tmp_path / "a"
    assert main(["analyze", "--model", "vdvae", "--path", str(vd / "tiny_state_dict.pt"),
                 "--config", str(vd / "tiny_config.json"), "--quick", "--groups", "res1,res32", "--pairs", "64",
                 "--eval-pairs", "64", "--batch", "32", "--eval-batch", "32", "--steps", "5", "--seeds", "1",
                 "--critic-resolution", "16", "--preview-samples", "2", "--device", "cpu", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "res1" in printed and "res32" in printed and "report.md" in printed
    assert (out / "report.md").exists() and (out / "preview.png").stat().st_size > 0
    result = json.loads((out / "results.json").read_text())
    assert result["groups"] == ["res1", "res32"] and result["settings"]["stds"] == [0.5, 2.0]  # --quick's stds
    policy = sv.load_policy(out / "policy.yaml")
    assert set(policy.to_dict()["groups"]) <= set(tiny.group_names)


@pytest.mark.slow
def test_preview_of_a_random_real_imagenet32_file_in_the_official_layout(tmp_path, vd, capsys):
    """The 119 M-parameter EMA layout: loads by path with the config named or inferred, previews by CLI."""
    path = tmp_path / "imagenet32-iter-0-model-ema.th"
    _official_file(VDVAE(config="imagenet32", random_weights=True, output="mean"),
                   json.loads((vd / "manifest_imagenet32.json").read_text()), path)
    args = ["--model", "vdvae", "--path", str(path)]
    out = tmp_path / "x.png"
    assert main(["preview", *args, "--config", "imagenet32", "--samples", "1", "--views", "1", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    m = sv.load_model("vdvae", path=path)  # the config is inferred from the shapes
    assert m.config["hparams"] == resolve_hparams(RELEASES["imagenet32"], "x") and m.latent_dim == 765_216 + 13_312
