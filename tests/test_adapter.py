"""from_module: user torch modules as MLVGMs (hierarchical list/dict input, chunked z)."""

import json

import pytest
import torch
from torch import nn

import synthviews as sv
from synthviews.models.adapter import from_module


class TinyHierarchicalDecoder(nn.Module):
    """NVAE-like: a top vector, a spatial mid latent and a fine latent; ``spare`` is ignored."""

    def __init__(self):
        super().__init__()
        self.top = nn.Linear(8, 4 * 4 * 4)
        self.mid = nn.Conv2d(4 + 2, 4, 3, padding=1)
        self.fine = nn.Linear(16, 3 * 8 * 8)
        self.norm = nn.BatchNorm2d(4)  # must run on stored statistics
        self.out = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, zs):
        top, mid, fine, _spare = zs if isinstance(zs, (list, tuple)) else (zs["top"], zs["mid"], zs["fine"], None)
        h = self.top(top).reshape(-1, 4, 4, 4)  # (B, 4, 4, 4)
        h = torch.relu(self.norm(self.mid(torch.cat([h, mid], dim=1))))  # mid latent: (B, 2, 4, 4)
        h = nn.functional.interpolate(h, scale_factor=2)  # (B, 4, 8, 8)
        return torch.tanh(self.out(h) + self.fine(fine).reshape(-1, 3, 8, 8))


