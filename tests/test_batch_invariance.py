"""Same configuration + seed = same bytes, whatever the batch size, thread count or a resume in between.

Real networks are not batch-invariant on CPU (a conv or matmul picks its kernel by batch shape, so
batch 1 and batch 64 round differently); the ViewSampler decodes fixed, index-aligned blocks instead.
These tests run the real families (digits, StyleGAN2 and BigBiGAN on the compat weights, a user module).
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import synthviews as sv
import synthviews.store.writer as writer_module
from synthviews._util.device import deterministic_algorithms
from synthviews.errors import ConfigError
from synthviews.models.adapter import from_module
from synthviews.store.manifest import read_manifest, write_manifest
from synthviews.store.writer import block_aligned_batches, generate, shard_batches
from synthviews.views import ViewSampler


class UserDecoder(nn.Module):
    """A user's own generator: linear + conv layers, as batch-sensitive as a real one."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(24, 8 * 8 * 8)
        self.conv = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, z):
        return torch.tanh(self.conv(torch.relu(self.fc(z).reshape(-1, 8, 8, 8))))


def _model(name: str, data: Path):
    if name == "digits":
        return sv.load_model("digits")
    if name == "stylegan2":
        return sv.load_model("stylegan2", path=data / "stylegan2" / "tiny1_state_dict.pt",
                             config=data / "stylegan2" / "tiny1_config.json")
    if name == "bigbigan":
        return sv.load_model("bigbigan", path=data / "bigbigan" / "tiny_state_dict.pt")
    if name == "vdvae":
        return sv.load_model("vdvae", path=data / "vdvae" / "tiny_state_dict.pt", config=data / "vdvae" / "tiny_config.json")
    if name == "user":
        return from_module(UserDecoder(), [("coarse", 8), ("mid", 8), ("fine", 8)], input="chunks", family="user")
    return sv.load_model("toy", resolution=16)


def _diffusion(root: Path):
    """A tiny random-weight diffusers DDPM (16 px, 5 steps), its positives sharing the anchor's trajectory."""
    diffusers = pytest.importorskip("diffusers")
    folder = root / "ddpm"
    if not folder.exists():
        torch.manual_seed(0)
        diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                              layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                              up_block_types=("AttnUpBlock2D", "UpBlock2D")).save_pretrained(folder / "unet")
        diffusers.DDPMScheduler(num_train_timesteps=100).save_pretrained(folder / "scheduler")
    model = sv.load_model("diffusion", path=folder, steps=5, unet_batch=8)
    # the generic default perturbs init too (no sharing): perturb late steps, so shared trajectories are exercised
    policy = {"kind": "gaussian", "groups": {"steps2_3": {"std": 1.0}, "steps3_4": {"std": 0.5}}}
    model.default_policy_spec = lambda: policy
    return model


