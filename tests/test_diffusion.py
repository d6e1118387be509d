"""The ``diffusion`` family on tiny random-weight diffusers models saved into temporary folders.

Pixel-space, latent-space (VQ and KL decoders) and class-conditional UNets: loading by path, latent
groups, compose/decode, the samplers against diffusers' own ``step``, shared trajectories to the
last bit, batch invariance, bad folders (one ConfigError line naming the file) and the CLI.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from tiny_diffusion import UNET, make_folder  # noqa: E402

import synthviews as sv  # noqa: E402
from synthviews.cli import main  # noqa: E402
from synthviews.errors import ConfigError  # noqa: E402
from synthviews.models.diffusion import parse_step_groups  # noqa: E402
from synthviews.views import ViewSampler  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusion")
    return {kind: make_folder(root, kind) for kind in ("pixel", "vq", "kl", "cond")}


def load(folder, **kwargs):
    return sv.load_model("diffusion", path=folder, **{"steps": 6, **kwargs})


# --- groups and codes ---------------------------------------------------------------

def test_groups_cover_init_and_the_noisy_steps(folders):
    model = load(folders["pixel"], steps=10)
    assert model.image_shape == (1, 16, 16)
    # DDPM's last step (t = 0) adds no noise: 9 noisy steps, split 0_2, 2_4, 4_6, 6_9
    assert model.group_names == ("init", "steps0_2", "steps2_4", "steps4_6", "steps6_9")
    assert [g.size for g in model.groups] == [256, 512, 512, 512, 768]
    assert model.latent_dim == 256 * 10
    assert model.prior.to_dict() == {"mean": 0.0, "std": 1.0, "truncation": None}
    assert load(folders["pixel"], steps=10, groups="0_3,3_9").group_names == ("init", "steps0_3", "steps3_9")
    assert len(load(folders["pixel"], steps=10, groups="steps").groups) == 10


def test_step_group_specs_are_checked():
    assert parse_step_groups(4, 49) == [(0, 12), (12, 24), (24, 36), (36, 49)]
    assert parse_step_groups([[0, 5], [5, 9]], 9) == [(0, 5), (5, 9)]
    assert parse_step_groups(" 3 ", 9) == [(0, 3), (3, 6), (6, 9)]
    for bad, match in ((0, "cannot split"), ("0_3,4_9", "in no group"), ("0_5,3_9", "overlaps"),
                       ("0_3", "in no group"), ("a_b", "not understood"), ("0_12", "out of bounds"),
                       ("\u00b2", "not understood"), ("9" * 5000, "not understood"), ("0_\u00b2", "not understood"),
                       ("0_" + "9" * 5000, "not understood"), ("1234567", "not understood")):
        with pytest.raises(ConfigError, match=match):
            parse_step_groups(bad, 9)


def test_compose_keeps_unit_variance_and_zero_noise_gives_the_anchor(folders):
    model = load(folders["pixel"])
    anchor = torch.randn(3, model.latent_dim)
    assert torch.equal(model.compose(anchor, {}), anchor)
    zero = {g: torch.zeros(3, model.group(g).size) for g in model.group_names}
    assert torch.equal(model.compose(anchor, zero), anchor)
    noise = torch.randn(3, model.group("steps0_1").size, dtype=torch.float64) * 2.0
    code = model.compose(anchor, {"steps0_1": noise})
    assert torch.equal(model.group_code(code, "init"), model.group_code(anchor, "init"))  # other groups untouched
    mixed = model.group_code(code, "steps0_1")
    expected = (model.group_code(anchor, "steps0_1") + noise.float()) / torch.sqrt(1 + noise.float().pow(2).mean(1,
                                                                                                          keepdim=True))
    torch.testing.assert_close(mixed, expected)
    assert abs(float(mixed.std()) - 1) < 0.1  # std 2 noise, rescaled: unit variance again
    raw = load(folders["pixel"], unit_noise=False).compose(anchor, {"steps0_1": noise})
    torch.testing.assert_close(raw[:, 256:512], anchor[:, 256:512] + noise.float())


def test_decode_is_a_pure_per_row_function_of_the_code(folders):
    model = load(folders["pixel"])
    code = torch.randn(5, model.latent_dim)
    torch.manual_seed(1)
    a = model.decode(code)
    torch.manual_seed(2)  # no global RNG is used
    b = model.decode(code)
    assert a.shape == (5, 1, 16, 16) and torch.equal(a, b)
    assert 0 <= float(a.min()) and float(a.max()) <= 1 and float(a.std()) > 0.01
    late = code.clone()
    late[:, -256:] += 1.0  # the last noisy step's noise changes the image, but little
    early = code.clone()
    early[:, :256] += 1.0
    d_late, d_early = (model.decode(late) - a).abs().mean(), (model.decode(early) - a).abs().mean()
    assert 0 < d_late < d_early


# --- samplers against diffusers' own step -------------------------------------------------

SCHEDULER_OF = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "euler_a": "EulerAncestralDiscreteScheduler"}


def test_gradients_through_decode_checkpoint_the_unet_and_equal_plain_backprop(folders, monkeypatch):
    """A walker trains through the sampler: the UNet calls keep no activations (recomputed in backward), which
    must give plain backprop's outputs and gradients; decoding without gradients never checkpoints."""
    import synthviews.models.diffusion.model as family

    model = load(folders["cond"], class_label=1)
    code = model.compose(torch.randn(3, model.latent_dim, generator=torch.Generator().manual_seed(4)), {})
    calls = []

    def counting(fn, *args, use_reentrant):
        calls.append(use_reentrant)
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=use_reentrant)

    def run(checkpointing: bool):
        monkeypatch.setattr(family, "checkpoint", counting if checkpointing else lambda fn, *a, **k: fn(*a))
        leaf = code.clone().requires_grad_(True)
        out = model.decode(leaf)
        (grad,) = torch.autograd.grad(out.square().sum(), leaf)
        return out.detach(), grad

    (out_a, grad_a), (out_b, grad_b) = run(True), run(False)
    assert calls and not any(calls)  # one per UNet call, non-reentrant
    assert torch.equal(out_a, out_b) and grad_a.abs().sum() > 0
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-5, atol=1e-7)
    calls.clear()
    monkeypatch.setattr(family, "checkpoint", counting)
    with torch.no_grad():
        assert torch.equal(model.decode(code), out_a)
    model.decode(code)  # grad mode on, but nothing requires a gradient
    assert calls == []


