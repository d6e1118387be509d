import pytest
import torch

import synthviews as sv
from synthviews.latents import LatentGroup, TruncatedNormal
from synthviews.models import MLVGM, ChunkedLatents


class Tiny(ChunkedLatents, MLVGM):
    family = "tiny-test"

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.groups = (LatentGroup("a", 2, "z[0:2]"), LatentGroup("b", 1, "z[2:3]"))
        self.latent_dim, self.prior, self.image_shape = 3, TruncatedNormal(0, 1, 2), (1, 2, 2)
        self.config = {"scale": scale}
        self.weight = torch.nn.Parameter(torch.tensor(scale))

    def decode(self, code):
        return torch.sigmoid(self.weight * code[:, :1, None, None].expand(-1, 1, 2, 2))


def test_register_and_load_a_new_family():
    sv.register_model("tiny-test", Tiny)
    assert "tiny-test" in sv.available_models()
    model = sv.load_model("tiny-test", scale=2.0)
    assert isinstance(model, Tiny) and model.config == {"scale": 2.0}
    # The weights are part of the id.
    assert model.model_id != sv.load_model("tiny-test", scale=3.0).model_id


def test_unknown_model_and_option_are_config_errors():
    with pytest.raises(sv.ConfigError, match="unknown model 'nope'.*toy"):
        sv.load_model("nope")
    with pytest.raises(sv.ConfigError, match="no option bogus.*resolution"):
        sv.load_model("toy", bogus=1)
    with pytest.raises(sv.ConfigError, match="resolution"):
        sv.load_model("toy", resolution="big")


def test_chunked_compose_adds_noise_to_the_group_only():
    model = Tiny()
    z = torch.zeros(2, 3)
    code = model.compose(z, {"b": torch.ones(2, 1)})
    assert torch.equal(code, torch.tensor([[0.0, 0.0, 1.0]] * 2))
    assert torch.equal(z, torch.zeros(2, 3))  # the anchor is not modified in place
    assert model.group_code(code, "a").shape == (2, 2)
