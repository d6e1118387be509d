"""GPU throughput in one table: decode per model and precision, generate / bare decode, the readers.

Run on a CUDA machine (about 4 minutes; ``--budget`` bounds it):

    python benchmarks/bench_gpu.py --out benchmarks/results/gpu.md

Rows, all measured in this run:

1. ``decode``: ViewSampler images/s (K=2, the default decode block, 4 blocks per call) of
   StyleGAN2 config-f at 256 and 512 px (random weights via ``config=``), BigBiGAN 128
   (``random_weights=True``, also with ``channels_last``), VDVAE with the ImageNet-32 release
   config (``random_weights=True``) and the shipped ``digits`` (also with blocks of 256), in
   fp32, bf16 autocast and ``compile=True`` (fp32). bf16 and compile rows say how far their
   images are from fp32 eager. Compile rows run last, each only if ``--budget`` leaves time
   for it (they print why when skipped).
2. ``generate / bare decode``: ``generate`` samples/s over the bare ViewSampler loop of the same
   model and batches, with the CPU encoder and with ``encoder="nvjpeg"`` (skipped with a note
   where ``generate`` has no such option or it cannot run).
3. ``ShardViews / bare loop``: ``loader(..., device=)`` (uint8 batches from the workers,
   convert + normalise on the device) over a bare webdataset + PIL loop doing the same.
4. ``ContinuousViews / bare loop``: the dataset alone over a bare ``sample()`` loop, and
   with a training step over ``max(generate, train)`` (the goal is <= 1.1).

The table goes to stdout and, with ``--out``, to a markdown file (rewritten after every
row, so a run stopped early keeps what it measured). On a machine without CUDA it says so
and exits 0; ``--quick`` is a CPU smoke run of every row at tiny sizes (compile rows with
dynamo's ``eager`` backend: the code path without code generation), writing only under TMPDIR.
"""

from __future__ import annotations

import argparse
import inspect
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_models import STYLEGAN2_CONFIG_F, VDVAE_TINY  # the shared literals (this script's folder is on sys.path)

import synthviews as sv
import synthviews.views as views_module
from synthviews._util.checks import DECODE_BLOCK
from synthviews.views import ViewSampler

STYLEGAN2_TINY = {  # --quick: the same layout with few channels
    "z_dim": 32, "w_dim": 32, "img_channels": 3,
    "mapping_kwargs": {"num_layers": 2}, "synthesis_kwargs": {"channel_base": 256, "channel_max": 16},
}
VIEWS = 2  # K, positives per anchor: 3 images per sample


class Table:
    """Markdown rows: printed as they come, the whole file rewritten after each (``--out``)."""

    HEADER = ("measure", "case", "rate", "reference", "ratio", "note")

    def __init__(self, title: list[str], out: Path | None):
        self.title, self.out, self.rows = title, out, []
        print("\n".join(title) + "\n")
        print(self._line(self.HEADER))
        print(self._line(["---"] * len(self.HEADER)), flush=True)

    @staticmethod
    def _line(cells) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    def add(self, measure: str, case: str, rate: str = "", reference: str = "", ratio: str = "", note: str = ""):
        row = (measure, case, rate, reference, ratio, note)
        self.rows.append(row)
        print(self._line(row), flush=True)
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            lines = self.title + ["", self._line(self.HEADER), self._line(["---"] * len(self.HEADER))]
            self.out.write_text("\n".join(lines + [self._line(r) for r in self.rows]) + "\n")

    def skip(self, measure: str, case: str, why: str):
        self.add(measure, case, "skipped", "", "", why)


class Clock:
    def __init__(self, budget: float):
        self.start, self.budget = time.perf_counter(), budget

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_call(fn, device: torch.device, min_time: float, min_calls: int) -> float:
    """Seconds per call after one warm-up call: at least ``min_calls`` calls and ``min_time`` seconds."""
    fn()
    sync(device)
    n, t = 0, time.perf_counter()
    while n < min_calls or time.perf_counter() - t < min_time:
        fn()
        n += 1
    sync(device)
    return (time.perf_counter() - t) / n


def fmt_rate(x: float, unit: str) -> str:
    return f"{x:,.0f} {unit}" if x >= 100 else f"{x:.1f} {unit}"