def with_scheduler(folders, tmp_path, scheduler: str, drop=(), **config) -> Path:
    """The pixel folder with another scheduler config (``drop``: keys left out of the file)."""
    folder = tmp_path / "sched"
    shutil.copytree(folders["pixel"], folder)
    shutil.rmtree(folder / "scheduler")
    getattr(diffusers, scheduler)(num_train_timesteps=100, **config).save_pretrained(folder / "scheduler")
    path = folder / "scheduler" / "scheduler_config.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in data.items() if k not in drop}))
    return folder


def assert_matches_diffusers(folder: Path, sampler: str, steps: int = 8, eta: float = 1.0):
    """Our decode against the diffusers scheduler's own step() (the class the sampler names, built from the
    folder's file as from_pretrained resolves it), given the same noises."""
    model = load(folder, steps=steps, sampler=sampler, **({"eta": eta} if sampler == "ddim" else {}))
    ref = getattr(diffusers, SCHEDULER_OF[sampler]).from_pretrained(folder / "scheduler")
    ref.set_timesteps(steps)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 16, 16, generator=gen)
    slots = [x.reshape(2, -1)]
    sample = x * ref.init_noise_sigma
    with torch.no_grad():
        for t in ref.timesteps:
            out = model.unet(ref.scale_model_input(sample, t), t).sample
            noise_seed = int(t * 7) + 11
            step_kwargs = {"eta": eta} if sampler == "ddim" else {}
            sample = ref.step(out, t, sample, generator=torch.Generator().manual_seed(noise_seed),
                              **step_kwargs).prev_sample
            noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(noise_seed))
            if len(slots) < len(model.plan.noisy) + 1:  # the noisy steps come first
                slots.append(noise.reshape(2, -1))
        ours = model.decode(torch.cat(slots, dim=1))
    torch.testing.assert_close(ours, ((sample.clamp(-1, 1) + 1) / 2), atol=2e-4, rtol=0)
    return model


