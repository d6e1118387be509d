"""Quality check of the built-in digits generators (the GAN and the DDPM), scored by a classifier trained on real digits.

A calibrated RBF SVM is fit on the real train split (8x8 block means of the
32x32 images) and labels generated anchors: the class shares (all 10 present,
none above 2x its share of 1/10), the mean confidence, how far samples are from
their nearest training image (memorisation check), and for each latent group
how often perturbing only it keeps the class. Also writes the README's grids.

    python benchmarks/digits_quality.py          # ~15 s on 2 CPU cores
    python benchmarks/digits_quality.py --quick  # 200 anchors into a temporary folder: a smoke run

Writes OUT/digits_quality.json, OUT/digits_samples.png (64 anchors) and
OUT/digits_preview.png (anchors + 4 positives under the default policy);
OUT defaults to benchmarks/results (--quick: a temporary folder). Needs scikit-learn.

    python benchmarks/digits_quality.py --model digits-ddpm          # 256 samples x 250 steps: ~5-10 min, 1 thread
    python benchmarks/digits_quality.py --model digits-ddpm --quick  # 32 samples x 10 steps: a smoke run

scores the DDPM of ``synthviews train-ddpm`` (default: the shipped
synthviews/weights/digits_ddpm pipeline folder; ``--path`` another) on
samples of its own DDPM ancestral loop (diffusers ``DDPMScheduler``,
``--ddpm-steps`` of the 1000 training timesteps, "leading" spacing, fresh
noise from one seeded generator): the same class shares, confidence and
nearest-train distances as the GAN, side by side with the GAN's figures from
OUT/digits_quality.json when that file is there. Writes
OUT/digits_ddpm_quality.json and OUT/digits_ddpm_samples.png (64 samples).

    python benchmarks/digits_quality.py --model digits-ddpm --family  # 256 anchors x 50 steps: ~10 min, 1 thread

scores what users get instead: ``load_model("digits-ddpm")`` (the
``diffusion`` family, its default 50 ancestral steps, ``--ddpm-steps`` to
change) with the GAN's whole check, per-group class keeping and the default
policy's positives included. Writes OUT/digits_ddpm_family_quality.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from synthviews._util.images import grid, png_bytes, to_uint8
from synthviews.analysis.preview import preview
from synthviews.models import load_model
from synthviews.train.digits import digit_classifier, evaluate_generator, score_images
from synthviews.views import ViewSampler


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="output folder (default: benchmarks/results; --quick: a temporary folder)")
    p.add_argument("--samples", type=int, help="generated images to classify (default: 2000, --quick 200; digits-ddpm: 256, --quick 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the anchors (default: 0)")
    p.add_argument("--quick", action="store_true", help="few anchors, results in a temporary folder: a smoke run")
    p.add_argument("--model", choices=("digits", "digits-ddpm"), default="digits",
                   help="digits (the GAN, default) or digits-ddpm (the DDPM pipeline folder)")
    p.add_argument("--path", default=str(DDPM_DIR), help="digits-ddpm: the pipeline folder (default: the shipped one)")
    p.add_argument("--ddpm-steps", type=int, help="digits-ddpm: ancestral sampling steps (default: 250; --quick 10)")
    p.add_argument("--family", action="store_true",
                   help="digits-ddpm: score load_model('digits-ddpm') (the family's sampler, its default 50 steps, "
                        "per-group and policy measures) instead of the trainer's ancestral loop")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    args = p.parse_args(argv)
    if args.model == "digits-ddpm":
        return family_main(args) if args.family else ddpm_main(args)
    if args.family:
        p.error("--family scores digits-ddpm through its family: add --model digits-ddpm")
    if args.samples is None:
        args.samples = 200 if args.quick else 2000
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="digits_quality_quick_") if args.quick else "benchmarks/results"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model("digits")

    start = time.perf_counter()
    report = evaluate_generator(model, samples=args.samples, seed=args.seed)
    report["model_id"] = model.model_id
    report["seconds"] = round(time.perf_counter() - start, 1)
    (out / "digits_quality.json").write_text(json.dumps(report, indent=1) + "\n")

    anchors = ViewSampler(model, None, views=1, seed=args.seed).sample(range(64)).images[:, 0]  # (64, 1, 32, 32)
    tiles = to_uint8(anchors).reshape(4, 16, *anchors.shape[2:], anchors.shape[1])
    (out / "digits_samples.png").write_bytes(png_bytes(grid(tiles)))
    preview(ViewSampler(model, None, views=4, seed=args.seed), out / "digits_preview.png", samples=8)

    shares = " ".join(f"{d}:{100 * s:.1f}%" for d, s in enumerate(report["class_shares"]))
    print(f"classifier: {report['classifier']}; real test accuracy {100 * report['test_accuracy']:.1f}%, "
          f"mean confidence {report['test_mean_confidence']:.3f}")
    print(f"{args.samples} generated anchors: classes present {report['classes_present']}/10, "
          f"largest share {report['max_share_over_uniform']:.2f}x uniform, smallest {report['min_share_over_uniform']:.2f}x")
    print(f"  shares: {shares}")
    print(f"  mean confidence {report['mean_confidence']:.3f}; confidence > 0.9: {100 * report['share_confidence_above_0.9']:.1f}%")
    print(f"  nearest training image (L2, 32x32): generated {report['nn_distance_generated_to_train']:.2f}, "
          f"real test {report['nn_distance_test_to_train']:.2f}")
    print_groups(report)
    print(f"written to {out}/digits_quality.json, digits_samples.png, digits_preview.png ({report['seconds']} s)")
    return 0


def print_groups(report: dict) -> None:
    """Per latent group and for the default policy: how often the class is kept, how much pixels change."""
    for name, g in report["groups"].items():
        print(f"  group {name}: class kept {100 * g['class_kept']:.1f}% at std {g['std']}, "
              f"mean |pixel change| {g['mean_abs_pixel_change']:.3f}")
    pv = report["policy_views"]
    policy = pv["policy"].get("groups") or {"every group": pv["policy"].get("default")}
    print(f"  default policy {policy}: positives keep the anchor's class {100 * pv['class_kept']:.1f}%, "
          f"mean |pixel change| {pv['mean_abs_pixel_change']:.3f}")


# --- the DDPM ----------------------------------------------------------------------

def family_main(args) -> int:
    """The GAN's check on ``load_model("digits-ddpm")``: the sampler, steps and groups users get."""
    import torch

    torch.set_num_threads(args.threads)
    samples = args.samples or (16 if args.quick else 256)
    steps = args.ddpm_steps or (5 if args.quick else 50)
    out = Path(args.out or (tempfile.mkdtemp(prefix="digits_ddpm_family_quick_") if args.quick else "benchmarks/results"))
    out.mkdir(parents=True, exist_ok=True)
    model = load_model("digits-ddpm", steps=steps)
    start = time.perf_counter()
    report = {"model_id": model.model_id, "sampler": f"synthviews diffusion family, {steps} DDPM ancestral steps",
              **evaluate_generator(model, samples=samples, seed=args.seed, batch=64), "threads": args.threads}
    report["seconds"] = round(time.perf_counter() - start, 1)
    (out / "digits_ddpm_family_quality.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"{model.model_id}: {report['sampler']}; {samples} anchors")
    print(f"  classes present {report['classes_present']}/10, largest share {report['max_share_over_uniform']:.2f}x "
          f"uniform, smallest {report['min_share_over_uniform']:.2f}x; mean confidence {report['mean_confidence']:.3f}; "
          f"conf > 0.9 {100 * report['share_confidence_above_0.9']:.1f}%; nearest train "
          f"{report['nn_distance_generated_to_train']:.2f} (real test {report['nn_distance_test_to_train']:.2f})")
    print_groups(report)
    print(f"written to {out}/digits_ddpm_family_quality.json ({report['seconds']} s)")
    return 0


DDPM_DIR = Path(__file__).resolve().parents[1] / "synthviews" / "weights" / "digits_ddpm"


def ddpm_main(args) -> int:
    import diffusers
    import numpy as np
    import torch

    from synthviews.train.ddpm import sample

    torch.set_num_threads(args.threads)
    if args.samples is None:
        args.samples = 32 if args.quick else 256
    if args.ddpm_steps is None:
        args.ddpm_steps = 10 if args.quick else 250
    gan_json = Path(args.out or "benchmarks/results") / "digits_quality.json"
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="digits_ddpm_quality_quick_") if args.quick else "benchmarks/results"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(args.path)
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet", use_safetensors=True, local_files_only=True).eval()
    sched = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
    index = json.loads((folder / "model_index.json").read_text())

    start = time.perf_counter()
    images = sample(unet, sched, args.samples, steps=args.ddpm_steps, seed=args.seed)
    sampling_s = time.perf_counter() - start
    clf, real = digit_classifier()
    report = {"model": "digits-ddpm", "path": str(folder), "trained_steps": index.get("_synthviews", {}).get("steps"),
              "seed": args.seed, "sampler": f"DDPM ancestral (diffusers DDPMScheduler), {args.ddpm_steps} of "
              f"{sched.config.num_train_timesteps} timesteps, {sched.config.timestep_spacing} spacing, "
              f"{sched.config.variance_type} variance, clip_sample {sched.config.clip_sample}",
              "classifier": "SVC(C=10, gamma=0.001), sigmoid-calibrated, on 8x8 block means of the train split",
              "samples": len(images), **real, **score_images(images, clf)[0],
              "parameters": sum(p.numel() for p in unet.parameters()),
              "sampling_images_per_s": round(args.samples / sampling_s, 3), "threads": args.threads}
    if gan_json.is_file():
        gan = json.loads(gan_json.read_text())
        report["gan"] = {k: gan[k] for k in ("model_id", "samples", "class_shares", "max_share_over_uniform",
                                             "min_share_over_uniform", "mean_confidence", "share_confidence_above_0.9",
                                             "nn_distance_generated_to_train") if k in gan}
    report["seconds"] = round(time.perf_counter() - start, 1)
    (out / "digits_ddpm_quality.json").write_text(json.dumps(report, indent=1) + "\n")
    n = min(64, len(images))
    cols = min(16, n)
    tiles = to_uint8(images[:n])
    blank = np.full((-n % cols, *tiles.shape[1:]), 255, dtype=np.uint8)  # fill the last row for any --samples
    tiles = np.concatenate([tiles, blank]).reshape(-1, cols, *tiles.shape[1:])
    (out / "digits_ddpm_samples.png").write_bytes(png_bytes(grid(tiles)))

    print(f"digits-ddpm {folder} ({report['parameters']} parameters, {report['trained_steps']} steps); "
          f"sampler: {report['sampler']}")
    print(f"classifier: real test accuracy {100 * report['test_accuracy']:.1f}%, "
          f"mean confidence {report['test_mean_confidence']:.3f}")
    rows = [("DDPM", report)] + ([("GAN", report["gan"])] if "gan" in report else [])
    for name, r in rows:
        shares = " ".join(f"{d}:{100 * s:.1f}%" for d, s in enumerate(r["class_shares"]))
        print(f"{name:4s} {r['samples']} samples: largest share {r['max_share_over_uniform']:.2f}x uniform, smallest "
              f"{r['min_share_over_uniform']:.2f}x; mean confidence {r['mean_confidence']:.3f}; "
              f"conf > 0.9 {100 * r['share_confidence_above_0.9']:.1f}%; "
              f"nearest train {r['nn_distance_generated_to_train']:.2f} (real test {report['nn_distance_test_to_train']:.2f})")
        print(f"     shares: {shares}")
    print(f"sampling {report['sampling_images_per_s']} img/s on {args.threads} thread(s); written to "
          f"{out}/digits_ddpm_quality.json, digits_ddpm_samples.png ({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
