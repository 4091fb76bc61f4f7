"""Training samples of the face cascade: sliding windows over image pyramids (Qin et al., Sec. 4.2).

Each training image is built into a pyramid; ``window``-pixel windows slide
over every level with a stride of ``stride`` level pixels. A window is
positive when its IoU with some ground-truth face is above
``positive_iou`` (0.8), negative when its largest IoU is below
``negative_iou`` (0.5), and not used in between. Negatives are sampled so
that positives make about ``positive_fraction`` (5%) of all samples; every
sample also enters flipped. Patches are cut straight out of the level
image (no resampling beyond the pyramid's antialiased resize), the way the
test pipeline sees faces.

The regression target of a positive is Eq. 2-5 (``BoxCoder`` with unit
weights, in kdet's ``(ty, tx, th, tw)`` order) of its face relative to the
window; :func:`offset_statistics` gives the mean and standard deviation
that normalise them ("zero mean and unit variance").

Hard samples (bootstrapping, :func:`mine_hard_samples`): behind x12's
threshold control the later branches learn only from the samples x12 lets
through, and among random sliding windows x12 rejects almost every
non-face, so x12-x24 and x12-x24-x48 would see mostly faces. Classical
cascades (and MTCNN) mine the next stage's training set from the previous
stage's detections instead: the same windows are scored by a trained stage
(:func:`kdet.face.stages.window_scorer`), and only those that pass its threshold
are labelled and sampled. Merged with the sliding-window samples
(``FaceSamples.concatenate``), they raise the share of every batch that
reaches the later branches.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterable, Mapping

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from kdet import boxes as box_ops
from kdet.face.pyramid import build_pyramid, level_size, pyramid_scales


@dataclasses.dataclass
class FaceSamples:
    """Mined training samples, as NumPy arrays.

    Attributes:
      patches: ``[N, S, S, 3]`` uint8 RGB patches (``S`` = the window).
      labels: ``[N]`` int32, 1 face, 0 non-face.
      offsets: ``[N, 4]`` float32 raw Eq. 2-5 targets (zeros for non-faces).
      windows: ``[N, 4]`` float32 yxyx window in its image's pixels.
      image_index: ``[N]`` int32 position of the source image in the input.
    """

    patches: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    windows: np.ndarray
    image_index: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def concatenate(self, other: "FaceSamples") -> "FaceSamples":
        return FaceSamples(*(np.concatenate([a, b]) for a, b in zip(dataclasses.astuple(self),
                                                                      dataclasses.astuple(other))))

    def take(self, index: np.ndarray) -> "FaceSamples":
        return FaceSamples(*(a[index] for a in dataclasses.astuple(self)))


def label_windows(
    windows: np.ndarray,
    gt_boxes: np.ndarray,
    *,
    positive_iou: float = 0.8,
    negative_iou: float = 0.5,
    ignore: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels windows by their largest IoU with the faces.

    Args:
      windows: ``[W, 4]`` yxyx.
      gt_boxes: ``[G, 4]`` yxyx faces (``G`` may be 0).
      positive_iou: a window is a face when its max IoU is above this.
      negative_iou: a window is a non-face when its max IoU is below this.
      ignore: optional ``[G]`` bool, faces that are ignore regions (crowd /
        invalid): windows overlapping them by ``negative_iou`` or more are
        never negatives, and never positives.

    Returns:
      ``(labels [W] in {1, 0, -1}, matched [W] int gt index or -1, max_iou [W])``.
    """
    count = windows.shape[0]
    if gt_boxes.shape[0] == 0:
        return np.zeros(count, np.int32), -np.ones(count, np.int64), np.zeros(count, np.float32)
    iou = box_ops.pairwise_iou_numpy(windows, gt_boxes)
    ignore = np.zeros(gt_boxes.shape[0], bool) if ignore is None else np.asarray(ignore, bool)
    face_iou = np.where(ignore[None, :], -1.0, iou)
    matched = face_iou.argmax(axis=1)
    max_iou = face_iou.max(axis=1)
    ignore_iou = np.where(ignore[None, :], iou, 0.0).max(axis=1)
    labels = np.full(count, -1, np.int32)
    labels[max_iou > positive_iou] = 1
    labels[(np.maximum(max_iou, 0.0) < negative_iou) & (ignore_iou < negative_iou)] = 0
    return labels, np.where(labels == 1, matched, -1), np.maximum(max_iou, 0.0).astype(np.float32)


