"""The dataset verbs, in the order of the data flow: ``preview``, ``generate``, ``verify``, ``merge``, ``info``."""

from __future__ import annotations

import argparse

from .._util.checks import (
    DECODE_BLOCK,
    MAX_BATCH_SIZE,
    MAX_DECODE_BLOCK,
    MAX_PREVIEW_SAMPLES,
    MAX_SAMPLES,
    MAX_SHARD_SIZE,
    MAX_SHARDS,
    MAX_VIEWS,
    MAX_WORKERS,
)
from ..errors import ConfigError
from ._common import SEED_HELP, add_model_args, add_no_progress, build_model

# What synthviews.store.writer.generate does when workers is None (tests/test_cli.py checks the two agree).
WORKERS_HELP = ("image-encoding threads (default: max(1, CPUs - 1) with CUDA, CPUs on CPU, where the generator "
                "gets every core while encoding costs little next to decoding, as measured on the first batches, "
                "and leaves the encoders their share otherwise; given, the generator gets the other cores); views of up "
                "to 64x64 pixels, in runs of 1,024+ samples, are encoded by one worker process per thread")
POLICY_HELP = "policy file (YAML/JSON); default: the model's default policy"


def add_commands(verbs) -> None:
    """Add ``preview``, ``generate``, ``verify``, ``merge`` and ``info`` to the CLI's subparsers."""
    p = verbs.add_parser("preview", help="write a PNG grid: one row per sample, the anchor then its positives",
                         description="Write a PNG grid of anchors (first column) and their positive views.")
    add_model_args(p)
    p.add_argument("--policy", help=POLICY_HELP)
    p.add_argument("--samples", type=int, default=8, help=f"rows: number of anchors, 1-{MAX_PREVIEW_SAMPLES} (default: 8)")
    p.add_argument("--views", type=int, default=4, help=f"positives per anchor, K, 1-{MAX_VIEWS} (default: 4)")
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP + "; same seed, same images (default: 0)")
    p.add_argument("--start", type=int, default=0, help="first sample index, 0-2**62 (default: 0)")
    _add_amp(p)
    _add_compile(p)
    p.add_argument("--out", default="preview.png", help="output PNG path (default: preview.png)")
    p.set_defaults(run=_cmd_preview)

    p = verbs.add_parser("generate", help="write anchor + positive views as WebDataset shards",
                         description="Generate a positive-view dataset: OUT/{split}-{shard:06d}.tar shards, the "
                                     "manifest OUT/synthviews.json and a dataset card OUT/README.md. Rerunning "
                                     "the same command continues an interrupted run; under torchrun the shards "
                                     "are split across ranks.")
    add_model_args(p)
    p.add_argument("--out", help="output folder (default: shards/MODEL)")
    p.add_argument("--policy", help=POLICY_HELP)
    p.add_argument("--samples", type=int, default=10000,
                   help=f"number of anchors, 1-{MAX_SAMPLES:,} in at most {MAX_SHARDS:,} shards (default: 10000)")
    p.add_argument("--views", type=int, default=2,
                   help=f"positives per anchor, K, 1-{MAX_VIEWS}; view0 is the anchor (default: 2)")
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP + "; same seed, same bytes (default: 0)")
    p.add_argument("--shard-size", type=int, default=1000,
                   help=f"samples per shard, 1-{MAX_SHARD_SIZE:,} (default: 1000)")
    p.add_argument("--format", choices=["jpg", "png", "webp"], default="jpg", help="image format (default: jpg)")
    p.add_argument("--quality", type=int, help="jpg/webp quality 1-100 (default: 95 jpg, 90 webp)")
    p.add_argument("--batch-size", type=int, default=64,
                   help=f"anchors per step, 1-{MAX_BATCH_SIZE}, rounded to whole decode blocks; never changes the "
                        "bytes (default: 64)")
    p.add_argument("--decode-block", type=int, default=DECODE_BLOCK,
                   help=f"anchors per generator call, 1-{MAX_DECODE_BLOCK}; part of the configuration: the bytes "
                        f"depend on it (default: {DECODE_BLOCK})")
    _add_amp(p)
    _add_compile(p)
    p.add_argument("--save-latents", action="store_true", help="also store every view's code as latents.npy")
    p.add_argument("--split", default="train", help="split name; shards are SPLIT-NNNNNN.tar (default: train)")
    p.add_argument("--resume", action="store_true",
                   help="insist on continuing an existing run (rerunning the same command resumes anyway)")
    p.add_argument("--rank", type=int, help="this job's rank among independent jobs (with --world-size)")
    p.add_argument("--world-size", type=int, help="number of independent jobs; then run `synthviews merge OUT`")
    p.add_argument("--workers", type=int, help=WORKERS_HELP + f"; at most {MAX_WORKERS}")
    p.add_argument("--encoder", choices=["cpu", "nvjpeg"], default="cpu",
                   help="JPEG encoder: cpu (PIL, byte-reproducible) or nvjpeg (on the CUDA device, needs "
                        "torchvision; other bytes, recorded in the manifest) (default: cpu)")
    add_no_progress(p)
    p.set_defaults(run=_cmd_generate)

    p = verbs.add_parser("verify", help="check every shard of a dataset against its manifest",
                         description="Check sha256, sample counts, keys, and that every view decodes at the "
                                     "declared size. Prints each problem; exits 1 if there is any.")
    p.add_argument("out", help="dataset folder")
    p.set_defaults(run=_cmd_verify)

    p = verbs.add_parser("merge", help="fold the progress files of independent jobs into the manifest",
                         description="After every `generate --rank i --world-size n` job has finished, write "
                                     "OUT/synthviews.json and the dataset card.")
    p.add_argument("out", help="dataset folder")
    p.add_argument("--split", help="merge only this split (default: every split with progress files)")
    p.set_defaults(run=_cmd_merge)

    p = verbs.add_parser("info", help="summarise a dataset folder, list models, or show a model's latent groups",
                         description="With a dataset folder: its summary. Without: list model families, or with "
                                     "--model, its id, latent groups and default policy.")
    p.add_argument("dataset", nargs="?", help="a dataset folder written by `synthviews generate`")
    add_model_args(p, default=None)
    p.set_defaults(run=_cmd_info)