@pytest.mark.parametrize("sampler,eta", [("ddpm", 1.0), ("ddim", 0.7), ("euler_a", 1.0)])
def test_each_sampler_matches_the_diffusers_scheduler(folders, tmp_path, sampler, eta):
    assert_matches_diffusers(with_scheduler(folders, tmp_path, SCHEDULER_OF[sampler]), sampler, eta=eta)


CONFIGS = {  # sampler -> scheduler configs beyond the defaults, each checked against diffusers' step()
    "ddpm": [dict(prediction_type="v_prediction"), dict(prediction_type="sample"), dict(clip_sample=False),
             dict(clip_sample_range=0.5), dict(variance_type="fixed_small_log"), dict(variance_type="fixed_large"),
             dict(timestep_spacing="trailing"), dict(timestep_spacing="linspace"), dict(steps_offset=1),
             dict(variance_type="fixed_large", timestep_spacing="trailing")],
    "ddim": [dict(prediction_type="v_prediction"), dict(prediction_type="sample", clip_sample_range=0.5),
             dict(clip_sample=False), dict(timestep_spacing="trailing"), dict(timestep_spacing="linspace"),
             dict(steps_offset=1), dict(set_alpha_to_one=False)],
    "euler_a": [dict(prediction_type="v_prediction"), dict(timestep_spacing="trailing"),
                dict(timestep_spacing="linspace"), dict(steps_offset=1)],
}


@pytest.mark.parametrize("sampler,config", [(s, c) for s, cs in CONFIGS.items() for c in cs],
                         ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()))
def test_the_samplers_match_diffusers_on_other_configs(folders, tmp_path, sampler, config):
    assert_matches_diffusers(with_scheduler(folders, tmp_path, SCHEDULER_OF[sampler], **config), sampler, eta=0.6)


def test_settings_are_what_diffusers_resolves_not_what_the_file_says(folders, tmp_path):
    """DDPM's and DDIM's clip_sample defaults to true: a file without it clips, as diffusers' step() does."""
    folder = with_scheduler(folders, tmp_path, "DDPMScheduler", drop=("clip_sample", "clip_sample_range"))
    assert "clip_sample" not in json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert assert_matches_diffusers(folder, "ddpm").plan.clip == 1.0
    shutil.rmtree(folder)
    euler = with_scheduler(folders, tmp_path, "EulerAncestralDiscreteScheduler")  # no clip_sample key at all
    assert assert_matches_diffusers(euler, "ddpm").plan.clip == 1.0  # the DDPM class used resolves it
    assert load(euler).plan.clip is None  # Euler ancestral does not clip


@pytest.mark.parametrize("config,noisy", [(dict(), 7), (dict(timestep_spacing="trailing"), 7),
                                          (dict(steps_offset=1), 7), (dict(variance_type="fixed_large"), 7),
                                          (dict(variance_type="fixed_large", timestep_spacing="trailing"), 8)])
def test_a_noise_free_last_step_has_no_slot(folders, tmp_path, config, noisy):
    """The last DDPM step goes to alpha_bar = 1: its posterior variance is 0 even when its t > 0 (trailing
    spacing, steps_offset); only fixed_large's beta adds noise there, and only for t > 0."""
    model = load(with_scheduler(folders, tmp_path, "DDPMScheduler", **config), steps=8)
    assert len(model.plan.noisy) == noisy and model.latent_dim == 256 * (1 + noisy)
    assert model.plan.steps[-1].noise_coef == 0 or noisy == 8


# --- shared trajectories --------------------------------------------------------------

def _views(model, anchor: torch.Tensor, spec: dict[int, list[str]]) -> torch.Tensor:
    """codes (S, 1+K, D): positive k perturbs the groups spec[k] with std 1 noise."""
    gen = torch.Generator().manual_seed(5)
    codes = [anchor]
    for k in sorted(spec):
        codes.append(model.compose(anchor, {g: torch.randn(anchor.shape[0], model.group(g).size, generator=gen)
                                            for g in spec[k]}))
    return torch.stack(codes, dim=1)


