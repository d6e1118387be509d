"""The paper's experiment in miniature: do MI-chosen views train better encoders than real digits?

The same small CNN is trained with a contrastive loss for the same number of
steps, batch size and images per step on each row's data, then frozen and
scored on real digits (scikit-learn's, :mod:`synthviews.train.digits`) by
probes that are not saturated:

- few-label linear probes: 1, 5 and 10 labels per class, each the mean of 20
  fixed label draws (the same draws for every row and seed); features are
  standardised with the whole labelled pool's statistics (no labels needed);
- the full-label linear probe (logistic regression) and cosine 20-NN.

``--split val`` (the default) fits probes on the ``fit`` split and scores the
``val`` split: every choice (policy rule, T_x, steps, temperature) is made
there. ``--split test`` fits on all of ``train`` and scores ``test``: run once,
for the final table. Self-supervised training never sees a label: row (a)
reads the whole train split's images, and the generator was trained on them.

Rows (the paper's; every generated row has the same 5,000 anchors, stored with K
positives by ``synthviews generate``, from the digits StyleGAN2 or, with
``--model digits-ddpm``, from the DDPM, each with its own MI-chosen policy):

  (a) real: the train split's images, two T_x views
  (b) anchors: synthetic anchors only, two T_x views of each
  (c) genrep: GenRep-like, every latent group perturbed with one small std
  (d) copgen: COP-Gen-like, one learned walker on all groups
  (e) chunks_random: the MI-chosen per-group Gaussian policy
  (f) chunks_learned: one learned walker per group the analysis says to perturb
  (g) continuous: (e)'s policy by continuous sampling (ContinuousViews)
  (h) multipos: (e)'s shards, all 1 + K stored views of an anchor at once, StableRep's
      multi-positive loss (half the anchors per step, so the same images per step)
  (r) random_init: an untrained encoder (a floor)

Walkers are trained by ``synthviews.analysis.walkers.train_walker`` (a minimax
game without COP-Gen's semantic-consistency constraint, so they learn to move
as far as they can) and then rescaled to the step length of the MI-chosen
policy (the mean latent distance of its positives, per group; for the
all-groups walker, of all groups together): the rows then compare learned
directions with per-group Gaussian noise at the same step length.

Statistics: paired differences against rows (a) and (b), matched by training
seed (same initial weights and T_x draws) and label draw, with 95% bootstrap
intervals resampling seeds and label draws; a difference is significant when
its interval excludes 0. The primary metric, fixed before any run, is the
5-labels-per-class probe.

Runs repeat to the bit on one machine (two 300-step trainings of row (a), same
losses); on another machine (CPU, library builds) floats round differently and
300 steps of training amplify it: row (a) of the two stored test runs (the
GAN's and the DDPM's, commands below), same settings on two machines, differs
by -0.61 [-1.54, +0.37] points with 5 labels. So rows are compared within one
run, and ``--compare`` of another row across runs also prints row (a)'s
differences, the size of that run-to-run noise.

    python benchmarks/ssl_digits.py --split test        # the final table, ~55 min on 2 CPU cores
    python benchmarks/ssl_digits.py --rows ae --seeds 3 # a validation comparison
    python benchmarks/ssl_digits.py --quick             # every row, tiny settings, < 5 min
    python benchmarks/ssl_digits.py --compare e BASE/results.json OTHER/results.json  # paired, row (e)
    python benchmarks/ssl_digits.py --split test --model digits-ddpm --rows abe  # DDPM views, ~60 min
    python benchmarks/ssl_digits.py --compare e benchmarks/results/ssl_digits/test/results.json \
        benchmarks/results/ssl_digits/digits-ddpm/test/results.json                 # DDPM vs GAN, row (e)

Writes OUT/results.json and OUT/results.md (default OUT:
benchmarks/results/ssl_digits/SPLIT, benchmarks/results/ssl_digits/MODEL/SPLIT for
another model than digits, or a temporary folder with --quick).
Needs scikit-learn.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from synthviews.data import ContinuousViews, ShardViews, loader
from synthviews.data.augment import Augment
from synthviews.models import load_model
from synthviews.policies import resolve_policy
from synthviews.store.writer import generate
from synthviews.train.contrastive import multi_positive, nt_xent
from synthviews.train.digits import NUM_CLASSES, digit_classifier, downsample8, load_digits_split

ROWS = {
    "a": ("real", "real digits"),
    "b": ("anchors", "synthetic anchors only"),
    "c": ("genrep", "GenRep-like: every group, std {genrep_std}"),
    "d": ("copgen", "COP-Gen-like: one learned walker on all groups"),
    "e": ("chunks_random", "MI-chosen per-group policy (chunks_random)"),
    "f": ("chunks_learned", "learned walkers on {learned_groups} (chunks_learned)"),
    "g": ("continuous", "MI policy, continuous sampling"),
    "h": ("multipos", "MI policy, all 1+K views, multi-positive loss"),
    "r": ("random_init", "random-init encoder (no training)"),
}
SHARDS = {"b": "mi", "c": "genrep", "d": "copgen", "e": "mi", "f": "learned", "h": "mi"}
# Row (f)'s default groups: the ones each model's MI analysis does not call semantic
LEARNED_GROUPS = {"digits": "2_4,4_6,6_8", "digits-ddpm": "init,steps12_24,steps24_36,steps36_49"}
SIZE = 32  # T_x output side: the images' own size
KNN = 20
FEW = (1, 5, 10)    # labels per class
DRAWS = 20          # label draws per few-label probe
PRIMARY = "few5"
METRICS = ("few1", "few5", "few10", "linear", "knn")
POOL = {"val": ("fit", "val"), "test": ("train", "test")}  # split -> (labelled pool, scored split)


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


# --- the data of each row -------------------------------------------------------

def real_views(steps: int, batch: int, seed: int):
    """Row (a): epochs over the train split's images in a seeded order; each image twice (T_x makes the views)."""
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


