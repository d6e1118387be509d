"""synthviews.train.contrastive: NT-Xent and StableRep's multi-positive loss."""

from __future__ import annotations

import math

import pytest
import torch

from synthviews.train.contrastive import multi_positive, nt_xent


def test_multi_positive_with_two_views_is_nt_xent():
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 5), torch.randn(8, 5)
    assert multi_positive(torch.cat([z1, z2]), 2, 0.3).item() == pytest.approx(nt_xent(z1, z2, 0.3).item(), rel=1e-6)


def test_multi_positive_targets_every_other_view_of_the_anchor():
    # 3 anchors x 4 views; by hand: -mean over rows of mean over positives of log softmax
    torch.manual_seed(1)
    z = torch.randn(12, 6)
    zn = torch.nn.functional.normalize(z, dim=1)
    logits = zn @ zn.T / 0.5
    logits.fill_diagonal_(float("-inf"))
    logp = torch.log_softmax(logits, dim=1)
    want = 0.0
    for i in range(12):
        positives = [j for j in range(12) if j % 3 == i % 3 and j != i]
        want -= sum(logp[i, j].item() for j in positives) / len(positives)
    assert multi_positive(z, 4, 0.5).item() == pytest.approx(want / 12, rel=1e-6)


def test_multi_positive_is_low_for_matching_views_and_has_finite_gradients():
    anchors = torch.eye(4) * 3
    z = torch.cat([anchors] * 3).requires_grad_(True)  # every view of an anchor identical, anchors orthogonal
    loss = multi_positive(z, 3, 0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-3)  # the floor: 2 equally likely positives
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="views"):
        multi_positive(torch.randn(10, 3), 3, 0.1)
    with pytest.raises(ValueError, match="views"):
        multi_positive(torch.randn(10, 3), 1, 0.1)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(4, 3), torch.randn(4, 3), 0.0)
