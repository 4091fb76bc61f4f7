"""Pure TensorFlow image + box transforms for detection inputs.

Every box is ``[ymin, xmin, ymax, xmax]`` float32 in absolute pixels of the
image it comes with; every function returns boxes in the pixels of the image it
returns. Randomness is *stateless*: random transforms take a ``seed`` tensor of
shape ``[2]`` (int32/int64), so a ``tf.data`` pipeline stays reproducible under
parallel maps (see :func:`kdet.data.pipeline.make_pipeline`).
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf


def fit_scale(
    height: tf.Tensor, width: tf.Tensor, *, output_size: Sequence[int]
) -> tf.Tensor:
    """Largest scale that fits an ``height x width`` image inside ``output_size``.

    Returns:
        Scalar float32 ``min(out_h / height, out_w / width)``.
    """
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    return tf.minimum(output_size[0] / h, output_size[1] / w)


def resize_with_scale(
    image: tf.Tensor, boxes: tf.Tensor, *, scale: tf.Tensor, max_size=None
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Resizes an image and its boxes by one aspect-preserving factor.

    The new size is ``round(size * scale)`` (at least 1, at most ``max_size``
    per axis when given), and boxes are multiplied by ``scale`` itself, so
    ``original_box = box / scale`` holds exactly.

    Args:
        image: ``[H, W, C]`` any numeric dtype.
        boxes: ``[N, 4]`` pixels.
        scale: scalar, resized / original.
        max_size: optional ``(max_h, max_w)`` cap that absorbs rounding.

    Returns:
        ``(image [h, w, C] float32, boxes [N, 4] float32, resized_shape [2] int32)``.
    """
    scale = tf.cast(scale, tf.float32)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)
    if max_size is not None:
        new_shape = tf.minimum(new_shape, tf.constant(max_size, tf.int32))
    resized = tf.image.resize(image, new_shape, method="bilinear")
    boxes = tf.cast(boxes, tf.float32) * scale
    return resized, boxes, new_shape