def difference(a: torch.Tensor, b: torch.Tensor) -> str:
    d = (a.float() - b.float()).abs()
    return f"vs fp32 eager: mean abs {d.mean().item():.2g}, max abs {d.max().item():.2g}"


# --- models ---------------------------------------------------------------------------

def model_rows(device: torch.device, quick: bool):
    """(label, factory, block) rows; a factory returns an MLVGM on ``device``."""
    cfg = STYLEGAN2_TINY if quick else STYLEGAN2_CONFIG_F
    res = (16, 32) if quick else (256, 512)
    bb = {"ch": 8} if quick else {}
    name = "stylegan2 tiny" if quick else "stylegan2 config-f"
    block = 2 if quick else DECODE_BLOCK
    rows = [(f"{name} {r} px", lambda r=r: sv.load_model("stylegan2", config={**cfg, "img_resolution": r},
                                                         device=device), block) for r in res]
    rows += [("bigbigan 128 px" + (" (ch=8)" if quick else ""),
              lambda: sv.load_model("bigbigan", random_weights=True, device=device, **bb), block),
             ("bigbigan 128 px channels_last" + (" (ch=8)" if quick else ""),
              lambda: sv.load_model("bigbigan", random_weights=True, device=device, channels_last=True, **bb),
              block),
             ("vdvae 32 px" + (" (tiny)" if quick else " (imagenet32)"),
              lambda: sv.load_model("vdvae", config=VDVAE_TINY if quick else "imagenet32", random_weights=True,
                                    device=device), block),
             ("digits 32 px", lambda: sv.load_model("digits", device=device), block),
             (f"digits 32 px, block {4 if quick else 256}", lambda: sv.load_model("digits", device=device),
              4 if quick else 256)]
    return rows


# --- 1. decode -------------------------------------------------------------------------

def decode_rate(model, device, block: int, amp=None, compile=False, min_time=2.0, min_calls=3, blocks=4):
    """(images/s, first batch's images, seconds to build the sampler: the compile, if any)."""
    t = time.perf_counter()
    sampler = ViewSampler(model, views=VIEWS, seed=0, device=device, amp=amp, block=block, compile=compile)
    built = time.perf_counter() - t
    batch = blocks * block
    first = sampler.sample(np.arange(batch)).images
    calls = iter(range(1, 1 << 30))
    seconds = per_call(lambda: sampler.sample(np.arange(batch) + batch * next(calls)), device, min_time, min_calls)
    return batch * (1 + VIEWS) / seconds, first, built


def decode_rows(table: Table, models, device, quick: bool, min_time: float, clock: Clock, compile_reserve: float):
    built, refs, fp32 = {}, {}, {}
    calls = {"blocks": 1, "min_calls": 1} if quick else {}
    for label, factory, block in models:
        try:
            model = factory()
        except Exception as e:  # noqa: BLE001 - report and go on with the other models
            if quick:
                raise
            table.skip("decode", label, f"could not build it ({type(e).__name__}: {e})")
            continue
        built[label] = (model, block)
        rate, refs[label], _ = decode_rate(model, device, block, min_time=min_time, **calls)
        fp32[label] = rate
        table.add("decode", f"{label}, fp32", fmt_rate(rate, "img/s"), "", "",
                  f"K={VIEWS}, block {block}, {calls['blocks'] * block} samples per call")
        rate, images, _ = decode_rate(model, device, block, amp="bf16", min_time=min_time, **calls)
        table.add("decode", f"{label}, bf16", fmt_rate(rate, "img/s"), fmt_rate(fp32[label], "img/s (fp32)"),
                  f"{rate / fp32[label]:.2f}x", difference(images, refs[label]))
    return built, refs, fp32


