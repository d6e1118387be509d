"""The ``train-gan`` verb: train the built-in digits StyleGAN2 (resumable)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..train.gan import CHECKPOINT, DEFAULT_STEPS, EXPORT, PRESETS, TrainOptions, preset, read_checkpoint, train
from ._flags import add_flags, given


def add_commands(verbs):
    """Add ``synthviews train-gan`` to the CLI's subparsers."""
    p = verbs.add_parser("train-gan", help="train a small StyleGAN2 on scikit-learn's digits (CPU, ~1 hour)",
                         description="Train a small StyleGAN2 (32x32, 1 channel) on the training split of "
                                     "scikit-learn's digits. Writes OUT/checkpoint.pt every few minutes, "
                                     "OUT/G_ema.safetensors (load it with --model stylegan2 --path ...), sample "
                                     "grids and OUT/log.jsonl. --resume continues exactly where it stopped. "
                                     "Needs scikit-learn.")
    p.add_argument("--out", default="runs/digits_gan", help="run directory (default: runs/digits_gan)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"total training steps (default: {DEFAULT_STEPS}; --resume keeps the checkpoint's goal)")
    p.add_argument("--preset", default="digits", choices=sorted(PRESETS),
                   help="option preset: digits (the shipped model) or tiny (smoke tests)")
    add_flags(p, TrainOptions)  # --batch, --lr, --r1-gamma, ...: the setting() fields of TrainOptions
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue OUT/checkpoint.pt (or the given checkpoint); options come from it")
    p.add_argument("--export", metavar="PATH.safetensors", help="also write the final G_ema here")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, help="minutes between checkpoints (default: 5)")
    p.add_argument("--max-minutes", type=float, help="stop with a checkpoint after this many minutes (resume later)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=_cmd_train_gan)
    return p


def _cmd_train_gan(args) -> int:
    options_given = given(args, TrainOptions)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if args.resume:
        ckpt = Path(args.out) / CHECKPOINT if args.resume is True else Path(args.resume)
        stored = TrainOptions(**read_checkpoint(ckpt)["options"])
        conflicts = [f"{k}={v!r} (checkpoint: {getattr(stored, k)!r})" for k, v in options_given.items()
                     if getattr(stored, k) != v]
        if conflicts:
            raise ConfigError(f"a resumed run keeps its options; conflicting: {', '.join(conflicts)}")
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
    print(f"  preview: synthviews preview --model stylegan2 --path {args.export or where} --out preview.png")
    return 0
