"""``analyze``: run the MI sweep and write OUT/report.md, results.json/.csv, plots, policy.yaml, preview.png."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

from .._util.device import resolve_device
from .._util.files import write_atomic
from ..errors import ConfigError
from ..models.base import MLVGM
from ..policies import WalkerPolicy
from .choice import SEMANTIC, check_fractions, choose_policy, classify, write_policy
from .mi import REFERENCE, Settings, estimate, pool, sweep, torch_threads
from .plots import line_plot
from .walkers import WalkerSettings, train_walker, write_walker_policy

CSV_FIELDS = ("group", "std", "mi", "ci", "rel", "delta_mean", "delta_std", "pixel_change", "train_loss",
              "identical", "per_seed")


def analyze(model: MLVGM, out: str | Path, groups=None, settings: Settings | None = None, target_mi: float = 0.9,
            near: float = 0.95, device="auto", walkers: bool = False, walker_settings: WalkerSettings | None = None,
            preview_samples: int = 6, progress: bool = False, threads: int | None = 1) -> dict:
    """Measure I(x; x') per group and std, call each group, choose a policy, write the report folder.

    Returns the content of ``OUT/results.json``. ``walkers=True`` also
    trains one walker per group (Table 1 mode) into ``OUT/walkers/``.
    ``threads``: CPU threads for the run, restored afterwards (None: torch's
    setting). One by default: the small critic gains little from more and
    loses much when other jobs share the CPU.
    """
    with torch_threads(threads):
        return _analyze(model, out, groups, settings, target_mi, near, device, walkers, walker_settings,
                        preview_samples, progress)


def _analyze(model, out, groups, settings, target_mi, near, device, walkers, walker_settings, preview_samples,
             progress) -> dict:
    check_fractions(target_mi, near)
    if isinstance(preview_samples, bool) or not isinstance(preview_samples, int) or preview_samples < 1:
        raise ConfigError(f"preview_samples must be an integer >= 1, got {preview_samples!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"analysis output {out} exists and is not a folder")
    settings = settings or Settings()
    device = resolve_device(device)
    start = time.perf_counter()
    result = sweep(model, groups, settings, device, progress, threads=None)  # threads: set by analyze
    calls = classify(result, target_mi, near)
    result.update(target_mi=target_mi, near=near, calls=[asdict(c) for c in calls])
    out.mkdir(parents=True, exist_ok=True)
    write_policy(out / "policy.yaml", choose_policy(result, calls, target_mi))

    if walkers:
        result["walkers"] = _walkers(model, result, calls, settings, walker_settings or WalkerSettings(),
                                     out, device, progress)
    _plots(result, out)
    from ..views import ViewSampler
    from .preview import preview

    sampler = ViewSampler(model, out / "policy.yaml", views=4, seed=settings.seed, device=device)
    preview(sampler, out / "preview.png", samples=preview_samples)
    result["seconds_total"] = time.perf_counter() - start
    write_atomic(out / "results.json", (json.dumps(result, indent=1) + "\n").encode())
    write_atomic(out / "results.csv", _csv(result).encode())
    write_atomic(out / "report.md", markdown(result, (out / "policy.yaml").read_text()).encode())
    return result


def _walkers(model, result, calls, settings, ws, out, device, progress) -> list[dict]:
    """Table 1 mode: one walker per group; its InfoNCE value reached, its delta, and a fresh critic's MI."""
    rows = []
    seeds = [settings.seed + k for k in range(settings.seeds)]
    for g in result["groups"]:
        summary = train_walker(model, g, out / "walkers" / f"{g}.pt", ws, device, resume=True, progress=progress,
                               threads=None)
        policy = WalkerPolicy([{"path": summary["checkpoint"]}])
        cell = pool(g, math.nan, [estimate(model, policy, settings, s, device) for s in seeds],
                    model.group_names.index(g))
        summary.update(fresh_mi=cell.mi, fresh_ci=cell.ci, fresh_delta_mean=cell.delta_mean,
                       fresh_delta_std=cell.delta_std, pixel_change=cell.pixel_change)
        rows.append(summary)
    keep = [r["checkpoint"] for r, c in zip(rows, calls) if c.kind != SEMANTIC]
    if keep:  # walkers of the groups that are not semantic, combined
        write_walker_policy(out / "walker_policy.yaml", keep)
    return rows


def _cells(result):
    return [dict(result["reference"], std=0.0)] + result["cells"]


def _csv(result) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    ceiling = result["reference"]["mi"]
    for c in _cells(result):
        writer.writerow([c["group"], c["std"], f"{c['mi']:.6f}", f"{c['ci']:.6f}", f"{c['mi'] / ceiling:.6f}",
                         f"{c['delta_mean']:.6f}", f"{c['delta_std']:.6f}", f"{c['pixel_change']:.6f}",
                         f"{c['train_loss']:.6f}", int(c["identical"]), ";".join(f"{v:.6f}" for v in c["per_seed"])])
    return buf.getvalue()


def _plots(result, out: Path) -> None:
    ceiling = result["reference"]["mi"]
    by_group = {g: [c for c in result["cells"] if c["group"] == g] for g in result["groups"]}
    line = (ceiling, f"x' = x: {ceiling:.2f}")
    line_plot(out / "mi_vs_std.png",
              [(g, [c["std"] for c in cs], [c["mi"] for c in cs], [c["ci"] for c in cs]) for g, cs in by_group.items()],
              title=f"I(x; x') lower bound vs perturbation std (one group perturbed; log N = {result['log_n']:.2f})",
              xlabel="perturbation std (log scale)", ylabel="MI bound (nats)", hline=line, logx=True)
    line_plot(out / "mi_vs_delta.png",
              [(g, [c["delta_mean"] for c in cs], [c["mi"] for c in cs], [c["ci"] for c in cs])
               for g, cs in by_group.items()],
              title="I(x; x') lower bound vs latent distance delta of the perturbed group",
              xlabel="delta: mean L2 distance of the group's code", ylabel="MI bound (nats)", hline=line)


def ranking(result, std: float) -> list[tuple[str, float]]:
    """Groups by MI drop (ceiling - MI) at ``std``, largest drop first."""
    ceiling = result["reference"]["mi"]
    drops = [(c["group"], ceiling - c["mi"]) for c in result["cells"] if c["std"] == std]
    return sorted(drops, key=lambda t: -t[1])


def markdown(result: dict, policy_text: str) -> str:
    """The human-readable report: settings, the ceiling, calls, the full table, ranking, plots, policy."""
    s, ref, log_n = result["settings"], result["reference"], result["log_n"]
    ceiling = ref["mi"]
    n_batches = len(ref["batches"])
    lines = [
        f"# MI analysis of `{result['model']['family']}` ({result['model']['model_id']})",
        "",
        "Each cell perturbs one latent group with N(0, std) noise"
        + (f" cut at +-{s['truncation']} std" if s["truncation"] is not None else "")
        + " and keeps every other group fixed. An InfoNCE critic is trained on the cell's pairs and "
        "I(x; x') >= log N - L_NCE is evaluated on held-out pairs.",
        "",
        f"- critic: `{s['critic']}` on {s['resolution']}x{s['resolution']} inputs, {s['steps']} steps of "
        f"{s['batch']} pairs, Adam lr {s['lr']:g} betas (0.5, 0.999), temperature {s['temperature']:g}, trained on "
        f"{s['pairs']} pairs per cell and seed"
        + (f"; both images of every pair T_x-augmented (`{s['critic_t_x']}`, independent seeds) in training and "
           "evaluation, so the bounds are on I(T(x); T'(x'))" if s.get("critic_t_x", "none") != "none" else ""),
        f"- bound: {s['eval_pairs']} held-out pairs per cell and seed in batches of N = {s['eval_batch']} "
        f"candidates: ceiling log N = {log_n:.3f} nats",
        f"- seeds {', '.join(str(s['seed'] + k) for k in range(s['seeds']))}; +- is the 95% confidence interval "
        f"(Student t) over the {n_batches} held-out batch bounds of all seeds",
        f"- reference (x' = x): **{ceiling:.3f} +- {ref['ci']:.3f}** nats = {ceiling / log_n:.0%} of log N; "
        "the % columns below are relative to it",
        f"- device {result['device']}; sweep {result['seconds']:.0f} s"
        + (f", total {result['seconds_total']:.0f} s" if "seconds_total" in result else ""),
        "",
        "## Calls",
        "",
        f"Target: MI >= {result['target_mi']:.0%} of the reference; under-used: >= {result['near']:.0%} at the "
        "largest std; semantic: below target within the lower half of the std grid.",
        "",
        "| group | call | chosen std | why |",
        "| --- | --- | --- | --- |",
    ]
    for c in result["calls"]:
        std = "fixed" if c["tolerated_std"] == 0 else f"{c['tolerated_std']:g}"
        lines.append(f"| {c['group']} | **{c['kind']}** | {std} | {c['reason']} |")
    lines += ["", "## MI per group and std", "",
              "| group | std | MI (nats) | % ref | per seed | delta mean | delta std | pixel change |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in _cells(result):
        seeds = ", ".join(f"{v:.3f}" for v in c["per_seed"])
        note = " (same images as the reference)" if c["identical"] and c["group"] != REFERENCE else ""
        lines.append(f"| {c['group']} | {c['std']:g} | {c['mi']:.3f} +- {c['ci']:.3f}{note} | "
                     f"{c['mi'] / ceiling:.1%} | {seeds} | {c['delta_mean']:.3f} | {c['delta_std']:.3f} | "
                     f"{c['pixel_change']:.4f} |")
    lines += ["", "## Ranking by MI drop", "", "Largest drop first (drop = reference MI - cell MI, nats).", ""]
    for std in s["stds"]:
        order = ", ".join(f"{g} {d:+.3f}" for g, d in ranking(result, std))
        lines.append(f"- std {std:g}: {order}")
    lines += ["", "## Plots", "", "![MI vs std](mi_vs_std.png)", "", "![MI vs delta](mi_vs_delta.png)", "",
              "## Chosen policy (`policy.yaml`)", "", "```yaml", policy_text.rstrip(), "```", "",
              "Preview with it (one row per anchor: the anchor, then 4 positives):", "", "![preview](preview.png)", ""]
    if result.get("walkers"):
        lines += ["## Learned walkers (Table 1 mode)", "",
                  "One walker per group, trained by the minimax game (critic minimises InfoNCE, walker maximises "
                  "it); the checkpoint keeps the walker's best evaluation. `reached`: the minimax critic's "
                  "held-out bound then (N = its batch). `fresh critic`: a new critic trained on the walker's "
                  "views as in the sweep above (N = %d, reference %.3f)." % (s["eval_batch"], ceiling), "",
                  "| group | steps | reached (log N) | delta mean | delta std | fresh critic MI | % ref | checkpoint |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for w in result["walkers"]:
            lines.append(f"| {', '.join(w['groups'])} | {w['steps']} (best {w['best_step']}) | {w['bound']:.3f} "
                         f"({w['log_n']:.3f}) | {w['delta_mean']:.3f} | {w['delta_std']:.3f} | "
                         f"{w['fresh_mi']:.3f} +- {w['fresh_ci']:.3f} | {w['fresh_mi'] / ceiling:.1%} | "
                         f"`{Path(w['checkpoint']).name}` |")
        lines.append("")
    return "\n".join(lines)