def compile_rows(table: Table, built, refs, fp32, device, quick: bool, min_time: float, clock: Clock,
                 compile_reserve: float):
    if quick:  # a real inductor compile takes 25 s to minutes on a small CPU: trace with dynamo, run eagerly
        note = "--quick: dynamo with the eager backend (no code generation)"
        views_module.compile_decode = lambda model: torch.compile(model.decode, backend="eager", fullgraph=True,
                                                                  dynamic=False)
    else:
        note = ""
    order = ("digits", "stylegan2", "bigbigan")  # cheapest compile first; 512 px last (stable sort)
    for label in sorted(built, key=lambda lab: (next(i for i, o in enumerate(order + ("",)) if lab.startswith(o)),
                                                 "512" in lab)):
        model, block = built[label]
        if "channels_last" in label or ", block " in label:
            continue  # compile once per architecture: keeps the run inside its budget
        if clock.left() < compile_reserve:
            table.skip("decode", f"{label}, compile", f"{clock.left():.0f} s of --budget left, a compile row "
                                                      f"needs {compile_reserve:.0f} s")
            continue
        try:
            rate, images, seconds = decode_rate(model, device, block, compile=True, min_time=min_time,
                                                **({"blocks": 1, "min_calls": 1} if quick else {}))
        except sv.ConfigError as e:
            table.skip("decode", f"{label}, compile", str(e))
            continue
        table.add("decode", f"{label}, compile", fmt_rate(rate, "img/s"), fmt_rate(fp32[label], "img/s (fp32)"),
                  f"{rate / fp32[label]:.2f}x", f"compiled in {seconds:.0f} s; {difference(images, refs[label])}"
                  + (f"; {note}" if note else ""))
    if quick:
        views_module.compile_decode = _COMPILE_DECODE


_COMPILE_DECODE = views_module.compile_decode


# --- 2. generate / bare decode --------------------------------------------------------

def bare_generate_rate(model, device, samples: int, batch: int) -> float:
    sampler = ViewSampler(model, views=VIEWS, seed=0, device=device)
    sampler.sample(np.arange(batch))  # warm-up
    sync(device)
    t = time.perf_counter()
    for start in range(0, samples, batch):
        sampler.sample(np.arange(start, min(start + batch, samples)))
    sync(device)
    return samples / (time.perf_counter() - t)


