"""Quality check of the built-in ``digits`` generator, scored by a classifier trained on real digits.

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
from synthviews.train.digits import evaluate_generator
from synthviews.views import ViewSampler


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="output folder (default: benchmarks/results; --quick: a temporary folder)")
    p.add_argument("--samples", type=int, help="generated anchors to classify (default: 2000; --quick 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the anchors (default: 0)")
    p.add_argument("--quick", action="store_true", help="few anchors, results in a temporary folder: a smoke run")
    args = p.parse_args(argv)
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
    for name, g in report["groups"].items():
        print(f"  group {name}: class kept {100 * g['class_kept']:.1f}% at std {g['std']}, "
              f"mean |pixel change| {g['mean_abs_pixel_change']:.3f}")
    pv = report["policy_views"]
    print(f"  default policy {pv['policy']['groups']}: positives keep the anchor's class {100 * pv['class_kept']:.1f}%, "
          f"mean |pixel change| {pv['mean_abs_pixel_change']:.3f}")
    print(f"written to {out}/digits_quality.json, digits_samples.png, digits_preview.png ({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
