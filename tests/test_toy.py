import torch

import synthviews as sv
from synthviews.latents import sample_prior


def _anchors(model, n=32, seed=0):
    return sample_prior(model.prior, sv.Streams(seed), range(n), model.latent_dim)


def test_images_are_in_range_with_documented_shape():
    model = sv.load_model("toy", resolution=48)
    x = model.decode(_anchors(model))
    assert x.shape == (32, 3, 48, 48) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1


def test_inert_group_changes_no_pixel_and_every_other_group_does():
    model = sv.load_model("toy")
    z = _anchors(model)
    base = model.decode(z)
    for group in model.groups:
        noise = {group.name: torch.full((len(z), group.size), 0.7)}
        changed = (model.decode(model.compose(z, noise)) != base).flatten(1).any(1)
        if group.name == "inert":
            assert not changed.any()
        else:
            assert changed.all(), group.name


def test_decode_is_differentiable():
    model = sv.load_model("toy")
    z = _anchors(model, 4).requires_grad_()
    model.decode(z).mean().backward()
    assert torch.isfinite(z.grad).all()
    assert z.grad[:, :16].abs().sum() > 0 and z.grad[:, 16:].abs().sum() == 0


def test_model_id_is_stable_and_depends_on_config():
    a, b = sv.load_model("toy"), sv.load_model("toy")
    assert a.model_id == b.model_id
    assert a.model_id != sv.load_model("toy", resolution=32).model_id
    assert a.model_id.startswith("toy-")
