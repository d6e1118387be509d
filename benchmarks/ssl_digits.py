"""The paper's experiment in miniature: SimCLR on generated digit views vs. real digits.

The same small CNN is trained with SimCLR (NT-Xent) for the same number of
steps and batch size on each row, then frozen and scored by a linear probe
(logistic regression) trained on the real train split and tested on the real
test split of scikit-learn's digits (:mod:`synthviews.train.digits`):

  (a) real digits (train split, 1,347 images), two T_x ``simclr`` views
  (b) synthetic anchors only (the anchors of the (d) shards), two T_x ``simclr`` views
  (c) GenRep-like: every latent group perturbed with one small std, + T_x ``simclr`` (shards)
  (d) the MI-chosen per-group policy (the digits model's default) + T_x ``no_color``, read from
      shards written by ``synthviews generate``
  (e) the same policy by continuous sampling (ContinuousViews: fresh views every step)
  (f) a random-init encoder (no training)
  (g) row (d) with T_x ``simclr``: latent perturbation of these grey digits varies
      stroke and shape but not brightness or contrast, which ``no_color`` drops

The generator is the built-in ``digits`` StyleGAN2, which never saw the test
split. Rows (b)-(d) and (g) read shards through ShardViews and apply T_x to whole
batches in the training loop (as one would on a GPU; per-sample T_x in the
dataset costs ~2 ms a view on CPU); (e) uses ContinuousViews, whose T_x is
batched already. Every T_x is a synthviews preset at 32 px.

    python benchmarks/ssl_digits.py              # the full table, ~28 min on 2 CPU cores
    python benchmarks/ssl_digits.py --quick      # every row, tiny settings, ~30 s

Prints a markdown table and writes OUT/results.json and OUT/results.md
(default OUT: benchmarks/results/ssl_digits, or a temporary folder with --quick).
Needs scikit-learn.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthviews.data import ContinuousViews, ShardViews, loader
from synthviews.data.augment import Augment
from synthviews.models import load_model
from synthviews.policies import resolve_policy
from synthviews.store.writer import generate
from synthviews.train.digits import NUM_CLASSES, load_digits_split

ROWS = {
    "a": "real digits + T_x simclr",
    "b": "synthetic anchors only + T_x simclr",
    "c": "GenRep-like (every group, std {genrep_std}) + T_x simclr",
    "d": "MI policy + T_x {mi_t_x}, shards",
    "e": "MI policy + T_x {mi_t_x}, continuous",
    "f": "random-init encoder",
    "g": "MI policy + T_x simclr, shards (row d with simclr's colour jitter)",
}
SIZE = 32  # T_x output side: the images' own size
KNN = 20


class Encoder(nn.Module):
    """Four 3x3 conv layers (32-64-128-128 channels, three stride 2) with BatchNorm, global average pool."""

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [1, width, 2 * width, 4 * width, 4 * width]
        layers = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.dim = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner among the 2B - 1 other views."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    n = z1.shape[0]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, target)


def real_views(steps: int, batch: int, seed: int):
    """Row (a): epochs over the real train split in a seeded order; each image twice (T_x makes the views)."""
    images, _ = load_digits_split("train", SIZE)
    rng = np.random.default_rng(seed)
    order, pos = rng.permutation(len(images)), 0
    for _ in range(steps):
        if pos + batch > len(order):
            order, pos = rng.permutation(len(images)), 0
        x = images[torch.from_numpy(order[pos:pos + batch])]
        pos += batch
        yield [x, x]


def augmented(batches, t_x: Augment, seed: int):
    """T_x on whole batches in the training loop (as on a GPU), seeded per step and view."""
    for step, views in enumerate(batches):
        yield [t_x(x, seed=(seed * 1_000_003 + step) * 8 + v) for v, x in enumerate(views)]


def looped(make_loader, steps: int):
    """``steps`` batches from a loader, calling set_epoch before each pass."""
    done, epoch = 0, 0
    while done < steps:
        dl = make_loader()
        dl.set_epoch(epoch)
        for views, _ in dl:
            yield views
            done += 1
            if done == steps:
                return
        epoch += 1


def train(batches, args, seed: int) -> tuple[Encoder, float]:
    torch.manual_seed(seed)
    encoder = Encoder(args.width)
    head = nn.Sequential(nn.Linear(encoder.dim, encoder.dim), nn.ReLU(inplace=True), nn.Linear(encoder.dim, 64))
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    encoder.train(), head.train()
    losses = []
    for views in batches:
        loss = nt_xent(head(encoder(views[0])), head(encoder(views[1])), args.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    if len(losses) != args.steps:
        raise RuntimeError(f"the data ran out after {len(losses)} of {args.steps} steps")
    return encoder.eval(), float(np.mean(losses[-max(1, len(losses) // 10):]))


@torch.no_grad()
def features(encoder: Encoder, images: torch.Tensor) -> np.ndarray:
    plain = Augment("none", size=SIZE, crop_fraction=1.0)  # only the normalisation the views had
    return torch.cat([encoder(plain(x)) for x in images.split(512)]).numpy()


def evaluate(encoder: Encoder) -> dict:
    """Frozen features of the real splits, scored two ways on the real test split.

    ``linear``: a logistic regression on standardised features of the train split (the protocol);
    ``knn``: cosine 20-nearest-neighbour vote among train features (no fitting, more sensitive to
    how the representation clusters).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    (xtr, ytr), (xte, yte) = load_digits_split("train", SIZE), load_digits_split("test", SIZE)
    ftr, fte, ytr, yte = features(encoder, xtr), features(encoder, xte), ytr.numpy(), yte.numpy()
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    probe.fit(ftr, ytr)
    linear = float((probe.predict(fte) == yte).mean())
    ntr, nte = (f / np.linalg.norm(f, axis=1, keepdims=True).clip(1e-12) for f in (ftr, fte))
    neighbours = np.argsort(-(nte @ ntr.T), axis=1, kind="stable")[:, :KNN]
    votes = np.apply_along_axis(np.bincount, 1, ytr[neighbours], minlength=NUM_CLASSES)
    return {"linear": linear, "knn": float((votes.argmax(1) == yte).mean())}