def multipos_anchors(args) -> int:
    """Anchors per step of row (h): the pair rows' images per step (2 x batch) over 1 + K views."""
    return max(2, 2 * args.batch // (1 + args.positives))


def row_batches(row: str, args, seed: int, work: Path):
    t_x = Augment(args.t_x, size=SIZE)
    if row == "a":
        return augmented(real_views(args.steps, args.batch, seed), Augment(args.real_t_x, size=SIZE), seed)
    if row == "g":
        model = load_model(args.model)
        ds = ContinuousViews(model, resolve_policy(args.policy, model), crops=2,
                             epoch_samples=args.steps * args.batch, batch_size=args.batch,
                             seed=10_000 + seed, device="cpu", t_x=args.t_x, t_x_size=SIZE)
        return looped(lambda: loader(ds), args.steps)
    folder = work / SHARDS[row]
    if row == "h":
        n, views = multipos_anchors(args), list(range(1 + args.positives))
        make = lambda: loader(ShardViews(folder, pairs=views, seed=seed, batch_size=n), batch_size=n)  # noqa: E731
    else:
        pairs = [0, 0] if row == "b" else "anchor+random"
        make = lambda: loader(ShardViews(folder, pairs=pairs, seed=seed, batch_size=args.batch),  # noqa: E731
                              batch_size=args.batch)
    return augmented(looped(make, args.steps), t_x, seed)


# --- training and probes ------------------------------------------------------

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
        z = head(encoder(torch.cat(views)))
        if len(views) == 2:
            loss = nt_xent(*z.chunk(2), args.temperature)
        else:
            loss = multi_positive(z, len(views), args.temperature)
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
    return torch.cat([encoder(plain(x)) for x in images.split(512)]).numpy().astype(np.float64)


def label_draws(labels: np.ndarray, per_class: int, draws: int = DRAWS) -> list[np.ndarray]:
    """``draws`` fixed index sets with ``per_class`` labelled images of every class: the same for every row."""
    out = []
    for d in range(draws):
        rng = np.random.default_rng([per_class, d])
        out.append(np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                                   for c in range(NUM_CLASSES)]))
    return out