def _level_windows(image_size, scale: float, *, window: int, stride: int):
    lh, lw = level_size(image_size, scale)
    ny, nx = (lh - window) // stride + 1, (lw - window) // stride + 1
    if ny <= 0 or nx <= 0:
        return (lh, lw), np.zeros((0, 2), np.int64), np.zeros((0, 4), np.float32)
    ys, xs = np.meshgrid(np.arange(ny) * stride, np.arange(nx) * stride, indexing="ij")
    corners = np.stack([ys.ravel(), xs.ravel()], axis=-1)
    sy, sx = lh / image_size[0], lw / image_size[1]
    boxes = np.stack([corners[:, 0] / sy, corners[:, 1] / sx,
                      (corners[:, 0] + window) / sy, (corners[:, 1] + window) / sx], axis=-1)
    return (lh, lw), corners, boxes.astype(np.float32)


def mine_image(
    image: np.ndarray,
    gt_boxes: np.ndarray,
    *,
    rng: np.random.Generator,
    ignore: np.ndarray | None = None,
    window: int = 48,
    stride: int = 8,
    levels_per_octave: int = 5,
    min_face_size: float = 12.0,
    positive_iou: float = 0.8,
    negative_iou: float = 0.5,
    max_positives_per_face: int = 4,
    negatives_per_image: int = 80,
) -> FaceSamples:
    """Samples of one image (before flipping), see the module docstring.

    The pyramid starts at the scale that makes a ``min_face_size`` face one
    window wide (up-sampling small faces) and halves every
    ``levels_per_octave`` levels (the paper's "interval of 5") down to the
    window. Up to ``max_positives_per_face`` positives per face (the
    highest-IoU windows) and ``negatives_per_image`` random negatives are
    kept.
    """
    image_size = image.shape[:2]
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    per_level = []
    for level, scale in enumerate(pyramid_scales(image_size, min_face_size=min_face_size, window=window,
                                                 levels_per_octave=levels_per_octave)):
        _, corners, boxes = _level_windows(image_size, scale, window=window, stride=stride)
        labels, matched, max_iou = label_windows(boxes, gt_boxes, positive_iou=positive_iou,
                                                 negative_iou=negative_iou, ignore=ignore)
        per_level.append((scale, corners, boxes, labels, matched, max_iou, np.full(len(labels), level)))
    if not per_level:
        return _empty(window)
    scales = [p[0] for p in per_level]
    corners, boxes, labels, matched, max_iou, levels = (np.concatenate([p[i] for p in per_level])
                                                       for i in range(1, 7))
    chosen = []
    for g in range(gt_boxes.shape[0]):
        candidates = np.flatnonzero(matched == g)
        chosen.append(candidates[np.argsort(-max_iou[candidates], kind="stable")[:max_positives_per_face]])
    negatives = np.flatnonzero(labels == 0)
    chosen.append(rng.choice(negatives, size=min(negatives_per_image, negatives.size), replace=False))
    index = np.sort(np.concatenate(chosen).astype(np.int64))
    return _cut(image, gt_boxes, scales, index, corners, boxes, labels, matched, levels, window=window)


def _empty(window: int) -> FaceSamples:
    return FaceSamples(np.zeros((0, window, window, 3), np.uint8), np.zeros(0, np.int32),
                       np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32), np.zeros(0, np.int32))


def _level_images(image: np.ndarray, scales) -> list[np.ndarray]:
    """uint8 pyramid levels of one image, built as the test pipeline builds them."""
    pyramid = build_pyramid(tf.convert_to_tensor(image[None]), scales)
    return [np.clip(np.round(level[0].numpy()), 0, 255).astype(np.uint8) for level in pyramid]


def _cut(image, gt_boxes, scales, index, corners, boxes, labels, matched, levels, *, window,
         level_images=None) -> FaceSamples:
    patches = np.zeros((index.size, window, window, 3), np.uint8)
    if level_images is None:
        level_images = _level_images(image, scales)
    for level in np.unique(levels[index]):
        picked = index[levels[index] == level]
        level_image = level_images[level]
        rows = np.searchsorted(index, picked)
        for row, (y, x) in zip(rows, corners[picked]):
            patches[row] = level_image[y:y + window, x:x + window]
    offsets = np.zeros((index.size, 4), np.float32)
    positive = labels[index] == 1
    if positive.any():
        faces = gt_boxes[matched[index][positive]]
        offsets[positive] = box_ops.BoxCoder().encode(tf.constant(faces), tf.constant(boxes[index][positive])).numpy()
    return FaceSamples(patches, labels[index].astype(np.int32), offsets, boxes[index], np.zeros(index.size, np.int32))


def flip_samples(samples: FaceSamples) -> FaceSamples:
    """Mirrors patches left-right; the x offset changes sign, the others stay."""
    offsets = samples.offsets * np.array([1.0, -1.0, 1.0, 1.0], np.float32)
    return dataclasses.replace(samples, patches=samples.patches[:, :, ::-1].copy(), offsets=offsets)


