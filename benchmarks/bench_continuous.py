"""Continuous sampling that overlaps training: ContinuousViews + a training step vs the same loop on ready batches.

Run: python benchmarks/bench_continuous.py [--quick] [--splits 2:1,1:1] [--device cuda] [--out DIR]

Measured in one run, with the same model (``digits``, the README's main job),
batches (crops 2, T_x ``no_color`` at 32 px) and training step (SimCLR's NT-Xent on
the small CNN of ``ssl_digits.py``):

- ``precomputed T``: the batches made beforehand, the training loop alone at ``T`` torch threads
  (the bound; one row per thread count used below, the fastest is the reference);
- ``generate``: ContinuousViews alone, no training (its cost per batch);
- ``sequential``: ContinuousViews with ``prefetch=0``: generate, then train (as before the producer);
- ``overlap default``: ContinuousViews as it comes (a producer thread 2 batches ahead; on CPU the
  cores split between the producer and the training thread), training started at ``--threads``;
- ``overlap T:D``: the producer at ``decode_threads=D`` and training at ``T`` threads
  (``share_cores=False``), one row per ``--splits`` pair: what the default split is chosen against.

``ratio`` is a loop's time over the fastest ``precomputed``'s (goal: <= 1.3 on CPU; on a GPU
``max(generate, train) + 10 %``, printed as ``bound``). The loops run in rounds, each once per
round in a rotating order, and the median round counts, so load from other jobs on a shared
machine falls on every row alike. ``--quick`` is a smoke run of every row in seconds; nothing
is written unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import synthviews as sv
from synthviews.data import ContinuousViews


class Encoder(nn.Module):
    """ssl_digits' encoder: four 3x3 convs (stride 1, 2, 2, 2) with BatchNorm, global average pool, MLP head."""

    def __init__(self, width: int = 32, channels: int = 1):
        super().__init__()
        chans = [channels, width, 2 * width, 4 * width, 4 * width]
        layers = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(chans[-1], chans[-1]), nn.ReLU(inplace=True), nn.Linear(chans[-1], 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class Trainer:
    def __init__(self, channels: int, width: int, device: torch.device):
        torch.manual_seed(0)
        self.net = Encoder(width, channels).to(device)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-3)

    def step(self, views) -> None:
        loss = nt_xent(self.net(views[0]), self.net(views[1]))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    n = z1.shape[0]
    return F.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device))


def dataset(model, args, seed: int = 0, **kw) -> ContinuousViews:
    return ContinuousViews(model, None, crops=2, epoch_samples=args.steps * args.batch, batch_size=args.batch,
                           seed=seed, device=args.device, t_x="no_color", t_x_size=args.size, **kw)


def timed(threads: int, loop, device: torch.device) -> float:
    torch.set_num_threads(threads)
    t = time.perf_counter()
    loop()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def run(args) -> dict:
    device = torch.device(args.device)
    model = sv.load_model(args.model, **({"resolution": 16} if args.model == "toy" else {}))
    trainer = Trainer(model.image_shape[0], args.width, device)
    torch.set_num_threads(args.threads)
    ready = [views for views, _ in dataset(model, args, seed=99, prefetch=0)]
    for views in ready[:2]:  # warm-up of the training step and the generator
        trainer.step(views)

    def train_on(batches):
        for views, _ in batches:
            trainer.step(views)

    splits = args.splits if device.type == "cpu" else []
    split = dataset(model, args)._cpu_split() if device.type == "cpu" else (None, None)
    counts = {args.threads, *(t for t, _ in splits), *([split[1]] if split[1] else [])}
    loops = {f"precomputed {t}": (t, lambda: train_on((views, None) for views in ready))
             for t in sorted(counts, reverse=True)}
    loops.update({
        "generate": (args.threads, lambda: sum(1 for _ in dataset(model, args, prefetch=0))),
        "sequential": (args.threads, lambda: train_on(dataset(model, args, prefetch=0))),
        "overlap default": (args.threads, lambda: train_on(dataset(model, args))),
    })
    for t, d in splits:
        loops[f"overlap {t}:{d}"] = (t, lambda d=d: train_on(dataset(model, args, prefetch=2, decode_threads=d,
                                                                     share_cores=False)))
    names = list(loops)
    seconds = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            seconds[name].append(timed(loops[name][0], loops[name][1], device))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {seconds[n][-1]:.2f} s" for n in names), flush=True)
    torch.set_num_threads(args.threads)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    base = min(v for n, v in median.items() if n.startswith("precomputed"))
    return {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "seconds": seconds,
            "median_s": median, "ratio": {n: median[n] / base for n in names},
            "bound_ratio": max(median["generate"], base) * 1.1 / base, "default_split": split,
            "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}, {device}", "load": os.getloadavg()}