class ChunkedZGenerator(nn.Module):
    """One z of 24 values; dims 16-23 are never read."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(16, 3 * 6 * 6)

    def forward(self, z):
        return torch.sigmoid(self.net(z[:, :16])).reshape(-1, 3, 6, 6)


HIER_GROUPS = [("top", 8, "global layout"), ("mid", (2, 4, 4)), ("fine", 16), ("spare", 5)]
CHUNK_GROUPS = [("coarse", 8), ("detail", 8), ("unused", 8)]


def _models():
    torch.manual_seed(0)
    return {
        "list": from_module(TinyHierarchicalDecoder(), HIER_GROUPS, input="list", family="tiny-hvae"),
        "dict": from_module(TinyHierarchicalDecoder(), dict((n, s) for n, s, *_ in HIER_GROUPS), input="dict"),
        "chunks": from_module(ChunkedZGenerator(), CHUNK_GROUPS, input="chunks", output_range=(0, 1),
                              prior=sv.TruncatedNormal(0, 1, 2), family="chunked"),
    }


@pytest.fixture(scope="module")
def models():
    return _models()


def _anchors(model, n=4):
    return torch.randn(n, model.latent_dim, generator=torch.Generator().manual_seed(1))


def test_declared_groups_become_latent_groups(models):
    hier = models["list"]
    assert hier.group_names == ("top", "mid", "fine", "spare")
    assert [g.size for g in hier.groups] == [8, 32, 16, 5] and hier.latent_dim == 61
    assert hier.group("top").description == "global layout" and hier.group("mid").space == "input[1], shape [2, 4, 4]"
    assert hier.image_shape == (3, 8, 8) and hier.family == "tiny-hvae"
    chunked = models["chunks"]
    assert chunked.group("detail").space == "z[8:16]" and chunked.prior.truncation == 2
    json.dumps(chunked.describe())


@pytest.mark.parametrize("kind", ["list", "dict", "chunks"])
def test_zero_noise_reproduces_the_anchor_and_groups_act_as_declared(models, kind):
    model = models[kind]
    z = _anchors(model)
    base = model.decode(z)
    assert base.shape == (4, *model.image_shape) and base.min() >= 0 and base.max() <= 1
    zero = {g.name: torch.zeros(4, g.size) for g in model.groups}
    assert torch.equal(model.decode(model.compose(z, zero)), base)
    for g in model.groups:
        x = model.decode(model.compose(z, {g.name: torch.full((4, g.size), 0.5)}))
        changed = (x != base).flatten(1).any(1)
        if g.name in ("spare", "unused"):
            assert not changed.any(), g.name
        else:
            assert changed.all(), g.name


def test_compose_touches_only_the_group_slice(models):
    model = models["list"]
    z = _anchors(model)
    code = model.compose(z, {"mid": torch.ones(4, 32)})
    assert torch.equal(code[:, :8], z[:, :8]) and torch.equal(code[:, 40:], z[:, 40:])
    assert torch.allclose(code[:, 8:40], z[:, 8:40] + 1)
    assert torch.equal(model.group_code(code, "fine"), code[:, 40:56])


def test_output_range_is_mapped_to_unit_interval(models):
    model, z = models["list"], _anchors(models["list"])
    raw = model.module([c.reshape(4, *s) for c, s in zip(z.split(model.sizes, 1), model.shapes)])
    assert torch.allclose(model.decode(z), (raw + 1) / 2)


def test_list_and_dict_input_agree_for_the_same_weights():
    torch.manual_seed(3)
    module = TinyHierarchicalDecoder()
    a = from_module(module, HIER_GROUPS, input="list")
    b = from_module(module, HIER_GROUPS, input="dict")
    z = _anchors(a)
    assert torch.equal(a.decode(z), b.decode(z))


def test_stays_in_eval_mode_and_is_differentiable(models):
    model = models["list"]
    model.train()
    assert not model.module.training and not model.module.norm.training
    z = _anchors(model, 2).requires_grad_()
    model.decode(z).sum().backward()
    assert z.grad[:, :56].abs().sum() > 0 and z.grad[:, 56:].abs().sum() == 0


def test_model_id_hashes_the_weights():
    a, b = _models()["list"], _models()["list"]
    assert a.model_id == b.model_id and a.model_id.startswith("tiny-hvae-")
    with torch.no_grad():
        b.module.out.bias.add_(1)
    assert a.model_id != b.model_id
    assert a.config_sha256() != _models()["dict"].config_sha256()


@pytest.mark.parametrize("groups, kwargs, message", [
    ([], {}, "groups is empty"),
    ("top", {}, "list of"),
    ([("top", 8), ("top", 4)], {}, "declared twice"),
    ([("top", 0)], {}, "positive integer"),
    ([("top", 2.5)], {}, "positive integer"),
    ([("top", "8")], {}, "positive integer"),
    ([("top", (2, -1))], {}, "positive integer"),
    ([("to.p", 8)], {}, "without spaces, dots"),
    ([("top",)], {}, r"\(name, size\)"),
    ([("top", 8), ("mid", (2, 4, 4))], {"input": "chunks"}, "must be an integer"),
    (HIER_GROUPS, {"input": "tuple"}, "input must be one of"),
    (HIER_GROUPS, {"output_range": (1, -1)}, "low < high"),
    (HIER_GROUPS, {"output_range": "wide"}, "output_range"),
    (HIER_GROUPS, {"prior": (0, 1, 2)}, "TruncatedNormal"),
    (HIER_GROUPS, {"family": "my model"}, "family"),
    ([("top", 8), ("mid", (2, 4, 4)), ("fine", 15), ("spare", 5)], {}, "failed on the declared latents"),
    ([("top", 8), ("mid", 32), ("fine", 16), ("spare", 5)], {}, "failed on the declared latents"),
])
def test_bad_declarations(groups, kwargs, message):
    with pytest.raises(sv.ConfigError, match=message):
        from_module(TinyHierarchicalDecoder(), groups, **kwargs)


def test_module_must_return_images():
    class Flat(nn.Module):
        def forward(self, z):
            return z * 2

    with pytest.raises(sv.ConfigError, match=r"images of shape \(2, C, H, W\), got shape \(2, 4\)"):
        from_module(Flat(), [("z", 4)], input="chunks")
    with pytest.raises(sv.ConfigError, match="torch.nn.Module"):
        from_module(lambda z: z, [("z", 4)], input="chunks")