def progress_of(items, what: str, progress: bool | str):
    """``items`` with a tqdm bar (``progress`` True), a printed line at each tenth (``"lines"``), or silent."""
    if progress != "lines":
        return tqdm(items, desc=what, disable=not progress, unit="img")
    items = list(items)

    def lines():
        started, marks = time.perf_counter(), {max(1, round(len(items) * k / 10)) for k in range(1, 11)}
        for i, item in enumerate(items, 1):
            yield item
            if i in marks:
                print(f"{what}: {i}/{len(items)} images ({time.perf_counter() - started:.0f}s)", flush=True)

    return lines()


def mine_face_samples(
    examples: Iterable[Mapping],
    *,
    seed: int = 0,
    flip: bool = True,
    positive_fraction: float | None = 0.05,
    progress: bool | str = True,
    **kwargs,
) -> FaceSamples:
    """Mines samples from example dicts (``image [H, W, 3]``, ``boxes [N, 4]``, optional ``is_crowd``).

    Args:
      examples: iterable of example dicts (NumPy or eager tensors).
      seed: the negative sampling's seed.
      flip: also add every sample mirrored.
      positive_fraction: drop random negatives until positives are at least
        this fraction of the samples (None keeps all).
      progress: a progress bar (True), a line at every tenth of the images
        (``"lines"``: logs of a run without a terminal) or nothing (False).
      **kwargs: forwarded to :func:`mine_image` (window, stride, IoUs, ...).

    Returns:
      :class:`FaceSamples` with ``image_index`` set.
    """
    rng = np.random.default_rng(seed)
    parts = []
    for i, example in enumerate(progress_of(examples, "mining face samples", progress)):
        image = np.asarray(example["image"])
        crowd = example.get("is_crowd")
        part = mine_image(image, np.asarray(example["boxes"]), rng=rng,
                          ignore=None if crowd is None else np.asarray(crowd), **kwargs)
        part.image_index[:] = i
        parts.append(part)
    if not parts:
        raise ValueError("mine_face_samples got no examples")
    samples = parts[0]
    for part in parts[1:]:
        samples = samples.concatenate(part)
    if positive_fraction is not None:
        samples = _limit_negatives(samples, positive_fraction, rng)
    if flip:
        samples = samples.concatenate(flip_samples(samples))
    return samples


#: ``score_windows(level_image uint8 [h, w, 3], corners int [W, 2]) -> [W] float``: a stage's score of the
#: ``window``-pixel windows whose top-left level pixels are ``corners``.
WindowScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def mine_hard_image(
    image: np.ndarray,
    gt_boxes: np.ndarray,
    score_windows: WindowScorer,
    *,
    threshold: float,
    rng: np.random.Generator,
    ignore: np.ndarray | None = None,
    window: int = 48,
    stride: int = 8,
    levels_per_octave: int = 5,
    min_face_size: float = 12.0,
    positive_iou: float = 0.8,
    negative_iou: float = 0.5,
    positives_per_face: int = 2,
    negatives_per_image: int = 64,
) -> FaceSamples:
    """The samples of one image that a trained stage lets through (before flipping).

    The windows are :func:`mine_image`'s (same pyramid, window and stride);
    each level's windows are scored by ``score_windows`` and only those
    scoring at least ``threshold`` are labelled (:func:`label_windows`:
    face above ``positive_iou``, non-face below ``negative_iou``, unused in
    between or on an ignore region). Of those, up to ``positives_per_face``
    random faces per ground-truth face and ``negatives_per_image`` random
    non-faces are cut out.

    Args:
      image: ``[H, W, 3]`` uint8.
      gt_boxes: ``[G, 4]`` yxyx faces.
      score_windows: see :data:`WindowScorer` (e.g. :func:`kdet.face.stages.window_scorer`).
      threshold: a window passes when its score is at least this.
      rng: samples the kept windows.

    Returns:
      :class:`FaceSamples` (``image_index`` 0), ``P + N`` samples.
    """
    image_size = image.shape[:2]
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    scales = pyramid_scales(image_size, min_face_size=min_face_size, window=window,
                            levels_per_octave=levels_per_octave)
    if not scales:
        return _empty(window)
    level_images = _level_images(image, scales)
    per_level = [found for level, scale in enumerate(scales) if (found := _passed_windows(
        level_images[level], level, image_size, scale, score_windows, threshold, gt_boxes, window=window,
        stride=stride, positive_iou=positive_iou, negative_iou=negative_iou, ignore=ignore)) is not None]
    if not per_level:
        return _empty(window)
    corners, boxes, labels, matched, levels = (np.concatenate([p[i] for p in per_level]) for i in range(5))
    index = _random_choice(rng, labels, matched, len(gt_boxes), positives_per_face, negatives_per_image)
    return _cut(image, gt_boxes, scales, index, corners, boxes, labels, matched, levels, window=window,
                level_images=level_images)