def evaluate(encoder: Encoder, split: str, draws: int = DRAWS) -> dict:
    """Frozen features scored on ``split``'s held-out images (see the module docstring)."""
    from sklearn.linear_model import LogisticRegression

    (xp, yp), (xe, ye) = (load_digits_split(s, SIZE) for s in POOL[split])
    fp, fe, yp, ye = features(encoder, xp), features(encoder, xe), yp.numpy(), ye.numpy()
    mean, std = fp.mean(0), fp.std(0) + 1e-8   # label-free standardisation by the whole pool
    sp, se = (fp - mean) / std, (fe - mean) / std
    scores = {}
    for n in FEW:
        accs = []
        for idx in label_draws(yp, n, draws):
            probe = LogisticRegression(C=1.0, max_iter=2000).fit(sp[idx], yp[idx])
            accs.append(float((probe.predict(se) == ye).mean()))
        scores[f"few{n}"] = accs
    probe = LogisticRegression(C=0.1, max_iter=5000).fit(sp, yp)
    scores["linear"] = [float((probe.predict(se) == ye).mean())]
    npool, neval = (f / np.linalg.norm(f, axis=1, keepdims=True).clip(1e-12) for f in (fp, fe))
    neighbours = np.argsort(-(neval @ npool.T), axis=1, kind="stable")[:, :KNN]
    votes = np.apply_along_axis(np.bincount, 1, yp[neighbours], minlength=NUM_CLASSES)
    scores["knn"] = [float((votes.argmax(1) == ye).mean())]
    return scores


def run_one(row: str, seed: int, args, work: str) -> dict:
    """One (row, seed): train (unless random_init) and probe; runs in a worker process with one thread."""
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if row == "r":
        torch.manual_seed(seed)
        encoder, loss = Encoder(args.width).eval(), None
    else:
        encoder, loss = train(row_batches(row, args, seed, Path(work)), args, seed)
    scores = evaluate(encoder, args.split, args.draws)
    return {"row": row, "seed": seed, "scores": scores, "final_loss": loss,
            "seconds": round(time.perf_counter() - t0, 1)}


# --- generated data: walkers and shards ------------------------------------------

def policy_deltas(policy, model) -> dict[str, float]:
    """Mean latent distance per group of a policy's positives (``model.group_code``, truncation included)."""
    from synthviews.views import ViewSampler

    deltas = ViewSampler(model, policy, views=4, seed=12_345).latents(range(512)).deltas  # (B, K, G)
    return {g.name: float(deltas[:, :, i].mean()) for i, g in enumerate(model.groups)}


def rescaled_walker(src: Path, dst: Path, target: float) -> float:
    """Copy of a walker checkpoint whose output is scaled so its mean step length is ``target``; the factor."""
    from synthviews.policies.walker import load_walker, save_walker

    walker, meta = load_walker(src)
    factor = target / meta["metrics"]["delta_mean"]
    with torch.no_grad():
        walker.net[2].weight.mul_(factor)
        walker.net[2].bias.mul_(factor)
    save_walker(dst, walker, {**meta, "rescaled_by": factor})
    return factor


def train_one_walker(model_name: str, groups: list[str], out: str, quick: bool, threads: int) -> dict:
    """The walker of ``groups`` with the default settings (``quick``: a few steps, for the smoke run)."""
    from synthviews.analysis.walkers import WalkerSettings, train_walker

    settings = (WalkerSettings(steps=10, batch=32, warmup=2, eval_every=5, eval_pairs=64) if quick
                else WalkerSettings())
    return train_walker(load_model(model_name), groups, out, settings, device="cpu", resume=False, threads=threads)


