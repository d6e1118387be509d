"""The ``train-gan`` and ``train-ddpm`` verbs: train the built-in digits StyleGAN2 and DDPM (resumable)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..train import ddpm, loop
from ..train.gan import DEFAULT_STEPS, EXPORT, PRESETS, TrainOptions, preset, read_checkpoint, train
from ._flags import add_flags, given


def add_commands(verbs):
    """Add ``synthviews train-gan`` and ``synthviews train-ddpm`` to the CLI's subparsers; returns train-gan's."""
    p = verbs.add_parser("train-gan", help="train a small StyleGAN2 on scikit-learn's digits (CPU, ~1 hour)",
                         description="Train a small StyleGAN2 (32x32, 1 channel) on the training split of "
                                     "scikit-learn's digits. Writes OUT/checkpoint.pt every few minutes, "
                                     "OUT/G_ema.safetensors (load it with --model stylegan2 --path ...), sample "
                                     "grids and OUT/log.jsonl. --resume continues exactly where it stopped. "
                                     "Needs scikit-learn.")
    _add_run_flags(p, "runs/digits_gan", DEFAULT_STEPS, PRESETS, TrainOptions, "PATH.safetensors",
                   "also write the final G_ema here")
    p.set_defaults(run=_cmd_train_gan)
    _add_train_ddpm(verbs)
    return p


def _add_run_flags(p, out: str, default_steps: int, presets: dict, options, export_metavar: str,
                   export_help: str) -> None:
    """The flags both trainers take, in the order of their --help; the option flags (--batch, --lr, ...)
    are the setting() fields of ``options``."""
    p.add_argument("--out", default=out, help=f"run directory (default: {out})")
    p.add_argument("--steps", type=int, default=None,
                   help=f"total training steps (default: {default_steps}; --resume keeps the checkpoint's goal)")
    p.add_argument("--preset", default="digits", choices=sorted(presets),
                   help="option preset: digits (the shipped model) or tiny (smoke tests)")
    add_flags(p, options)
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue OUT/checkpoint.pt (or the given checkpoint); options come from it")
    p.add_argument("--export", metavar=export_metavar, help=export_help)
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, help="minutes between checkpoints (default: 5)")
    p.add_argument("--max-minutes", type=float, help="stop with a checkpoint after this many minutes (resume later)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _set_threads(threads) -> None:
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


def _check_resume_options(stored, options_given: dict) -> None:
    """A resumed run keeps the checkpoint's options: a flag that says otherwise is an error, not ignored."""
    conflicts = [f"{k}={v!r} (checkpoint: {getattr(stored, k)!r})" for k, v in options_given.items()
                 if getattr(stored, k) != v]
    if conflicts:
        raise ConfigError(f"a resumed run keeps its options; conflicting: {', '.join(conflicts)}")


def _print_preview(model: str, trainer, export, where: Path) -> None:
    """The preview command for what this call wrote: --export only once the run is complete (else it is stale)."""
    done = trainer.step >= trainer.target_steps
    path = Path(export) if export and done else where
    if path.exists():
        print(f"  preview: synthviews preview --model {model} --path {path} --out preview.png")


def _cmd_train_gan(args) -> int:
    options_given = given(args, TrainOptions)
    _set_threads(args.threads)
    if args.resume:
        ckpt = loop.checkpoint_path(args.out, args.resume)
        _check_resume_options(TrainOptions(**read_checkpoint(ckpt)["options"]), options_given)
        options = None
    else:
        options = preset(args.preset, **options_given)
    trainer = train(args.out, options, steps=args.steps, resume=args.resume, export=args.export,
                    checkpoint_minutes=args.checkpoint_minutes, max_minutes=args.max_minutes,
                    progress=not args.no_progress)
    where = Path(args.out) / EXPORT
    if trainer.step < trainer.target_steps:
        print(f"stopped at step {trainer.step} of {trainer.target_steps}; continue with --resume")
    else:
        print(f"trained {trainer.step} steps ({trainer.nimg / 1000:.1f} kimg, {trainer.elapsed / 60:.1f} min); "
              f"G_ema in {where}" + (f" and {args.export}" if args.export else ""))
    _print_preview("stylegan2", trainer, args.export, where)
    return 0


def _add_train_ddpm(verbs):
    p = verbs.add_parser("train-ddpm", help="train a small DDPM (diffusers UNet) on scikit-learn's digits (CPU, <1 hour)",
                         description="Train a small DDPM (a diffusers UNet2DModel, 32x32, 1 channel, epsilon "
                                     "prediction, 1000 timesteps) on the training split of scikit-learn's digits. "
                                     "Writes OUT/checkpoint.pt every few minutes, OUT/pipeline/ (a diffusers "
                                     "DDPMPipeline folder of the EMA weights: load it with --model diffusion "
                                     "--path ...), sample grids and OUT/log.jsonl. --resume continues exactly "
                                     "where it stopped. Needs scikit-learn and diffusers.")
    _add_run_flags(p, "runs/digits_ddpm", ddpm.DEFAULT_STEPS, ddpm.PRESETS, ddpm.DDPMOptions, "DIR",
                   "also write the final pipeline folder here, replaced whole: a non-empty folder is refused "
                   "unless it is a previous export of train-ddpm, and so is one that is, holds or lies in --out")
    p.set_defaults(run=_cmd_train_ddpm)
    return p


def _cmd_train_ddpm(args) -> int:
    options_given = given(args, ddpm.DDPMOptions)
    _set_threads(args.threads)
    if args.resume:
        ckpt = loop.checkpoint_path(args.out, args.resume)
        _check_resume_options(ddpm.stored_options(ddpm.read_checkpoint(ckpt), ckpt), options_given)
        options = None
    else:
        options = ddpm.preset(args.preset, **options_given)
    trainer = ddpm.train(args.out, options, steps=args.steps, resume=args.resume, export=args.export,
                         checkpoint_minutes=args.checkpoint_minutes, max_minutes=args.max_minutes,
                         progress=not args.no_progress)
    where = Path(args.out) / ddpm.EXPORT
    if trainer.step < trainer.target_steps:
        print(f"stopped at step {trainer.step} of {trainer.target_steps}; continue with --resume")
    else:
        print(f"trained {trainer.step} steps ({trainer.nimg / 1000:.1f} kimg, {trainer.elapsed / 60:.1f} min); "
              f"pipeline in {where}" + (f" and {args.export}" if args.export else ""))
    _print_preview("diffusion", trainer, args.export, where)
    return 0
