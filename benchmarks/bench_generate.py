"""Offline generation: pipeline efficiency, system time, writing cost against one-PNG-per-image, flat memory.

Run: python benchmarks/bench_generate.py [--quick]

1. Efficiency = `generate` samples/s / bare decoding samples/s of the same
   model and batches with every core and no encoding or writing, measured in
   this run (alternating, best of three each, and the mean of each round's
   ratio), for toy 128 px and digits, K=2.
   Goal >= 0.90. Both run with freed host memory kept (as `generate` sets it).
   ``ceiling``: decode / (decode + encode) CPU seconds per sample, both on one
   thread in this run (encode = rounding, JPEG and json): the best ratio a
   CPU-only machine can reach when the same cores decode and encode.
   Where `generate` encodes in worker processes (views up to 64x64 px, e.g.
   digits; see synthviews.store.encoding), the row also shows `generate` with
   every view encoded in threads, measured in the same alternation.
2. The README's main job (`synthviews generate`: digits, 10,000 anchors, K=2)
   in a child process: its CPU time, the system share and minor page faults
   (resource.getrusage of the child). Goal: system < 10 % of CPU time.
3. Writing cost: views encoded and written per second on one core at 128 px,
   JPEG q95 into tar shards (synthviews) vs one PNG file per image (peers).
   3b: JPEG views encoded per second by one thread and by one per core, through
   Pillow's Image.save into a bytes buffer (the GIL held) and through synthviews'
   encoder (store/jpeg.py: the GIL released), the threads' ratio of each and the
   1-thread speed-up of synthviews' encoder, at 32 px grey, 128 and 256 px.
4. Peak RSS of a `generate` process for a small and a 20x larger run.
5. On CUDA only: `generate` with the CPU and the nvjpeg encoder / a bare
   device decode, toy 256 px (`--cuda-only` runs just this).

Everything is written under the temporary folder (TMPDIR).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import synthviews as sv
from synthviews._util.device import keep_freed_host_memory
from synthviews._util.images import to_uint8
from synthviews.store.encoding import encode_chunk
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


def cpu_per_sample(model, views: int, batch_size: int, batches: int = 4) -> tuple[float, float]:
    """CPU seconds per sample of the decode and of the encoding (rounding, JPEG q95, json), one thread each."""
    torch.set_num_threads(1)
    sampler = ViewSampler(model, views=views, seed=0, device="cpu")
    sampler.sample(np.arange(batch_size))  # warm-up
    decode = encode = 0.0
    for b in range(1, batches + 1):
        idx = np.arange(b * batch_size, (b + 1) * batch_size)
        t = time.process_time()
        batch = sampler.sample(idx)
        decode += time.process_time() - t
        _, cpu_s = encode_chunk(idx, batch.images.numpy(), batch.deltas.numpy(), {"model": model.model_id},
                                model.group_names, "jpg", 95, None)
        encode += cpu_s
    return decode / (batches * batch_size), encode / (batches * batch_size)


def efficiency_rows(models, views, reps: int = 3):
    import synthviews.store.encoding as encoding

    cpus = os.cpu_count() or 1
    print(f"\n1. Pipeline efficiency ({cpus} CPUs, load {os.getloadavg()[0]:.2f}; K={views}, JPEG q95; rates in "
          f"samples/s, best of {reps}, alternating; ratio: best / best, and the mean of each round's ratio; "
          "goal >= 0.90; ceiling: decode / (decode + encode) CPU per sample, one thread each)")
    print(f"| {'model':<30} | {'samples':>7} | {'batch':>5} | {'bare, all cores':>15} | {'encoding':>9} | "
          f"{'generate':>8} | {'ratio':>5} | {'paired':>6} | {'ceiling':>7} |")
    print(f"|{'-' * 32}|{'-' * 9}|{'-' * 7}|{'-' * 17}|{'-' * 11}|{'-' * 10}|{'-' * 7}|{'-' * 8}|{'-' * 9}|")
    default_min = encoding.PROCESS_MIN_SAMPLES
    for name, model, samples, batch_size in models:
        kinds = ["processes", "threads"] if encoding.use_processes(model.image_shape, samples) else ["threads"]
        bare, piped = [], {kind: [] for kind in kinds}
        try:
            for _ in range(reps):
                bare.append(bare_rate(model, samples, views, batch_size, cpus))
                for kind in kinds:  # threads only: views too large, or the run too short, for processes
                    encoding.PROCESS_MIN_SAMPLES = default_min if kind == "processes" else samples + 1
                    piped[kind].append(pipeline_rate(model, samples, views, batch_size, cpus))
        finally:
            encoding.PROCESS_MIN_SAMPLES = default_min
        decode_s, encode_s = cpu_per_sample(model, views, batch_size)
        for kind, rates in piped.items():
            paired = np.mean(np.array(rates) / np.array(bare))
            print(f"| {name:<30} | {samples:>7} | {batch_size:>5} | {max(bare):>15.1f} | {kind:>9} | {max(rates):>8.1f} | "
                  f"{max(rates) / max(bare):>5.2f} | {paired:>6.2f} | {decode_s / (decode_s + encode_s):>7.2f} |")
    torch.set_num_threads(cpus)


def cuda_rows(samples: int, resolution: int):
    """On CUDA: generate with the CPU and the nvjpeg encoder against a bare device decode (the stream,
    event and pinned-buffer paths for real); every dataset is verified. Skipped without CUDA."""
    if not torch.cuda.is_available():
        print("\n5. CUDA: not available here, skipped (run on a GPU machine: --cuda-only)")
        return
    from synthviews.store.verify import verify

    model = sv.load_model("toy", resolution=resolution)
    sampler = ViewSampler(model, views=2, seed=0, device="cuda")
    sampler.sample(np.arange(64))
    torch.cuda.synchronize()
    t = time.perf_counter()
    for start in range(0, samples, 64):
        sampler.sample(np.arange(start, min(start + 64, samples)))
    torch.cuda.synchronize()
    bare = samples / (time.perf_counter() - t)
    print(f"\n5. CUDA ({torch.cuda.get_device_name()}, {os.cpu_count()} CPUs): toy {resolution} px, K=2, "
          f"{samples} samples, batch 64; bare device decode {bare:.1f} samples/s")
    print(f"| {'encoder':<8} | {'generate':>8} | {'ratio':>5} | {'verify':>6} |")
    print(f"|{'-' * 10}|{'-' * 10}|{'-' * 7}|{'-' * 8}|")
    for encoder in ("cpu", "nvjpeg"):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                generate(Path(tmp) / "warm", model, samples=64, views=2, device="cuda", encoder=encoder)
                t = time.perf_counter()
                generate(Path(tmp) / "ds", model, samples=samples, views=2, shard_size=max(1, samples // 4),
                         device="cuda", encoder=encoder)
                rate = samples / (time.perf_counter() - t)
                ok = "OK" if not verify(Path(tmp) / "ds") else "FAIL"
            except Exception as e:  # e.g. no torchvision: say so, go on
                print(f"| {encoder:<8} | {type(e).__name__}: {str(e)[:60]} |")
                continue
        print(f"| {encoder:<8} | {rate:>8.1f} | {rate / bare:>5.2f} | {ok:>6} |")


def main_job_rows(samples: int):
    """The README's first command, `synthviews generate` (digits, K=2), as a child process."""
    print(f"\n2. The README's main job: synthviews generate --samples {samples} (digits, K=2), in a child "
          f"(load {os.getloadavg()[0]:.2f}; goal: system < 10 % of CPU time)")
    print(f"| {'samples':>8} | {'wall s':>7} | {'user s':>7} | {'system s':>8} | {'system share':>12} | "
          f"{'minor faults':>12} |")
    print(f"|{'-' * 10}|{'-' * 9}|{'-' * 9}|{'-' * 10}|{'-' * 14}|{'-' * 14}|")
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "synthviews", "generate", "--samples", str(samples), "--out",
                        str(Path(tmp) / "ds"), "--no-progress"], check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    faults = after.ru_minflt - before.ru_minflt
    print(f"| {samples:>8} | {wall:>7.1f} | {user:>7.1f} | {system:>8.1f} | {system / (user + system):>11.1%} | "
          f"{faults:>12,} |")


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
    print(f"\n3. Writing cost, one core, 128x128 views ({n} views per row)")
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