def count_unet_calls(model) -> list:
    calls = []
    handle = model.unet.register_forward_pre_hook(lambda *_: calls.append(1))  # one call: one chunk of rows
    return calls, handle


def expected_calls(model, own_from: list[int], batch: int) -> int:
    """UNet chunks when the rows start their own trajectories at the steps ``own_from``."""
    n = len(model.plan.steps)
    return sum(-(-sum(f <= i for f in own_from) // batch) for i in range(n))


def own_step(model, groups: list[str]) -> int:
    """The first step a positive perturbing ``groups`` needs its own UNet call for."""
    if not groups:
        return len(model.plan.steps)
    if "init" in groups:
        return 0
    return min(model.plan.noisy[int(g[len("steps"):].split("_")[0])] + 1 for g in groups)


@pytest.mark.parametrize("kind,options", [("pixel", {}), ("vq", {}), ("kl", {}), ("cond", {}),
                                          ("pixel", {"sampler": "ddim", "eta": 0.5}),
                                          ("pixel", {"sampler": "euler_a"})])
def test_shared_trajectories_give_the_bits_of_independent_decoding(folders, kind, options):
    model = load(folders[kind], steps=8, unet_batch=4, **options)
    g = model.group_names
    spec = {1: [g[-1]], 2: [g[2]], 3: ["init"], 4: [], 5: [g[1], g[-1]]}
    anchor = torch.randn(3, model.latent_dim, generator=torch.Generator().manual_seed(0))
    codes = _views(model, anchor, spec)
    calls, handle = count_unet_calls(model)
    with torch.no_grad():
        shared = model.decode_views(codes)
        n_shared = len(calls)
        alone = torch.stack([model.decode(codes[:, v]) for v in range(codes.shape[1])], dim=1)
        calls.clear()
        together = model.decode(codes.flatten(0, 1)).view_as(shared)
        n_alone = len(calls)
    handle.remove()
    assert torch.equal(shared, alone) and torch.equal(shared, together)
    assert torch.equal(shared[:, 4], shared[:, 0])  # an unperturbed positive is its anchor
    assert not torch.equal(shared[:, 1], shared[:, 0])
    own = [0] + [own_step(model, spec[k]) for k in sorted(spec)]
    assert n_alone == 8 * 5  # 8 steps x 18 rows in chunks of 4
    assert n_shared == expected_calls(model, own * 3, 4) < n_alone  # the positives really follow their anchor


def test_a_positive_of_another_class_has_a_trajectory_of_its_own(folders):
    model = load(folders["cond"], steps=8, unet_batch=4)
    anchor = torch.randn(2, model.latent_dim, generator=torch.Generator().manual_seed(0))
    classes = model._classes(anchor)
    other = anchor.clone()
    other[:, -1] = torch.where(classes == 0, 2.0, -2.0)  # class slot -> class 2 or 0
    assert (model._classes(other) != classes).all()
    late = model.compose(anchor, {model.group_names[-1]: torch.randn(2, model.group(model.group_names[-1]).size)})
    codes = torch.stack([anchor, other, late], dim=1)
    calls, handle = count_unet_calls(model)
    with torch.no_grad():
        shared = model.decode_views(codes)
    handle.remove()
    alone = torch.stack([model.decode(codes[:, v]) for v in range(3)], dim=1)
    assert torch.equal(shared, alone) and not torch.equal(shared[:, 1], shared[:, 0])
    assert len(calls) == expected_calls(model, [0, 0, own_step(model, [model.group_names[-1]])] * 2, 4)


def test_the_unet_rows_do_not_depend_on_their_neighbours_at_a_fixed_chunk_size(folders):
    """Why sharing is exact: at a fixed batch shape a row's output ignores its position and the other rows
    (the batch shape itself does change the rounding, which is why the chunk size is fixed)."""
    model = load(folders["pixel"])
    x = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.full((8,), 40.0)
    with torch.no_grad():
        base = model.unet(x, t).sample
        perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
        assert torch.equal(model.unet(x[perm], t).sample, base[perm])
        other = x.clone()
        other[4:] = torch.randn(4, 1, 16, 16)
        assert torch.equal(model.unet(other, t).sample[:4], base[:4])


def test_view_sampler_shares_and_stays_batch_invariant(folders):
    model = load(folders["pixel"], steps=6, unet_batch=8)
    policy = {"kind": "gaussian", "groups": {"steps3_5": {"std": 1.0}}}
    sampler = ViewSampler(model, policy, views=3, seed=2, device="cpu", block=4)
    whole = sampler.sample(np.arange(8))
    parts = [sampler.sample(np.array(i)) for i in ([5, 1], [7, 0, 3])]
    assert torch.equal(parts[0].images, whole.images[[5, 1]]) and torch.equal(parts[1].images, whole.images[[7, 0, 3]])
    with torch.no_grad():  # on one thread, as the sampler's blocks (the thread count changes the rounding)
        alone = model.decode(whole.codes.flatten(0, 1)[:8])  # the first two anchors' views, independently
    assert torch.equal(alone.view(2, 4, 1, 16, 16), whole.images[:2])
    assert whole.deltas.shape == (8, 3, len(model.groups))
    assert (whole.deltas[:, :, model.group_names.index("steps3_5")] > 0).all()
    assert (whole.deltas[:, :, model.group_names.index("init")] == 0).all()
    with pytest.raises(ConfigError, match="compile: the diffusion decode is not compiled"):
        ViewSampler(model, policy, compile=True)


def test_class_conditional_positives_keep_the_anchors_class(folders):
    model = load(folders["cond"])
    assert model.latent_dim == 256 * 6 + 1 and model.class_label == "sample"
    code = torch.randn(64, model.latent_dim, generator=torch.Generator().manual_seed(0))
    classes = model._classes(code)
    assert set(classes.tolist()) == {0, 1, 2}
    noise = {g: torch.randn(64, model.group(g).size) for g in model.group_names}
    assert torch.equal(model._classes(model.compose(code, noise)), classes)
    fixed = load(folders["cond"], class_label=2)
    assert fixed.latent_dim == 256 * 6
    one = fixed.decode(code[:2, :-1])
    assert not torch.equal(one, load(folders["cond"], class_label=0).decode(code[:2, :-1]))
    with pytest.raises(ConfigError, match="class_label"):
        load(folders["cond"], class_label=3)
    with pytest.raises(ConfigError, match="class-conditional"):
        load(folders["pixel"], class_label=1)


def test_latent_models_decode_through_their_decoder(folders):
    for kind in ("vq", "kl"):
        model = load(folders[kind])
        assert model.image_shape == (1, 16, 16) and model.latent_shape == (2, 8, 8)
        assert model.groups[0].size == 128
        img = model.decode(torch.randn(2, model.latent_dim))
        assert img.shape == (2, 1, 16, 16)


def test_options_and_describe(folders):
    model = load(folders["pixel"], sampler="ddim", eta=0.5, steps=5)
    d = model.describe()
    assert d["family"] == "diffusion" and d["config"]["sampler"] == "ddim" and d["config"]["eta"] == 0.5
    assert d["source"]["path"] == str(folders["pixel"]) and len(d["source"]["sha256"]) == 64
    assert model.model_id != load(folders["pixel"], sampler="ddim", eta=0.5, steps=5, unet_batch=8).model_id
    assert d["license"] == "unknown"
    index = json.loads((folders["pixel"] / "model_index.json").read_text())
    licensed = folders["pixel"].parent / "licensed"
    shutil.copytree(folders["pixel"], licensed)
    (licensed / "model_index.json").write_text(json.dumps({**index, "_synthviews": {"license": "mit"}}))
    assert load(licensed).license == "mit"  # what synthviews' own trainer writes
    for kwargs, match in (({"sampler": "plms"}, "sampler must be one of"), ({"steps": 0}, "steps"),
                          ({"steps": 101}, r"num_train_timesteps of .*scheduler_config\.json"), ({"sampler": "ddim", "eta": 0.0}, "eta 0"),
                          ({"eta": 2.0}, "eta"), ({"unit_noise": "yes"}, "unit_noise"), ({"groups": 99}, "split")):
        with pytest.raises(ConfigError, match=match):
            load(folders["pixel"], **kwargs)
    with pytest.raises(ConfigError, match="give path="):
        sv.load_model("diffusion")


# --- bad folders -------------------------------------------------------------------------

def _broken(folders, tmp_path, edit) -> Path:
    folder = tmp_path / "broken"
    shutil.copytree(folders["pixel"], folder)
    edit(folder)
    return folder


def _json_edit(rel: str, **changes):
    def edit(folder):
        p = folder / rel
        data = json.loads(p.read_text())
        data.update(changes)
        p.write_text(json.dumps(data))
    return edit


def _bin_only(folder):
    (folder / "unet" / "diffusion_pytorch_model.safetensors").rename(folder / "unet" / "diffusion_pytorch_model.bin")


def _other_unet(folder):
    torch.manual_seed(0)
    diffusers.UNet2DModel(**dict(UNET, block_out_channels=(16, 48), in_channels=1, out_channels=1)).save_pretrained(
        folder / "other")
    shutil.copy(folder / "other" / "diffusion_pytorch_model.safetensors", folder / "unet")


BAD = {
    "missing folder": (lambda f: shutil.rmtree(f), "does not exist"),
    "no unet config": (lambda f: (f / "unet" / "config.json").unlink(), r"unet/config\.json does not exist"),
    "invalid json": (lambda f: (f / "unet" / "config.json").write_text("{not json"), r"config\.json is not valid JSON"),
    "unknown unet class": (_json_edit("unet/config.json", _class_name="UNet2DConditionModel"), "never imports"),
    "unknown index class": (_json_edit("model_index.json", unet=["evil", "Payload"]), r"model_index\.json: unet"),
    "foreign component": (_json_edit("model_index.json", text_encoder=["transformers", "CLIPTextModel"]),
                          "not one synthviews loads"),
    "bin only": (_bin_only, r"only diffusion_pytorch_model\.bin .*safetensors only"),
    "shape mismatch": (_other_unet, "shape mismatch"),
    "huge config": (_json_edit("unet/config.json", block_out_channels=[10**6, 10**6]), "block_out_channels"),
    "wrong channels": (_json_edit("unet/config.json", out_channels=2), "out_channels 2 differs"),
    "wrong types": (_json_edit("unet/config.json", in_channels="1"), "in_channels must be an integer"),
    "wrong sample size": (_json_edit("unet/config.json", sample_size=17), r"not divisible by 2\*\*1"),
    "latent without decoder": (_json_edit("unet/config.json", in_channels=4, out_channels=4), "not an image"),
    "scheduler missing": (lambda f: shutil.rmtree(f / "scheduler"), r"scheduler_config\.json does not exist"),
    "scheduler class": (_json_edit("scheduler/scheduler_config.json", _class_name="PNDMScheduler"), "never imports"),
    "scheduler size": (_json_edit("scheduler/scheduler_config.json", num_train_timesteps=10**12), "num_train_timesteps"),
    "scheduler value": (_json_edit("scheduler/scheduler_config.json", beta_schedule="evil"), "cannot make"),
    "index library": (_json_edit("model_index.json", unet=["evil", "UNet2DModel"]), r"evil\.UNet2DModel"),
    "huge attention": (_json_edit("unet/config.json", sample_size=1024), r"unet/config\.json: self-attention over"),
    "beta_start 0": (_json_edit("scheduler/scheduler_config.json", beta_start=0.0),
                     r"scheduler_config\.json: its noise schedule is not valid"),
    "beta_end 2": (_json_edit("scheduler/scheduler_config.json", beta_end=2.0),
                   r"scheduler_config\.json: its noise schedule is not valid"),
    "zero snr": (_json_edit("scheduler/scheduler_config.json", rescale_betas_zero_snr=True), "noise schedule"),
    "huge steps_offset": (_json_edit("scheduler/scheduler_config.json", steps_offset=10**9),
                          r"scheduler_config\.json: the 6 timesteps .* not integers decreasing in \[0, 100\)"),
    "negative steps_offset": (_json_edit("scheduler/scheduler_config.json", steps_offset=-3),
                              r"scheduler_config\.json: the 6 timesteps"),
    "clip range": (_json_edit("scheduler/scheduler_config.json", clip_sample_range="x"),
                   r"scheduler_config\.json: clip_sample_range must be a number"),
    "sample size list": (_json_edit("unet/config.json", sample_size=[16]), r"config\.json: sample_size must be"),
    "fourier time": (_json_edit("unet/config.json", time_embedding_type="fourier"), "time_embedding_type"),
    "learned time": (_json_edit("unet/config.json", time_embedding_type="learned"), "time_embedding_type"),
    "two decoders": (_json_edit("model_index.json", vqvae=["diffusers", "VQModel"], vae=["diffusers", "AutoencoderKL"]),
                     r"model_index\.json: both vqvae and vae"),
    "int weights": (lambda f: _with_unet_dtype(f, torch.int64), r"safetensors: tensor .* is I64; only F32"),
}


def _with_unet_dtype(folder, dtype):
    from safetensors.torch import load_file, save_file

    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({k: v.to(dtype) for k, v in load_file(str(path)).items()}, str(path))


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_folder_is_one_config_error_line_naming_the_file(folders, tmp_path, case):
    edit, match = BAD[case]
    folder = _broken(folders, tmp_path, edit)
    with pytest.raises(ConfigError, match=match) as info:
        load(folder)
    message = str(info.value)
    assert "\n" not in message and str(folder) in message


def test_a_code_of_too_many_values_is_refused_before_anything_is_built(folders, tmp_path):
    """A conv's weights do not depend on the sample size: the config alone must not make every code huge."""
    def edit(folder):
        _json_edit("unet/config.json", sample_size=1024, down_block_types=["DownBlock2D", "DownBlock2D"],
                   up_block_types=["UpBlock2D", "UpBlock2D"], add_attention=False)(folder)
    folder = _broken(folders, tmp_path, edit)
    with pytest.raises(ConfigError, match=r"unet/config\.json: sample_size 1024 x 1024 x 1 channels with 99 noisy "
                                          r"steps gives codes of 104,857,600 values a row, .*at most 63 noisy ones"):
        load(folder, steps=100)


def test_half_precision_weights_load_as_their_float32_values(folders, tmp_path):
    from safetensors.torch import load_file

    for dtype in (torch.float16, torch.bfloat16):
        folder = _broken(folders, tmp_path, lambda f: _with_unet_dtype(f, dtype))
        stored = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
        state = load(folder).unet.state_dict()
        assert state.keys() == stored.keys()
        assert all(state[k].dtype == torch.float32 and torch.equal(state[k], v.float()) for k, v in stored.items())
        shutil.rmtree(folder)
    net = load(folders["pixel"]).unet
    assert not any(p.requires_grad or p.is_meta for p in net.parameters()) and not net.training


def test_a_decoder_the_index_does_not_list_is_ignored(folders, tmp_path):
    folder = _broken(folders, tmp_path, lambda f: shutil.copytree(folders["vq"] / "vqvae", f / "vqvae"))
    model = load(folder)  # a leftover vqvae/ next to a pixel UNet: model_index.json says there is no decoder
    assert model.decoder is None and model.image_shape == (1, 16, 16)
    (folder / "model_index.json").unlink()
    with pytest.raises(ConfigError, match="not an image|decoder takes"):  # without an index the folder is used
        load(folder)


def test_decoder_sizes_are_diffusers_resolved_defaults(folders, tmp_path):
    """A VQModel config without latent_channels/vq_embed_dim means diffusers' default of 3 channels."""
    folder = tmp_path / "vq"
    shutil.copytree(folders["vq"], folder)
    path = folder / "vqvae" / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in config.items() if k not in ("latent_channels", "vq_embed_dim")}))
    with pytest.raises(ConfigError, match=r"vqvae/config\.json: the decoder takes 3-channel latents but the UNet makes 2"):
        load(folder)


