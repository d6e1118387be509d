"""Every format stores and reads back the model's declared channels (WebP has no grey mode)."""

import pytest
import torch

import synthviews as sv
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