def _add_amp(p: argparse.ArgumentParser) -> None:
    p.add_argument("--amp", choices=["none", "fp16", "bf16"], default="none",
                   help="autocast precision for decoding (fp16 needs CUDA; default: none)")


def _add_compile(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the generator's decode (compiled at start; a failure stops in one line); "
                        "images differ from eager in the last bits, so it is part of the configuration")


def _cmd_preview(args) -> int:
    from ..analysis.preview import preview
    from ..views import ViewSampler

    model = build_model(args)
    sampler = ViewSampler(model, args.policy, views=args.views, seed=args.seed, device=args.device, amp=args.amp,
                          compile=args.compile)
    out = preview(sampler, args.out, samples=args.samples, start=args.start)
    print(f"wrote {out} ({args.samples} samples x {1 + args.views} images: anchor + {args.views} positives)")
    if args.policy is None:
        print(f"policy: the model's default, {model.default_policy_origin()}")
    return 0


def _cmd_generate(args) -> int:
    from .._util.device import keep_freed_host_memory
    from ..store.manifest import read_manifest
    from ..store.writer import generate

    keep_freed_host_memory()  # this process only generates: keep freed batches mapped (no re-faulting them)
    out = args.out or f"shards/{args.model}"
    generate(out, build_model(args), args.policy, samples=args.samples, views=args.views, seed=args.seed,
             shard_size=args.shard_size, format=args.format, quality=args.quality, batch_size=args.batch_size,
             device=args.device, amp=args.amp, save_latents=args.save_latents, split=args.split, resume=args.resume,
             decode_block=args.decode_block,
             rank=args.rank, world_size=args.world_size, workers=args.workers, progress=not args.no_progress,
             encoder=args.encoder, **({"compile": True} if args.compile else {}))
    manifest = read_manifest(out)
    if manifest and manifest["splits"].get(args.split, {}).get("complete"):
        print(f"{out}: split {args.split} complete, {args.samples} samples x {1 + args.views} views; load it with:")
        print(f"  python -c \"from datasets import load_dataset; print(load_dataset('{out}', split='{args.split}'))\"")
    elif args.world_size is not None:
        print(f"rank {args.rank} of {args.world_size} done; run `synthviews merge {out}` when every rank has finished")
    return 0


def _cmd_verify(args) -> int:
    from ..store.verify import verify

    problems = verify(args.out)
    for problem in problems:
        print(problem)
    print(f"{args.out}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def _cmd_merge(args) -> int:
    """As the folder's only writer. A rerun after a kill at any point completes the merge (the
    progress files go last); an already merged folder merges again to the same bytes."""
    from pathlib import Path

    from ..store.card import write_card
    from ..store.lock import DatasetLock
    from ..store.manifest import fold_progress, pending_splits, read_manifest, remove_temporaries

    out = Path(args.out)
    if not out.is_dir():
        raise ConfigError(f"{out} is not a folder; nothing to merge")
    with DatasetLock(out):
        remove_temporaries(out)
        splits = [args.split] if args.split else pending_splits(out)
        if not splits:
            manifest = read_manifest(out)
            if not manifest or not manifest["splits"]:
                raise ConfigError(f"{out} holds no rank progress files to merge")
            splits = sorted(manifest["splits"])  # merged already (perhaps killed before its card): again
        for split in splits:
            manifest = fold_progress(out, split)
        write_card(out, manifest)
    print(f"merged split(s) {', '.join(splits)} into {out}/synthviews.json")
    return 0


def _cmd_info(args) -> int:
    if args.dataset is not None:
        from ..store.verify import summary

        print(summary(args.dataset))
        return 0
    from ..models import available_models

    if args.model is None:
        print("available models: " + ", ".join(available_models()))
        print("use `synthviews info --model NAME` for its latent groups and default policy")
        return 0
    import yaml

    from ..policies import resolve_policy

    model = build_model(args)
    d = model.describe()
    print(f"model: {d['model_id']}  (license: {d['license']})")
    print(f"image: {'x'.join(map(str, d['image_shape']))} (C x H x W), latent dim {d['latent_dim']}, "
          f"anchor prior {d['prior']}")
    print("latent groups:")
    for g in d["groups"]:
        print(f"  {g['name']:<10} size {g['size']:<4} {g['space']:<16} {g['description']}")
    print(f"default policy: {model.default_policy_origin()} (a valid policy file):")
    print("  " + yaml.safe_dump(resolve_policy(None, model).to_dict(), sort_keys=False).replace("\n", "\n  ").rstrip())
    return 0
