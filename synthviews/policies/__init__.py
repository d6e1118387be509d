"""Perturbation policies T_z: how positive latents are made from an anchor.

A policy file is plain YAML or JSON; the same dicts round-trip through
:func:`policy_from_dict` / :meth:`Policy.to_dict`::

    kind: gaussian            # per-group Gaussian noise
    default: fixed            # groups not listed below ("fixed" = never perturbed)
    groups:
      shape: fixed
      pose: {std: 0.5, truncation: 2}   # noise ~ N(0, 0.5) cut at +-2 std
      color: 0.5                         # shorthand for {std: 0.5}

    kind: random_subset       # each group perturbed with probability p,
    p: 0.5                    # its std drawn from U(lo, hi) per sample and view
    std: [0.2, 1.0]
    truncation: 2
    groups: [pose, color]     # optional; default: every group

    kind: walker              # learned walkers: see synthviews.policies.walker.WalkerPolicy
    walkers: [shape.pt]       # checkpoints, relative to this file
    scale: [0.5, 1.5]         # optional per-view step factor; default 1: one positive per anchor

GenRep-style "perturb every latent with std s" is ``{kind: gaussian,
default: {std: s}}``. Noise of different groups comes from independent
streams (the reference code reused one seed for all groups; we do not).

:func:`save_policy` is the one writer of policy files (the analysis and the
walker training use it too); :func:`load_policy` the one reader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping

import yaml

from .._util.checks import MAX_POLICY_BYTES, brief, error, load_json, load_yaml, read_text
from .._util.files import write_atomic
from ..errors import ConfigError
from ..models.base import MLVGM
from .base import GroupNoise, Policy, check_groups, policy_file_dir, reading_policy_file
from .gaussian import GaussianPolicy
from .random_subset import RandomSubsetPolicy
from .walker import Walker, WalkerPolicy, load_walker, save_walker, walker_policy

_KINDS: dict[str, Callable[[Mapping], Policy]] = {
    GaussianPolicy.kind: GaussianPolicy.from_dict,
    RandomSubsetPolicy.kind: RandomSubsetPolicy.from_dict,
    WalkerPolicy.kind: WalkerPolicy.from_dict,
}


def register_policy(kind: str, from_dict: Callable[[Mapping], Policy]) -> None:
    """Make ``kind:`` in policy files build a new policy type."""
    _KINDS[kind] = from_dict


def policy_from_dict(d) -> Policy:
    """The policy a policy file's dict describes (its ``kind`` picks the type)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"a policy must be a mapping with a 'kind' key, got {type(d).__name__}")
    kind = d.get("kind")
    if not isinstance(kind, str):
        raise ConfigError(f"a policy needs a 'kind' name; known kinds: {', '.join(sorted(_KINDS))}; got {brief(kind)}")
    if kind not in _KINDS:
        raise ConfigError(f"unknown policy kind {brief(kind, 40)}; known kinds: {', '.join(sorted(_KINDS))}")
    return _KINDS[kind](d)


def load_policy(path: str | Path) -> Policy:
    """Read a YAML or JSON policy file; errors name the file and the problem.

    Only a regular file of at most 1 MB is read; YAML anchors/aliases and
    duplicate keys are refused (an alias bomb expands 1 KB to gigabytes).
    """
    path = Path(path)
    text = read_text(path, "policy file", MAX_POLICY_BYTES)
    where = f"policy file {path}"
    data = load_json(text, where) if path.suffix == ".json" else load_yaml(text, where)
    try:
        with reading_policy_file(path.parent):
            return policy_from_dict(data)
    except ConfigError as e:
        raise error(f"policy file {path}: {e}") from None


def save_policy(policy: Policy, path: str | Path, comments: str | Mapping | None = None) -> Policy:
    """Write ``policy`` as YAML (JSON for a .json path), atomically, and return it as read back.

    Reading it back as every other verb will makes a file that would not load
    fail here, not later. ``comments`` explain the file (YAML only): a string
    is a comment block at the top; a mapping puts each string value above the
    policy key of the same name, and a nested mapping the notes of that key's
    entries, with its ``""`` entry above the key itself; ``""`` at the top level
    is the top block. E.g. ``{"": "chosen by ...", "groups": {"pose": "why"}}``.
    """
    path = Path(path)
    write_atomic(path, policy_text(policy, comments, as_json=path.suffix == ".json").encode())
    return load_policy(path)


def policy_text(policy: Policy, comments: str | Mapping | None = None, as_json: bool = False) -> str:
    """The text :func:`save_policy` writes for ``policy`` and ``comments``."""
    d = policy.to_dict()
    if as_json:
        if comments:
            raise ConfigError("a JSON policy file cannot hold comments; write a .yaml file")
        return json.dumps(d, indent=2) + "\n"
    notes = {"": comments} if isinstance(comments, str) else dict(comments or {})
    lines = _comment(notes.pop("", None), "") + _entries(d, notes, "", "policy")
    return "\n".join(lines) + "\n"


def _entries(d: Mapping, notes: Mapping, indent: str, where: str) -> list[str]:
    """YAML lines of mapping ``d`` with ``notes`` (see :func:`save_policy`) above its keys."""
    stray = set(notes) - set(d) - {""}
    if stray:
        raise ConfigError(f"policy comments name key(s) {brief(sorted(map(str, stray)))} that {where} lacks")
    lines = []
    for key, value in d.items():
        note = notes.get(key)
        inner = dict(note) if isinstance(note, Mapping) else None
        lines += _comment(inner.pop("", None) if inner is not None else note, indent)
        if inner and isinstance(value, Mapping):
            lines.append(f"{indent}{_key(key)}:")
            lines += _entries(value, inner, indent + "  ", f"{where} {key!r}")
        elif inner:
            raise ConfigError(f"policy comments give notes for entries of {key!r}, which is not a mapping")
        else:
            # block style, only collections of plain values on one line: `pose: {std: 0.5}`, `std: [0.2, 1]`
            flow = None if isinstance(value, (Mapping, list, tuple)) else False
            text = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=flow, width=float("inf"))
            lines += [indent + line for line in text.splitlines()]
    return lines


def _comment(text: str | None, indent: str) -> list[str]:
    return [f"{indent}# {line}".rstrip() for line in (text or "").splitlines()]


def _key(name) -> str:
    """A key as YAML that reads back as that string (``0_2`` unquoted is the number 2)."""
    return yaml.safe_dump(name, width=float("inf")).splitlines()[0]


def resolve_policy(policy, model: MLVGM) -> Policy:
    """A Policy from None (the model's default), a dict, a path or a Policy; validated for ``model``."""
    if policy is None:
        policy = policy_from_dict(model.default_policy_spec())
    elif isinstance(policy, (str, Path)):
        policy = load_policy(policy)
    elif isinstance(policy, Mapping):
        policy = policy_from_dict(policy)
    elif not isinstance(policy, Policy):
        raise ConfigError(f"policy must be a Policy, a dict or a file path, got {type(policy).__name__}")
    policy.validate(model)
    return policy


__all__ = ["GroupNoise", "Policy", "GaussianPolicy", "RandomSubsetPolicy", "WalkerPolicy", "Walker", "register_policy",
           "policy_from_dict", "policy_file_dir", "load_policy", "save_policy", "policy_text", "resolve_policy",
           "check_groups", "load_walker", "save_walker", "walker_policy"]
