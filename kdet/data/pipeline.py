"""The batched ``tf.data`` pipeline from example dicts to ``(images, targets)``.

See :func:`make_pipeline` for the output contract. Every example is resized
(aspect preserved) to fit ``image_size`` and zero-padded bottom/right to it, and
its boxes are padded to ``max_boxes`` rows inside the parallel map, so plain
``batch`` gives fixed shapes (XLA- and export-friendly).
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import tensorflow as tf

from kdet.data import transforms
from kdet.data.example import WarnedImages
from kdet.serving.image import letterbox

#: Largest feature stride of the detectors (P7); input sizes must be multiples.
DEFAULT_STRIDE = 128


def check_image_size(image_size: Sequence[int], *, stride: int = DEFAULT_STRIDE):
    """Raises ValueError unless ``image_size`` is two positive multiples of stride.

    Returns:
        ``image_size`` as a tuple of two python ints.
    """
    size = tuple(int(s) for s in image_size)
    if len(size) != 2 or any(s <= 0 or s % stride for s in size):
        raise ValueError(
            f"image_size={tuple(image_size)!r} must be two positive multiples of "
            f"the largest stride {stride} (e.g. ({stride * 4}, {stride * 4}))."
        )
    return size


def pad_targets(
    boxes: tf.Tensor,
    classes: tf.Tensor,
    is_crowd: tf.Tensor,
    *,
    max_boxes: int,
    image_id: tf.Tensor,
    warned: WarnedImages | None = None,
) -> dict[str, tf.Tensor]:
    """Truncates to ``max_boxes`` (with a warning) and pads to exactly that many.

    The first ``max_boxes`` boxes are kept, in the reader's order. Padding rows
    have box 0, class -1 and is_crowd False. The warning names the image id and
    is printed once per image per ``warned`` (a pipeline keeps one for its run).

    Returns:
        ``{"boxes": [M, 4] float32, "classes": [M] int32, "is_crowd": [M] bool}``.
    """
    num = tf.shape(boxes)[0]
    warned = WarnedImages() if warned is None else warned
    printed = tf.cond(
        num > max_boxes,
        lambda: warned.print_once("truncated", image_id, ": has", num, "boxes; truncated to max_boxes =", max_boxes),
        lambda: tf.constant(False),
    )
    with tf.control_dependencies([printed]):
        num = tf.minimum(num, max_boxes)
    pad = max_boxes - num
    boxes = tf.pad(tf.cast(boxes[:num], tf.float32), [[0, pad], [0, 0]])
    classes = tf.pad(
        tf.cast(classes[:num], tf.int32), [[0, pad]], constant_values=-1
    )
    is_crowd = tf.pad(tf.cast(is_crowd[:num], tf.bool), [[0, pad]])
    boxes.set_shape([max_boxes, 4])
    classes.set_shape([max_boxes])
    is_crowd.set_shape([max_boxes])
    return {"boxes": boxes, "classes": classes, "is_crowd": is_crowd}


def preprocess_example(
    example: Mapping[str, tf.Tensor],
    seed: tf.Tensor | None = None,
    *,
    image_size: Sequence[int],
    max_boxes: int,
    flip: bool,
    scale_jitter: tuple[float, float] | None,
    warned: WarnedImages | None = None,
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """Turns one example dict into one padded ``(image, targets)`` pair.

    Order: random flip, then resize (or scale jitter + crop), then pad.

    Args:
        example: the reader contract's example dict.
        seed: ``[2]`` int seed for the random transforms (needed when ``flip`` or
            ``scale_jitter``).
        image_size: ``(H, W)`` network input size.
        max_boxes: rows of the padded targets.
        flip: random horizontal flip with probability 0.5.
        scale_jitter: ``(low, high)`` scale range, or None for a plain resize.
        warned: the images already warned about (see :func:`pad_targets`).

    Returns:
        ``(image [H, W, 3] float32 0..255, targets)``, targets as in
        :func:`make_pipeline` without the batch axis.
    """
    image = example["image"]
    boxes = tf.cast(example["boxes"], tf.float32)
    classes, is_crowd = example["classes"], example["is_crowd"]
    original_shape = tf.shape(image)[:2]
    if flip or scale_jitter is not None:
        flip_seed, jitter_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    if flip:
        image, boxes = transforms.random_horizontal_flip(image, boxes, seed=flip_seed)
    if scale_jitter is None:  # the one letterbox of training, evaluation, kdet detect and serving
        image, scale, resized_shape = letterbox(image, image_size)
        boxes = boxes * scale
    else:
        image, boxes, keep, scale = transforms.random_scale_jitter(
            image, boxes, output_size=image_size, scale_range=scale_jitter, seed=jitter_seed)
        boxes, classes, is_crowd = (tf.boolean_mask(t, keep) for t in (boxes, classes, is_crowd))
        resized_shape = tf.shape(image)[:2]
        image = transforms.pad_to_size(image, output_size=image_size)
    image_id = tf.cast(example["image_id"], tf.int64)
    targets = pad_targets(boxes, classes, is_crowd, max_boxes=max_boxes, image_id=image_id,
                          warned=warned)
    targets.update(
        image_id=image_id,
        scale=tf.cast(scale, tf.float32),
        image_shape=tf.cast(resized_shape, tf.int32),
        original_shape=tf.cast(original_shape, tf.int32),
    )
    return image, targets


def _checked(image_size, *, stride: int, batch_size: int, max_boxes: int, scale_jitter) -> tuple[int, int]:
    """``image_size`` as two ints, after checking every sizing argument of :func:`make_pipeline`."""
    if batch_size <= 0 or max_boxes <= 0:
        raise ValueError(f"batch_size={batch_size} and max_boxes={max_boxes} must be positive.")
    if scale_jitter is not None and not 0 < scale_jitter[0] <= scale_jitter[1]:
        raise ValueError(f"scale_jitter={scale_jitter!r} must be 0 < low <= high.")
    return check_image_size(image_size, stride=stride)


def make_pipeline(
    examples: tf.data.Dataset,
    *,
    image_size: Sequence[int],
    batch_size: int,
    training: bool,
    max_boxes: int = 100,
    flip: bool | None = None,
    scale_jitter: tuple[float, float] | None = None,
    shuffle_buffer: int = 1000,
    seed: int | None = None,
    drop_remainder: bool | None = None,
    stride: int = DEFAULT_STRIDE,
) -> tf.data.Dataset:
    """Builds the batched training or evaluation pipeline.

    Shuffle (training only), parallel map of :func:`preprocess_example`, batch to fixed shapes, prefetch.

    Args:
        examples: dataset of example dicts (any reader of :mod:`kdet.data`).
        image_size: ``(H, W)``, both multiples of ``stride``.
        batch_size: images per batch.
        training: shuffles, and sets the defaults of ``flip``/``drop_remainder``.
        max_boxes: ``M``, rows of the padded targets; an image with more boxes keeps its first ``M`` (a
            warning names its image_id on stderr, once per image for this pipeline).
        flip: random horizontal flip; defaults to ``training``.
        scale_jitter: ``(low, high)`` random scale range with random crop, or
            None. With jitter ``scale`` is the resize factor only (the crop
            offset is not recorded): use it for training, not evaluation.
        shuffle_buffer: size of the shuffle buffer when training.
        seed: seeds shuffling and augmentation (reproducible pipelines); None draws fresh randomness.
        drop_remainder: drop a last partial batch; defaults to ``training``.
        stride: largest stride of the model; ``image_size`` must be a multiple.

    Returns:
        Dataset of ``(images, targets)``:
          images: float32 ``[B, H, W, 3]`` raw RGB 0..255, zero-padded.
          targets: ``boxes`` float32 ``[B, M, 4]`` (pixels of the resized image, padding rows 0),
          ``classes`` int32 ``[B, M]`` (-1 = padding), ``is_crowd`` bool ``[B, M]``, ``image_id`` int64
          ``[B]``, ``scale`` float32 ``[B]`` (resized / original, original_box = box / scale),
          ``image_shape`` int32 ``[B, 2]`` (valid region), ``original_shape`` int32 ``[B, 2]``.

    Raises:
        ValueError: ``image_size`` not a multiple of ``stride``, a bad ``batch_size``/``max_boxes``/``scale_jitter``.
    """
    image_size = _checked(image_size, stride=stride, batch_size=batch_size, max_boxes=max_boxes,
                          scale_jitter=scale_jitter)
    flip = training if flip is None else flip
    drop_remainder = training if drop_remainder is None else drop_remainder
    dataset = examples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True) if training else examples
    preprocess = functools.partial(preprocess_example, image_size=image_size, max_boxes=max_boxes, flip=flip,
                                   scale_jitter=scale_jitter, warned=WarnedImages())
    if flip or scale_jitter is not None:  # one stateless [2] seed per element keeps parallel maps reproducible
        dataset = tf.data.Dataset.zip(dataset, tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
                                      .batch(2))
    dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)
