"""scikit-learn's bundled handwritten digits, with the one fixed train/test split of this project.

The data are the 1,797 8x8 images of ``sklearn.datasets.load_digits`` (pixel
values 0..16, 10 classes, shipped inside scikit-learn: nothing is
downloaded). :func:`split_indices` is the single source of the split used
everywhere (GAN training, the sanity classifier, any evaluation):
``train_test_split(arange(1797), test_size=0.25, random_state=0,
stratify=labels)``, i.e. 1,347 training and 450 test images, each class in
the same proportion in both parts.

A validation split is carved from the train split the same way,
``train_test_split(train, test_size=0.25, random_state=0,
stratify=labels[train])``: ``"val"`` (337 images) and ``"fit"`` (the other
1,010); ``"train"`` stays all 1,347 (the built-in generators were trained on
them). Every experimental choice is made by fitting on ``fit`` and scoring on
``val``; the ``test`` split is scored once, for a final table, with ``train``
as the labelled pool. The validation images are part of what the generators
and self-supervised encoders see unlabelled: only their labels are held out.

:func:`load_digits_split` returns float32 images in [0, 1] of shape
(N, 1, R, R) (R = 32 by default) and int64 labels. The 8x8 grid is scaled by
1/16 and upsampled with bilinear interpolation (``align_corners=False``, the
pixel-area convention: each source pixel covers a 4x4 block whose centre
keeps its value, so the digit is not shifted). Bilinear never overshoots, so
the values stay in [0, 1] without clamping (bicubic would ring). Upsampling
to 32x32 is needed because the project's StyleGAN2 produces power-of-two
resolutions from 4 upward, and 32 leaves room for three synthesis blocks.

Needs scikit-learn (``pip install scikit-learn``, or the ``digits`` extra).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

NUM_CLASSES = 10
NUM_IMAGES = 1797
TEST_SIZE = 0.25
VAL_SIZE = 0.25  # of the train split
SPLIT_SEED = 0
SPLITS = ("train", "test", "fit", "val", "all")


def _sklearn():
    try:
        import sklearn.datasets
        import sklearn.model_selection
    except ImportError:
        raise ConfigError("the digits data set needs scikit-learn: pip install scikit-learn "
                          "(or pip install 'synthviews[digits]')") from None
    return sklearn


def _raw() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) float pixel values 0..16 and (1797,) int labels."""
    data = _sklearn().datasets.load_digits()
    return np.asarray(data.images, dtype=np.float32), np.asarray(data.target, dtype=np.int64)


def split_indices() -> dict[str, np.ndarray]:
    """The fixed splits as indices into load_digits() order: "train" (1347) and "test" (450), and
    "fit" (1010) and "val" (337), which partition "train"."""
    split = _sklearn().model_selection.train_test_split
    _, labels = _raw()
    train, test = split(np.arange(len(labels)), test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=labels)
    fit, val = split(train, test_size=VAL_SIZE, random_state=SPLIT_SEED, stratify=labels[train])
    return {name: np.asarray(idx, dtype=np.int64) for name, idx in
            (("train", train), ("test", test), ("fit", fit), ("val", val))}


def upsample(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """(N, 1, 8, 8) in [0, 1] -> (N, 1, resolution, resolution), bilinear, align_corners=False."""
    if resolution == images.shape[-1]:
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)


def load_digits_split(split: str = "train", resolution: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, resolution, resolution) float32 in [0, 1] and labels (N,) int64 of one split.

    ``split``: "train", "test", "fit", "val" (see :func:`split_indices`) or "all" (all 1797 in
    load_digits() order).
    """
    if split not in SPLITS:
        raise ConfigError(f"digits split must be one of {', '.join(SPLITS)}; got {split!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8:
        raise ConfigError(f"digits resolution must be an integer >= 8, got {resolution!r}")
    images, labels = _raw()
    if split != "all":
        idx = split_indices()[split]
        images, labels = images[idx], labels[idx]
    x = torch.from_numpy(images / 16.0).to(torch.float32)[:, None]
    return upsample(x, resolution).clamp_(0, 1), torch.from_numpy(labels)


def train_images(resolution: int, channels: int) -> torch.Tensor:
    """The trainers' default images: the train split (N, ``channels``, R, R), its one channel repeated."""
    reals, _ = load_digits_split("train", resolution)
    return reals if channels == 1 else reals.expand(-1, channels, -1, -1)


# --- sanity evaluation of a digits generator -------------------------------------

