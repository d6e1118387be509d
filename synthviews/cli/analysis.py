"""The ``analyze`` and ``train-walker`` verbs; ``synthviews.cli`` adds them with ``add_commands(verbs)``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _names(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated latent group names")
    return names


def _truncation(text: str) -> float | None:
    if text.lower() in ("none", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of stds or 'none', got {text!r}") from None


def _overrides(args, fields: dict[str, str]) -> dict:
    """Settings fields given on the command line (unset options keep the settings' defaults)."""
    return {field: getattr(args, dest) for dest, field in fields.items() if getattr(args, dest) is not None}


_SWEEP_FIELDS = {"stds": "stds", "truncation": "truncation", "pairs": "pairs", "eval_pairs": "eval_pairs",
                 "batch": "batch", "eval_batch": "eval_batch", "steps": "steps", "seeds": "seeds", "seed": "seed",
                 "critic": "critic", "critic_resolution": "resolution", "lr": "lr"}
_WALKER_FIELDS = {"steps": "steps", "batch": "batch", "warmup": "warmup", "eval_every": "eval_every",
                  "patience": "patience", "min_gain": "min_gain", "eval_pairs": "eval_pairs", "hidden": "hidden",
                  "critic": "critic", "critic_resolution": "resolution", "lr_critic": "lr_critic",
                  "lr_walker": "lr_walker", "seed": "seed"}


def _cmd_analyze(args) -> int:
    from ..analysis.mi import Settings
    from ..analysis.report import analyze
    from ..analysis.walkers import WalkerSettings
    from .app import _build_model

    if args.embed_policy and (args.path is None or not str(args.path).lower().endswith(".safetensors")):
        raise ConfigError(f"--embed-policy needs --path FILE.safetensors (the checkpoint to store it in), "
                          f"got {args.path!r}")
    overrides = _overrides(args, _SWEEP_FIELDS)
    settings = Settings.quick(**overrides) if args.quick else Settings(**overrides)
    walker_settings = WalkerSettings(seed=settings.seed, critic=settings.critic, resolution=settings.resolution,
                                     **({"steps": args.walker_steps} if args.walker_steps is not None else {}))
    out = args.out or f"reports/{args.model}"
    result = analyze(_build_model(args), out, groups=args.groups, settings=settings, target_mi=args.target_mi,
                     near=args.near, device=args.device, walkers=args.walkers, walker_settings=walker_settings,
                     preview_samples=args.preview_samples, progress=not args.no_progress, threads=args.threads or None)
    ref = result["reference"]
    print(f"reference (x' = x): MI {ref['mi']:.3f} +- {ref['ci']:.3f} nats, log N = {result['log_n']:.3f}")
    for c in result["calls"]:
        std = "fixed" if c["tolerated_std"] == 0 else f"std {c['tolerated_std']:g}"
        print(f"  {c['group']:<12} {c['kind']:<11} -> {std:<10} {c['reason']}")
    print(f"wrote {out}/report.md, results.json, results.csv, mi_vs_std.png, mi_vs_delta.png, policy.yaml, "
          f"preview.png in {result['seconds_total']:.0f} s")
    if args.embed_policy:
        import yaml

        from ..models.stylegan2.checkpoint import embed_policy

        embed_policy(args.path, yaml.safe_load((Path(out) / "policy.yaml").read_text()))
        print(f"stored the policy in {args.path}: it is now that checkpoint's default policy")
    return 0


def _cmd_train_walker(args) -> int:
    from ..analysis.walkers import WalkerSettings, train_walker
    from .app import _build_model

    settings = WalkerSettings(**_overrides(args, _WALKER_FIELDS))
    out = args.out or f"walkers/{args.model}-{'-'.join(args.groups)}.pt"
    r = train_walker(_build_model(args), args.groups, out, settings, device=args.device, resume=not args.fresh,
                     progress=not args.no_progress, threads=args.threads or None)
    if r["bound"] is None:
        raise ConfigError(f"no evaluation was run: steps ({settings.steps}) ended before the first one")
    print(f"walker for {', '.join(r['groups'])}: {r['steps']} steps"
          f"{' (stopped early)' if r['stopped_early'] else ''}; best at step {r['best_step']}: InfoNCE bound "
          f"{r['bound']:.3f} of log N = {r['log_n']:.3f}, delta {r['delta_mean']:.3f} +- {r['delta_std']:.3f}")
    print(f"wrote {r['checkpoint']} and the policy {r['policy']} (use it with --policy)")
    return 0


_THREADS_HELP = ("CPU threads (default: 1, much faster than 2 when other jobs share the CPU; 0: torch's default)")


def add_commands(verbs) -> None:
    """Add ``analyze`` and ``train-walker`` to the subparsers object of ``synthviews.cli.build_parser``."""
    from ..analysis.critic import CRITICS
    from .app import _add_model_args

    p = verbs.add_parser(
        "analyze", help="measure I(x; x') per latent group and std; write a report and a chosen policy",
        description="Perturb one latent group at a time with each std, estimate I(x; x') with an InfoNCE "
                    "critic trained on the pairs and evaluated on held-out pairs, call each group semantic, "
                    "under-used or in between, and choose a Gaussian policy. Writes OUT/report.md, "
                    "results.json, results.csv, mi_vs_std.png, mi_vs_delta.png, policy.yaml and preview.png.")
    _add_model_args(p)
    p.add_argument("--out", help="report folder (default: reports/MODEL)")
    p.add_argument("--groups", type=_names, help="comma-separated groups to analyse (default: all)")
    p.add_argument("--stds", type=_floats, help="comma-separated perturbation stds (default: 0.1,0.25,0.5,1,2)")
    p.add_argument("--truncation", type=_truncation, help="noise cut at +-T std, or 'none' (default: 2)")
    p.add_argument("--pairs", type=int, help="critic training pairs per cell and seed (default: 2048)")
    p.add_argument("--eval-pairs", type=int, help="held-out pairs per cell and seed (default: 1024)")
    p.add_argument("--batch", type=int, help="critic training batch (default: 64)")
    p.add_argument("--eval-batch", type=int, help="N candidates per held-out bound; ceiling log N (default: 256)")
    p.add_argument("--steps", type=int, help="critic training steps per cell and seed (default: 200)")
    p.add_argument("--seeds", type=int, help="repetitions with other anchors and critics (default: 2)")
    p.add_argument("--seed", type=int, help="first seed (default: 0)")
    p.add_argument("--critic", choices=CRITICS, help="small CNN (default) or the reference ResNet-18")
    p.add_argument("--critic-resolution", type=int, help="critic input size in pixels (default: 32)")
    p.add_argument("--lr", type=float, help="critic learning rate (default: 1e-3)")
    p.add_argument("--target-mi", type=float, default=0.9,
                   help="keep at least this fraction of the reference MI when choosing stds (default: 0.9)")
    p.add_argument("--near", type=float, default=0.95,
                   help="under-used if MI keeps this fraction at the largest std (default: 0.95)")
    p.add_argument("--quick", action="store_true",
                   help="stds 0.5,2, fewer pairs and steps: a first look (measured on 2 CPU cores: about 1 min "
                        "for toy, 3-5 min for digits)")
    p.add_argument("--embed-policy", action="store_true",
                   help="also store the chosen policy in the --path .safetensors file (e.g. one train-gan wrote), "
                        "so loading that file gives it as the default policy")
    p.add_argument("--walkers", action="store_true", help="also train one walker per group (Table 1 mode)")
    p.add_argument("--walker-steps", type=int, help="maximum walker training steps (default: 600)")
    p.add_argument("--preview-samples", type=int, default=6, help="rows of the preview grid (default: 6)")
    p.add_argument("--threads", type=int, default=1, help=_THREADS_HELP)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=_cmd_analyze)

    p = verbs.add_parser(
        "train-walker", help="learn a COP-Gen walker T(z) for one group or a set of groups",
        description="Minimax training: an InfoNCE critic minimises the loss on (x, x'), the walker "
                    "T(z) = Linear-ReLU-Linear maximises it. Writes OUT (the walker checkpoint), "
                    "OUT.state.pt (to resume: rerun the same command) and OUT.yaml (a walker policy).")
    _add_model_args(p)
    p.add_argument("--groups", type=_names, required=True, help="comma-separated groups the walker perturbs jointly")
    p.add_argument("--out", help="checkpoint path ending in .pt (default: walkers/MODEL-GROUPS.pt)")
    p.add_argument("--steps", type=int, help="maximum training steps (default: 600)")
    p.add_argument("--batch", type=int, help="anchors per step, also N of the bound (default: 64)")
    p.add_argument("--warmup", type=int, help="critic-only steps first (default: 50)")
    p.add_argument("--eval-every", type=int, help="steps between held-out evaluations and checkpoints (default: 25)")
    p.add_argument("--patience", type=int, help="stop after this many evaluations without gain (default: 4)")
    p.add_argument("--min-gain", type=float, help="InfoNCE loss gain that counts (nats, default: 0.02)")
    p.add_argument("--eval-pairs", type=int, help="held-out anchors per evaluation (default: 512)")
    p.add_argument("--hidden", type=int, help="walker hidden width (default: 64)")
    p.add_argument("--critic", choices=CRITICS, help="small CNN (default) or the reference ResNet-18")
    p.add_argument("--critic-resolution", type=int, help="critic input size in pixels (default: 32)")
    p.add_argument("--lr-critic", type=float, help="critic learning rate (default: 1e-3; reference 5e-5)")
    p.add_argument("--lr-walker", type=float, help="walker learning rate (default: 1e-3; reference 8e-5)")
    p.add_argument("--seed", type=int, help="seed (default: 0)")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming from OUT.state.pt")
    p.add_argument("--threads", type=int, default=1, help=_THREADS_HELP)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=_cmd_train_walker)


__all__ = ["add_commands"]
