"""Real SSL framework loops on synthviews data. lightly lives in the `frameworks` extra (it needs
torchvision, which the default install must not pull), so these run wherever that extra is installed."""

import math

import pytest
import torch
from torch import nn

import synthviews as sv
from synthviews.data import ContinuousViews, loader
from synthviews.store.writer import generate


def _backbone():
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


@pytest.mark.slow
def test_lightly_simclr_trains_on_shard_views_and_continuous_views(tmp_path):
    pytest.importorskip("lightly", reason="lightly is not installed: pip install 'synthviews[frameworks]'")
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    out = tmp_path / "ds"
    generate(out, "toy", samples=128, views=2, shard_size=32, model_kwargs={"resolution": 32})
    loaders = {
        "ShardViews": loader(out, batch_size=16, num_workers=2, output="lightly", t_x="simclr", t_x_size=28),
        "ContinuousViews": loader(ContinuousViews(sv.load_model("toy", resolution=32), epoch_samples=64,
                                                  batch_size=16, output="lightly", t_x="simclr", t_x_size=28)),
    }
    for name, dl in loaders.items():
        torch.manual_seed(0)
        backbone, head = _backbone(), SimCLRProjectionHead(32, 32, 16)
        criterion = NTXentLoss(temperature=0.1)
        opt = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=0.05)
        losses = []
        for views, target, key in dl:
            assert len(views) == 2 and views[0].shape == (16, 3, 28, 28) and (target == -1).all()
            loss = criterion(head(backbone(views[0])), head(backbone(views[1])))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert len(losses) == len(dl) >= 4, name
        assert all(math.isfinite(x) for x in losses), name
