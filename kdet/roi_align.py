"""RoIAlign on an FPN: level assignment and a multilevel bilinear crop.

Boxes are ``[ymin, xmin, ymax, xmax]`` float32 in absolute pixels of the
input image, as everywhere in kdet. Level ``l`` has stride ``2**l``.

Coordinate convention (detectron2 ``ROIAlign(aligned=True)``, He et al. 2017
Sec. 3 as corrected by the half-pixel shift): a pixel coordinate ``y`` lies at
feature coordinate ``y / stride - 0.5`` (feature cell ``i`` covers pixels
``[i * stride, (i + 1) * stride)`` and its value sits at its centre). A box is
split into ``output_size x output_size`` bins, each sampled on a regular
``sampling_ratio x sampling_ratio`` grid at the centres of its sub-bins, and the
samples of a bin are averaged. So the ``n = output_size * sampling_ratio``
sample rows of a box are at::

    y_j = y1 / stride - 0.5 + (j + 0.5) * (y2 - y1) / (stride * n),  j = 0..n-1

which is an ``n x n`` ``crop_and_resize`` (it samples both end points) from
``y_0`` to ``y_{n-1}``, followed by an ``sampling_ratio`` average pool.

Border rule (also detectron2's): a sample within one feature cell outside the
map (``-1 <= y < 0`` or ``H - 1 < y <= H``) takes the nearest edge value, one
further out is 0. ``crop_and_resize`` instead extrapolates with 0 as soon as
``y < 0``, which would darken every box touching the image border (a 32-pixel
box at the left edge of P2 has its first samples at ``x = -0.21``). Padding
each level with one replicated row/column on every side and sampling in the
padded map gives the detectron2 rule exactly, with 0 beyond the pad.

Two interchangeable paths compute the crops (equal to 1e-5):

* ``use_gather=False``: ``tf.image.crop_and_resize``, the training path on
  CPU/GPU. It has no XLA kernel and is not a TFLite builtin. Boxes are grouped
  by level with ``tf.dynamic_partition`` / ``tf.dynamic_stitch`` so that each
  box is cropped once (dynamic shapes inside, static output shape).
* ``use_gather=True``: :func:`kdet.gather.crop_and_resize_bilinear`'s maths (``tf.gather``
  and arithmetic) for ``jit_compile=True`` and TFLite builtins. All padded
  levels of an image are laid end to end in one pixel table and each box
  gathers from its own level's slice: one crop per box, all shapes static.

Cropping each box once (not every box on every level, ~4x the crops and the
backward scatter) is what makes both paths fast; their timings are in
docs/benchmarks.md.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import keras
import tensorflow as tf

from kdet import boxes as box_ops
from kdet.gather import dim as _dim, table_crops

# Added to the box-size ratio before the log so that zero-area (padding) boxes
# give a large negative, finite level that is then clipped to min_level
# (detectron2's assign_boxes_to_levels uses the same 1e-8).
_LEVEL_EPSILON = 1e-8


def assign_levels(
    boxes: tf.Tensor,
    *,
    min_level: int = 2,
    max_level: int = 5,
    canonical_size: float = 224.0,
    canonical_level: int = 4,
) -> tf.Tensor:
    """FPN level of each box (Lin et al. 2017, Eq. 1).

    ``k = floor(k0 + log2(sqrt(w * h) / 224))`` with ``k0 = 4``: a box of the
    ImageNet pre-training size 224 is pooled from P4, one half that size from
    P3, and so on, clipped to ``[min_level, max_level]``.

    Args:
      boxes: ``[..., 4]`` yxyx pixels. Inverted or zero-area boxes get
        ``min_level``.
      min_level: smallest level.
      max_level: largest level.
      canonical_size: box size (pixels) mapped to ``canonical_level``.
      canonical_level: ``k0``.

    Returns:
      ``[...]`` int32 levels in ``[min_level, max_level]``.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    size = tf.sqrt(box_ops.area(boxes))
    level = tf.floor(canonical_level + tf.math.log(size / canonical_size + _LEVEL_EPSILON) / tf.math.log(2.0))
    return tf.cast(tf.clip_by_value(level, float(min_level), float(max_level)), tf.int32)