def encoder_thread_rows(n: int):
    """JPEG q95 views encoded per second by 1 thread and by one thread per core: through Pillow's
    ``Image.save`` into a bytes buffer (its Python a view, the GIL held while it compresses) and
    through synthviews' encoder (store/jpeg.py: settings reused, each thread's in-memory file, the
    GIL released), measured in the same run; the bytes are the same."""
    from concurrent.futures import ThreadPoolExecutor

    import synthviews.store.format as fmt
    import synthviews.store.jpeg as jpeg

    cpus = os.cpu_count() or 1
    print(f"\n3b. Encoding threads: JPEG q95 views/s, 1 thread and {cpus} (one per core), {n} textured 128 px views"
          " a row or as many pixels")
    print(f"| {'size':>7} | {'path':<31} | {'1 thread':>8} | {f'{cpus} threads':>10} | {'ratio':>5} | {'speed-up':>8} |")
    print(f"|{'-' * 9}|{'-' * 33}|{'-' * 10}|{'-' * 12}|{'-' * 7}|{'-' * 10}|")
    rng = np.random.default_rng(0)
    scratch = jpeg._scratch
    for size, channels in ((32, 1), (128, 3), (256, 3)):
        ramp = np.linspace(0, 160, size, dtype=np.float32)[None, :, None]
        views = [np.clip(ramp + rng.normal(60, 12, (size, size, channels)), 0, 255).astype(np.uint8)
                 for _ in range(16)]
        count = max(cpus, n * 128 * 128 // (size * size))
        single = None
        for path, ours in (("Image.save, bytes buffer", False), ("synthviews encoder, memfd", True)):
            jpeg._scratch = scratch if ours else (lambda: None)
            rates = []
            try:
                for threads in (1, cpus):
                    def encode(share: int) -> None:
                        for i in range(share):
                            fmt.encode_image(views[i % len(views)], "jpg", 95)
                    with ThreadPoolExecutor(threads) as pool:
                        list(pool.map(encode, [4] * threads))  # warm-up: each thread's file made
                        t = time.perf_counter()
                        list(pool.map(encode, [count // threads] * threads))
                        rates.append(count // threads * threads / (time.perf_counter() - t))
            finally:
                jpeg._scratch = scratch
            single = single or rates[0]
            label = f"{size} px" + (" L" if channels == 1 else "")
            print(f"| {label:>7} | {path:<31} | {rates[0]:>8.0f} | {rates[1]:>10.0f} | {rates[1] / rates[0]:>5.2f} |"
                  f" {rates[0] / single:>7.2f}x |")


def rss_rows(small: int, large: int):
    # VmHWM, not ru_maxrss: ru_maxrss keeps the parent's peak across fork + exec.
    code = ("import sys; from synthviews.store.writer import generate; "
            "generate(sys.argv[1], 'toy', samples=int(sys.argv[2]), views=2, shard_size=500, device='cpu'); "
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    print("\n4. Peak RSS of generate (toy 64 px, K=2, shards of 500)")
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
    parser.add_argument("--cuda-only", action="store_true", help="only the CUDA rows (CPU and nvjpeg encoders)")
    parser.add_argument("--only-efficiency", action="store_true", help="only the efficiency rows (section 1)")
    parser.add_argument("--rounds", type=int, help="alternating rounds of the efficiency rows (default: 3; --quick 1); "
                                                   "on a machine whose speed drifts, the paired mean of more rounds")
    args = parser.parse_args()
    if args.cuda_only:
        cuda_rows(512 if args.quick else 4096, 256)
        return
    scale = 8 if args.quick else 1
    keep_freed_host_memory()  # as generate does: the bare loop gets the same allocator settings
    models = [("toy 128 px", sv.load_model("toy", resolution=128), 2048 // scale, 64),
              ("digits", sv.load_model("digits"), 4096 // scale, 64)]
    if args.quick:  # the generator-bound row's code path, with an architecture small enough for a smoke run
        config = {"z_dim": 64, "w_dim": 64, "img_resolution": 32, "img_channels": 3,
                  "mapping_kwargs": {"num_layers": 2}, "synthesis_kwargs": {"channel_base": 512, "channel_max": 32}}
        models.append(("stylegan2 tiny 32 px", sv.load_model("stylegan2", config=config), 64, 8))
    elif args.stylegan2:  # a generator-bound case: random weights, config-f layout at 128 px
        config = {"z_dim": 512, "w_dim": 512, "img_resolution": 128, "img_channels": 3}
        models.append(("stylegan2 config-f 128 px", sv.load_model("stylegan2", config=config), 64, 8))
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}")
    efficiency_rows(models, views=2, reps=args.rounds or (1 if args.quick else 3))
    if args.only_efficiency:
        return
    main_job_rows(200 if args.quick else 10000)
    writing_rows(400 if args.quick else 2000)
    encoder_thread_rows(200 if args.quick else 3000)
    rss_rows(1000, 20000) if not args.quick else rss_rows(200, 2000)
    cuda_rows(512 if args.quick else 4096, 256)


if __name__ == "__main__":
    main()
