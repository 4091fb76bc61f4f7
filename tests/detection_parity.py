"""Comparing two sets of detections: every detection of one matched in the other (same class, IoU, score)."""

from __future__ import annotations

import numpy as np

from kdet.boxes import pairwise_iou_numpy


def block_image(seed: int = 0, size=(128, 128)) -> np.ndarray:
    """A uint8 ``[h, w, 3]`` image a detector finds something in: a flat background, a flat block, a noise block."""
    rng = np.random.default_rng(seed)
    h, w = size
    image = np.full(tuple(size) + (3,), 90, np.uint8)
    image[h // 6:h // 2, w // 4:3 * w // 4] = rng.integers(0, 255, 3)
    image[h // 2:, : w // 3] = rng.integers(0, 255, (h - h // 2, w // 3, 3))
    return image


def valid_rows(detections: dict, index: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes [n, 4], scores [n], classes [n])`` of image ``index`` of an output-contract dict."""
    n = int(np.asarray(detections["num_detections"])[index])
    return (np.asarray(detections["boxes"])[index, :n], np.asarray(detections["scores"])[index, :n],
            np.asarray(detections["classes"])[index, :n])


def match_fraction(a: dict, b: dict, *, min_iou: float, score_tolerance: float, index: int = 0) -> float:
    """Fraction of the detections of ``a`` and ``b`` (the larger count) paired one-to-one across the two.

    A pair has the same class, IoU >= ``min_iou`` and scores within
    ``score_tolerance``; pairs are made greedily by decreasing score of ``a``.
    Two empty sets match fully.
    """
    boxes_a, scores_a, classes_a = valid_rows(a, index)
    boxes_b, scores_b, classes_b = valid_rows(b, index)
    if len(scores_a) == 0 and len(scores_b) == 0:
        return 1.0
    if len(scores_a) == 0 or len(scores_b) == 0:
        return 0.0
    iou = pairwise_iou_numpy(boxes_a, boxes_b)
    ok = (iou >= min_iou) & (classes_a[:, None] == classes_b[None, :]) & (
        np.abs(scores_a[:, None] - scores_b[None, :]) <= score_tolerance)
    used = np.zeros(len(scores_b), bool)
    matched = 0
    for i in np.argsort(-scores_a, kind="stable"):
        candidates = np.flatnonzero(ok[i] & ~used)
        if len(candidates):
            used[candidates[np.argmax(iou[i, candidates])]] = True
            matched += 1
    return matched / max(len(scores_a), len(scores_b))


def assert_same_detections(a: dict, b: dict, *, min_iou: float = 0.99, score_tolerance: float = 1e-4,
                           index: int = 0) -> None:
    """Same number of detections, each matched (see :func:`match_fraction`)."""
    na, nb = int(np.asarray(a["num_detections"])[index]), int(np.asarray(b["num_detections"])[index])
    assert na == nb, f"{na} detections against {nb}"
    fraction = match_fraction(a, b, min_iou=min_iou, score_tolerance=score_tolerance, index=index)
    assert fraction == 1.0, f"only {fraction:.1%} of {na} detections match at IoU >= {min_iou}, |dscore| <= " \
                            f"{score_tolerance}"