def downsample8(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, R, R) in [0, 1] -> (N, 64) in the 0..16 scale of load_digits, by R/8 x R/8 block means."""
    x = F.adaptive_avg_pool2d(images.to(torch.float32).mean(dim=1, keepdim=True), 8)
    return (x * 16).flatten(1)


def digit_classifier():
    """An RBF SVM (C=10, gamma=0.001) with sigmoid-calibrated probabilities (5-fold), fit on the train
    split; and its accuracy and mean confidence on the test split. Images are read at 32x32 and
    block-averaged back to 8x8 (:func:`downsample8`), the resolution the digits really have."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    x, y = load_digits_split("train")
    clf = CalibratedClassifierCV(SVC(C=10.0, gamma=0.001), ensemble=False)
    clf.fit(downsample8(x).numpy(), y.numpy())
    xt, yt = load_digits_split("test")
    prob = clf.predict_proba(downsample8(xt).numpy())
    acc = float((prob.argmax(1) == yt.numpy()).mean())
    return clf, {"test_accuracy": round(acc, 4), "test_mean_confidence": round(float(prob.max(1).mean()), 4)}


@torch.no_grad()
def score_images(images: torch.Tensor, clf, batch: int = 250) -> tuple[dict, np.ndarray]:
    """The anchor-level figures for generated digits (N, 1, 32, 32) in [0, 1] and their predicted labels:
    class shares, top-class confidence, mean distance to the nearest training image (and the same for
    real test images, the reference)."""
    prob = clf.predict_proba(downsample8(images).numpy())
    labels = prob.argmax(1)
    shares = np.bincount(labels, minlength=NUM_CLASSES) / len(images)
    train_x, _ = load_digits_split("train")
    test_x, _ = load_digits_split("test")
    flat_train = train_x.flatten(1)

    def nearest(x):
        return float(torch.cat([torch.cdist(c.flatten(1), flat_train).min(1).values for c in x.split(batch)]).mean())

    return {
        "class_shares": [round(float(s), 4) for s in shares],
        "classes_present": int((shares > 0).sum()),
        "max_share_over_uniform": round(float(shares.max() * NUM_CLASSES), 3),
        "min_share_over_uniform": round(float(shares.min() * NUM_CLASSES), 3),
        "mean_confidence": round(float(prob.max(1).mean()), 4),
        "share_confidence_above_0.9": round(float((prob.max(1) > 0.9).mean()), 4),
        "nn_distance_generated_to_train": round(nearest(images), 4),
        "nn_distance_test_to_train": round(nearest(test_x), 4),
    }, labels


@torch.no_grad()
def evaluate_generator(model, samples: int = 2000, seed: int = 0, group_std: float = 1.0, batch: int = 250,
                       policy=None) -> dict:
    """Score a digits MLVGM (e.g. ``load_model("digits")``) with a classifier trained on the real train split.

    Reports the class shares of ``samples`` generated anchors (z ~ N(0, 1)),
    their mean top-class confidence, the ratio of the largest share to 1/10
    (1 = balanced), the mean distance to the nearest training image compared
    with the same for real test images (far below: memorisation), and for
    each latent group how often a view with only that group perturbed
    (z + N(0, group_std^2)) keeps the anchor's class, with the mean pixel
    change: coarse groups should change the digit more than fine ones. Also
    how often positives made with ``policy`` keep the anchor's class
    (anything ``resolve_policy`` takes; None: the model's default; False: skip).
    """
    clf, real = digit_classifier()
    g = torch.Generator().manual_seed(seed)
    anchors = torch.randn(samples, model.latent_dim, generator=g)
    images = torch.cat([model.decode(model.compose(a, {})).cpu() for a in anchors.split(batch)])
    scores, labels = score_images(images, clf, batch)
    report = {"samples": samples, "seed": seed,
              "classifier": "SVC(C=10, gamma=0.001), sigmoid-calibrated, on 8x8 block means of the train split",
              **real, **scores, "groups": {}}
    n_views = min(samples, 500)
    for group in model.groups:
        noise = torch.randn(n_views, group.size, generator=g) * group_std
        views = model.decode(model.compose(anchors[:n_views], {group.name: noise})).cpu()
        same = (clf.predict(downsample8(views).numpy()) == labels[:n_views]).mean()
        change = (views - images[:n_views]).abs().mean()
        report["groups"][group.name] = {"description": group.description, "std": group_std,
                                        "class_kept": round(float(same), 4),
                                        "mean_abs_pixel_change": round(float(change), 4)}
    if policy is not False:
        from ..views import ViewSampler

        sampler = ViewSampler(model, policy, views=4, seed=seed)
        views = torch.cat([sampler.sample(range(i, min(i + batch, n_views))).images.cpu()
                           for i in range(0, n_views, batch)])  # (n, 5, C, H, W)
        anchor_labels = clf.predict(downsample8(views[:, 0]).numpy())
        kept = [clf.predict(downsample8(views[:, v]).numpy()) == anchor_labels for v in range(1, 5)]
        report["policy_views"] = {"policy": sampler.policy.to_dict(), "anchors": n_views, "positives_per_anchor": 4,
                                  "class_kept": round(float(np.mean(kept)), 4),
                                  "mean_abs_pixel_change": round(float((views[:, 1:] - views[:, :1]).abs().mean()), 4)}
    return report
