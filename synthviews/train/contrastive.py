"""Contrastive losses for views of the same anchor: SimCLR's NT-Xent and StableRep's multi-positive loss.

Both take embeddings laid out view-major, ``z[v * n + i]`` = view ``v`` of
anchor ``i`` (what ``torch.cat(views)`` gives for a list of ``m`` batches of
``n``), and compare every embedding with all others by cosine similarity
over a temperature; an embedding is never compared with itself.

- :func:`nt_xent` (two views): each view must pick its one partner among the
  2n - 1 others.
- :func:`multi_positive` (m >= 2 views, StableRep, Tian et al. 2023): the
  target of a view is the uniform distribution over the m - 1 other views of
  its anchor, and the loss is the cross-entropy between that target and the
  softmax over all n*m - 1 other embeddings. With m = 2 it equals
  :func:`nt_xent`, so a stored dataset with K positives can train on all
  1 + K images of an anchor at once instead of one pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _logits(z: torch.Tensor, temperature: float) -> torch.Tensor:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    z = F.normalize(z, dim=1)
    logits = z @ z.T / temperature
    return logits.fill_diagonal_(float("-inf"))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss on two (n, d) batches of embeddings of the same n anchors."""
    n = z1.shape[0]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z1.device)
    return F.cross_entropy(_logits(torch.cat([z1, z2]), temperature), target)


def multi_positive(z: torch.Tensor, views: int, temperature: float) -> torch.Tensor:
    """StableRep's loss on (views * n, d) embeddings, view-major: all other views of an anchor are positives."""
    if views < 2 or z.shape[0] % views:
        raise ValueError(f"need views >= 2 dividing the batch, got views={views} for {z.shape[0]} embeddings")
    n = z.shape[0] // views
    anchor = torch.arange(views * n, device=z.device) % n
    target = (anchor[:, None] == anchor[None, :]).to(z.dtype).fill_diagonal_(0)
    target = target / (views - 1)
    log_prob = F.log_softmax(_logits(z, temperature), dim=1)
    # the diagonal is -inf in log_prob and 0 in target: leave it out of the sum
    return -(target * log_prob.masked_fill(target == 0, 0)).sum(1).mean()
