"""The device logic of offline generation, exercised on CPU: DeviceCopy with a stand-in for the CUDA
calls (streams, events, pinned memory), the host ring, the measured CPU split, the nvjpeg path."""

import contextlib
import sys
import types

import numpy as np
import pytest
import torch

import synthviews.store.writer as writer
from synthviews._util.device import DeviceCopy, keep_freed_host_memory
from synthviews.errors import ConfigError
from synthviews.store.format import encode_image
from synthviews.store.verify import verify
from synthviews.store.writer import CpuSplit, generate, split_threads
from synthviews.views import ViewSampler


class FakeCuda:
    """Records the CUDA calls DeviceCopy makes; copies run on the CPU."""

    def __init__(self):
        self.calls = []

    def new_stream(self):
        self.calls.append("stream")
        return "side"

    def current_stream(self):
        return "main"

    def wait_stream(self, stream, other):
        self.calls.append(f"{stream} waits {other}")

    @contextlib.contextmanager
    def use(self, stream):
        self.calls.append(f"use {stream}")
        yield
        self.calls.append(f"leave {stream}")

    def new_event(self):
        calls = self.calls

        class Event:
            def record(self, stream):
                calls.append(f"record {stream}")

            def synchronize(self):
                calls.append("synchronize")

            def query(self):
                return False

        return Event()

    def record_stream(self, tensor, stream):
        self.calls.append(f"record_stream {stream}")

    def pinned_empty(self, shape, dtype):
        self.calls.append("pinned")
        return torch.empty(shape, dtype=dtype)


def test_cpu_copies_are_plain_and_synchronous():
    copier = DeviceCopy(torch.device("cpu"))
    assert copier.backend is None and copier.stream is None
    dst = copier.host_buffer((2, 3))
    assert dst.dtype == torch.uint8 and not dst.is_pinned()
    pending = copier.start(torch.tensor([[1.0, 2, 3], [4, 5, 255]]), dst)
    assert pending.done() and dst.tolist() == [[1, 2, 3], [4, 5, 255]]
    pending.wait()


def test_cuda_copies_run_on_a_side_stream_after_the_queued_work_and_end_with_an_event():
    fake = FakeCuda()
    copier = DeviceCopy(torch.device("cuda"), backend=fake)  # a device object needs no GPU
    dst = copier.host_buffer((4,))
    src = torch.arange(4, dtype=torch.uint8)
    pending = copier.start(src, dst)
    assert fake.calls == ["stream", "pinned", "side waits main", "use side", "record_stream side", "record side",
                          "leave side"]
    assert not pending.done()
    pending.wait()
    pending.wait()  # once is enough
    assert fake.calls[-1] == "synchronize" and fake.calls.count("synchronize") == 1
    assert dst.tolist() == [0, 1, 2, 3]


def test_the_split_gives_every_core_to_the_generator_while_encoding_is_cheap():
    assert split_threads(2, decode_s=1.0, encode_s=0.01) == 2
    assert split_threads(16, decode_s=1.0, encode_s=0.02) == 16
    assert split_threads(16, decode_s=1.0, encode_s=1.0) == 8
    assert split_threads(2, decode_s=0.1, encode_s=1.0) == 1  # encoding dominates: one core left
    assert split_threads(4, 0.0, 0.0) == 4


def test_the_split_is_decided_once_from_measured_batches_after_the_first():
    split = CpuSplit(4, measure=2)
    split.decoded_batch(100.0, 10)  # warm-up: ignored
    assert split.generator_threads() == 4
    for _ in range(2):
        split.decoded_batch(1.0, 10)
    assert split.generator_threads() == 4 and not split.decided  # nothing encoded yet
    split.encoded_chunk(3.0, 10)  # encoding costs 3x decoding: 3 of 4 cores to the encoders
    assert split.generator_threads() == 1 and split.decided
    split.encoded_chunk(0.0, 1000)
    assert split.generator_threads() == 1
    fixed = CpuSplit(4, encoders=1, cpus=8)  # given: the generator gets the other cores
    assert fixed.decided and fixed.generator_threads() == 4
    assert CpuSplit(4, encoders=3).generator_threads() == 1


