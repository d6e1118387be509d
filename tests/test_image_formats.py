"""Every format stores and reads back the model's declared channels (WebP has no grey mode)."""

import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

import synthviews as sv
import synthviews.store.format as store_format
import synthviews.store.jpeg as jpeg
from synthviews.data import ShardViews
from synthviews.store.hub import push
from synthviews.store.verify import verify
from synthviews.store.writer import generate


@pytest.fixture(scope="module")
def models():
    return {"digits": sv.load_model("digits"), "toy": sv.load_model("toy", resolution=16)}


@pytest.mark.parametrize("name, channels", [("digits", 1), ("toy", 3)])
def test_generate_verify_and_read_back_the_declared_channels(models, tmp_path, name, channels):
    model = models[name]
    assert model.image_shape[0] == channels
    read = {}
    for fmt in ("jpg", "png", "webp"):
        out = tmp_path / fmt
        generate(out, model, samples=4, views=1, shard_size=2, format=fmt, device="cpu")
        assert verify(out) == [], fmt
        assert "synthviews.json" in push(out, "me/views", dry_run=True)  # push checks with verify
        items = list(ShardViews(out, shuffle=0, pairs=[0, 1]))
        assert len(items) == 4
        for views, _ in items:
            assert [tuple(v.shape) for v in views] == [tuple(model.image_shape)] * 2, fmt
        read[fmt] = torch.stack([torch.stack(views) for views, _ in items])
    # The lossy formats read back the same pixels as the lossless one, up to compression error.
    for fmt in ("jpg", "webp"):
        assert (read[fmt] - read["png"]).abs().mean() < 0.03, fmt
    card = (tmp_path / "webp" / "README.md").read_text()
    assert ("WebP has no grey mode" in card) == (channels == 1)


# --- JPEG bytes through the GIL-free path (each thread's in-memory file) ----------------------------

def _pillow_jpeg(array, quality):
    buf = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(
        buf, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buf.getvalue()


def _images():
    rng = np.random.default_rng(0)
    # large then small then large again: a shorter JPEG after a longer one must not carry its tail
    # and grey and RGB of one size in turn: a thread's reused image must change its mode
    shapes = [(256, 192, 3), (128, 128, 3), (8, 8, 3), (96, 200, 1), (128, 128, 3), (300, 64, 3), (300, 64, 1),
              (300, 64, 3)]
    arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in shapes]
    return arrays + [rng.integers(0, 256, (64, 130, 3), dtype=np.uint8)[:, ::2]]  # not contiguous


@pytest.mark.parametrize("quality", [50, 95])
def test_jpeg_bytes_are_pillows_in_any_order_of_sizes(quality):
    for array in _images():
        assert store_format.encode_image(array, "jpg", quality) == _pillow_jpeg(array, quality), array.shape


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # nothing half made
def test_jpeg_bytes_are_the_same_without_an_in_memory_file(monkeypatch):
    def no_memfd(*args):
        raise OSError("memfd_create: not allowed here")

    monkeypatch.setattr(jpeg, "_local", threading.local())  # this thread has no file yet
    monkeypatch.setattr(os, "memfd_create", no_memfd)
    for array in _images():
        assert store_format.encode_image(array, "jpg", 95) == _pillow_jpeg(array, 95)
    assert jpeg._scratch() is None


def test_after_the_first_view_the_encoder_runs_without_image_save(monkeypatch):
    monkeypatch.setattr(jpeg, "_SETTINGS", {})
    saved = []
    real_saved = jpeg._saved
    monkeypatch.setattr(jpeg, "_saved", lambda image, quality: saved.append(image.size) or real_saved(image, quality))
    images = _images()
    for array in images:
        assert store_format.encode_image(array, "jpg", 80) == _pillow_jpeg(array, 80), array.shape
    assert saved == [(192, 256), (200, 96)]  # one reference save per mode (RGB, then grey), then none
    assert all(isinstance(settings, tuple) for settings in jpeg._SETTINGS.values())


@pytest.mark.parametrize("mismatch", ["other bytes", "another API"])
def test_a_pillow_whose_encoder_differs_gets_image_save(monkeypatch, mismatch):
    def differing(image, settings, file):
        if mismatch == "another API":
            raise TypeError("function takes at most 16 arguments (17 given)")
        return b"\xff\xd8 not the same"

    monkeypatch.setattr(jpeg, "_SETTINGS", {})
    monkeypatch.setattr(jpeg, "_encoded", differing)
    for array in _images():
        assert store_format.encode_image(array, "jpg", 95) == _pillow_jpeg(array, 95), array.shape
    assert jpeg._SETTINGS == {("RGB", 95): None, ("L", 95): None}


@pytest.mark.parametrize("array", [np.zeros((8, 8, 3), np.int32), np.zeros((8, 8, 4), np.uint8),
                                   np.zeros((8, 8, 1), np.uint16)], ids=["int32", "4 channels", "uint16 grey"])
def test_an_array_pillow_refuses_is_refused_not_encoded(array):
    with pytest.raises((TypeError, OSError, ValueError)):
        _pillow_jpeg(array, 95)
    with pytest.raises((TypeError, OSError, ValueError)):
        store_format.encode_image(array, "jpg", 95)


def test_threads_encoding_at_once_each_get_their_own_bytes():
    images = _images() * 8
    expected = [_pillow_jpeg(a, 95) for a in images]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert list(pool.map(lambda a: store_format.encode_image(a, "jpg", 95), images)) == expected


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_encode_into_its_parents_file():
    encode_image = store_format.encode_image
    parent_image, child_image = _images()[0], _images()[5]
    encode_image(parent_image, "jpg", 95)  # this thread's file exists before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: encode its own image many times, report whether every one came out right
        ok = all(encode_image(child_image, "jpg", 95) == _pillow_jpeg(child_image, 95) for _ in range(200))
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    expected = _pillow_jpeg(parent_image, 95)
    parent_ok = all(encode_image(parent_image, "jpg", 95) == expected for _ in range(200))
    child_ok = os.read(read, 1) == b"1"
    os.close(read)
    os.waitpid(pid, 0)
    assert parent_ok and child_ok
