"""Throughput of the foundation on the toy model: decode, random streams, ViewSampler.

Prints one table row per stage and batch size. Run: python benchmarks/bench_views.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import synthviews as sv
from synthviews.latents import sample_prior
from synthviews.views import ViewSampler


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, help="toy image side (default: 64; --quick 32)")
    parser.add_argument("--views", type=int, default=3, help="positives per anchor for the sampler rows")
    parser.add_argument("--batch-sizes", help="comma-separated (default: 64,256; --quick 8)")
    parser.add_argument("--repeats", type=int, help="timed calls per row, best kept (default: 5; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    args = parser.parse_args()
    for key, full, quick in (("resolution", 64, 32), ("batch_sizes", "64,256", "8"), ("repeats", 5, 1)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)

    model = sv.load_model("toy", resolution=args.resolution)
    streams = sv.Streams(0)
    sampler = ViewSampler(model, views=args.views, seed=0, device="cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, toy {args.resolution}px, K={args.views}")
    print(f"| {'stage':<34} | {'batch':>5} | {'ms':>8} | {'images/s':>9} |")
    print(f"|{'-' * 36}|{'-' * 7}|{'-' * 10}|{'-' * 11}|")
    for b in map(int, args.batch_sizes.split(",")):
        idx = np.arange(b)
        z = sample_prior(model.prior, streams, idx, model.latent_dim)
        rows = [
            ("toy.decode (anchors only)", b, lambda: model.decode(z)),
            ("anchor draws (Streams)", b, lambda: sample_prior(model.prior, streams, idx, model.latent_dim)),
            (f"policy noise, {args.views} views", b * args.views,
             lambda: [sampler.policy.noise(model, z, streams, idx, v) for v in range(1, args.views + 1)]),
            (f"ViewSampler.latents (1+{args.views} views)", b * (1 + args.views), lambda: sampler.latents(idx)),
            (f"ViewSampler.sample (1+{args.views} views)", b * (1 + args.views), lambda: sampler.sample(idx)),
        ]
        for name, images, fn in rows:
            with torch.inference_mode():
                t = best_of(fn, args.repeats)
            print(f"| {name:<34} | {b:>5} | {t * 1e3:>8.2f} | {images / t:>9.0f} |")


if __name__ == "__main__":
    main()
