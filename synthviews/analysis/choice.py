"""From MI measurements to a call per group and a Gaussian policy.

The numbers behind every call are relative MI, r(std) = MI(std) / MI(x' = x),
the fraction of the measured ceiling a perturbation keeps:

- tolerated std: the largest std tested such that r >= ``target`` at it and
  at every smaller std (0 if the smallest std already falls below);
- semantic: r falls below ``target`` at a std in the lower half of the grid
  (a small perturbation destroys MI);
- under-used: r >= ``near`` even at the largest std (MI hardly moves);
- in between: everything else.

The chosen policy perturbs every group with its tolerated std (fixed when
0): semantic groups end up fixed or lightly perturbed, under-used ones
with the largest std tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..errors import ConfigError
from ..policies import GaussianPolicy, GroupNoise, Policy, save_policy

SEMANTIC, UNDER_USED, BETWEEN = "semantic", "under-used", "in between"


@dataclass
class GroupCall:
    group: str
    kind: str                 # SEMANTIC, UNDER_USED or BETWEEN
    tolerated_std: float      # 0 = keep fixed
    first_below: float | None  # smallest std with r < target (None: never)
    rel: dict                 # std -> relative MI
    reason: str               # one sentence with the numbers behind the call


def check_fractions(target: float, near: float) -> None:
    for name, value in (("target MI fraction", target), ("near-ceiling fraction", near)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ConfigError(f"{name} must be in (0, 1], got {value!r}")
    if near < target:
        raise ConfigError(f"near-ceiling fraction ({near}) must be >= the target MI fraction ({target})")


def classify(result: dict, target: float = 0.9, near: float = 0.95) -> list[GroupCall]:
    """One :class:`GroupCall` per analysed group of a :func:`~synthviews.analysis.mi.sweep` result."""
    check_fractions(target, near)
    ceiling = result["reference"]["mi"]
    if not ceiling > 0:
        raise ConfigError(f"the critic did not learn to match even identical pairs (reference MI {ceiling:.3f} "
                          "nats); give it more steps or pairs")
    stds = sorted(result["settings"]["stds"])
    middle = stds[(len(stds) - 1) // 2]
    calls = []
    for g in result["groups"]:
        rel = {c["std"]: c["mi"] / ceiling for c in result["cells"] if c["group"] == g}
        first_below = next((s for s in stds if rel[s] < target), None)
        tolerated = max([s for s in stds if first_below is None or s < first_below], default=0.0)
        top = rel[stds[-1]]
        if first_below is not None and first_below <= middle:
            kind = SEMANTIC
            reason = (f"MI falls to {rel[first_below]:.0%} of the ceiling already at std {first_below:g} "
                      f"(target {target:.0%}; lower half of the grid ends at std {middle:g})")
        elif top >= near:
            kind = UNDER_USED
            reason = f"MI keeps {top:.0%} of the ceiling at the largest std {stds[-1]:g} (near = {near:.0%})"
        else:
            kind = BETWEEN
            where = f"falls below {target:.0%} at std {first_below:g}" if first_below is not None else \
                f"stays above {target:.0%}"
            reason = f"MI {where} and keeps {top:.0%} at the largest std {stds[-1]:g}"
        calls.append(GroupCall(g, kind, tolerated, first_below, rel, reason))
    return calls


class ChosenPolicy(NamedTuple):
    """The policy the analysis chose and the comments that say why (``save_policy``'s ``comments``)."""

    policy: GaussianPolicy
    comments: dict


def choose_policy(result: dict, calls: list[GroupCall], target: float) -> ChosenPolicy:
    """The chosen per-group Gaussian policy, every number behind it in its comments.

    Groups of the model that were not analysed stay fixed.
    """
    ref, trunc = result["reference"], result["settings"]["truncation"]
    cells = {(c["group"], c["std"]): c for c in result["cells"]}
    header = [
        "Policy chosen by `synthviews analyze` from the MI measurements in report.md / results.json.",
        f"Model {result['model']['model_id']}. Ceiling: MI(x' = x) = {ref['mi']:.3f} +- {ref['ci']:.3f} nats "
        f"(log N = {result['log_n']:.3f}, N = {result['settings']['eval_batch']}).",
        f"Rule: each group gets the largest std tested whose MI stays >= {target:.0%} of the ceiling at it",
        "and at every smaller std; 'fixed' if even the smallest std falls below.",
        f"Noise is N(0, std) cut at +-{trunc} std, as measured." if trunc is not None else
        "Noise is N(0, std), untruncated, as measured.",
    ]
    analysed = {c.group: c for c in calls}
    groups, notes = {}, {}
    for group in result["model_groups"]:
        call = analysed.get(group)
        if call is None:
            groups[group], notes[group] = None, f"{group}: not analysed"
        elif call.tolerated_std == 0:
            c = cells[(group, min(call.rel))]
            groups[group] = None
            notes[group] = (f"{group}: {call.kind}; {call.reason}.\n"
                            f"MI {c['mi']:.3f} +- {c['ci']:.3f} at the smallest std {c['std']:g}: keep it fixed.")
        else:
            c = cells[(group, call.tolerated_std)]
            groups[group] = GroupNoise(std=call.tolerated_std, truncation=trunc)
            notes[group] = (f"{group}: {call.kind}; {call.reason}.\n"
                            f"At std {c['std']:g}: MI {c['mi']:.3f} +- {c['ci']:.3f} ({c['mi'] / ref['mi']:.0%}), "
                            f"delta {c['delta_mean']:.2f} +- {c['delta_std']:.2f}, pixel change "
                            f"{c['pixel_change']:.4f}.")
    return ChosenPolicy(GaussianPolicy(groups), {"": "\n".join(header), "groups": notes})


def write_policy(path: str | Path, chosen: ChosenPolicy) -> Policy:
    """Save the chosen policy with its comments; returns it as read back from the file."""
    return save_policy(chosen.policy, path, comments=chosen.comments)
