import inspect
import math

import pytest
import torch

from synthviews.data import augment as augment_module
from synthviews.data.augment import IMAGENET_MEAN, IMAGENET_STD, PRESETS, Augment, Params, identity, make_augment
from synthviews.errors import ConfigError

# Small images keep the suite fast: 32 px in, 28 px out keeps the default ratio 112/128.
IN, OUT = 32, 28


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(batch=4, channels=3, side=IN, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch, channels, side, side), generator=g)


def _denormalize(x, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    c = x.shape[1]
    return x * torch.tensor(std[:c]).view(1, c, 1, 1) + torch.tensor(mean[:c]).view(1, c, 1, 1)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_shape_dtype_and_normalisation(preset):
    x = _images(batch=5)
    raw = Augment(preset, size=OUT, normalize=False)(x, seed=11)
    out = Augment(preset, size=OUT)(x, seed=11)
    assert out.shape == raw.shape == (5, 3, OUT, OUT)
    assert out.dtype == raw.dtype == torch.float32
    assert raw.min() >= 0 and raw.max() <= 1
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (raw - mean) / std)


def test_defaults_are_the_reference_sizes():
    aug = Augment()
    assert (aug.preset, aug.size, aug.normalize) == ("simclr", 112, True)
    assert not list(aug.parameters())
    out = aug(_images(batch=2, side=128), seed=0)
    assert out.shape == (2, 3, 112, 112)


def test_none_is_the_exact_centre_crop_at_the_default_ratio():
    x = _images(batch=3, side=128)
    out = Augment("none", normalize=False)(x)
    torch.testing.assert_close(out, x[..., 8:120, 8:120], rtol=0, atol=0)
    # other input sizes keep the ratio 112/128 of the shorter side
    x = _images(batch=2, side=64)
    out = Augment("none", size=56, normalize=False)(x)
    torch.testing.assert_close(out, x[..., 4:60, 4:60], rtol=0, atol=0)
    wide = torch.rand(1, 3, 32, 48)
    out = Augment("none", size=28, normalize=False)(wide)           # centre 28 x 28 of the 32 x 48 image
    torch.testing.assert_close(out, wide[..., 2:30, 10:38], rtol=0, atol=0)
    # a crop of another size than `size` is resized (bilinear, half-pixel centres: 2x down = 2x2 mean)
    out = Augment("none", size=16, normalize=False, crop_fraction=1.0)(x[..., :32, :32])
    torch.testing.assert_close(out, torch.nn.functional.avg_pool2d(x[..., :32, :32], 2), atol=1e-5, rtol=0)
    # inputs over twice `size` are first shrunk with antialiasing: close to an area average
    out = Augment("none", size=16, normalize=False, crop_fraction=1.0)(x)
    area = torch.nn.functional.interpolate(x, size=16, mode="area")
    assert (out - area).abs().mean() < 0.05
    assert (out - x[..., ::4, ::4]).abs().mean() > 2 * (out - area).abs().mean()


def test_large_inputs_are_shrunk_first_and_crops_scale_with_the_input():
    aug = Augment("no_color", size=16)
    for side in (20, 40, 100):
        assert aug(_images(batch=2, side=side), seed=1).shape == (2, 3, 16, 16)
    params = aug.sample_params(2000, 40, 60, seed=3)
    x0, y0, w, h = params.boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 60).all() and (y0 + h <= 40).all()
    area = (w * h).double() / (40 * 60)
    assert area.min() > 0.18 and area.max() <= 1.0  # scale (0.2, 1.0) up to integer rounding
    ratio = w.double() / h.double()
    assert ratio.min() > 0.7 and ratio.max() < 1.4  # (3/4, 4/3) up to integer rounding
    assert 0.45 < params.flip.double().mean() < 0.55
    assert 0.77 < params.jitter.double().mean() < 0.83
    assert 0.17 < params.gray.double().mean() < 0.23
    assert all(sorted(row) == [0, 1, 2, 3] for row in params.order.tolist())
    assert len({tuple(row) for row in params.order.tolist()}) == 24  # per-sample jitter order
    lo, hi = params.factors.min(0).values, params.factors.max(0).values
    assert (lo >= torch.tensor([0.6, 0.6, 0.6, -0.1], dtype=torch.float64)).all()
    assert (hi <= torch.tensor([1.4, 1.4, 1.4, 0.1], dtype=torch.float64)).all()


