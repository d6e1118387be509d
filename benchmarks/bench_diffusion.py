"""Diffusion models as MLVGMs: sampling img/s, and positives/s with and without shared trajectories.

A positive that perturbs only the noise of steps s.. follows its anchor's trajectory up to s, so
``decode_views`` computes it from there instead of from x_T. This measures, in one run and on the same
codes, anchors + K positives decoded independently (``decode`` of every view) against shared
(``decode_views``), checks the images are equal to the last bit, and prints the speed-up per group.

Run: python benchmarks/bench_diffusion.py [--path FOLDER] [--steps 50] [--quick]
Without --path it uses the built-in model (``load_model("digits-ddpm")``, the trained weights in
synthviews/weights/digits_ddpm). --quick: a tiny random-weight 16 px UNet, 4 steps, seconds (a smoke
run of the code, not of the digits model's speed). The UNet-call counts are the robust figure (the
work saved); on a shared machine the timings are noisy.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import synthviews as sv

BUILT_IN = Path(__file__).resolve().parents[1] / "synthviews" / "weights" / "digits_ddpm"


def random_folder(root: Path) -> Path:
    """A tiny diffusers DDPM folder with random weights, for --quick (a smoke run of the benchmark's code)."""
    import diffusers

    torch.manual_seed(0)
    diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                          layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                          up_block_types=("AttnUpBlock2D", "UpBlock2D")).save_pretrained(root / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "scheduler")
    return root


def best_of(fn, repeats: int) -> tuple[float, torch.Tensor]:
    """Best of ``repeats`` timed calls, after a warm-up call when more than one is asked for."""
    out = fn() if repeats > 1 else None
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", help="a diffusers model folder (default: the built-in digits DDPM, else random)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: 50; --quick 4)")
    parser.add_argument("--anchors", type=int, help="anchors per timed call (default: 16; --quick 4)")
    parser.add_argument("--views", type=int, default=4, help="positives per anchor (default: 4)")
    parser.add_argument("--repeats", type=int, help="timed calls per row, best kept, after a warm-up call when > 1 "
                        "(default: 1; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="tiny model and sizes, for a smoke run")
    args = parser.parse_args()
    for key, full, quick in (("steps", 50, 4), ("anchors", 16, 4), ("repeats", 1, 1)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)

    torch.set_num_threads(1)  # as ViewSampler decodes each block: one thread, so the figures are per core
    with tempfile.TemporaryDirectory() as tmp:
        if args.path:
            model, what = sv.load_model("diffusion", path=args.path, steps=args.steps), args.path
        elif args.quick:
            folder = random_folder(Path(tmp))
            model, what = sv.load_model("diffusion", path=folder, steps=args.steps), "random-weight UNet (--quick)"
        elif BUILT_IN.is_dir():
            model, what = sv.load_model("digits-ddpm", steps=args.steps), "built-in digits-ddpm"
        else:
            raise SystemExit(f"the digits-ddpm weights {BUILT_IN} are missing: give --path FOLDER or --quick")
        run(model, what, args)


def run(model, what: str, args) -> None:
    s, k = args.anchors, args.views
    params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, 1 thread, {what}: {params / 1e6:.2f} M parameters, image "
          f"{'x'.join(map(str, model.image_shape))}, sampler {model.plan.sampler}, {args.steps} steps, "
          f"{s} anchors x {k} positives")
    gen = torch.Generator().manual_seed(0)
    anchors = torch.randn(s, model.latent_dim, generator=gen)
    with torch.inference_mode():
        t, _ = best_of(lambda: model.decode(anchors), args.repeats)
        print(f"sampling (decode, anchors only): {s / t:.2f} img/s, {t / s / args.steps * 1e3:.2f} ms per image-step")
        print(f"| {'perturbed group':<16} | {'independent pos/s':>17} | {'shared pos/s':>12} | {'speed-up':>8} | "
              f"{'UNet calls':>13} | {'same bits':>9} |")
        print(f"|{'-' * 18}|{'-' * 19}|{'-' * 14}|{'-' * 10}|{'-' * 15}|{'-' * 11}|")
        calls = []
        model.unet.register_forward_pre_hook(lambda *_: calls.append(1))  # one call = one chunk of unet_batch rows
        for group in model.group_names:
            codes = torch.stack([anchors] + [model.compose(anchors, {group: torch.randn(
                s, model.group(group).size, generator=gen)}) for _ in range(k)], dim=1)  # (S, 1+K, D)
            calls.clear()
            t_alone, alone = best_of(lambda: model.decode(codes.flatten(0, 1)), args.repeats)
            runs = args.repeats + (args.repeats > 1)  # the warm-up call counts too
            n_alone = len(calls) // runs
            calls.clear()
            t_shared, shared = best_of(lambda: model.decode_views(codes), args.repeats)
            n_shared = len(calls) // runs
            same = torch.equal(shared.flatten(0, 1), alone)
            work = f"{n_alone}/{n_shared}"
            print(f"| {group:<16} | {s * k / t_alone:>17.2f} | {s * k / t_shared:>12.2f} | "
                  f"{t_alone / t_shared:>7.2f}x | {work:>13} | {'yes' if same else 'NO':>9} |")
            if not same:
                raise SystemExit(f"shared trajectories changed the images of group {group}")
    print("pos/s: positives per second, the anchors' own decoding included (both columns decode 1+K views); "
          "UNet calls: independent/shared, per timed call (the work saved, free of timing noise)")


if __name__ == "__main__":
    main()