def make_walker_policies(work: Path, model, policy, args, pool) -> dict:
    """Train the walkers rows (d) and (f) need, rescale them to the MI policy's step, and return the policies."""
    deltas = policy_deltas(policy, model)
    jobs = {}
    if "d" in args.rows:
        jobs["all"] = [g.name for g in model.groups]
    if "f" in args.rows:
        for g in args.learned_groups:
            jobs[g] = [g]
    futures = {name: pool.submit(train_one_walker, args.model, groups, str(work / f"walker_{name}.pt"), args.quick,
                                       args.threads)
               for name, groups in jobs.items()}
    info, policies = {}, {}
    for name, fut in futures.items():
        fut.result()
        groups = jobs[name]
        target = float(np.sqrt(sum(deltas[g] ** 2 for g in groups)))
        factor = rescaled_walker(work / f"walker_{name}.pt", work / f"walker_{name}_rescaled.pt", target)
        info[name] = {"groups": groups, "target_step": round(target, 3), "rescaled_by": round(factor, 4)}
    scale = list(args.walker_scale)
    if "d" in args.rows:
        policies["copgen"] = {"kind": "walker", "walkers": [str(work / "walker_all_rescaled.pt")], "scale": scale}
    if "f" in args.rows:
        policies["learned"] = {"kind": "walker", "scale": scale,
                               "walkers": [str(work / f"walker_{g}_rescaled.pt") for g in args.learned_groups]}
    return {"policies": policies, "walkers": info, "policy_deltas": {k: round(v, 3) for k, v in deltas.items()}}


def make_shards(work: Path, model, policies: dict, args) -> None:
    """One shard set per needed policy, same anchors (data seed), 1 + K images each, made with every core
    (the thread counts do not change the bytes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        for name, pol in policies.items():
            generate(work / name, model, pol, samples=args.anchors, views=args.positives, seed=args.data_seed,
                     shard_size=max(1, args.anchors // 8), batch_size=256, device="cpu")
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def class_kept(folder: Path, k: int, clf, anchors: int = 500) -> float:
    """How often one of the K stored positives gets its anchor's class from the real-data classifier (a
    diagnostic)."""
    kept, n = [], 0
    batch = min(100, anchors)
    for views, _ in loader(ShardViews(folder, pairs=list(range(1 + k)), seed=0, batch_size=batch, shuffle=0),
                           batch_size=batch):
        labels = [clf.predict(downsample8(v).numpy()) for v in views]
        kept += [labels[v] == labels[0] for v in range(1, len(labels))]
        n += len(views[0])
        if n >= anchors:
            break
    return round(float(np.mean(np.concatenate(kept))), 4)


# --- statistics -----------------------------------------------------------------

def paired_ci(row: np.ndarray, ref: np.ndarray, resamples: int = 10_000, seed: int = 0) -> dict:
    """Mean of row - ref (both (seeds, draws), paired) and its 95% bootstrap interval over seeds x draws."""
    diff = row - ref
    s, d = diff.shape
    rng = np.random.default_rng(seed)
    cs = np.stack([np.bincount(r, minlength=s) for r in rng.integers(0, s, (resamples, s))])
    cd = np.stack([np.bincount(r, minlength=d) for r in rng.integers(0, d, (resamples, d))])
    means = np.einsum("bs,sd,bd->b", cs, diff, cd) / (s * d)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"diff": float(diff.mean()), "lo": float(lo), "hi": float(hi), "significant": bool(lo > 0 or hi < 0)}


def score_matrix(runs: dict) -> dict[str, np.ndarray]:
    """One row's runs ({seed: run}) as metric -> (seeds, draws) array, seeds in numeric order."""
    return {m: np.array([runs[k]["scores"][m] for k in sorted(runs, key=int)]) for m in METRICS}


def summarise(result: dict) -> None:
    """Per row: mean and std over seeds of each metric; paired differences against (a) and (b)."""
    runs = result["runs"]
    matrix = {row: score_matrix(runs[row]) for row in runs}
    for row, per_metric in matrix.items():
        entry = result["rows"][row]
        for m, values in per_metric.items():
            per_seed = values.mean(1)
            entry[m] = {"mean": float(per_seed.mean()),
                        "std": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0,
                        "per_seed": [round(float(v), 4) for v in per_seed]}
        entry["vs"] = {}
        for ref in ("a", "b"):
            if ref in matrix and ref != row and len(per_metric[PRIMARY]) == len(matrix[ref][PRIMARY]):
                entry["vs"][ref] = {m: paired_ci(per_metric[m], matrix[ref][m]) for m in METRICS}


