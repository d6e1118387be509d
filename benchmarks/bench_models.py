"""Generator throughput: images/s per model, resolution and batch size, random weights.

Real architectures with random weights (speed does not depend on the values):
StyleGAN2 config-f at 512 and 256 px (if ``synthviews.models.stylegan2`` is
available), BigBiGAN 128 px, the VDVAE ImageNet-32 release config (output
sampling included) and the procedural ``toy`` at 64 px. Each row
times ``decode(compose(anchor, {}))`` under ``torch.inference_mode`` after one
warm-up call, best of ``--repeats``.

``--compile`` times the decode as ``ViewSampler(compile=True)`` compiles it (the first,
compiling call is the warm-up); ``benchmarks/bench_gpu.py`` compares eager, bf16 and compile.

``--quick`` (a smoke run) builds the same rows with tiny architectures instead
(StyleGAN2 at 32 and 16 px with few channels, BigBiGAN ``ch=8``, the tiny compat VDVAE, toy 32 px), batch 1,
one repeat.

Run: python benchmarks/bench_models.py [--device cuda] [--batch-sizes 1,4] [--repeats 3] [--compile] [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

import synthviews as sv
from synthviews.latents import sample_prior
from synthviews.views import compile_decode

STYLEGAN2_CONFIG_F = {  # stylegan2-ada-pytorch "config-f": 8 mapping layers, channel_base 32768, max 512
    "z_dim": 512, "w_dim": 512, "img_channels": 3,
    "mapping_kwargs": {"num_layers": 8}, "synthesis_kwargs": {"channel_base": 32768, "channel_max": 512},
}

VDVAE_TINY = {  # --quick: the compat tiny VDVAE (tests/data/vdvae), the real layout at 32 px with few channels
    "image_size": 32, "width": 32, "zdim": 8, "num_mixtures": 3, "no_bias_above": 16,
    "custom_width_str": "1:48,4:48,8:40", "dec_blocks": "1x2,4m1,4x2,8m4,8x1,16m8,16x1,32m16,32x1",
}

STYLEGAN2_TINY = {  # --quick: the same layout with few channels
    "z_dim": 64, "w_dim": 64, "img_channels": 3,
    "mapping_kwargs": {"num_layers": 2}, "synthesis_kwargs": {"channel_base": 512, "channel_max": 32},
}


def model_factories(device: str, amp: str, channels_last: bool, quick: bool = False):
    """(label, resolution, factory) rows; a factory returns an MLVGM on ``device``."""
    from synthviews.models import bigbigan  # noqa: F401  (registers "bigbigan")

    rows = []
    try:
        from synthviews.models import stylegan2  # noqa: F401  (registers "stylegan2")
        label, base = ("stylegan2 tiny", STYLEGAN2_TINY) if quick else ("stylegan2 config-f", STYLEGAN2_CONFIG_F)
        for res in (32, 16) if quick else (512, 256):
            cfg = {**base, "img_resolution": res}
            rows.append((label, res, lambda cfg=cfg: sv.load_model("stylegan2", config=cfg, device=device)))
    except Exception as e:  # noqa: BLE001 - report and go on with the other models
        if quick:  # a smoke run must exercise every row
            raise
        print(f"note: skipping StyleGAN2 ({type(e).__name__}: {e})")
    tiny = {"ch": 8} if quick else {}
    rows.append(("bigbigan tiny (ch=8)" if quick else "bigbigan", 128, lambda: sv.load_model(
        "bigbigan", device=device, amp=amp, channels_last=channels_last, random_weights=True, **tiny)))
    vdvae = VDVAE_TINY if quick else "imagenet32"  # the release's 78-block, 67 M-parameter generator
    rows.append(("vdvae tiny" if quick else "vdvae imagenet32", 32, lambda: sv.load_model(
        "vdvae", config=vdvae, random_weights=True, device=device)))
    toy_res = 32 if quick else 64
    rows.append(("toy", toy_res, lambda: sv.load_model("toy", resolution=toy_res).to(device)))
    return rows


def best_of(fn, repeats: int, device: str) -> float:
    def run():
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    run()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", help="comma-separated (default: 1,4; --quick 1)")
    parser.add_argument("--repeats", type=int, help="timed calls per row, best kept (default: 3; --quick 1)")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="BigBiGAN autocast (fp16: CUDA)")
    parser.add_argument("--channels-last", action="store_true", help="BigBiGAN memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decode, as ViewSampler(compile=True)")
    parser.add_argument("--quick", action="store_true", help="tiny architectures, batch 1, one repeat: a smoke run")
    args = parser.parse_args()
    if args.batch_sizes is None:
        args.batch_sizes = "1" if args.quick else "1,4"
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"bigbigan amp {args.amp}{', channels_last' if args.channels_last else ''}"
          f"{', compiled decode' if args.compile else ''}")
    print(f"| {'model':<20} | {'res':>4} | {'batch':>5} | {'ms/batch':>9} | {'images/s':>9} |")
    print(f"|{'-' * 22}|{'-' * 6}|{'-' * 7}|{'-' * 11}|{'-' * 11}|")
    for label, res, factory in model_factories(args.device, args.amp, args.channels_last, args.quick):
        try:
            model = factory()
        except Exception as e:  # noqa: BLE001
            if args.quick:  # a smoke run must exercise every row
                raise
            print(f"note: could not build {label} {res}px ({type(e).__name__}: {e})")
            continue
        streams = sv.Streams(0)
        decode = compile_decode(model) if args.compile else model.decode
        for b in batch_sizes:
            z = sample_prior(model.prior, streams, range(b), model.latent_dim).to(args.device)
            with torch.inference_mode():
                t = best_of(lambda m=model, d=decode: d(m.compose(z, {})), args.repeats, args.device)
            print(f"| {label:<20} | {res:>4} | {b:>5} | {t * 1e3:>9.1f} | {b / t:>9.2f} |", flush=True)
        del model


if __name__ == "__main__":
    main()