def _passed_windows(level_image, level, image_size, scale, score_windows, threshold, gt_boxes, *, window, stride,
                    positive_iou, negative_iou, ignore):
    """``(corners, boxes, labels, matched, levels)`` of one level's windows scoring >= ``threshold``, or None."""
    _, corners, boxes = _level_windows(image_size, scale, window=window, stride=stride)
    if corners.shape[0] == 0:
        return None
    scores = np.asarray(score_windows(level_image, corners), np.float32).reshape(-1)
    if scores.shape[0] != corners.shape[0]:
        raise ValueError(f"score_windows returned {scores.shape[0]} scores for {corners.shape[0]} windows")
    passed = scores >= threshold
    corners, boxes = corners[passed], boxes[passed]
    labels, matched, _ = label_windows(boxes, gt_boxes, positive_iou=positive_iou, negative_iou=negative_iou,
                                       ignore=ignore)
    return corners, boxes, labels, matched, np.full(len(labels), level)


def _random_choice(rng, labels, matched, num_faces: int, positives_per_face: int, negatives: int) -> np.ndarray:
    """Sorted indices of up to ``positives_per_face`` random windows per face and ``negatives`` random non-faces."""
    chosen = []
    for g in range(num_faces):
        candidates = np.flatnonzero(matched == g)
        chosen.append(rng.choice(candidates, size=min(positives_per_face, candidates.size), replace=False))
    pool = np.flatnonzero(labels == 0)
    chosen.append(rng.choice(pool, size=min(negatives, pool.size), replace=False))
    return np.sort(np.concatenate(chosen).astype(np.int64))


def mine_hard_samples(
    examples: Iterable[Mapping],
    score_windows: WindowScorer,
    *,
    threshold: float,
    seed: int = 0,
    flip: bool = True,
    progress: bool | str = True,
    **kwargs,
) -> FaceSamples:
    """Hard samples of every example: :func:`mine_hard_image`, then (``flip``) each mirrored too.

    Args:
      examples: example dicts (``image [H, W, 3]``, ``boxes [N, 4]``, optional ``is_crowd``).
      score_windows: the stage that filters the windows (:data:`WindowScorer`).
      threshold: its pass threshold.
      seed: the sampling's seed.
      flip: also add every sample mirrored.
      progress: as :func:`mine_face_samples`'.
      **kwargs: forwarded to :func:`mine_hard_image` (pyramid, IoUs, counts).

    Returns:
      :class:`FaceSamples` with ``image_index`` set; no positive fraction is
      imposed (merge them with :func:`mine_face_samples`' samples through
      ``FaceSamples.concatenate``).
    """
    rng = np.random.default_rng(seed)
    window = kwargs.get("window", 48)
    samples = _empty(window)
    for i, example in enumerate(progress_of(examples, "mining hard face samples", progress)):
        crowd = example.get("is_crowd")
        part = mine_hard_image(np.asarray(example["image"]), np.asarray(example["boxes"]), score_windows,
                               threshold=threshold, rng=rng, ignore=None if crowd is None else np.asarray(crowd),
                               **kwargs)
        part.image_index[:] = i
        samples = samples.concatenate(part)
    if flip:
        samples = samples.concatenate(flip_samples(samples))
    return samples


def _limit_negatives(samples: FaceSamples, positive_fraction: float, rng) -> FaceSamples:
    positives = np.flatnonzero(samples.labels == 1)
    negatives = np.flatnonzero(samples.labels == 0)
    if positives.size == 0:
        return samples
    keep = int(round(positives.size * (1.0 - positive_fraction) / positive_fraction))
    if keep < negatives.size:
        negatives = rng.choice(negatives, size=keep, replace=False)
    return samples.take(np.sort(np.concatenate([positives, negatives])))


def offset_statistics(samples: FaceSamples) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-coordinate mean and standard deviation of the positives' offsets (for normalising)."""
    positive = samples.offsets[samples.labels == 1]
    if positive.shape[0] < 2:
        raise ValueError(f"offset statistics need at least 2 positive samples, got {positive.shape[0]}")
    std = np.maximum(positive.std(axis=0), 1e-3)
    return tuple(float(v) for v in positive.mean(axis=0)), tuple(float(v) for v in std)


def samples_dataset(samples: FaceSamples, *, batch_size: int, shuffle: bool = True, seed: int = 0,
                    repeat: bool = False) -> tf.data.Dataset:
    """``(patches uint8 [B, S, S, 3], {"labels": [B], "offsets": [B, 4]})`` batches for ``fit``."""
    ds = tf.data.Dataset.from_tensor_slices((samples.patches, {"labels": samples.labels, "offsets": samples.offsets}))
    if shuffle:
        ds = ds.shuffle(len(samples), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