def resize_to_fit(
    image: tf.Tensor, boxes: tf.Tensor, *, output_size: Sequence[int]
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Aspect-preserving resize so the image fits inside ``output_size``.

    Example: a 100x200 image into (128, 128) has scale 0.64 and becomes 64x128.

    Args:
        image: ``[H, W, C]``.
        boxes: ``[N, 4]`` pixels.
        output_size: ``(out_h, out_w)``.

    Returns:
        ``(image [h, w, C] float32, boxes [N, 4], scale [] float32,
        resized_shape [2] int32)`` with ``h <= out_h`` and ``w <= out_w``.
    """
    shape = tf.shape(image)
    scale = fit_scale(shape[0], shape[1], output_size=output_size)
    resized, boxes, new_shape = resize_with_scale(
        image, boxes, scale=scale, max_size=output_size
    )
    return resized, boxes, scale, new_shape


def resize_to_range(
    image: tf.Tensor, boxes: tf.Tensor, *, min_size: int, max_size: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Faster R-CNN style resize: short side to ``min_size``, long side capped.

    The scale is ``min(min_size / short_side, max_size / long_side)``.

    Returns:
        ``(image float32, boxes, scale [] float32, resized_shape [2] int32)``.
    """
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.minimum(
        min_size / tf.reduce_min(shape), max_size / tf.reduce_max(shape)
    )
    resized, boxes, new_shape = resize_with_scale(
        image, boxes, scale=scale, max_size=(max_size, max_size)
    )
    return resized, boxes, scale, new_shape


def pad_to_size(image: tf.Tensor, *, output_size: Sequence[int]) -> tf.Tensor:
    """Zero-pads an image at the bottom and right to exactly ``output_size``.

    Boxes are unchanged by bottom/right padding. The image must already fit.

    Returns:
        ``[out_h, out_w, C]`` with a static shape.
    """
    shape = tf.shape(image)
    padded = tf.pad(
        image,
        [[0, output_size[0] - shape[0]], [0, output_size[1] - shape[1]], [0, 0]],
    )
    padded.set_shape([output_size[0], output_size[1], image.shape[-1]])
    return padded


def pad_to_multiple(image: tf.Tensor, *, stride: int) -> tf.Tensor:
    """Zero-pads bottom/right so height and width are multiples of ``stride``.

    Returns:
        ``[ceil(H / stride) * stride, ceil(W / stride) * stride, C]``.
    """
    shape = tf.shape(image)[:2]
    target = -(-shape // stride) * stride
    pad = target - shape
    return tf.pad(image, [[0, pad[0]], [0, pad[1]], [0, 0]])


def flip_boxes_left_right(boxes: tf.Tensor, *, width: tf.Tensor) -> tf.Tensor:
    """Mirrors boxes for an image of ``width`` pixels flipped left-right.

    ``[ymin, xmin, ymax, xmax] -> [ymin, width - xmax, ymax, width - xmin]``.
    """
    width = tf.cast(width, tf.float32)
    ymin, xmin, ymax, xmax = tf.unstack(tf.cast(boxes, tf.float32), 4, axis=-1)
    return tf.stack([ymin, width - xmax, ymax, width - xmin], axis=-1)


def flip_left_right(image: tf.Tensor, boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Flips an image ``[H, W, C]`` and its boxes ``[N, 4]`` left-right."""
    width = tf.shape(image)[1]
    return tf.image.flip_left_right(image), flip_boxes_left_right(boxes, width=width)


def random_horizontal_flip(
    image: tf.Tensor,
    boxes: tf.Tensor,
    *,
    seed: tf.Tensor,
    probability: float = 0.5,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Flips image and boxes left-right with ``probability`` (stateless).

    Args:
        image: ``[H, W, C]``.
        boxes: ``[N, 4]`` pixels.
        seed: ``[2]`` integer seed of the stateless random op.
        probability: chance of flipping.

    Returns:
        ``(image, boxes)`` of unchanged shapes.
    """
    draw = tf.random.stateless_uniform([], seed=seed)
    flipped_image, flipped_boxes = flip_left_right(image, boxes)
    do_flip = draw < probability
    image = tf.where(do_flip, flipped_image, image)
    boxes = tf.where(do_flip, flipped_boxes, tf.cast(boxes, tf.float32))
    return image, boxes


def crop_boxes(
    boxes: tf.Tensor, *, offset: tf.Tensor, size: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Moves boxes into a crop window and clips them to it.

    Args:
        boxes: ``[N, 4]`` pixels.
        offset: ``[2]`` (top, left) of the window.
        size: ``[2]`` (height, width) of the window.

    Returns:
        ``(boxes [N, 4], keep [N] bool)``; ``keep`` is False for boxes that
        the crop reduces to zero area.
    """
    offset = tf.cast(offset, tf.float32)
    size = tf.cast(size, tf.float32)
    shifted = tf.cast(boxes, tf.float32) - tf.concat([offset, offset], axis=0)
    clipped = tf.clip_by_value(shifted, 0.0, tf.concat([size, size], axis=0))
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped, keep


def random_scale_jitter(
    image: tf.Tensor,
    boxes: tf.Tensor,
    *,
    output_size: Sequence[int],
    scale_range: tuple[float, float],
    seed: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Scale jitter (Model Garden / SSD style): random resize, then random crop.

    The image is resized to fit inside ``output_size * s`` with ``s`` drawn
    uniformly from ``scale_range``; when larger than ``output_size`` a random
    ``output_size`` window is cropped from it. Boxes are shifted, clipped to the
    window, and those cut to zero area are marked for removal.

    Args:
        image: ``[H, W, C]``.
        boxes: ``[N, 4]`` pixels.
        output_size: ``(out_h, out_w)`` of the network input.
        scale_range: ``(low, high)``, e.g. ``(0.8, 1.25)``.
        seed: ``[2]`` integer seed.

    Returns:
        ``(image [h, w, C] float32 with h <= out_h and w <= out_w, boxes [N, 4],
        keep [N] bool, scale [] float32)``; ``scale`` is the resize factor (the
        crop offset is not part of it).
    """
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    s = tf.random.stateless_uniform(
        [], seed=seeds[0], minval=scale_range[0], maxval=scale_range[1]
    )
    shape = tf.shape(image)
    jittered = (output_size[0] * s, output_size[1] * s)
    scale = fit_scale(shape[0], shape[1], output_size=jittered)
    resized, boxes, new_shape = resize_with_scale(image, boxes, scale=scale)
    crop_size = tf.minimum(new_shape, tf.constant(output_size, tf.int32))
    slack = new_shape - crop_size
    offset = tf.cast(
        tf.floor(
            tf.random.stateless_uniform([2], seed=seeds[1])
            * tf.cast(slack + 1, tf.float32)
        ),
        tf.int32,
    )
    offset = tf.minimum(offset, slack)
    cropped = tf.slice(
        resized, tf.concat([offset, [0]], 0), tf.concat([crop_size, [-1]], 0)
    )
    boxes, keep = crop_boxes(boxes, offset=offset, size=crop_size)
    return cropped, boxes, keep, scale