def generate_rows(table: Table, built, device, quick: bool, tmp: Path, seconds: float):
    from synthviews.store.writer import generate

    has_encoder = "encoder" in inspect.signature(generate).parameters
    picks = [label for label in built if label.startswith("digits") and "block" not in label][:1]
    picks += [label for label in built if label.startswith("stylegan2")][:1]
    for label in picks:
        model, _ = built[label]
        batch = 8 if quick else 256
        probe = bare_generate_rate(model, device, 2 * batch, batch)
        samples = batch if quick else int(min(50_000, max(2 * batch, probe * seconds)) // batch * batch)
        bare = bare_generate_rate(model, device, samples, batch)
        for encoder in ("cpu", "nvjpeg"):
            case = f"{label}, K={VIEWS}, JPEG q95, {encoder} encoder"
            if encoder != "cpu" and not has_encoder:
                table.skip("generate / bare decode", case, "generate() has no encoder= option in this version")
                continue
            kwargs = {"encoder": encoder} if has_encoder else {}
            try:
                out = tmp / f"gen-{label.replace(' ', '_').replace(',', '')}-{encoder}"
                generate(out.with_name(out.name + "-warm"), model, samples=batch, views=VIEWS, batch_size=batch,
                         device=str(device), **kwargs)
                t = time.perf_counter()
                generate(out, model, samples=samples, views=VIEWS, batch_size=batch,
                         shard_size=max(1, samples // 4), device=str(device), **kwargs)
                rate = samples / (time.perf_counter() - t)
            except sv.ConfigError as e:
                table.skip("generate / bare decode", case, str(e))
                continue
            table.add("generate / bare decode", case, fmt_rate(rate, "samples/s"),
                      fmt_rate(bare, "samples/s (bare)"), f"{rate / bare:.2f}",
                      f"{samples} samples, batch {batch}, {os.cpu_count()} CPUs (goal >= 0.90)")


# --- 3. ShardViews vs a bare loop --------------------------------------------------------

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def shard_rows(table: Table, device, quick: bool, tmp: Path):
    measure = "ShardViews / bare loop"
    try:
        import webdataset as wds
        from PIL import Image
    except ImportError as e:
        table.skip(measure, "all", f"{e.name} is not installed")
        return
    from torch.utils.data import DataLoader

    from synthviews.data import loader
    from synthviews.store.writer import generate

    if "device" not in inspect.signature(loader).parameters:
        table.skip(measure, "all", "loader() has no device= option in this version")
        return
    n, res, batch = (64, 32, 16) if quick else (8192, 128, 256)
    out = tmp / "shards"
    generate(out, sv.load_model("toy", resolution=res), samples=n, views=VIEWS, shard_size=max(1, n // 16),
             device=str(device))
    urls = sorted(str(p) for p in out.glob("train-*.tar"))
    mean = torch.tensor(MEAN, device=device)[:, None, None]
    std = torch.tensor(STD, device=device)[:, None, None]
    crop = res * 7 // 8

    def pixels(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))

    def bare_item(sample):
        return np.stack([pixels(sample["view0.jpg"]), pixels(sample["view1.jpg"])])  # (2, H, W, 3) uint8

    def bare_pass(workers: int) -> float:
        dl = DataLoader(wds.DataPipeline(wds.SimpleShardList(urls), wds.split_by_worker, wds.tarfile_to_samples(),
                                         wds.map(bare_item)),
                        batch_size=batch, num_workers=workers, pin_memory=device.type == "cuda")
        t, count = time.perf_counter(), 0
        for views in dl:
            x = views.to(device, non_blocking=True).permute(0, 1, 4, 2, 3).float().div_(255)
            top = (res - crop) // 2
            x = (x[..., top:top + crop, top:top + crop] - mean) / std
            count += x.shape[0] * x.shape[1]
        sync(device)
        return count / (time.perf_counter() - t)

    def ours_pass(workers: int) -> float:
        dl = loader(out, batch_size=batch, num_workers=workers, shuffle=0, pairs=[0, 1], t_x="none",
                    t_x_size=crop, device=str(device))
        t, count = time.perf_counter(), 0
        for views, _ in dl:
            count += views[0].shape[0] * len(views)
        sync(device)
        return count / (time.perf_counter() - t)

    for workers in (1, 2) if quick else (1, min(8, max(1, (os.cpu_count() or 2) // 2))):
        try:
            bare = max(bare_pass(workers) for _ in range(1 if quick else 2))
            ours = max(ours_pass(workers) for _ in range(1 if quick else 2))
        except Exception as e:  # noqa: BLE001 - a reader that cannot run here: say why, go on
            if quick:
                raise
            table.skip(measure, f"{workers} worker(s)", f"{type(e).__name__}: {e}")
            continue
        table.add(measure, f"toy {res} px JPEG, {workers} worker(s), batch {batch}, normalise on {device.type}",
                  fmt_rate(ours, "views/s"), fmt_rate(bare, "views/s (webdataset + PIL)"), f"{ours / bare:.2f}",
                  f"{n} samples, center crop {crop} + ImageNet normalise (goal >= 1.0)")


# --- 4. ContinuousViews vs a bare loop -----------------------------------------------------

class TrainStep:
    """A stand-in training step on the views: a small CNN, forward + backward + SGD."""

    def __init__(self, channels: int, device: torch.device):
        torch.manual_seed(0)
        width = 64
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(channels, width, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=1, stride=2), torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=1, stride=2), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, 128)).to(device)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=1e-3)

    def __call__(self, views) -> None:
        x = torch.cat(list(views))
        loss = self.net(x).pow(2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def continuous_rows(table: Table, built, device, quick: bool):
    from synthviews.data import ContinuousViews

    measure = "ContinuousViews / bare loop"
    label = next((lab for lab in built if lab.startswith("digits") and "block" not in lab), None)
    if label is None:
        table.skip(measure, "digits", "the digits model could not be built")
        return
    model, _ = built[label]
    batch, batches = (8, 2) if quick else (256, 40)
    samples = batch * batches
    sampler = ViewSampler(model, views=1, seed=0, device=device)
    step = TrainStep(model.image_shape[0], device)

    def bare(train: bool) -> float:
        sampler.sample(np.arange(batch), inference=False)  # warm-up
        sync(device)
        t, last = time.perf_counter(), None
        for b in range(batches):
            last = sampler.sample(np.arange(b * batch, (b + 1) * batch), inference=False).images
            if train:
                step(last.unbind(1))
        sync(device)
        del last
        return (time.perf_counter() - t) / batches

    def train_only() -> float:
        views = sampler.sample(np.arange(batch), inference=False).images.unbind(1)
        return per_call(lambda: step(views), device, 0.0, batches)

    def ours(train: bool) -> float:
        ds = ContinuousViews(model, crops=2, epoch_samples=samples, batch_size=batch, t_x=None, device=device)
        it = iter(ds)
        views, _ = next(it)  # warm-up (and the producer's start)
        sync(device)
        t, n = time.perf_counter(), 0
        for views, _ in it:
            if train:
                step(views)
            n += 1
        sync(device)
        return (time.perf_counter() - t) / max(1, n)

    try:
        rounds = 1 if quick else 2
        gen_bare, gen_ours = min(bare(False) for _ in range(rounds)), min(ours(False) for _ in range(rounds))
        train = train_only()
        seq, overlap = bare(True), min(ours(True) for _ in range(rounds))
    except Exception as e:  # noqa: BLE001
        if quick:
            raise
        table.skip(measure, label, f"{type(e).__name__}: {e}")
        return
    per = lambda s: f"{s * 1e3:.1f} ms/batch"  # noqa: E731
    table.add(measure, f"{label}, crops 2, batch {batch}, no T_x, alone", per(gen_ours), per(gen_bare) + " (bare)",
              f"{gen_ours / gen_bare:.2f}", f"{batch / gen_ours:,.0f} samples/s (time ratio: goal <= 1.0)")
    bound = max(gen_bare, train)
    table.add(measure, f"{label}, crops 2, batch {batch}, with a training step", per(overlap),
              per(bound) + " = max(generate, train)", f"{overlap / bound:.2f}",
              f"train alone {per(train)}, generate then train {per(seq)} (time ratio: goal <= 1.1)")


# --- main -----------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a CPU (or GPU) smoke run of every row at tiny sizes")
    parser.add_argument("--device", help="default: cuda (--quick: cpu)")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) to this file")
    parser.add_argument("--budget", type=float, default=270.0,
                        help="seconds for the whole run; compile rows run last and only while they fit (default: 270)")
    parser.add_argument("--compile-reserve", type=float, default=60.0,
                        help="seconds of budget a compile row needs to start (default: 60)")
    parser.add_argument("--min-time", type=float, help="seconds per decode measurement (default: 2; --quick 0)")
    args = parser.parse_args()
    if not args.quick and not torch.cuda.is_available() and args.device in (None, "cuda"):
        print("bench_gpu.py needs a CUDA device (torch.cuda.is_available() is False here); "
              "--quick runs a CPU smoke run of every row")
        return 0
    device = torch.device(args.device or ("cpu" if args.quick else "cuda"))
    min_time = args.min_time if args.min_time is not None else (0.0 if args.quick else 2.0)
    clock = Clock(float("inf") if args.quick else args.budget)  # --quick: every row, compile rows included
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    title = [f"# bench_gpu{' --quick' if args.quick else ''}: {name}",
             "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}, python "
             f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, synthviews {sv.__version__}; "
             f"command: `python benchmarks/bench_gpu.py {' '.join(sys.argv[1:])}`"]
    table = Table(title, args.out)
    with tempfile.TemporaryDirectory(prefix="bench_gpu-") as tmp:
        tmp = Path(tmp)
        built, refs, fp32 = decode_rows(table, model_rows(device, args.quick), device, args.quick, min_time, clock,
                                        args.compile_reserve)
        for measure, rows in (("generate / bare decode", lambda: generate_rows(table, built, device, args.quick, tmp,
                                                                               seconds=4.0)),
                              ("ShardViews / bare loop", lambda: shard_rows(table, device, args.quick, tmp)),
                              ("ContinuousViews / bare loop", lambda: continuous_rows(table, built, device, args.quick))):
            try:
                rows()
            except ImportError as e:  # e.g. webdataset or kornia missing on the GPU machine
                if args.quick:
                    raise
                table.skip(measure, "all", f"cannot import {e.name or e} (install it to measure this row)")
        compile_rows(table, built, refs, fp32, device, args.quick, min_time, clock, args.compile_reserve)
    print(f"\n{time.perf_counter() - clock.start:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
