"""``tf.image.crop_and_resize`` from gathers and arithmetic: XLA-compilable, TFLite builtins only.

The twins of ``crop_and_resize``'s bilinear and nearest sampling, operation
for operation as TF's kernel (``crop_and_resize_op.cc``), so the crops equal
it to float rounding. Crops read from one ``[P, C]`` pixel table in which
images (or FPN levels, or pyramid levels) of different sizes lie end to end,
so boxes from all of them are one gather. Used by multilevel RoIAlign's
``use_gather`` path (:mod:`kdet.roi_align`) and the face cascade's export
twin (:func:`kdet.face.pyramid.gather_crops`).
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf


def dim(tensor: tf.Tensor, axis: int):
    """Static size of ``axis`` if known, else the dynamic one."""
    static = tensor.shape[axis]
    return static if static is not None else tf.shape(tensor)[axis]


def _sample_coords(start: tf.Tensor, end: tf.Tensor, size: tf.Tensor, crop: int):
    """``crop_and_resize`` sample positions along one axis and their validity.

    Mirrors TF's kernel (``crop_and_resize_op.cc``) operation for operation so
    that float rounding matches too.

    Args:
      start: ``[N]`` normalised start (``y1`` or ``x1``).
      end: ``[N]`` normalised end.
      size: ``[N]`` int32 size of each box's image along the axis.
      crop: output size along the axis (python int).

    Returns:
      ``([N, crop] float32 positions in pixels, [N, crop] bool inside [0, size-1])``.
    """
    last = tf.cast(size - 1, tf.float32)
    if crop > 1:
        scale = (end - start) * last / float(crop - 1)
        steps = tf.range(crop, dtype=tf.float32)
        coords = (start * last)[:, None] + steps[None, :] * scale[:, None]
    else:
        # TF samples the box centre when the crop is a single pixel.
        coords = (0.5 * (start + end) * last)[:, None]
    valid = (coords >= 0.0) & (coords <= last[:, None])
    return coords, valid


def _lerp_indices(coords: tf.Tensor, size: tf.Tensor):
    """Floor index, next index (both clipped into ``[0, size - 1]``) and the lerp weight."""
    low = tf.floor(coords)
    frac = coords - low
    last = (size - 1)[:, None]
    low = tf.clip_by_value(tf.cast(low, tf.int32), 0, last)
    high = tf.minimum(low + 1, last)
    return low, high, frac


def table_crops(
    flat: tf.Tensor,
    offsets: tf.Tensor,
    heights: tf.Tensor,
    widths: tf.Tensor,
    boxes: tf.Tensor,
    crop_size: Sequence[int],
    extrapolation_value: float,
    *,
    method: str = "bilinear",
) -> tf.Tensor:
    """``crop_and_resize`` from images stored row-major in one ``[P, C]`` table.

    Box ``n`` reads the ``heights[n] x widths[n]`` image whose pixel ``(0, 0)``
    is row ``offsets[n]`` of ``flat``; so boxes may come from different images
    and from maps of different sizes (the FPN levels) in one gather.

    Args:
      flat: ``[P, C]`` pixels.
      offsets: ``[N]`` int32 first row of each box's image.
      heights: ``[N]`` int32 image heights.
      widths: ``[N]`` int32 image widths.
      boxes: ``[N, 4]`` normalised yxyx.
      crop_size: ``(crop_h, crop_w)`` python ints.
      extrapolation_value: value of samples outside the image.
      method: ``"bilinear"`` or ``"nearest"``, as ``crop_and_resize``'s
        (nearest: TF's kernel reads the pixel at ``roundf`` of each sample
        position, halves away from zero; inside the image positions are
        >= 0, so ``floor(x + 0.5)``).

    Returns:
      ``[N, crop_h, crop_w, C]`` float32.
    """
    if method not in ("bilinear", "nearest"):
        raise ValueError(f"method must be 'bilinear' or 'nearest', got {method!r}")
    crop_h, crop_w = int(crop_size[0]), int(crop_size[1])
    ys, y_valid = _sample_coords(boxes[:, 0], boxes[:, 2], heights, crop_h)
    xs, x_valid = _sample_coords(boxes[:, 1], boxes[:, 3], widths, crop_w)
    if method == "nearest":
        rows = tf.clip_by_value(tf.cast(tf.floor(ys + 0.5), tf.int32), 0, (heights - 1)[:, None])
        cols = tf.clip_by_value(tf.cast(tf.floor(xs + 0.5), tf.int32), 0, (widths - 1)[:, None])
        crops = tf.gather(flat, (offsets[:, None] + rows * widths[:, None])[:, :, None] + cols[:, None, :])
    else:
        crops = _bilinear(flat, offsets, widths, _lerp_indices(ys, heights), _lerp_indices(xs, widths))
    valid = (y_valid[:, :, None] & x_valid[:, None, :])[..., None]
    return tf.where(valid, crops, tf.cast(extrapolation_value, tf.float32))


def _bilinear(flat, offsets, widths, y_taps, x_taps) -> tf.Tensor:
    """The bilinear samples of :func:`table_crops` from their ``(low, high, fraction)`` taps per axis."""
    (y_lo, y_hi, y_frac), (x_lo, x_hi, x_frac) = y_taps, x_taps
    # One gather per corner: row starts [N, crop_h, 1] + columns [N, 1, crop_w].
    rows_lo = (offsets[:, None] + y_lo * widths[:, None])[:, :, None]
    rows_hi = (offsets[:, None] + y_hi * widths[:, None])[:, :, None]
    cols_lo, cols_hi = x_lo[:, None, :], x_hi[:, None, :]
    top_left = tf.gather(flat, rows_lo + cols_lo)
    top_right = tf.gather(flat, rows_lo + cols_hi)
    bottom_left = tf.gather(flat, rows_hi + cols_lo)
    bottom_right = tf.gather(flat, rows_hi + cols_hi)

    # Same order of operations as TF's kernel.
    x_frac = x_frac[:, None, :, None]
    y_frac = y_frac[:, :, None, None]
    top = top_left + (top_right - top_left) * x_frac
    bottom = bottom_left + (bottom_right - bottom_left) * x_frac
    return top + (bottom - top) * y_frac


def crop_and_resize_bilinear(
    image: tf.Tensor,
    boxes: tf.Tensor,
    box_indices: tf.Tensor,
    crop_size: Sequence[int],
    *,
    extrapolation_value: float = 0.0,
) -> tf.Tensor:
    """``tf.image.crop_and_resize(method="bilinear")`` with gathers and arithmetic.

    Same arguments and output, to float rounding: box ``[y1, x1, y2, x2]`` in
    normalised coordinates samples row ``i`` at ``y1 * (H - 1) + i * (y2 - y1)
    * (H - 1) / (crop_h - 1)`` (the centre ``(y1 + y2) / 2 * (H - 1)`` when
    ``crop_h == 1``); samples outside ``[0, H - 1]`` get
    ``extrapolation_value``. Unlike the TF op it compiles under XLA and
    converts to TFLite builtins (GATHER, arithmetic, SELECT).

    Args:
      image: ``[B, H, W, C]``.
      boxes: ``[N, 4]`` normalised yxyx.
      box_indices: ``[N]`` int32 image of each box.
      crop_size: ``(crop_h, crop_w)`` python ints.
      extrapolation_value: value of samples outside the image.

    Returns:
      ``[N, crop_h, crop_w, C]`` float32.
    """
    image = tf.cast(image, tf.float32)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    box_indices = tf.cast(box_indices, tf.int32)
    shape = tf.shape(image)
    height, width = shape[1], shape[2]
    flat = tf.reshape(image, [-1, dim(image, 3)])
    ones = tf.ones_like(box_indices)
    return table_crops(
        flat, box_indices * height * width, ones * height, ones * width, boxes, crop_size, extrapolation_value
    )