def _pad_edges(features: tf.Tensor) -> tf.Tensor:
    """Adds one replicated row/column on each side (see the module's border rule)."""
    # SYMMETRIC with a width of 1 repeats the edge value itself.
    return tf.pad(features, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")


def level_crop_boxes(boxes: tf.Tensor, *, stride, feature_shape: tf.Tensor, crop: int) -> tf.Tensor:
    """Pixel boxes -> normalised ``crop_and_resize`` boxes on an edge-padded level.

    The first and last of the ``crop`` samples sit at the centres of the first
    and last sub-bins (``y1 / stride - 0.5 + 0.5 * bin``), shifted by the one
    pad cell, and are normalised by the padded map's ``H + 2 - 1``.

    Args:
      boxes: ``[N, 4]`` yxyx pixels of the input image.
      stride: the level's stride in pixels: a scalar, or ``[N]`` per box.
      feature_shape: ``(H, W)`` of the level before padding, or ``[N, 2]`` per box.
      crop: samples per side (``output_size * sampling_ratio``).

    Returns:
      ``[N, 4]`` normalised yxyx boxes for the padded ``[B, H + 2, W + 2, C]`` map.
    """
    stride = tf.convert_to_tensor(stride, tf.float32)
    feature_boxes = boxes / (stride[..., None] if stride.shape.rank else stride)
    ymin, xmin, ymax, xmax = tf.unstack(feature_boxes, axis=-1)
    half_h = 0.5 * (ymax - ymin) / crop
    half_w = 0.5 * (xmax - xmin) / crop
    # -0.5 (pixel centres) + 1 (pad cell) = +0.5.
    starts_ends = tf.stack([ymin + 0.5 + half_h, xmin + 0.5 + half_w, ymax + 0.5 - half_h, xmax + 0.5 - half_w], -1)
    extent = tf.cast(feature_shape, tf.float32) + 1.0  # (H + 2) - 1
    return starts_ends / tf.concat([extent, extent], axis=-1)


def _average_pool(crops: tf.Tensor, sampling_ratio: int) -> tf.Tensor:
    """``[N, n, n, C]`` -> ``[N, n / s, n / s, C]`` by averaging ``s x s`` samples."""
    if sampling_ratio == 1:
        return crops
    return tf.nn.avg_pool2d(crops, sampling_ratio, sampling_ratio, "VALID")


def multilevel_roi_align(
    features: Mapping[str, tf.Tensor],
    boxes: tf.Tensor,
    *,
    output_size: int = 7,
    sampling_ratio: int = 2,
    min_level: int = 2,
    max_level: int = 5,
    canonical_size: float = 224.0,
    canonical_level: int = 4,
    use_gather: bool = False,
) -> tf.Tensor:
    """RoIAlign of each box from its FPN level (see the module docstring).

    Args:
      features: ``{"P2": [B, H_2, W_2, C], ..., "P5": ...}``; level ``l`` has
        stride ``2**l``. Levels outside ``[min_level, max_level]`` are ignored.
      boxes: ``[B, R, 4]`` yxyx pixels of the input image (padding rows may be
        zeros: they are pooled from ``min_level`` like any tiny box).
      output_size: bins per side (7 in Fast R-CNN heads).
      sampling_ratio: samples per bin per side (2 -> 4 samples per bin).
      min_level: smallest pyramid level used.
      max_level: largest pyramid level used.
      canonical_size: see :func:`assign_levels`.
      canonical_level: see :func:`assign_levels`.
      use_gather: crop with :func:`kdet.gather.crop_and_resize_bilinear` (XLA, TFLite)
        instead of ``tf.image.crop_and_resize``.

    Returns:
      ``[B, R, output_size, output_size, C]`` float32.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    levels = range(min_level, max_level + 1)
    padded = {l: _pad_edges(tf.cast(features[f"P{l}"], tf.float32)) for l in levels}
    channels = padded[min_level].shape[-1]
    batch, num_rois = _dim(boxes, 0), _dim(boxes, 1)

    flat_boxes = tf.reshape(boxes, [-1, 4])
    box_indices = tf.repeat(tf.range(tf.shape(boxes)[0]), tf.shape(boxes)[1])
    box_levels = assign_levels(flat_boxes, min_level=min_level, max_level=max_level, canonical_size=canonical_size,
                               canonical_level=canonical_level)
    crop = output_size * sampling_ratio

    if use_gather:
        crops = _gather_all_levels(padded, flat_boxes, box_indices, box_levels, crop)
    else:
        crops = _crop_and_resize_by_level(padded, flat_boxes, box_indices, box_levels, crop)
    pooled = _average_pool(crops, sampling_ratio)
    return tf.reshape(pooled, [batch, num_rois, output_size, output_size, channels if channels else -1])


def _crop_and_resize_by_level(padded, boxes, box_indices, box_levels, crop):
    """Every box from its own level with ``tf.image.crop_and_resize``, one crop per box.

    Boxes are partitioned by level, cropped from that level, and stitched back
    into their original order (dynamic shapes inside; not for XLA or TFLite).

    Args:
      padded: ``{level: [B, H_l + 2, W_l + 2, C]}`` edge-padded maps.
      boxes: ``[N, 4]`` yxyx pixels.
      box_indices: ``[N]`` int32 image of each box.
      box_levels: ``[N]`` int32 level of each box (a key of ``padded``).
      crop: samples per side.

    Returns:
      ``[N, crop, crop, C]``.
    """
    levels = sorted(padded)
    parts = tf.dynamic_partition(tf.range(tf.shape(boxes)[0]), box_levels - levels[0], len(levels))
    crops = []
    for level, part in zip(levels, parts):
        image = padded[level]
        normalised = level_crop_boxes(
            tf.gather(boxes, part), stride=float(2**level), feature_shape=tf.shape(image)[1:3] - 2, crop=crop
        )
        crops.append(tf.image.crop_and_resize(image, normalised, tf.gather(box_indices, part), [crop, crop]))
    return tf.dynamic_stitch(parts, crops)


def _gather_all_levels(padded, boxes, box_indices, box_levels, crop):
    """Every box from its own level in one static-shape gather.

    The padded levels of each image are laid end to end in one ``[B * P, C]``
    table (``P = sum_l (H_l + 2) (W_l + 2)``); each box carries the offset, size
    and stride of its level, so the crops cost the same as one level's.
    Arguments and result as :func:`_crop_and_resize_by_level`'s.
    """
    levels = sorted(padded)
    sizes = tf.stack([tf.shape(padded[l])[1:3] for l in levels])  # [L, 2] padded (H + 2, W + 2)
    lengths = sizes[:, 0] * sizes[:, 1]
    starts = tf.cumsum(lengths, exclusive=True)
    channels = _dim(padded[levels[0]], 3)
    table = tf.concat([tf.reshape(padded[l], [tf.shape(padded[l])[0], -1, channels]) for l in levels], axis=1)
    per_image = tf.reduce_sum(lengths)

    slot = box_levels - levels[0]
    box_sizes = tf.gather(sizes, slot)  # [N, 2]
    normalised = level_crop_boxes(boxes, stride=tf.gather(tf.constant([2.0**l for l in levels]), slot),
                                  feature_shape=box_sizes - 2, crop=crop)
    offsets = box_indices * per_image + tf.gather(starts, slot)
    flat = tf.reshape(table, [-1, channels])
    return table_crops(flat, offsets, box_sizes[:, 0], box_sizes[:, 1], normalised, [crop, crop], 0.0)


class RoIAlign(keras.layers.Layer):
    """Multilevel RoIAlign layer: ``call(features, boxes)`` -> ``[B, R, S, S, C]``.

    A thin wrapper of :func:`multilevel_roi_align` (which holds the
    conventions); it has no weights.

    Args:
      output_size: bins per side.
      sampling_ratio: samples per bin per side.
      min_level: smallest pyramid level used.
      max_level: largest pyramid level used.
      canonical_size: box size (pixels) pooled from ``canonical_level``.
      canonical_level: ``k0`` of the FPN level rule.
      use_gather: use the gather kernel (XLA / TFLite) instead of
        ``tf.image.crop_and_resize``.
    """

    def __init__(
        self,
        *,
        output_size: int = 7,
        sampling_ratio: int = 2,
        min_level: int = 2,
        max_level: int = 5,
        canonical_size: float = 224,
        canonical_level: int = 4,
        use_gather: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.min_level = min_level
        self.max_level = max_level
        self.canonical_size = canonical_size
        self.canonical_level = canonical_level
        self.use_gather = use_gather

    def call(self, features, boxes):
        """Args: features ``{"P2".."P5": [B, H_l, W_l, C]}``; boxes ``[B, R, 4]`` pixels."""
        return multilevel_roi_align(
            features,
            boxes,
            output_size=self.output_size,
            sampling_ratio=self.sampling_ratio,
            min_level=self.min_level,
            max_level=self.max_level,
            canonical_size=float(self.canonical_size),
            canonical_level=self.canonical_level,
            use_gather=self.use_gather,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            output_size=self.output_size,
            sampling_ratio=self.sampling_ratio,
            min_level=self.min_level,
            max_level=self.max_level,
            canonical_size=self.canonical_size,
            canonical_level=self.canonical_level,
            use_gather=self.use_gather,
        )
        return config
