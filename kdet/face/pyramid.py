"""Image pyramids, sliding windows and response-map pooling for the face cascade.

Pure functions shared by training-sample mining (Qin et al., Sec. 4.2) and
the test pipeline (Sec. 4.3, 6.5). Boxes are yxyx absolute pixels of the
original image, like everywhere in kdet.

The pyramid has ``levels_per_octave`` levels per halving of the image, so
that the level twice as large as level ``k`` is level ``k - levels_per_octave``:
the fast test pipeline crops a later stage's patches from that level instead
of resizing them (Sec. 6.5, "image patch resizing").

Every op has a twin made of gathers and arithmetic (``use_gather=True``):
the antialiased resize (:func:`resize_level_gather`) and the patch crops
(:func:`gather_crops`) are not TFLite builtins in their ``tf.image`` form.
The twins compute the same values to float rounding.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from kdet.face.resize import resize_level, resize_level_gather
from kdet.gather import table_crops


def pyramid_scales(
    image_size: Sequence[int],
    *,
    min_face_size: float,
    window: int = 12,
    levels_per_octave: int = 2,
    max_scale: float | None = None,
) -> list[float]:
    """The scales at which a ``window``-pixel detector finds faces from ``min_face_size`` up.

    Scale ``k`` is ``window / min_face_size * 2 ** (-k / levels_per_octave)``;
    levels stop once the shorter image side would fall below ``window``.

    Args:
      image_size: ``(height, width)`` of the original image.
      min_face_size: the smallest face side to find, in pixels.
      window: the detector's input side (12 for x12, 48 for mining samples).
      levels_per_octave: levels per halving (2 is MTCNN's factor 0.709).
      max_scale: optional cap of the first scale (upsampling beyond it is
        not worth the cost).

    Returns:
      Scales in decreasing order (may be empty for a tiny image).
    """
    if min_face_size <= 0:
        raise ValueError(f"min_face_size must be positive, got {min_face_size}")
    if levels_per_octave < 1:
        raise ValueError(f"levels_per_octave must be >= 1, got {levels_per_octave}")
    first = window / float(min_face_size)
    if max_scale is not None:
        first = min(first, max_scale)
    shortest = float(min(image_size))
    scales, k = [], 0
    while True:
        scale = first * 2.0 ** (-k / levels_per_octave)
        if shortest * scale < window:
            return scales
        scales.append(scale)
        k += 1


def level_size(image_size: Sequence[int], scale: float) -> tuple[int, int]:
    """``(height, width)`` of a pyramid level: the scaled size rounded, at least 1."""
    return max(1, int(round(image_size[0] * scale))), max(1, int(round(image_size[1] * scale)))


def pyramid_sources(scales: Sequence[float]) -> list[int]:
    """For each level, the level it is resized from: -1 is the image.

    A level at scale ``s`` is resized from the smallest earlier level whose
    scale is at least ``2 s`` (or the image), so each antialiased resize
    shrinks by at most about 2x from a source close to its size, instead
    of filtering the whole image again for every level (cost proportional
    to the source, not the full image). Levels above scale 0.5 come from
    the image itself.
    """
    sources = []
    for k, scale in enumerate(scales):
        # up-sampled levels hold no detail the image lacks: never a source
        candidates = [j for j in range(k) if 1.0 + 1e-9 >= scales[j] >= 2.0 * scale - 1e-9]
        sources.append(max(candidates, key=lambda j: -scales[j]) if candidates else -1)
    return sources


PYRAMID_METHODS = ("antialias", "octave", "area")


def build_pyramid(images: tf.Tensor, scales: Sequence[float], *, use_gather: bool = False,
                  method: str = "antialias") -> list[tf.Tensor]:
    """Pyramid levels of ``images [B, H, W, C]`` at ``scales``, each from its :func:`pyramid_sources` source.

    Level ``k`` has size :func:`level_size` of the image at ``scales[k]``.
    ``method``:

    * ``"antialias"``: every level an antialiased bilinear resize of its
      source (what training-sample mining cuts its patches from);
    * ``"octave"``: a level exactly half its source's size (the level one
      octave up, when both sides halve exactly: 288x384 -> 144x192 at VGA) is
      its 2x2 average, the rest as ``"antialias"``. Average pooling is
      about a third of the antialiased resize's cost, and
      AVERAGE_POOL_2D is a TFLite builtin, so ``use_gather`` computes it
      the same way. At VGA from 20-px faces 6 of the 10 levels are pooled.
    * ``"area"``: as ``"octave"`` with area resizes (a box filter, see
      :data:`RESIZE_FILTERS`) for the rest; a 2x2 average is the area
      resize of an exact halving, so every level is an area resize of its
      source; cheaper than antialiased resizes (docs/benchmarks.md).

    ``use_gather`` resizes with :func:`resize_level_gather` (TFLite builtins).
    """
    if method not in PYRAMID_METHODS:
        raise ValueError(f"method must be one of {PYRAMID_METHODS}, got {method!r}")
    image_size = (int(images.shape[1]), int(images.shape[2]))
    resize = resize_level_gather if use_gather else resize_level
    levels: list[tf.Tensor] = []
    for scale, source in zip(scales, pyramid_sources(scales)):
        size = level_size(image_size, scale)
        origin = images if source < 0 else levels[source]
        if method != "antialias" and source >= 0 and tuple(origin.shape[1:3]) == (2 * size[0], 2 * size[1]):
            levels.append(tf.nn.avg_pool2d(tf.cast(origin, tf.float32), 2, 2, "VALID"))
        else:
            levels.append(resize(origin, size, method="area" if method == "area" else "antialias"))
    return levels


def window_boxes(
    grid_size: Sequence[int],
    *,
    stride: float,
    window: float,
    scale_yx: Sequence[float],
    start: float = 0.0,
) -> tf.Tensor:
    """The boxes, in original pixels, of windows slid over a pyramid level.

    Window ``(i, j)`` covers level rows ``[stride * i, stride * i + window)``
    and columns likewise; dividing by the level's per-axis scale maps it to
    the original image. ``start`` moves the top-left corner in by that many
    level pixels (MTCNN's P-Net windows are ``[2i + 1, 2i + 12]``).

    Args:
      grid_size: ``(h, w)`` windows along each axis.
      stride: window stride in level pixels.
      window: window side in level pixels.
      scale_yx: ``(level_height / height, level_width / width)``.

    Returns:
      ``[h * w, 4]`` float32 yxyx, row-major over ``(i, j)``.
    """
    ys = tf.range(grid_size[0], dtype=tf.float32) * stride
    xs = tf.range(grid_size[1], dtype=tf.float32) * stride
    y, x = tf.meshgrid(ys, xs, indexing="ij")
    y, x = tf.reshape(y, [-1]), tf.reshape(x, [-1])
    sy, sx = float(scale_yx[0]), float(scale_yx[1])
    return tf.stack([(y + start) / sy, (x + start) / sx, (y + window) / sy, (x + window) / sx], axis=-1)


def response_map_max_pool(scores: tf.Tensor, k: int = 2) -> tf.Tensor:
    """Keeps the maximum of each non-overlapping ``k x k`` block of a score map, zeros the rest.

    The paper's replacement for NMS after x12 (Sec. 6.5): max pooling that
    keeps the resolution. Blocks start at (0, 0); a partial block at the
    bottom or right edge is a block too. On ties the first maximum in
    row-major order survives, so every block keeps exactly one point. Built
    from SPACE_TO_DEPTH, ARG_MAX and DEPTH_TO_SPACE (TFLite builtins).

    Args:
      scores: ``[B, h, w]`` non-negative scores (probabilities).
      k: block side; 1 returns ``scores`` unchanged.

    Returns:
      ``[B, h, w]``: ``scores`` where a point is its block's maximum, else 0.
    """
    if k == 1:
        return scores
    (h, w), _, winner = _block_winners(scores, k)
    keep = tf.nn.depth_to_space(tf.one_hot(winner, k * k, dtype=scores.dtype), k)[..., 0][:, :h, :w]
    return scores * keep


def _block_winners(scores: tf.Tensor, k: int):
    """``((h, w), blocks, winner)``: ``scores [B, h, w]`` padded with -1 to whole ``k x k`` blocks.

    ``blocks`` is ``[B, ceil(h / k), ceil(w / k), k * k]`` (depth in (dy, dx)
    row-major order), ``winner`` the int32 depth of each block's first
    maximum. ``h, w`` are python ints where static, else scalar tensors.
    """
    h, w = scores.shape[1], scores.shape[2]
    if h is None or w is None:
        h, w = tf.shape(scores)[1], tf.shape(scores)[2]
    padded = tf.pad(scores, [[0, 0], [0, (-h) % k], [0, (-w) % k]], constant_values=-1.0)
    blocks = tf.nn.space_to_depth(padded[..., None], k)
    return (h, w), blocks, tf.argmax(blocks, axis=-1, output_type=tf.int32)


def block_maxima_values(scores: tf.Tensor, k: int = 2) -> tf.Tensor:
    """Each ``k x k`` block's maximum of ``scores [B, h, w]`` (static ``h, w``, non-negative).

    Blocks start at (0, 0); a partial block at the bottom or right edge is a
    block too. One max pooling (MAX_POOL_2D, a TFLite builtin). The points
    these maxima come from: :func:`block_winners`.

    Returns:
      ``[B, ceil(h / k), ceil(w / k)]``.
    """
    if k == 1:
        return scores
    h, w = int(scores.shape[1]), int(scores.shape[2])
    if h % k or w % k:
        scores = tf.pad(scores, [[0, 0], [0, (-h) % k], [0, (-w) % k]], constant_values=-1.0)
    return tf.nn.max_pool2d(scores[..., None], k, k, "VALID")[..., 0]


def block_cells(shapes: Sequence[Sequence[int]], k: int = 2) -> np.ndarray:
    """The points of every ``k x k`` block of several maps, all numbered in one sequence.

    ``shapes`` are the maps' ``(h, w)``. Blocks are numbered map by map,
    row-major, as :func:`block_maxima_values` flattened and concatenated
    gives them; points likewise (``offset + row * w + col``).

    Returns:
      ``[blocks, k * k]`` int32, each block's points in row-major order; a
      point past its map's edge (a partial block) is ``sum(h * w)``, one
      past the last point.
    """
    total = sum(int(h) * int(w) for h, w in shapes)
    dy, dx = np.divmod(np.arange(k * k), k)
    rows, offset = [], 0
    for h, w in shapes:
        by, bx = np.meshgrid(np.arange(0, h, k), np.arange(0, w, k), indexing="ij")
        y, x = by.reshape(-1, 1) + dy, bx.reshape(-1, 1) + dx
        rows.append(np.where((y < h) & (x < w), offset + y * w + x, total))
        offset += int(h) * int(w)
    return np.concatenate(rows).astype(np.int32)


def block_winners(scores: tf.Tensor, cells: np.ndarray, blocks: tf.Tensor) -> tf.Tensor:
    """The point each of ``blocks`` keeps under response-map max pooling: its first maximum, row-major.

    Finding the winner only for the blocks chosen after
    :func:`block_maxima_values` is what makes those values enough for the
    rest: a VGA frame has ~12,500 blocks, and x12's budget keeps a few hundred.

    Args:
      scores: ``[B, P]`` non-negative scores of all points of all maps,
        flattened and concatenated.
      cells: :func:`block_cells` of those maps.
      blocks: ``[B, K]`` int32 block numbers.

    Returns:
      ``[B, K]`` int32 point numbers (indices into ``scores``' last axis).
    """
    padded = tf.concat([scores, -tf.ones_like(scores[:, :1])], axis=1)  # the slot past the edge: never a winner
    candidates = tf.gather(tf.constant(cells), blocks)  # [B, K, k * k]
    winner = tf.argmax(tf.gather(padded, candidates, batch_dims=1), axis=-1, output_type=tf.int32)
    return tf.gather(candidates, winner, batch_dims=2)


def square_boxes(boxes: tf.Tensor) -> tf.Tensor:
    """Boxes grown to squares of side ``max(h, w)`` about the same centre (face boxes are square)."""
    cy = (boxes[..., 0] + boxes[..., 2]) * 0.5
    cx = (boxes[..., 1] + boxes[..., 3]) * 0.5
    half = tf.maximum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]) * 0.5
    return tf.stack([cy - half, cx - half, cy + half, cx + half], axis=-1)


def corner_sampled_boxes(boxes: tf.Tensor, *, image_size, crop: int) -> tf.Tensor:
    """The boxes whose pixel-centre crops (:func:`crop_boxes_for`) sample where MTCNN's crops do.

    MTCNN cuts ``[y1, x1, y2, x2]`` with ``crop_and_resize`` boxes
    ``y / H, x / W``: sample ``i`` at ``y1 (H - 1) / H + i (y2 - y1) (H - 1) / (H (crop - 1))``.
    Returns ``[..., 4]`` pixel boxes that give those samples, so kdet's
    crops (``tf.image`` or gathers) reproduce MTCNN's patches.
    """
    height = tf.cast(image_size[0], tf.float32)
    width = tf.cast(image_size[1], tf.float32)
    factor = tf.stack([(height - 1) / height, (width - 1) / width] * 2)
    first = boxes[..., :2] * factor[:2]
    side = (boxes[..., 2:] - boxes[..., :2]) * factor[2:] * (crop / (crop - 1))
    start = first + 0.5 - 0.5 * side / crop
    return tf.concat([start, start + side], axis=-1)


def crop_boxes_for(boxes: tf.Tensor, *, image_size, crop: int, samples: int | None = None) -> tf.Tensor:
    """Pixel boxes -> ``crop_and_resize`` boxes that sample pixel centres.

    A ``crop``-sample patch of a box of side ``S`` takes its samples at
    ``ymin + (i + 0.5) * S / crop - 0.5`` (pixel-index coordinates), so a
    box that is exactly ``crop`` pixels on integer bounds returns those
    pixels. ``crop_and_resize`` places sample ``i`` at ``y1 * (H - 1) + i *
    (y2 - y1) * (H - 1) / (crop - 1)``; this solves for ``y1, y2``.

    Args:
      boxes: ``[..., 4]`` yxyx pixels.
      image_size: ``(H, W)`` of the image cropped (python or tensor).
      crop: the patch side the box is sampled at.
      samples: keep only the first ``samples`` rows and columns of that
        ``crop x crop`` grid (crop at ``(samples, samples)``; the same
        sample positions); None: all ``crop``.

    Returns:
      ``[..., 4]`` normalised boxes for ``tf.image.crop_and_resize``.
    """
    samples = crop if samples is None else samples
    height = tf.cast(image_size[0], tf.float32)
    width = tf.cast(image_size[1], tf.float32)
    step_y = (boxes[..., 2] - boxes[..., 0]) / crop
    step_x = (boxes[..., 3] - boxes[..., 1]) / crop
    y1 = boxes[..., 0] + 0.5 * step_y - 0.5
    x1 = boxes[..., 1] + 0.5 * step_x - 0.5
    y2 = y1 + (samples - 1) * step_y
    x2 = x1 + (samples - 1) * step_x
    return tf.stack([y1 / tf.maximum(height - 1.0, 1.0), x1 / tf.maximum(width - 1.0, 1.0),
                     y2 / tf.maximum(height - 1.0, 1.0), x2 / tf.maximum(width - 1.0, 1.0)], axis=-1)


def best_levels(boxes: tf.Tensor, scales: Sequence[float], *, crop: int) -> tf.Tensor:
    """Index of the level whose scale brings a box's side closest to ``crop`` without going below it.

    ``scales`` are decreasing; a box too small for every level (it would need
    upsampling beyond the first) gets level 0.

    Args:
      boxes: ``[N, 4]`` yxyx original pixels.
      scales: decreasing level scales.
      crop: the patch side wanted.

    Returns:
      ``[N]`` int32 level index.
    """
    side = tf.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    scales_t = tf.constant(scales, tf.float32)
    big_enough = side[:, None] * scales_t[None, :] >= crop * (1.0 - 1e-4)
    # the last level that is still big enough; levels are decreasing in scale
    count = tf.reduce_sum(tf.cast(big_enough, tf.int32), axis=1)
    return tf.maximum(count - 1, 0)


def level_crop_boxes(boxes: tf.Tensor, chosen: tf.Tensor, sizes: Sequence[Sequence[int]], *,
                     image_size: Sequence[int], crop: int, samples: int | None = None) -> tf.Tensor:
    """:func:`crop_boxes_for` of every box on its own level, for all boxes at once.

    Args:
      boxes: ``[N, 4]`` yxyx pixels of the image.
      chosen: ``[N]`` int32 level of each box (:func:`best_levels`).
      sizes: the levels' static ``(h, w)``.
      image_size: ``(H, W)`` of the image, python ints.
      crop, samples: as :func:`crop_boxes_for`.

    Returns:
      ``[N, 4]`` normalised boxes, each for ``tf.image.crop_and_resize`` on its level.
    """
    sizes = np.array(sizes, np.float32).reshape(-1, 2)
    ratios = sizes / np.array(image_size, np.float32)
    per_box = tf.gather(tf.constant(np.concatenate([ratios, ratios, sizes], axis=1)), chosen)  # [N, 6]
    return crop_boxes_for(boxes * per_box[:, :4], image_size=(per_box[:, 4], per_box[:, 5]), crop=crop,
                          samples=samples)


def gather_crops(
    levels: Sequence[tf.Tensor],
    level_scales: Sequence[float],
    boxes: tf.Tensor,
    box_index: tf.Tensor,
    *,
    image_size: Sequence[int],
    crop: int,
    samples: int | None = None,
    method: str = "bilinear",
) -> tf.Tensor:
    """``crop x crop`` patches of ``boxes``, each from its :func:`best_levels` level, with gathers.

    The twin of cropping level by level with ``tf.image.crop_and_resize``
    (same samples, :func:`crop_boxes_for`): every level of every image is
    laid end to end in one pixel table and each box reads its own level's
    slice, so one gather serves all boxes and all shapes stay static
    (TFLite builtins only, no ``dynamic_partition``).

    Args:
      levels: ``[B, H_l, W_l, C]`` maps with static sizes, scales decreasing.
      level_scales: the scale of each map relative to the image.
      boxes: ``[N, 4]`` yxyx pixels of the image.
      box_index: ``[N]`` int32 image of each box.
      image_size: ``(H, W)`` python ints.
      crop: patch side.
      samples: only the first ``samples`` rows and columns of each patch
        (see :func:`crop_boxes_for`); None: all ``crop``.
      method: ``"bilinear"`` or ``"nearest"``, as ``crop_and_resize``'s.

    Returns:
      ``[N, samples, samples, C]`` float32.
    """
    side = crop if samples is None else samples
    sizes = [(int(level.shape[1]), int(level.shape[2])) for level in levels]
    lengths = [h * w for h, w in sizes]
    starts = np.cumsum([0] + lengths[:-1]).astype(np.int32)
    channels = int(levels[0].shape[3])
    table = tf.concat([tf.reshape(tf.cast(level, tf.float32), [tf.shape(level)[0], -1, channels])
                       for level in levels], axis=1)
    chosen = best_levels(boxes, level_scales, crop=crop) if len(levels) > 1 else tf.zeros_like(box_index)
    box_sizes = tf.gather(tf.constant(sizes, tf.int32), chosen)  # [N, 2]
    normalised = level_crop_boxes(boxes, chosen, sizes, image_size=image_size, crop=crop, samples=samples)
    offsets = tf.cast(box_index, tf.int32) * sum(lengths) + tf.gather(tf.constant(starts), chosen)
    crops = table_crops(tf.reshape(table, [-1, channels]), offsets, box_sizes[:, 0], box_sizes[:, 1], normalised,
                        (side, side), 0.0, method=method)
    return tf.ensure_shape(crops, [None, side, side, channels])