SIZES = {"digits": 64, "stylegan2": 64, "bigbigan": 16, "user": 64, "toy": 64, "diffusion": 32, "vdvae": 32}  # BigBiGAN: 128 px


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module", params=["digits", "stylegan2", "bigbigan", "user", "toy", "diffusion", "vdvae"])
def family(request, compat_dir, tmp_path_factory):
    """(name, model, settings, reference folder written at batch size 64)."""
    model = _diffusion(tmp_path_factory.mktemp("diffusion")) if request.param == "diffusion" else \
        _model(request.param, compat_dir)
    samples = SIZES[request.param]
    settings = dict(samples=samples, views=2, shard_size=samples // 4 + 1, seed=5, device="cpu")
    ref = tmp_path_factory.mktemp(request.param) / "ref"
    generate(ref, model, None, batch_size=64, **settings)
    return request.param, model, settings, ref


@pytest.mark.parametrize("batch_size", [1, 7])
def test_shards_are_identical_across_batch_sizes(family, batch_size, tmp_path):
    name, model, settings, ref = family
    out = tmp_path / "ds"
    generate(out, model, None, batch_size=batch_size, **settings)
    assert _files(out) == _files(ref), f"{name}: batch size {batch_size} changed the bytes"


def test_a_run_killed_at_one_batch_size_resumes_at_another_to_the_same_bytes(family, tmp_path, monkeypatch):
    name, model, settings, ref = family
    out = tmp_path / "ds"
    real_record = writer_module._record_progress
    calls = []

    def record_then_die(*args, **kwargs):
        real_record(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # two whole shards are on disk and in the manifest
            raise KeyboardInterrupt

    monkeypatch.setattr(writer_module, "_record_progress", record_then_die)
    with pytest.raises(KeyboardInterrupt):
        generate(out, model, None, batch_size=7, **settings)
    monkeypatch.setattr(writer_module, "_record_progress", real_record)
    assert len(read_manifest(out)["splits"]["train"]["shards"]) == 2
    generate(out, model, None, batch_size=1, resume=True, **settings)
    assert _files(out) == _files(ref), f"{name}: a resume at another batch size changed the bytes"


@pytest.mark.parametrize("name", ["digits", "stylegan2", "bigbigan", "user", "diffusion", "vdvae"])
def test_views_do_not_depend_on_the_cpu_thread_count(name, compat_dir, tmp_path):
    model = _diffusion(tmp_path) if name == "diffusion" else _model(name, compat_dir)
    threads = torch.get_num_threads()
    images = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            sampler = ViewSampler(model, None, views=2, seed=1, device="cpu", block=4 if name == "bigbigan" else 16)
            images.append(sampler.sample(np.arange(9 if name == "bigbigan" else 37)).images)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(images[0], images[1]) and torch.equal(images[0], images[2])


def test_any_request_is_served_from_whole_blocks(compat_dir):
    sampler = ViewSampler(_model("stylegan2", compat_dir), None, views=1, seed=0, device="cpu", block=4)
    whole = sampler.sample(np.arange(12))
    odd = sampler.sample([9, 2, 2, 11, 0])  # unordered, repeated, across blocks
    for name in ("images", "codes", "anchor", "deltas"):
        assert torch.equal(getattr(odd, name), getattr(whole, name)[[9, 2, 2, 11, 0]]), name
    assert torch.equal(sampler.latents(np.arange(5, 7)).codes, whole.codes[5:7])
    with pytest.raises(ConfigError, match="decode block"):
        ViewSampler(_model("toy", compat_dir), block=0)


def test_batches_fall_on_block_boundaries():
    ranges = [(int(b[0]), int(b[-1]) + 1) for b in block_aligned_batches(10, 70, batch_size=40, block=16)]
    assert ranges == [(10, 32), (32, 64), (64, 70)]  # 40 rounds to 2 blocks: boundaries at multiples of 32
    assert [len(b) for b in block_aligned_batches(0, 5, batch_size=1, block=16)] == [5]


def test_batches_run_on_across_shards_and_end_each_shard_once():
    ranges = [(0, 10), (10, 10), (20, 10), (30, 5)]
    got = [(int(i[0]), int(i[-1]) + 1, parts, ended)
           for i, parts, ended in shard_batches(ranges, [0, 1, 3], batch_size=16, block=16)]
    assert got == [(0, 16, [(0, 0, 10), (1, 10, 16)], {0}), (16, 20, [(1, 0, 4)], {1}),  # shard 2 done: a gap
                   (30, 32, [(3, 0, 2)], set()), (32, 35, [(3, 0, 3)], {3})]


def test_shards_smaller_than_a_block_decode_each_block_once(tmp_path, monkeypatch):
    calls = []
    decode = ViewSampler._block_of
    monkeypatch.setattr(ViewSampler, "_block_of", lambda self, idx, *a: calls.append(int(idx[0])) or decode(self, idx, *a))
    settings = dict(samples=40, views=1, seed=0, device="cpu", model_kwargs={"resolution": 16}, progress=False)
    generate(tmp_path / "small", "toy", None, shard_size=3, **settings)
    assert sorted(calls) == [0, 16, 32]  # 14 shards, 3 blocks: each decoded once
    generate(tmp_path / "one", "toy", None, shard_size=40, **settings)
    samples = [(tmp_path / d).glob("train-*.tar") for d in ("small", "one")]
    small, one = ([m for t in sorted(g) for m in _members(t)] for g in samples)
    assert len(small) == len(one) == 40 * 3 and small == one  # same bytes, whatever the shard size


def _members(tar_path):
    import tarfile

    with tarfile.open(tar_path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def test_a_resume_that_would_change_the_bytes_is_refused(tmp_path):
    out = tmp_path / "ds"
    settings = dict(samples=40, views=1, shard_size=10, seed=0, device="cpu", model_kwargs={"resolution": 16})
    generate(out, "toy", None, **settings)
    decode = read_manifest(out)["splits"]["train"]["config"]["decode"]
    assert decode == {"block": 16, "device": "cpu", "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
                      "amp": "none", "dtype": "float32", "torch": torch.__version__}
    with pytest.raises(ConfigError, match="decode.block"):
        generate(out, "toy", None, decode_block=8, **settings)
    manifest = read_manifest(out)
    manifest["splits"]["train"]["config"]["decode"]["torch"] = "1.13.0"
    write_manifest(out, manifest)
    with pytest.raises(ConfigError, match="decode.torch"):
        generate(out, "toy", None, **settings)


def test_cuda_decoding_uses_deterministic_cudnn_and_restores_the_settings():
    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark
    try:
        cudnn.deterministic, cudnn.benchmark = False, True
        with deterministic_algorithms(torch.device("cpu")):
            assert (cudnn.deterministic, cudnn.benchmark) == (False, True)
        with deterministic_algorithms(torch.device("cuda")):  # a device object needs no GPU
            assert (cudnn.deterministic, cudnn.benchmark) == (True, False)
        assert (cudnn.deterministic, cudnn.benchmark) == (False, True)
    finally:
        cudnn.deterministic, cudnn.benchmark = saved


def test_cpu_blocks_decode_single_threaded_and_the_thread_count_is_restored():
    model = _model("toy", Path("."))
    seen, decode = [], model.decode
    model.decode = lambda code: (seen.append(torch.get_num_threads()), decode(code))[1]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        ViewSampler(model, None, views=1, device="cpu").sample(np.arange(40))
        assert seen == [1, 1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
        del model.decode
