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

import yaml

from .._util.files import write_atomic
from ..errors import ConfigError
from ..policies import load_policy

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


def policy_yaml(result: dict, calls: list[GroupCall], target: float) -> str:
    """The chosen per-group Gaussian policy as commented YAML (a file ``load_policy`` reads)."""
    ref, trunc = result["reference"], result["settings"]["truncation"]
    cells = {(c["group"], c["std"]): c for c in result["cells"]}
    lines = [
        "# Policy chosen by `synthviews analyze` from the MI measurements in report.md / results.json.",
        f"# Model {result['model']['model_id']}. Ceiling: MI(x' = x) = {ref['mi']:.3f} +- {ref['ci']:.3f} nats "
        f"(log N = {result['log_n']:.3f}, N = {result['settings']['eval_batch']}).",
        f"# Rule: each group gets the largest std tested whose MI stays >= {target:.0%} of the ceiling at it",
        "# and at every smaller std; 'fixed' if even the smallest std falls below.",
        f"# Noise is N(0, std) cut at +-{trunc} std, as measured." if trunc is not None else
        "# Noise is N(0, std), untruncated, as measured.",
        "kind: gaussian",
        "default: fixed",
        "groups:",
    ]
    analysed = {c.group: c for c in calls}
    for group in result["model_groups"]:
        call, name = analysed.get(group), _yaml_key(group)
        if call is None:
            lines += [f"  # {name}: not analysed", f"  {name}: fixed"]
            continue
        lines.append(f"  # {name}: {call.kind}; {call.reason}.")
        if call.tolerated_std == 0:
            c = cells[(group, min(call.rel))]
            lines.append(f"  # MI {c['mi']:.3f} +- {c['ci']:.3f} at the smallest std {c['std']:g}: keep it fixed.")
            lines.append(f"  {name}: fixed")
        else:
            c = cells[(group, call.tolerated_std)]
            lines.append(f"  # At std {c['std']:g}: MI {c['mi']:.3f} +- {c['ci']:.3f} ({c['mi'] / ref['mi']:.0%}), "
                         f"delta {c['delta_mean']:.2f} +- {c['delta_std']:.2f}, pixel change {c['pixel_change']:.4f}.")
            spec = {"std": call.tolerated_std} if trunc is None else {"std": call.tolerated_std, "truncation": trunc}
            lines.append(f"  {name}: {yaml.safe_dump(spec, default_flow_style=True).strip()}")
    return "\n".join(lines) + "\n"


def _yaml_key(name: str) -> str:
    """A group name as a YAML key that reads back as that string (``0_2`` unquoted is the number 2)."""
    return yaml.safe_dump(name, width=float("inf")).splitlines()[0]


def write_policy(path: str | Path, text: str):
    """Write the policy file and read it back as every other verb will (a bad file fails here, not later)."""
    write_atomic(path, text.encode())
    return load_policy(path)