def test_a_decoder_attending_over_huge_latents_is_refused(folders, tmp_path):
    folder = tmp_path / "kl"
    shutil.copytree(folders["kl"], folder)
    _json_edit("unet/config.json", sample_size=128, down_block_types=["DownBlock2D", "DownBlock2D"],
               up_block_types=["UpBlock2D", "UpBlock2D"], add_attention=False)(folder)
    with pytest.raises(ConfigError, match=r"vae/config\.json: its mid-block self-attention over the 128 x 128"):
        load(folder)


def test_a_kl_decoder_with_a_shift_is_refused(folders, tmp_path):
    folder = tmp_path / "kl"
    shutil.copytree(folders["kl"], folder)
    _json_edit("vae/config.json", shift_factor=0.1)(folder)
    with pytest.raises(ConfigError, match=r"vae/config\.json: shift_factor, latents_mean and latents_std must be null"):
        load(folder)


def test_without_diffusers_the_family_says_what_to_install(folders, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "diffusers", None)  # import diffusers now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'synthviews\[diffusion\]'"):
        load(folders["pixel"])


def test_a_file_instead_of_a_folder(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"12345678")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        load(tmp_path / "x.safetensors")


def test_a_bare_folder_without_model_index_loads(folders, tmp_path):
    folder = _broken(folders, tmp_path, lambda f: (f / "model_index.json").unlink())
    code = torch.randn(2, load(folder).latent_dim)
    assert torch.equal(load(folder).decode(code), load(folders["pixel"]).decode(code))