def test_random_parameters_are_per_sample():
    one = _images(batch=1)
    twins = one.expand(2, -1, -1, -1).contiguous()
    out = Augment("simclr", size=OUT)(twins, seed=0)
    assert not torch.allclose(out[0], out[1])
    out = Augment("no_color", size=OUT)(twins, seed=0)
    assert not torch.allclose(out[0], out[1])
    out = Augment("none", size=OUT)(twins)
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)


@pytest.mark.parametrize("preset", ["simclr", "no_color", "no_crop"])
def test_seed_reproducible_and_global_rng_untouched(preset):
    aug = Augment(preset, size=OUT)
    x = _images(batch=6)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a, b = aug(x, seed=5), aug(x, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, aug(x, seed=6))
    # a sample's parameters do not depend on the batch it is in
    torch.testing.assert_close(aug(x[:2], seed=5), a[:2], rtol=0, atol=1e-6)
    # the same seed in a fresh module gives the same output
    torch.testing.assert_close(Augment(preset, size=OUT)(x, seed=5), a, rtol=0, atol=0)


def test_without_seed_the_global_rng_drives_it():
    aug = Augment("simclr", size=OUT)
    x = _images(batch=3)
    torch.manual_seed(7)
    a = aug(x)
    b = aug(x)
    torch.manual_seed(7)
    torch.testing.assert_close(aug(x), a, rtol=0, atol=0)
    assert not torch.allclose(a, b)


def test_presets_share_the_parameters_of_shared_operations():
    x = _images(batch=4)
    simclr = Augment("simclr", size=OUT).sample_params(4, IN, IN, seed=9)
    no_color = Augment("no_color", size=OUT).sample_params(4, IN, IN, seed=9)
    assert torch.equal(simclr.boxes, no_color.boxes) and torch.equal(simclr.flip, no_color.flip)
    assert Augment("no_crop", size=OUT).sample_params(4, IN, IN, seed=9).boxes.tolist() == [[0, 0, IN, IN]] * 4
    assert Augment("no_color", size=OUT)(x, seed=9).shape == (4, 3, OUT, OUT)


def _fixed(batch, box, flip=False, jitter=False, factors=(1.0, 1.0, 1.0, 0.0), order=(0, 1, 2, 3), gray=False):
    return Params(boxes=torch.tensor([box] * batch), flip=torch.tensor([flip] * batch),
                  jitter=torch.tensor([jitter] * batch), factors=torch.tensor([factors] * batch, dtype=torch.float64),
                  order=torch.tensor([order] * batch), gray=torch.tensor([gray] * batch))


def test_crop_and_flip_geometry(monkeypatch):
    x = _images(batch=2)
    aug = Augment("no_color", size=16, normalize=False)
    monkeypatch.setattr(aug, "sample_params", lambda *a, **k: _fixed(2, (5, 9, 16, 16)))
    torch.testing.assert_close(aug(x), x[..., 9:25, 5:21], atol=1e-5, rtol=0)
    monkeypatch.setattr(aug, "sample_params", lambda *a, **k: _fixed(2, (5, 9, 16, 16), flip=True))
    torch.testing.assert_close(aug(x), x[..., 9:25, 5:21].flip(-1), atol=1e-5, rtol=0)
    monkeypatch.setattr(aug, "sample_params", lambda *a, **k: _fixed(2, (0, 0, 32, 32)))
    torch.testing.assert_close(aug(x), torch.nn.functional.avg_pool2d(x, 2), atol=1e-5, rtol=0)


