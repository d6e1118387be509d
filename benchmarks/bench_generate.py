"""Offline generation: pipeline efficiency, writing cost against one-PNG-per-image, and flat memory.

Run: python benchmarks/bench_generate.py [--quick]

1. Efficiency = `generate` samples/s / bare decoding samples/s of the same
   model and batches with no encoding or writing, measured in this run. The
   bare rate is measured twice: with the torch threads `generate` leaves the
   generator on CPU (cores minus encoder threads: the pipeline's own
   overhead) and with every core (what a CPU-only box pays for encoding).
2. Writing cost: views encoded and written per second on one core at 128 px,
   JPEG q95 into tar shards (synthviews) vs one PNG file per image (peers).
3. Peak RSS of a `generate` process for a small and a 20x larger run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import synthviews as sv
from synthviews._util.images import to_uint8
from synthviews.store.format import encode_sample
from synthviews.store.writer import generate
from synthviews.views import ViewSampler


def bare_rate(model, samples: int, views: int, batch_size: int, threads: int) -> float:
    torch.set_num_threads(threads)
    sampler = ViewSampler(model, views=views, seed=0, device="cpu")
    sampler.sample(np.arange(batch_size))  # warm-up
    t = time.perf_counter()
    for start in range(0, samples, batch_size):
        sampler.sample(np.arange(start, min(start + batch_size, samples)))
    return samples / (time.perf_counter() - t)


def pipeline_rate(model, samples: int, views: int, batch_size: int, threads: int) -> float:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "warm", model, samples=batch_size, views=views, batch_size=batch_size, device="cpu")
        t = time.perf_counter()
        generate(Path(tmp) / "ds", model, samples=samples, views=views, batch_size=batch_size,
                 shard_size=max(1, samples // 4), device="cpu")
        return samples / (time.perf_counter() - t)


def efficiency_rows(models, views):
    cpus = os.cpu_count() or 1
    workers = max(1, min(4, cpus // 2))
    gen_threads = max(1, cpus - workers)
    print(f"\n1. Pipeline efficiency ({cpus} CPUs; generate uses {gen_threads} torch thread(s) + {workers} "
          f"encoder thread(s); K={views}, JPEG q95; rates in samples/s)")
    print(f"| {'model':<30} | {'samples':>7} | {'batch':>5} | {'bare, same threads':>18} | {'bare, all cores':>15} | "
          f"{'generate':>8} | {'ratio (same)':>12} | {'ratio (all)':>11} |")
    print(f"|{'-' * 32}|{'-' * 9}|{'-' * 7}|{'-' * 20}|{'-' * 17}|{'-' * 10}|{'-' * 14}|{'-' * 13}|")
    for name, model, samples, batch_size in models:
        same = bare_rate(model, samples, views, batch_size, gen_threads)
        full = bare_rate(model, samples, views, batch_size, cpus)
        piped = pipeline_rate(model, samples, views, batch_size, cpus)
        print(f"| {name:<30} | {samples:>7} | {batch_size:>5} | {same:>18.1f} | {full:>15.1f} | {piped:>8.1f} | "
              f"{piped / same:>12.2f} | {piped / full:>11.2f} |")
    torch.set_num_threads(cpus)


def writing_rows(n: int):
    """JPEG-in-tar vs PNG files on one core, for flat toy images and for textured ones (toy + noise,
    closer to natural images' compressibility)."""
    import webdataset as wds
    from PIL import Image

    torch.set_num_threads(1)
    model = sv.load_model("toy", resolution=128)
    flat = to_uint8(ViewSampler(model, views=1, seed=0).sample(np.arange(n // 2)).images)  # (n/2, 2, 128, 128, 3)
    noise = np.random.default_rng(0).normal(0, 12, flat.shape)
    textured = np.clip(flat.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    print(f"\n2. Writing cost, one core, 128x128 views ({n} views per row)")
    print(f"| {'content':<10} | {'synthviews: JPEG q95 into tar':>29} | {'peers: one PNG file per view':>28} | {'ratio':>6} |")
    print(f"|{'-' * 12}|{'-' * 31}|{'-' * 30}|{'-' * 8}|")
    for name, pixels in (("flat toy", flat), ("textured", textured)):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            with open(Path(tmp) / "s.tar", "wb") as f:
                writer = wds.TarWriter(f, encoder=False, mtime=0)
                for i, views in enumerate(pixels):
                    writer.write(encode_sample(i, views, {"index": i}, "jpg", 95))
                writer.close()
            jpg = n / (time.perf_counter() - t)
            t = time.perf_counter()
            for i, views in enumerate(pixels):
                for v, array in enumerate(views):
                    Image.fromarray(array).save(Path(tmp) / f"{i:06d}_{v}.png")
            png = n / (time.perf_counter() - t)
        print(f"| {name:<10} | {jpg:>23.0f} img/s | {png:>22.0f} img/s | {jpg / png:>5.1f}x |")
    torch.set_num_threads(os.cpu_count() or 1)


def rss_rows(small: int, large: int):
    # VmHWM, not ru_maxrss: ru_maxrss keeps the parent's peak across fork + exec.
    code = ("import sys; from synthviews.store.writer import generate; "
            "generate(sys.argv[1], 'toy', samples=int(sys.argv[2]), views=2, shard_size=500, device='cpu'); "
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    print("\n3. Peak RSS of generate (toy 64 px, K=2, shards of 500)")
    print(f"| {'samples':>8} | {'peak RSS MiB':>12} | {'seconds':>8} |")
    print(f"|{'-' * 10}|{'-' * 14}|{'-' * 10}|")
    peaks = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (small, large):
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", code, str(Path(tmp) / f"ds{n}"), str(n)],
                                 capture_output=True, text=True, check=True).stdout
            peaks.append(int(out.split()[-1]) / 1024)
            print(f"| {n:>8} | {peaks[-1]:>12.1f} | {time.perf_counter() - t:>8.1f} |")
    print(f"| {'ratio':>8} | {peaks[1] / peaks[0]:>12.3f} | {'':>8} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, for a smoke run; includes a tiny StyleGAN2 row (32 px, few channels)")
    parser.add_argument("--stylegan2", action="store_true",
                        help="also measure a random-weight StyleGAN2 (config-f layout, 128 px): generator-bound")
    args = parser.parse_args()
    scale = 8 if args.quick else 1
    models = [("toy 128 px", sv.load_model("toy", resolution=128), 2048 // scale, 64)]
    if args.quick:  # the generator-bound row's code path, with an architecture small enough for a smoke run
        config = {"z_dim": 64, "w_dim": 64, "img_resolution": 32, "img_channels": 3,
                  "mapping_kwargs": {"num_layers": 2}, "synthesis_kwargs": {"channel_base": 512, "channel_max": 32}}
        models.append(("stylegan2 tiny 32 px", sv.load_model("stylegan2", config=config), 64, 8))
    elif args.stylegan2:  # a generator-bound case: random weights, config-f layout at 128 px
        config = {"z_dim": 512, "w_dim": 512, "img_resolution": 128, "img_channels": 3}
        models.append(("stylegan2 config-f 128 px", sv.load_model("stylegan2", config=config), 64, 8))
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}")
    efficiency_rows(models, views=2)
    writing_rows(400 if args.quick else 2000)
    rss_rows(1000, 20000) if not args.quick else rss_rows(200, 2000)


if __name__ == "__main__":
    main()