# --- the CLI and the data paths ----------------------------------------------------------------

def test_cli_info_preview_generate(folders, tmp_path, capsys):
    path = str(folders["pixel"])
    opts = ["--model-opt", "steps=4", "--device", "cpu"]
    assert main(["info", "--model", "diffusion", "--path", path, *opts]) == 0
    out = capsys.readouterr().out
    assert "steps0_1" in out and "init" in out
    assert main(["info", "--model", "diffusion"]) == 2
    assert main(["preview", "--model", "diffusion", "--path", path, *opts, "--samples", "2",
                 "--out", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").stat().st_size > 0
    outs = []
    for batch, name in ((7, "a"), (16, "b")):
        assert main(["generate", "--model", "diffusion", "--path", path, *opts, "--samples", "16", "--views", "2",
                     "--batch-size", str(batch), "--out", str(tmp_path / name), "--no-progress"]) == 0
        outs.append({p.name: p.read_bytes() for p in sorted((tmp_path / name).glob("*.tar"))})
    assert outs[0] == outs[1] and outs[0]
    assert main(["preview", "--model", "diffusion", "--path", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "y.png")]) == 2


def test_continuous_views_serve_diffusion_views(folders):
    from synthviews.data.continuous import ContinuousViews

    model = load(folders["pixel"], steps=4)
    data = ContinuousViews(model, None, views=1, epoch_samples=8, batch_size=4, seed=0, device="cpu", t_x="none",
                           t_x_size=16, prefetch=0)
    batches = list(data)
    assert len(batches) == len(data) == 2
    again = list(data)
    for a, b in zip(batches, again):
        for x, y in zip(a, b):
            assert not torch.is_tensor(x) or torch.equal(x, y)


def test_generated_bytes_do_not_depend_on_the_decode_block_or_workers(folders, tmp_path):
    """The UNet always sees chunks of unet_batch rows, so even the decode block (which other families' bytes
    depend on, and which the manifest records) leaves the images alone."""
    from synthviews.store.writer import generate

    model = load(folders["pixel"], steps=4, unet_batch=8)
    policy = {"kind": "gaussian", "groups": {"steps2_3": {"std": 1.0}}}
    tars = []
    for name, block, workers in (("a", 4, 1), ("b", 16, 3)):
        generate(tmp_path / name, model, policy, samples=20, views=2, shard_size=8, seed=1, device="cpu",
                 batch_size=7, decode_block=block, workers=workers)
        tars.append({p.name: p.read_bytes() for p in sorted((tmp_path / name).glob("*.tar"))})
    assert tars[0] == tars[1] and len(tars[0]) == 3