def table(result: dict) -> str:
    s = result["settings"]
    decode, train = result["default_split"]
    lines = [f"ContinuousViews + training step vs the same loop on precomputed batches: model {s['model']}, "
             f"{s['steps']} steps x batch {s['batch']}, median of {s['rounds']} rounds, torch {s['threads']} "
             f"threads unless named (T:D = training : producer threads); default split here: producer {decode}, "
             f"training {train or s['threads']}", "",
             "| loop | s/step | ratio to the fastest precomputed |", "|---|---|---|"]
    for name, sec in result["median_s"].items():
        lines.append(f"| {name} | {sec / s['steps']:.4f} | {result['ratio'][name]:.2f} |")
    lines += ["", f"overlap default: {result['ratio']['overlap default']:.2f} (goal <= 1.3 on CPU; on a GPU "
                  f"max(generate, train) + 10 % = {result['bound_ratio']:.2f}); sequential "
                  f"{result['ratio']['sequential']:.2f}; load average "
                  f"{', '.join(f'{x:.2f}' for x in result['load'])}; {result['machine']}"]
    return "\n".join(lines)


def parse(argv=None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run of every row in seconds")
    p.add_argument("--model", help="generator (default: digits; --quick: toy at 16 px)")
    p.add_argument("--steps", type=int, help="training steps per loop (default: 40; --quick 4)")
    p.add_argument("--batch", type=int, help="anchors per step (default: 128, as ssl_digits; --quick 16)")
    p.add_argument("--rounds", type=int, help="rounds of every loop, median kept (default: 3; --quick 1)")
    p.add_argument("--width", type=int, default=32, help="encoder base width (default: 32)")
    p.add_argument("--threads", type=int, help=f"torch threads of the other loops (default: {cores}; --quick 1)")
    half = max(1, cores // 2)
    alternatives = f"{cores}:{half},{max(1, cores - half)}:{cores}"  # each side on every core beside the other's half
    p.add_argument("--splits", help="overlap rows as TRAIN:DECODE torch threads, comma-separated, CPU only "
                                    f"(default: {alternatives}; --quick 1:1)")
    p.add_argument("--device", default="cpu", help="generator and training device (default: cpu)")
    p.add_argument("--out", help="folder for results.json (default: nothing written)")
    args = p.parse_args(argv)
    quick = {"model": "toy", "steps": 4, "batch": 16, "rounds": 1, "splits": "1:1", "threads": 1}
    full = {"model": "digits", "steps": 40, "batch": 128, "rounds": 3, "threads": cores,
            "splits": alternatives}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.size = 32 if args.model == "digits" else 12
    try:
        args.splits = list(dict.fromkeys(tuple(int(x) for x in part.split(":")) for part in args.splits.split(",")))
        assert all(len(s) == 2 and min(s) >= 1 for s in args.splits)
    except (ValueError, AssertionError):
        p.error(f"--splits takes TRAIN:DECODE pairs of thread counts >= 1, e.g. 2:1,1:1; got {args.splits!r}")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    result = run(args)
    print()
    print(table(result))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
        print(f"\nwritten to {out}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
