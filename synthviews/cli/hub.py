"""The ``push`` verb: publish a dataset folder to the Hugging Face Hub."""

from __future__ import annotations

import argparse


def add_commands(verbs) -> argparse.ArgumentParser:
    """Add ``synthviews push OUT USER/NAME [--private] [--dry-run] [--endpoint URL]`` to the subparsers;
    returns its parser."""
    p = verbs.add_parser("push", help="publish a dataset folder to the Hugging Face Hub",
                         description="Verify a dataset folder, regenerate its card (README.md, preview.png) and "
                                     "upload its shards, synthviews.json and card to the Hub dataset repo "
                                     "USER/NAME (created if needed). The upload resumes when the same command is "
                                     "run again. Log in first with `hf auth login` or set HF_TOKEN.")
    p.add_argument("out", help="dataset folder written by `synthviews generate`")
    p.add_argument("repo_id", metavar="USER/NAME", help="Hub dataset repo id, e.g. alice/toy-views")
    p.add_argument("--private", action="store_true", help="create the repo as private (an existing repo keeps "
                                                          "its visibility)")
    p.add_argument("--dry-run", action="store_true", help="check and list the files to upload; send nothing")
    p.add_argument("--endpoint", metavar="URL", help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    p.add_argument("--commit-message", help="commit message (default: names the splits and sample count)")
    p.set_defaults(run=_cmd_push)
    return p


def _cmd_push(args) -> int:
    from ..store.hub import dataset_url, push, upload_plan

    names = push(args.out, args.repo_id, private=args.private, dry_run=args.dry_run, endpoint=args.endpoint,
                 commit_message=args.commit_message)
    sizes = dict(upload_plan(args.out))
    total = sum(sizes[name] for name in names)
    if args.dry_run:
        for name in names:
            print(f"{sizes[name]:>14,}  {name}")
        print(f"dry run: would upload {len(names)} files ({_mib(total)}) to "
              f"{dataset_url(args.repo_id, args.endpoint)}; nothing was sent")
    else:
        print(f"uploaded {len(names)} files ({_mib(total)}) to {dataset_url(args.repo_id, args.endpoint)}")
        print(f"  load it with: load_dataset({args.repo_id!r})")
    return 0


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