# --- the run --------------------------------------------------------------------

def row_name(row: str, args) -> str:
    return ROWS[row][1].format(genrep_std=args.genrep_std, learned_groups=",".join(args.learned_groups))


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = Path(tempfile.mkdtemp(prefix="ssl_digits_"))
    model = load_model(args.model)
    policy = resolve_policy(args.policy, model)
    result = {"settings": {k: v for k, v in vars(args).items() if k != "out"},
              "policy_mi": policy.to_dict(), "model_id": model.model_id, "primary": PRIMARY,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs ({torch.backends.cpu.get_cpu_capability()}), "
                         f"torch {torch.__version__}",
              "rows": {r: {"key": ROWS[r][0], "name": row_name(r, args)} for r in args.rows},
              "runs": {r: {} for r in args.rows}, "seconds": {}}
    start = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
            policies = {}
            if set(args.rows) & set("beh"):
                policies["mi"] = policy
            if "c" in args.rows:
                policies["genrep"] = {"kind": "gaussian", "default": {"std": args.genrep_std}}
            if set(args.rows) & set("df"):
                t0 = time.perf_counter()
                walkers = make_walker_policies(work, model, policy, args, pool)
                policies.update(walkers.pop("policies"))
                result["walkers"] = walkers
                result["seconds"]["walkers"] = round(time.perf_counter() - t0, 1)
                print(f"walkers: {result['seconds']['walkers']} s {walkers}", flush=True)
            if policies:
                t0 = time.perf_counter()
                make_shards(work, model, policies, args)
                result["seconds"]["shards"] = round(time.perf_counter() - t0, 1)
                clf, _ = digit_classifier()
                result["class_kept"] = {name: class_kept(work / name, args.positives, clf, min(500, args.anchors)) for name in policies}
                print(f"shards: {result['seconds']['shards']} s; class kept {result['class_kept']}", flush=True)
            tasks = [(row, args.seed + k) for k in range(args.seeds) for row in args.rows]
            futures = [pool.submit(run_one, row, seed, args, str(work)) for row, seed in tasks]
            for fut in futures:
                r = fut.result()
                result["runs"][r["row"]][str(r["seed"])] = r
                print(f"  ({r['row']}) seed {r['seed']}: " + "  ".join(
                    f"{m} {100 * np.mean(r['scores'][m]):.2f}" for m in METRICS) +
                    f"  loss {r['final_loss'] if r['final_loss'] is None else round(r['final_loss'], 3)}"
                    f"  {r['seconds']} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["seconds"]["total"] = round(time.perf_counter() - start, 1)
    summarise(result)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(table(result) + "\n")
    return result


def _cell(entry: dict, m: str) -> str:
    return f"{100 * entry[m]['mean']:.2f} +- {100 * entry[m]['std']:.2f}"


def _diff(ci: dict) -> str:
    text = f"{100 * ci['diff']:+.2f} [{100 * ci['lo']:+.2f}, {100 * ci['hi']:+.2f}]"
    return f"**{text}**" if ci["significant"] else text


def table(result: dict) -> str:
    s = result["settings"]
    pool, scored = POOL[s["split"]]
    kept = result.get("class_kept", {})
    lines = [f"Contrastive training on digits: {s['steps']} steps x {2 * s['batch']} images, {s['seeds']} seeds, "
             f"generated rows from `{s.get('model', 'digits')}` (temperature {s['temperature']}, T_x {s['t_x']} on generated rows, {s['real_t_x']} on real); frozen "
             f"features, probes fit on `{pool}` and scored on `{scored}`: top-1 % with 1 / 5 / 10 labels per class "
             f"(mean of {s.get('draws', DRAWS)} draws), all labels (logistic regression) and cosine {KNN}-NN. Primary metric: "
             f"{PRIMARY}.", "",
             "| row | training data | 1 label | 5 labels | 10 labels | all labels | kNN | class kept |",
             "|---|---|---|---|---|---|---|---|"]
    for row, r in result["rows"].items():
        k = kept.get(SHARDS.get(row, "mi" if row == "g" else ""), None)
        k = "-" if row in "abr" or k is None else f"{100 * k:.1f}%"
        lines.append(f"| ({row}) | {r['name']} | " + " | ".join(_cell(r, m) for m in METRICS) + f" | {k} |")
    for ref in ("a", "b"):
        rows = [(row, r) for row, r in result["rows"].items() if ref in r.get("vs", {})]
        if not rows:
            continue
        lines += ["", f"Paired difference vs ({ref}), points, 95% bootstrap interval over seeds x label draws "
                      "(bold: excludes 0):", "",
                  "| row | 1 label | 5 labels | 10 labels | all labels | kNN |", "|---|---|---|---|---|---|"]
        for row, r in rows:
            lines.append(f"| ({row}) | " + " | ".join(_diff(r["vs"][ref][m]) for m in METRICS) + " |")
    lines += ["", f"Mean +- sample std over seeds. Class kept: share of stored positives the real-data SVM gives "
                  f"the anchor's class ((g) uses (e)'s policy). Total {result['seconds']['total']} s on "
                  f"{result['machine']} ({s['jobs']} jobs x {s['threads']} thread)."]
    return "\n".join(lines)


def compare(paths: list[str], row: str) -> str:
    """Row ``row`` of several runs (results.json files with the same seeds) against the first, paired by seed
    and label draw: how the validation choices were made. With another row than (a), row (a) follows: the
    same real data in every run, so its differences are the runs' own."""
    results = [json.loads(Path(p).read_text()) for p in paths]
    lines = [f"Row ({row}) of each run vs the first: mean top-1 % (paired difference, 95% bootstrap interval; "
             "bold: excludes 0).", "", *_compare_rows(paths, results, row)]
    if row != "a" and all(r["runs"].get("a") for r in results):
        lines += ["", "Row (a), real digits, is the same data in every run: its differences are the runs' own "
                  "(another machine or library build rounds differently; see the module docstring).", "",
                  *_compare_rows(paths, results, "a")]
    return "\n".join(lines)


def _compare_rows(paths: list[str], results: list[dict], row: str) -> list[str]:
    """The table of :func:`compare` for one row."""
    mats = []
    for path, r in zip(paths, results):
        runs = r["runs"].get(row)
        if not runs:
            raise SystemExit(f"{path}: no row ({row})")
        mats.append(score_matrix(runs))
    lines = ["| run | class kept | 1 label | 5 labels | 10 labels | all labels | kNN |", "|---|---|---|---|---|---|---|"]
    for path, r, mat in zip(paths, results, mats):
        kept = None if row in "abr" else r.get("class_kept", {}).get(SHARDS.get(row, "mi"))
        cells = [f"{100 * mat[m].mean():.2f}" + ("" if mat is mats[0] else f" ({_diff(paired_ci(mat[m], mats[0][m]))})")
                 for m in METRICS]
        name = Path(path).parent.name
        model = r.get("settings", {}).get("model", "digits")  # results of before --model: the StyleGAN2's
        if model != "digits":
            name = f"{model} {name}"
        lines.append(f"| {name} | {'-' if kept is None else f'{100 * kept:.1f}%'} | " + " | ".join(cells) + " |")
    return lines


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke run (< 5 min)")
    p.add_argument("--split", default="val", choices=sorted(POOL),
                   help="val: probes fit on `fit`, scored on `val` (for choices; default); test: the final table")
    p.add_argument("--out", help="results folder (default: benchmarks/results/ssl_digits/SPLIT; --quick: a temp folder)")
    p.add_argument("--rows", default="".join(ROWS), help=f"rows to run, e.g. 'abe' (default: {''.join(ROWS)})")
    p.add_argument("--steps", type=int, help="training steps per run (default: 300; --quick 12)")
    p.add_argument("--batch", type=int, help="anchors per step of the pair rows (default: 128; --quick 32)")
    p.add_argument("--seeds", type=int, help="training seeds per row (default: 5; --quick 2)")
    p.add_argument("--seed", type=int, default=0, help="first training seed (default: 0)")
    p.add_argument("--anchors", type=int, help="anchors in the generated shards (default: 5000; --quick 64)")
    p.add_argument("--positives", type=int, default=3, help="stored positives per anchor, K (default: 3)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated shards (default: 0)")
    p.add_argument("--policy", help="policy of rows (e), (g), (h), of the walkers' step length and of (b)'s "
                                    "anchors' shards (default: the digits model's MI-chosen default)")
    p.add_argument("--t-x", default="simclr", choices=["no_color", "simclr", "no_crop", "none"],
                   help="T_x of the generated rows (default: simclr, chosen on validation)")
    p.add_argument("--real-t-x", default="simclr", choices=["no_color", "simclr", "no_crop", "none"],
                   help="T_x of row (a) (default: simclr, SimCLR's)")
    p.add_argument("--genrep-std", type=float, default=0.2, help="row (c)'s std on every group (default: 0.2)")
    p.add_argument("--model", default="digits", choices=sorted(LEARNED_GROUPS),
                   help="the generator of rows (b)-(h) (default: digits, the StyleGAN2; digits-ddpm: the DDPM)")
    p.add_argument("--learned-groups",
                   help="groups of row (f)'s walkers, one each (default: the groups the model's analysis does "
                        "not call semantic: " + "; ".join(f"{m} {g}" for m, g in LEARNED_GROUPS.items()) + ")")
    p.add_argument("--walker-scale", type=float, nargs=2, default=(0.5, 1.5), metavar=("LO", "HI"),
                   help="per-view step scale of the walker rows, after rescaling (default: 0.5 1.5)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate, one-cycle (default: 2e-3)")
    p.add_argument("--temperature", type=float, default=0.1,
                   help="contrastive temperature (default: 0.1, chosen on validation from 0.1, 0.2, 0.5)")
    p.add_argument("--width", type=int, default=32, help="encoder base width (default: 32)")
    p.add_argument("--draws", type=int, help=f"label draws per few-label probe (default: {DRAWS}; --quick 3)")
    p.add_argument("--jobs", type=int, help="worker processes (default: the CPU count; --quick 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default: 1)")
    args = p.parse_args(argv)
    quick = {"steps": 12, "batch": 32, "seeds": 2, "anchors": 64, "jobs": 2, "draws": 3}
    full = {"steps": 300, "batch": 128, "seeds": 5, "anchors": 5000, "jobs": os.cpu_count() or 1, "draws": DRAWS}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = (tempfile.mkdtemp(prefix="ssl_digits_quick_") if args.quick
                    else f"benchmarks/results/ssl_digits/{args.split}" if args.model == "digits"
                    else f"benchmarks/results/ssl_digits/{args.model}/{args.split}")
    if not set(args.rows) <= set(ROWS) or not args.rows:
        p.error(f"--rows takes letters from {''.join(ROWS)}, got {args.rows!r}")
    args.rows = "".join(r for r in ROWS if r in args.rows)
    args.learned_groups = [g for g in (args.learned_groups or LEARNED_GROUPS[args.model]).split(",") if g]
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--compare"]:  # --compare ROW RESULTS.json RESULTS.json ...
        if len(argv) < 4:
            raise SystemExit("usage: ssl_digits.py --compare ROW BASE/results.json OTHER/results.json ...")
        print(compare(argv[2:], argv[1]))
        return 0
    args = parse(argv)
    result = run(args)
    print()
    print(table(result))
    print(f"\nwritten to {args.out}/results.md and results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
