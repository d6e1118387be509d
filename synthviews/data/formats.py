"""Which stored views a sample returns, and the item layouts SSL frameworks expect.

An item's images (its ``crops``) are always a list of (C, H, W) tensors (or,
for batched datasets, (B, C, H, W)), so default collate turns it into a list
of (B, C, H, W). (``views`` as a number is K, the positives per anchor, as in
``generate``; the list keeps the name frameworks use for it.)
Synthetic views carry no class label: ``target`` is -1, the "ignore"
label of solo-learn's online classifier and harmless for lightly.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..latents import Streams

OUTPUTS = ("tuple", "lightly", "solo", "dict", "stablerep")
NO_TARGET = -1


def check_output(output: str) -> str:
    if output not in OUTPUTS:
        raise ConfigError(f"unknown output format {output!r}; use one of {', '.join(OUTPUTS)}")
    return output


def format_item(output: str, views: list, index, key=None, extra: dict | None = None):
    """One item (or one batch, if ``views`` are batched and ``index`` is a tensor) in ``output`` layout.

    - ``tuple``: ``(views, index)``
    - ``lightly``: ``(views, target, key)``
    - ``solo``: ``(index, views, target)``
    - ``dict``: ``{"views", "index", "key", **extra}`` (extra: json metadata, latents)
    - ``stablerep``: ``(views concatenated on channels, index)``
    """
    target = NO_TARGET if not torch.is_tensor(index) else torch.full_like(index, NO_TARGET)
    if output == "tuple":
        return views, index
    if output == "lightly":
        return views, target, key
    if output == "solo":
        return index, views, target
    if output == "stablerep":
        return torch.cat(views, dim=-3), index
    return {"views": views, "index": index, "key": key, **(extra or {})}


def map_tensors(fn, item):
    """``item`` (a batch in any layout above: tensors in tuples, lists, dicts) with ``fn`` applied to each
    tensor; everything else (keys, json metadata) as it is."""
    if torch.is_tensor(item):
        return fn(item)
    if isinstance(item, dict):
        return {k: map_tensors(fn, v) for k, v in item.items()}
    if isinstance(item, (list, tuple)):
        return type(item)(map_tensors(fn, v) for v in item)
    return item


class ViewChoice:
    """Which of the 1+K stored views an item returns: a pure function of (seed, epoch, index).

    ``pairs``: ``"anchor+random"`` (the anchor and one random positive: 2 crops),
    ``"random"`` (``crops`` distinct stored views, anchor included in the draw)
    or an explicit sequence of view indices (``crops`` is its length).
    ``crops`` is the number of images per item; ``None`` means 2 for the named choices.
    """

    def __init__(self, pairs: str | Sequence[int] = "anchor+random", crops: int | None = None, seed: int = 0):
        if crops is not None and (isinstance(crops, bool) or not isinstance(crops, int) or crops < 1):
            raise ConfigError(f"crops (images per item) must be an integer >= 1, got {crops!r}")
        if isinstance(pairs, str):
            if pairs not in ("anchor+random", "random"):
                raise ConfigError(f"pairs must be 'anchor+random', 'random' or a list of view indices, got {pairs!r}")
            crops = 2 if crops is None else crops
            if pairs == "anchor+random" and crops != 2:
                raise ConfigError(f"pairs='anchor+random' returns 2 crops, not {crops}; use pairs='random' for more")
        else:
            pairs = [int(v) for v in pairs]
            if not pairs or min(pairs) < 0:
                raise ConfigError(f"explicit view indices must be a non-empty list of indices >= 0, got {pairs!r}")
            if crops is not None and crops != len(pairs):
                raise ConfigError(f"crops={crops} but pairs={pairs} lists {len(pairs)} views; leave crops out")
            crops = len(pairs)
        self.pairs, self.crops, self.streams = pairs, crops, Streams(seed)

    def check_stored(self, stored: int) -> None:
        """Raise ConfigError if a dataset with ``stored`` (1+K) views cannot serve this choice."""
        need = self.crops if isinstance(self.pairs, str) else max(self.pairs) + 1  # anchor+random: 2 crops
        if need > stored:
            raise ConfigError(f"the dataset stores {stored} views per sample (anchor + {stored - 1} positives); "
                              f"cannot return {self.pairs if not isinstance(self.pairs, str) else f'{need} crops'}")

    def __call__(self, index: int, epoch: int, stored: int) -> list[int]:
        if not isinstance(self.pairs, str):
            return list(self.pairs)
        u = self.streams.uniform([index], epoch, "*", "view-choice", stored)[0]
        if self.pairs == "anchor+random":
            return [0, 1 + int(u[0] * (stored - 1))]
        return [int(v) for v in np.argsort(u, kind="stable")[: self.crops]]
