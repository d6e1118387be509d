"""The ``analyze`` and ``train-walker`` verbs; ``synthviews.cli`` adds them with ``add_commands(verbs)``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from ._common import add_model_args, add_no_progress, build_model
from ._flags import add_flags, given

_THREADS_HELP = "CPU threads (default: 1, much faster than 2 when other jobs share the CPU; 0: torch's default)"


def _names(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated latent group names")
    return names


def add_commands(verbs) -> None:
    """Add ``analyze`` and ``train-walker`` to the subparsers object of ``synthviews.cli.build_parser``."""
    # The settings dataclasses live beside the torch code that reads them: loaded here, inside main().
    from ..analysis.mi import Settings
    from ..analysis.walkers import WalkerSettings

    p = verbs.add_parser(
        "analyze", help="measure I(x; x') per latent group and std; write a report and a chosen policy",
        description="Perturb one latent group at a time with each std, estimate I(x; x') with an InfoNCE "
                    "critic trained on the pairs and evaluated on held-out pairs, call each group semantic, "
                    "under-used or in between, and choose a Gaussian policy. Writes OUT/report.md, "
                    "results.json, results.csv, mi_vs_std.png, mi_vs_delta.png, policy.yaml and preview.png.")
    add_model_args(p)
    p.add_argument("--out", help="report folder (default: reports/MODEL)")
    p.add_argument("--groups", type=_names, help="comma-separated groups to analyse (default: all)")
    add_flags(p.add_argument_group("sweep settings"), Settings)
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
    p.add_argument("--walkers", action="store_true",
                   help="also train one walker per group (Table 1 mode) into OUT/walkers/, with the sweep's seed, "
                        "critic and critic resolution")
    p.add_argument("--walker-steps", type=int,
                   help=f"maximum walker training steps (default: {WalkerSettings().steps})")
    p.add_argument("--preview-samples", type=int, default=6, help="rows of the preview grid (default: 6)")
    _add_run_flags(p)
    p.set_defaults(run=_cmd_analyze)

    p = verbs.add_parser(
        "train-walker", help="learn a COP-Gen walker T(z) for one group or a set of groups",
        description="Minimax training: an InfoNCE critic minimises the loss on (x, x'), the walker "
                    "T(z) = Linear-ReLU-Linear maximises it. Writes OUT (the walker checkpoint, NAME.pt) and "
                    "beside it NAME.state.pt (to resume: rerun the same command) and NAME.yaml (a walker policy).")
    add_model_args(p)
    p.add_argument("--groups", type=_names, required=True, help="comma-separated groups the walker perturbs jointly")
    p.add_argument("--out", help="checkpoint path ending in .pt (default: walkers/MODEL-GROUPS.pt)")
    add_flags(p.add_argument_group("walker settings"), WalkerSettings)
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming from NAME.state.pt")
    _add_run_flags(p)
    p.set_defaults(run=_cmd_train_walker)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1, help=_THREADS_HELP)
    add_no_progress(p)


def _cmd_analyze(args) -> int:
    from ..analysis.mi import Settings
    from ..analysis.report import analyze
    from ..analysis.walkers import WalkerSettings

    if args.embed_policy and (args.path is None or not str(args.path).lower().endswith(".safetensors")):
        raise ConfigError(f"--embed-policy needs --path FILE.safetensors (the checkpoint to store it in), "
                          f"got {args.path!r}")
    overrides = given(args, Settings)
    settings = Settings.quick(**overrides) if args.quick else Settings(**overrides)
    walker_settings = WalkerSettings(seed=settings.seed, critic=settings.critic, resolution=settings.resolution,
                                     **({"steps": args.walker_steps} if args.walker_steps is not None else {}))
    out = args.out or f"reports/{args.model}"
    result = analyze(build_model(args), out, groups=args.groups, settings=settings, target_mi=args.target_mi,
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

    settings = WalkerSettings(**given(args, WalkerSettings))
    out = args.out or f"walkers/{args.model}-{'-'.join(args.groups)}.pt"
    r = train_walker(build_model(args), args.groups, out, settings, device=args.device, resume=not args.fresh,
                     progress=not args.no_progress, threads=args.threads or None)
    if r["bound"] is None:
        raise ConfigError(f"no evaluation was run: steps ({settings.steps}) ended before the first one")
    print(f"walker for {', '.join(r['groups'])}: {r['steps']} steps"
          f"{' (stopped early)' if r['stopped_early'] else ''}; best at step {r['best_step']}: InfoNCE bound "
          f"{r['bound']:.3f} of log N = {r['log_n']:.3f}, delta {r['delta_mean']:.3f} +- {r['delta_std']:.3f}")
    print(f"wrote {r['checkpoint']} and the policy {r['policy']} (use it with --policy)")
    return 0


__all__ = ["add_commands"]