def test_decoded_batches_reuse_a_small_ring_of_host_buffers(tmp_path, monkeypatch, toy16):
    made, decoded_into = [], []
    real, real_sample = DeviceCopy.host_buffer, ViewSampler.sample

    def counted(self, shape, dtype=torch.uint8):
        made.append(real(self, shape, dtype))
        return made[-1]

    def sample(self, indices, inference=True, out=None):
        decoded_into.append(out)
        return real_sample(self, indices, inference, out)

    monkeypatch.setattr(DeviceCopy, "host_buffer", counted)
    monkeypatch.setattr(ViewSampler, "sample", sample)
    generate(tmp_path / "ds", toy16, samples=200, views=2, shard_size=50, batch_size=16, device="cpu")
    # on CPU the blocks decode straight into the ring's float buffers: (rows, 1+K, C, H, W)
    assert [(tuple(b.shape), b.dtype) for b in made] == [((16, 3, 3, 16, 16), torch.float32)] * (writer.HOST_RING + 1)
    starts = {b.data_ptr() for b in made}
    assert len(decoded_into) == 13 and all(out is not None and out.data_ptr() in starts for out in decoded_into)
    assert verify(tmp_path / "ds") == []


def test_the_measured_split_is_applied_and_the_caller_threads_restored(tmp_path, monkeypatch, toy16):
    seen = []
    real = CpuSplit.generator_threads

    def spy(self):
        seen.append(real(self))
        return seen[-1]

    monkeypatch.setattr(CpuSplit, "generator_threads", spy)
    monkeypatch.setattr(writer, "split_threads", lambda cores, d, e: 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        generate(tmp_path / "ds", toy16, samples=16 * 12, views=1, shard_size=200, batch_size=16, device="cpu")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert seen[0] == min(2, writer.os.cpu_count()) and seen[-1] == 1


def _fake_torchvision(monkeypatch):
    """torchvision.io.encode_jpeg encoding (C, H, W) uint8 tensors with PIL, as the CPU encoder does."""
    def encode_jpeg(images, quality=75):
        return [torch.frombuffer(bytearray(encode_image(x.permute(1, 2, 0).numpy(), "jpg", quality)),
                                 dtype=torch.uint8) for x in images]

    io_module = types.SimpleNamespace(encode_jpeg=encode_jpeg)
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(io=io_module))
    monkeypatch.setitem(sys.modules, "torchvision.io", io_module)


def test_the_nvjpeg_path_assembles_the_samples_the_cpu_path_does(tmp_path, monkeypatch, toy16):
    """Run on CPU with a PIL stand-in for the GPU encoder: the same bytes as the CPU encoder."""
    _fake_torchvision(monkeypatch)
    settings = dict(samples=40, views=2, shard_size=15, batch_size=16, device="cpu", save_latents=True)
    generate(tmp_path / "cpu", toy16, **settings)
    monkeypatch.setattr(writer, "_check_nvjpeg", lambda *a: None)  # the CPU device would be refused
    generate(tmp_path / "gpu", toy16, encoder="nvjpeg", **settings)
    for name in ("train-000000.tar", "train-000001.tar", "train-000002.tar"):
        assert (tmp_path / "cpu" / name).read_bytes() == (tmp_path / "gpu" / name).read_bytes()
    from synthviews.store.manifest import read_manifest

    assert read_manifest(tmp_path / "gpu")["splits"]["train"]["config"]["image"]["encoder"] == "nvjpeg"
    with pytest.raises(ConfigError, match='image.encoder is "nvjpeg" there but "cpu" now'):
        generate(tmp_path / "gpu", toy16, **settings)