def make_shards(work: Path, model, policy, args) -> None:
    """The offline datasets: (d) the MI policy and (c) the GenRep-like policy, 1 anchor + 2 positives each."""
    for name, pol in (("mi", policy), ("genrep", {"kind": "gaussian", "default": {"std": args.genrep_std}})):
        if "c" in args.rows or name == "mi":
            generate(work / name, model, pol, samples=args.anchors, views=2, seed=args.data_seed,
                     shard_size=max(1, args.anchors // 8), batch_size=256, device="cpu", workers=1)


def row_batches(row: str, args, seed: int, work: Path, model, policy):
    if row == "a":
        return augmented(real_views(args.steps, args.batch, seed), Augment("simclr", size=SIZE), seed)
    if row in "bcdg":
        folder, pairs, t_x = {"b": ("mi", [0, 0], "simclr"), "c": ("genrep", "anchor+random", "simclr"),
                              "d": ("mi", "anchor+random", args.mi_t_x), "g": ("mi", "anchor+random", "simclr")}[row]
        views = looped(lambda: loader(ShardViews(work / folder, pairs=pairs, seed=seed, batch_size=args.batch),
                                      batch_size=args.batch), args.steps)
        return augmented(views, Augment(t_x, size=SIZE), seed)
    if row == "e":
        ds = ContinuousViews(model, policy, crops=2, epoch_samples=args.steps * args.batch, batch_size=args.batch,
                             seed=10_000 + seed, device="cpu", t_x=args.mi_t_x, t_x_size=SIZE)
        return looped(lambda: loader(ds), args.steps)
    raise ValueError(row)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = Path(tempfile.mkdtemp(prefix="ssl_digits_"))
    model = load_model("digits")
    policy = resolve_policy(args.policy, model)
    result = {"settings": {k: v for k, v in vars(args).items() if k != "out"},
              "policy_mi": policy.to_dict(), "model_id": model.model_id,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
              "rows": {}, "seconds": {}}
    start = time.perf_counter()
    try:
        if set(args.rows) & set("bcdg"):
            t0 = time.perf_counter()
            make_shards(work, model, policy, args)
            result["seconds"]["shards"] = round(time.perf_counter() - t0, 1)
            print(f"shards: {result['seconds']['shards']} s", flush=True)
        for row in args.rows:
            scores, losses, t0 = [], [], time.perf_counter()
            for k in range(args.seeds):
                seed = args.seed + k
                if row == "f":
                    torch.manual_seed(seed)
                    encoder, loss = Encoder(args.width).eval(), None
                else:
                    encoder, loss = train(row_batches(row, args, seed, work, model, policy), args, seed)
                scores.append(evaluate(encoder))
                losses.append(loss)
                print(f"  ({row}) seed {seed}: linear {100 * scores[-1]['linear']:.2f}%  "
                      f"kNN {100 * scores[-1]['knn']:.2f}%  final loss {loss if loss is None else round(loss, 3)}",
                      flush=True)
            entry = {"name": ROWS[row].format(genrep_std=args.genrep_std, mi_t_x=args.mi_t_x), "final_loss": losses}
            for metric in ("linear", "knn"):
                values = [sc[metric] for sc in scores]
                entry[metric] = {"top1": values, "mean": float(np.mean(values)),
                                 "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
            result["rows"][row] = entry
            result["seconds"][row] = round(time.perf_counter() - t0, 1)
            print(f"({row}) {entry['name']}: linear {100 * entry['linear']['mean']:.2f}%, "
                  f"kNN {100 * entry['knn']['mean']:.2f}% ({result['seconds'][row]} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["seconds"]["total"] = round(time.perf_counter() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(table(result) + "\n")
    return result


def table(result: dict) -> str:
    s = result["settings"]
    lines = [f"SimCLR on digits: {s['steps']} steps x batch {s['batch']}, {s['seeds']} seeds; frozen features of "
             f"the real train split, top-1 on the real test split (450 images, {NUM_CLASSES} classes): linear "
             f"probe (logistic regression) and cosine {KNN}-NN.", "",
             "| row | training data | linear top-1 % | kNN top-1 % | seconds |", "|---|---|---|---|---|"]
    for row, r in result["rows"].items():
        cells = [f"{100 * r[m]['mean']:.2f} +- {100 * r[m]['std']:.2f}" for m in ("linear", "knn")]
        lines.append(f"| ({row}) | {r['name']} | {cells[0]} | {cells[1]} | {result['seconds'][row]} |")
    lines += ["", f"Mean +- sample std over seeds. Total {result['seconds']['total']} s on {result['machine']}."]
    return "\n".join(lines)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke run (~30 s)")
    p.add_argument("--out", help="results folder (default: benchmarks/results/ssl_digits; --quick: a temp folder)")
    p.add_argument("--rows", default="abcdefg", help="rows to run, e.g. 'ad' (default: abcdefg)")
    p.add_argument("--steps", type=int, help="SimCLR steps per run (default: 400; --quick 20)")
    p.add_argument("--batch", type=int, help="anchors per step (default: 128; --quick 32)")
    p.add_argument("--seeds", type=int, help="training seeds per row (default: 3; --quick 1)")
    p.add_argument("--seed", type=int, default=0, help="first training seed (default: 0)")
    p.add_argument("--anchors", type=int, help="anchors in the generated shards (default: 5000; --quick 256)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated shards (default: 0)")
    p.add_argument("--policy", help="policy of rows (d), (e), (g) and of (b)'s anchors' shards "
                                    "(default: the digits model's MI-chosen default)")
    p.add_argument("--mi-t-x", default="no_color", choices=["no_color", "simclr", "no_crop", "none"],
                   help="T_x of rows (d)/(e) (default: no_color, the paper's choice with latent perturbation)")
    p.add_argument("--genrep-std", type=float, default=0.2, help="row (c)'s std on every group (default: 0.2)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate, one-cycle (default: 2e-3)")
    p.add_argument("--temperature", type=float, default=0.2, help="NT-Xent temperature (default: 0.2)")
    p.add_argument("--width", type=int, default=32, help="encoder base width (default: 32)")
    p.add_argument("--threads", type=int, help="torch threads (default: all CPUs; --quick 1: with other "
                                                 "jobs on a 2-core machine, 2 threads ran 6x slower)")
    args = p.parse_args(argv)
    quick = {"steps": 20, "batch": 32, "seeds": 1, "anchors": 256, "threads": 1}
    full = {"steps": 400, "batch": 128, "seeds": 3, "anchors": 5000, "threads": os.cpu_count() or 1}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="ssl_digits_quick_") if args.quick else "benchmarks/results/ssl_digits"
    if not set(args.rows) <= set(ROWS) or not args.rows:
        p.error(f"--rows takes letters from {''.join(ROWS)}, got {args.rows!r}")
    args.rows = "".join(r for r in ROWS if r in args.rows)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    result = run(args)
    print()
    print(table(result))
    print(f"\nwritten to {args.out}/results.md and results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