def test_colour_operations(monkeypatch):
    x = _images(batch=2, side=OUT)
    aug = Augment("no_crop", size=OUT, normalize=False)
    box = (0, 0, OUT, OUT)
    monkeypatch.setattr(aug, "sample_params", lambda *a, **k: _fixed(2, box, jitter=True))
    torch.testing.assert_close(aug(x), x, atol=1e-4, rtol=0)  # neutral factors
    monkeypatch.setattr(aug, "sample_params", lambda *a, **k: _fixed(2, box, gray=True))
    out = aug(x)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    torch.testing.assert_close(out[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2], atol=1e-5, rtol=0)
    monkeypatch.setattr(aug, "sample_params", lambda *a, **k: _fixed(2, box, jitter=True, factors=(0.5, 1, 1, 0)))
    torch.testing.assert_close(aug(x), x * 0.5, atol=1e-5, rtol=0)
    factors = (1.4, 0.6, 1.4, 0.1)
    monkeypatch.setattr(aug, "sample_params", lambda *a, **k: _fixed(2, box, jitter=True, factors=factors))
    forward = aug(x)
    monkeypatch.setattr(aug, "sample_params",
                        lambda *a, **k: _fixed(2, box, jitter=True, factors=factors, order=(3, 2, 1, 0)))
    assert not torch.allclose(forward, aug(x), atol=1e-3)  # the order is applied


def test_grayscale_inputs_stay_one_channel():
    x = _images(batch=3, channels=1)
    for preset in PRESETS:
        out = Augment(preset, size=OUT)(x, seed=2)
        assert out.shape == (3, 1, OUT, OUT)
    raw = Augment("none", size=OUT, normalize=False)(x)
    out = Augment("none", size=OUT)(x)
    torch.testing.assert_close(out, (raw - sum(IMAGENET_MEAN) / 3) / (sum(IMAGENET_STD) / 3))
    out = Augment("none", size=OUT, mean=[0.5], std=[0.5])(x)
    torch.testing.assert_close(out, (raw - 0.5) / 0.5)


def test_input_dtypes():
    x = _images(batch=2)
    as_uint8 = (x * 255).round().to(torch.uint8)
    out = Augment("none", size=OUT, normalize=False)(as_uint8)
    assert out.dtype == torch.float32 and out.max() <= 1
    assert Augment("simclr", size=OUT)(x.double(), seed=0).dtype == torch.float64
    assert Augment("simclr", size=OUT)(x.bfloat16(), seed=0).dtype == torch.bfloat16
    assert Augment("simclr", size=OUT)(x[:0]).shape == (0, 3, OUT, OUT)
    with pytest.raises(ValueError, match="channels"):
        Augment()(torch.rand(2, 4, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        Augment()(torch.rand(3, 8, 8))


def test_bad_configuration_is_a_config_error():
    with pytest.raises(ConfigError, match="simclr, no_color, no_crop, none"):
        Augment("simclr2")
    for size in (0, -3, 1.5, True, "112", None):
        with pytest.raises(ConfigError, match="size"):
            Augment("simclr", size=size)
    with pytest.raises(ConfigError, match="std"):
        Augment(std=(0.2, 0.0, 0.2))
    with pytest.raises(ConfigError, match="same length"):
        Augment(mean=(0.5, 0.5), std=(0.2,))
    with pytest.raises(ConfigError, match="crop_fraction"):
        Augment("none", crop_fraction=1.5)
    with pytest.raises(ConfigError, match="seed"):
        Augment()(_images(batch=1), seed=1.5)
    with pytest.raises(ConfigError, match="2 values"):
        Augment(mean=(0.5, 0.5), std=(0.2, 0.2))(_images(batch=1))


def test_make_augment():
    aug = make_augment("no_color", size=OUT, normalize=False)
    assert isinstance(aug, Augment) and aug.preset == "no_color" and aug.size == OUT and not aug.normalize

    def custom(images):
        return images.flip(-1)

    assert make_augment(custom) is custom
    assert make_augment(None) is identity
    x = _images(batch=1)
    assert make_augment(None)(x) is x
    with pytest.raises(ConfigError, match="simclr"):
        make_augment("SimCLR-v2")
    with pytest.raises(ConfigError, match="preset name"):
        make_augment(custom, size=64)
    with pytest.raises(ConfigError, match="callable"):
        make_augment(3)


def test_device_logic_is_not_hard_coded():
    source = inspect.getsource(augment_module)
    assert ".cuda(" not in source and "'cuda'" not in source and '"cuda"' not in source


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = _images(batch=4)
    for preset in PRESETS:
        aug = Augment(preset, size=OUT)
        cpu = aug(x, seed=3)
        gpu = aug(x.cuda(), seed=3)
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=0)
        assert math.isfinite(gpu.sum().item())
