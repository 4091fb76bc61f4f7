"""Resizing a pyramid level: ``tf.image`` and its twin of gathers and arithmetic (TFLite builtins).

:func:`resize_level` is the ``tf.image`` resize the pyramid uses;
:func:`resize_level_gather` computes the same values to float rounding from
the per-row taps of :func:`resize_taps`, with ops TFLite has as builtins.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import tensorflow as tf


#: Resampling filters of a pyramid level: "antialias" is TF's antialiased bilinear (a triangle kernel
#: stretched by the shrink), "area" TF's area resize (a box: each output pixel the mean of the source
#: pixels it covers, fractionally at its edges). Area is 3-4x cheaper on a CPU and a little sharper.
RESIZE_FILTERS = ("antialias", "area")


def resize_level(images: tf.Tensor, size: Sequence[int], *, method: str = "antialias") -> tf.Tensor:
    """One pyramid level: ``[B, H, W, C]`` images (uint8 or float) shrunk to ``size``, float32.

    ``method`` is one of :data:`RESIZE_FILTERS`.
    """
    if method == "area":
        return tf.image.resize(images, size, method="area")  # any input dtype -> float32
    if method != "antialias":
        raise ValueError(f"method must be one of {RESIZE_FILTERS}, got {method!r}")
    return tf.image.resize(tf.cast(images, tf.float32), size, method="bilinear", antialias=True)


def resize_taps(in_size: int, out_size: int, *, method: str = "antialias") -> tuple[np.ndarray, np.ndarray]:
    """Source pixels and weights of a :func:`resize_level` along one axis.

    ``"antialias"``: the weights of TF's ``ScaleAndTranslate`` (what
    ``tf.image.resize(..., antialias=True)`` runs) with its triangle kernel:
    output pixel ``x`` samples the source at ``s = (x + 0.5) * in / out``,
    the kernel is stretched by ``max(in / out, 1)``, source pixels outside
    the image are dropped and the rest renormalised.

    ``"area"``: TF's ``ResizeArea`` (no half-pixel centres): output pixel
    ``x`` averages the source span ``[x * in / out, (x + 1) * in / out)``,
    each source pixel weighted by its overlap with the span (shrinking
    only: ``out <= in``).

    Returns:
      ``(indices [out_size, K] int32, weights [out_size, K] float32)``;
      rows shorter than ``K`` repeat their last index with weight 0.
    """
    if method == "area":
        if out_size > in_size:
            raise ValueError(f"area taps shrink only: {in_size} -> {out_size}")
        rows = [_area_row(x, in_size / out_size) for x in range(out_size)]
    elif method == "antialias":
        rows = _antialias_rows(in_size, out_size)
    else:
        raise ValueError(f"method must be one of {RESIZE_FILTERS}, got {method!r}")
    taps = max(len(source) for source, _ in rows)
    indices = np.zeros((out_size, taps), np.int32)
    weights = np.zeros((out_size, taps), np.float32)
    for x, (source, weight) in enumerate(rows):
        indices[x], weights[x, :len(weight)] = source[-1], weight
        indices[x, :len(source)] = source
    return indices, weights


def _area_row(x: int, inv_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Source pixels and overlap weights of output pixel ``x`` of an area resize by ``1 / inv_scale``."""
    start, end = x * inv_scale, (x + 1) * inv_scale
    source = np.arange(int(math.floor(start)), int(math.ceil(end - 1e-9)))
    overlap = np.minimum(source + 1, end) - np.maximum(source, start)
    return source, overlap / inv_scale


def _antialias_rows(in_size: int, out_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    inv_scale = in_size / out_size
    kernel_scale = max(inv_scale, 1.0)
    rows = []
    for x in range(out_size):
        centre = (x + 0.5) * inv_scale
        start = max(int(math.ceil(centre - kernel_scale - 0.5)), 0)
        end = min(int(math.floor(centre + kernel_scale - 0.5)), in_size - 1) + 1
        source = np.arange(start, max(end, start + 1))
        weight = np.maximum(0.0, 1.0 - np.abs((source + 0.5 - centre) / kernel_scale))
        rows.append((source, weight / max(weight.sum(), 1e-12)))
    return rows


def resize_level_gather(images: tf.Tensor, size: Sequence[int], *, method: str = "antialias") -> tf.Tensor:
    """:func:`resize_level` with GATHER, MUL and ADD only (TFLite builtins), separably.

    Each axis is a sum over the ``K`` taps of :func:`resize_taps` (5 for an
    antialiased shrink by up to 2x, 3 for an area one): ``K`` gathers of
    whole rows (columns), each weighted. Same values as :func:`resize_level`
    to float rounding (max 1e-2 on 0..255 pixels).

    Args:
      images: ``[B, H, W, C]`` with static ``H, W``.
      size: ``(height, width)`` python ints.
    """
    out = tf.cast(images, tf.float32)
    for axis, target in ((1, int(size[0])), (2, int(size[1]))):
        source = int(out.shape[axis])
        if source == target:
            continue
        indices, weights = resize_taps(source, target, method=method)
        shape = [1, 1, 1, 1]
        shape[axis] = target
        total = None
        for k in range(indices.shape[1]):
            term = tf.gather(out, indices[:, k], axis=axis) * tf.constant(weights[:, k].reshape(shape))
            total = term if total is None else total + term
        out = total
    return out