def test_nvjpeg_without_cuda_torchvision_jpeg_or_rgb_is_one_clear_error(tmp_path, monkeypatch, toy16):
    with pytest.raises(ConfigError, match="nvjpeg encodes on a CUDA device"):
        generate(tmp_path / "a", toy16, samples=4, device="cpu", encoder="nvjpeg")
    with pytest.raises(ConfigError, match="unknown encoder 'gpu'"):
        generate(tmp_path / "a", toy16, samples=4, device="cpu", encoder="gpu")
    cuda = torch.device("cuda")
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails
    with pytest.raises(ConfigError, match="needs torchvision"):
        writer._check_nvjpeg(cuda, "jpg", (3, 8, 8))
    with pytest.raises(ConfigError, match="JPEG only, not png"):
        writer._check_nvjpeg(cuda, "png", (3, 8, 8))
    with pytest.raises(ConfigError, match="3-channel images; this model's have 1"):
        writer._check_nvjpeg(cuda, "jpg", (1, 8, 8))
    assert not (tmp_path / "a").exists()


def test_cli_nvjpeg_on_cpu_exits_2_with_one_line(tmp_path, capsys):
    from synthviews.cli import main

    assert main(["generate", "--model", "toy", "--model-opt", "resolution=8", "--samples", "4", "--device", "cpu",
                 "--encoder", "nvjpeg", "--out", str(tmp_path / "ds"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "nvjpeg" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ds").exists()


def test_the_default_encoder_is_not_written_and_an_explicit_cpu_encoder_resumes(tmp_path, toy16):
    from synthviews.store.manifest import read_manifest, write_manifest

    out = tmp_path / "ds"
    settings = dict(samples=30, views=1, shard_size=10, device="cpu")
    generate(out, toy16, **settings)
    manifest = read_manifest(out)
    assert "encoder" not in manifest["splits"]["train"]["config"]["image"]  # manifests as before the option
    manifest["splits"]["train"]["config"]["image"]["encoder"] = "cpu"
    manifest["splits"]["train"]["shards"].pop()  # one shard left to do
    write_manifest(out, manifest)
    (out / "train-000002.tar").unlink()
    generate(out, toy16, resume=True, **settings)
    assert len(read_manifest(out)["splits"]["train"]["shards"]) == 3


def test_keeping_freed_host_memory_applies_once_on_glibc():
    import platform

    first = keep_freed_host_memory()
    assert keep_freed_host_memory() is first
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert first is True


def test_both_roundings_match_to_uint8_exactly():
    """The CPU path (numpy, per sample) and the device path (torch, in place) round as to_uint8 does."""
    from synthviews._util.images import to_uint8
    from synthviews.store.encoding import round_into

    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 3, 7, 9, generator=g)
    ties = (torch.arange(511, dtype=torch.float32) + 0.5) / 255  # x * 255 lands on or next to .5
    x.view(-1)[:511] = ties.clamp(0, 1)
    x.view(-1)[511:515] = torch.tensor([0.0, 1.0, -0.2, 1.3])  # out of range: clamped
    expected = to_uint8(x)
    out = np.empty_like(expected)
    for b in range(len(x)):
        round_into(x[b].numpy().copy(), out[b])
    assert np.array_equal(out, expected)
    assert np.array_equal(writer._rounded_uint8_hwc(x.clone()).numpy(), expected)


def test_a_torchvision_that_cannot_encode_on_the_device_is_refused_up_front(monkeypatch):
    """E.g. a CPU-only torchvision build: refused by a probe before the folder records the encoder."""
    def cannot(images, quality):
        raise RuntimeError("encode_jpeg: torchvision not compiled with nvJPEG support\nmore text")

    io_module = types.SimpleNamespace(encode_jpeg=cannot)
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(io=io_module))
    monkeypatch.setitem(sys.modules, "torchvision.io", io_module)
    monkeypatch.setattr(torch, "zeros", lambda *a, **k: torch.empty(0))  # no CUDA here: the probe's input only
    with pytest.raises(ConfigError, match=r"cannot encode JPEGs on cuda \(RuntimeError: encode_jpeg: .*nvJPEG "
                                          r"support\); use --encoder cpu$"):
        writer._check_nvjpeg(torch.device("cuda"), "jpg", (3, 8, 8))


def test_a_batch_job_without_chunks_gives_its_buffer_back_at_once():
    given_back = []
    writer._BatchJob([], on_done=lambda: given_back.append(True))
    assert given_back == [True]
