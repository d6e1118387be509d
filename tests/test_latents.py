import numpy as np
import pytest
import torch

from synthviews import ConfigError, LatentGroup, Streams, TruncatedNormal
from synthviews.latents import sample_prior


def test_same_key_same_draws_and_order_free():
    s = Streams(7)
    a = s.normal(np.arange(10), 1, "pose", "noise", 5)
    b = s.normal(np.arange(10)[::-1].copy(), 1, "pose", "noise", 5)
    assert torch.equal(a, b.flip(0))
    assert torch.equal(a[3:4], Streams(7).normal([3], 1, "pose", "noise", 5))


@pytest.mark.parametrize("field", ["seed", "index", "view", "group", "purpose"])
def test_every_key_field_changes_the_stream(field):
    base = dict(seed=1, index=4, view=1, group="pose", purpose="noise")
    other = dict(base, **{field: {"seed": 2, "index": 5, "view": 2, "group": "color", "purpose": "std"}[field]})

    def draw(k):
        return Streams(k["seed"]).uniform([k["index"]], k["view"], k["group"], k["purpose"], 8)

    assert not np.array_equal(draw(base), draw(other))


def test_prefix_property_size_does_not_change_values():
    s = Streams(0)
    assert np.array_equal(s.uniform([3], 1, "g", "p", 4), s.uniform([3], 1, "g", "p", 9)[:, :4])


def test_uniform_and_normal_statistics():
    s = Streams(3)
    u = s.uniform(np.arange(20000), 0, "g", "p", 4)
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01
    z = s.normal(np.arange(20000), 0, "g", "p", 4)
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02


def test_truncated_normal_respects_bounds():
    z = Streams(0).normal(np.arange(5000), 0, "g", "p", 8, mean=1.0, std=0.5, truncation=2.0)
    assert z.min() >= 1.0 - 2 * 0.5 and z.max() <= 1.0 + 2 * 0.5
    assert z.min() < 0.05 and z.max() > 1.95  # the whole interval is used
    assert abs(z.mean() - 1.0) < 0.02


def test_sample_prior_matches_model_prior_and_is_float32():
    prior = TruncatedNormal(0.0, 1.0, 0.9)
    z = sample_prior(prior, Streams(0), range(100), 16)
    assert z.dtype == torch.float32 and z.shape == (100, 16)
    assert z.abs().max() <= 0.9


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ConfigError, match="seed"):
        Streams(-1)
    with pytest.raises(ConfigError, match="truncation"):
        TruncatedNormal(0, 1, -2)
    with pytest.raises(ConfigError, match="std"):
        TruncatedNormal(0, -1)
    with pytest.raises(ConfigError, match="size"):
        LatentGroup("g", 0, "z")
    with pytest.raises(ConfigError, match="name"):
        LatentGroup("a.b", 2, "z")
