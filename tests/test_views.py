import numpy as np
import pytest
import torch

import synthviews as sv
from synthviews.policies import GaussianPolicy, GroupNoise
from synthviews.views import ViewSampler


@pytest.fixture(scope="module")
def sampler():
    return ViewSampler(sv.load_model("toy"), views=3, seed=5, device="cpu")


def test_same_seed_gives_identical_tensors(sampler):
    other = ViewSampler(sv.load_model("toy"), views=3, seed=5, device="cpu")
    a, b = sampler.sample(range(20)), other.sample(range(20))
    assert torch.equal(a.images, b.images) and torch.equal(a.codes, b.codes) and torch.equal(a.deltas, b.deltas)
    c = ViewSampler(sv.load_model("toy"), views=3, seed=6).sample(range(20))
    assert not torch.equal(a.images, c.images)


def test_batch_size_never_changes_the_images(sampler):
    full = sampler.sample(range(64))
    for batch_size in (1, 7, 64):
        parts = [sampler.sample(range(i, min(i + batch_size, 64))) for i in range(0, 64, batch_size)]
        assert torch.equal(torch.cat([p.images for p in parts]), full.images), batch_size
        assert torch.equal(torch.cat([p.deltas for p in parts]), full.deltas), batch_size


@pytest.mark.parametrize("indices", [range(16), range(32), range(8), [17, 16]])
def test_views_are_plain_tensors_whatever_blocks_are_asked_for(sampler, indices):
    """Whole blocks in order come back without a gather copy, but never as inference tensors: a caller
    may edit them in place or train on them, whatever the batch size."""
    batch = sampler.sample(indices)
    for name in ("images", "anchor", "codes", "deltas"):
        x = getattr(batch, name)
        assert not x.is_inference(), name
    images = batch.images.clone()
    batch.images.mul_(1.0)
    assert torch.equal(images, batch.images)
    conv = torch.nn.Conv2d(3, 2, 3)
    conv(batch.images[:, 0]).sum().backward()
    assert conv.weight.grad is not None


@pytest.mark.parametrize("indices", [range(32), range(16, 48), [17, 3, 40], range(10), []])
@pytest.mark.parametrize("inference", [True, False])
def test_decoding_into_a_given_buffer_gives_the_same_images(sampler, indices, inference):
    """``out=`` (generate's reused buffers): whole blocks in order are written by their decode threads,
    anything else is copied in; either way the values of a plain ``sample``, and ``out`` is returned."""
    expected = sampler.sample(indices)
    out = torch.full((len(expected.indices), 4, *sampler.model.image_shape), float("nan"))
    batch = sampler.sample(indices, inference=inference, out=out)
    assert batch.images is out and torch.equal(out, expected.images)
    assert torch.equal(batch.deltas, expected.deltas) and torch.equal(batch.codes, expected.codes)


def test_a_buffer_of_the_wrong_shape_or_type_is_refused(sampler):
    shape = (16, 4, *sampler.model.image_shape)
    for bad in (torch.empty(8, *shape[1:]), torch.empty(shape, dtype=torch.float64), torch.empty(shape)[:, :3]):
        with pytest.raises(ValueError, match="out must be a float32 tensor"):
            sampler.sample(range(16), out=bad)


def test_a_model_whose_images_are_not_its_declared_shape_is_named():
    model = sv.load_model("toy", resolution=16)
    model.image_shape = (3, 32, 32)  # what a user's model may get wrong
    wrong = ViewSampler(model, views=1, device="cpu")
    with pytest.raises(sv.ConfigError, match=r"decoded 32 images of shape \(3, 16, 16\) where 32 of its image_shape \(3, 32, 32\)"):
        wrong.sample(range(16), out=torch.empty(16, 2, 3, 32, 32))
    with pytest.raises(sv.ConfigError, match=r"decoded 64 images of shape \(3, 16, 16\) where 64 of its image_shape"):
        wrong.sample(range(3, 19), out=torch.empty(16, 2, 3, 32, 32))  # not whole blocks: copied in, same check


def test_a_sample_does_not_depend_on_the_other_samples(sampler):
    alone = sampler.sample([41])
    mixed = sampler.sample([3, 41, 1000, 7])
    assert torch.equal(alone.images[0], mixed.images[1])


def test_more_views_keep_the_first_views():
    model = sv.load_model("toy")
    two = ViewSampler(model, views=2, seed=1).sample(range(5))
    four = ViewSampler(model, views=4, seed=1).sample(range(5))
    assert torch.equal(two.images, four.images[:, :3])


def test_shapes_anchor_first_and_fixed_groups_have_zero_delta(sampler):
    batch = sampler.sample(range(6))
    assert batch.images.shape == (6, 4, 3, 64, 64)
    assert torch.equal(batch.images[:, 0], sampler.model.decode(batch.anchor))
    shape = sampler.model.group_names.index("shape")
    assert (batch.deltas[:, :, shape] == 0).all()
    assert (batch.deltas[:, :, sampler.model.group_names.index("pose")] > 0).all()


def test_delta_is_the_l2_distance_of_the_group_code():
    model = sv.load_model("toy")
    batch = ViewSampler(model, GaussianPolicy({"color": GroupNoise(0.5)}), views=1, seed=0).sample(range(4))
    color = model.group_code(batch.codes[:, 1], "color") - model.group_code(batch.codes[:, 0], "color")
    expected = color.double().norm(dim=1)
    assert torch.allclose(batch.deltas[:, 0, model.group_names.index("color")], expected)
    assert np.isclose(batch.deltas[:, 0].sum().item(), expected.sum().item())


def test_bad_arguments():
    model = sv.load_model("toy")
    with pytest.raises(sv.ConfigError, match="views"):
        ViewSampler(model, views=0)
    with pytest.raises(sv.ConfigError, match="unknown device"):
        ViewSampler(model, device="tpu")
    with pytest.raises(sv.ConfigError, match="fp16 autocast needs a CUDA"):
        ViewSampler(model, device="cpu", amp="fp16")
