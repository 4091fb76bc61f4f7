"""The training stream: a deterministic, resumable batch sequence.

Epoch ``e`` is the examples shuffled with the seed ``(seed, e)``; example
``i`` of the whole stream (counting across epochs) is augmented with the
stateless seed ``(seed, i)``. So the batch at global step ``s`` depends only
on ``(seed, s)``, not on how many times the stream was restarted: a run
resumed at step ``s`` (:func:`training_stream` with ``start_step=s``) sees
exactly the batches the uninterrupted run saw. Skipping happens before
decoding-heavy preprocessing (resize, augmentation), so resuming is cheap.
"""

from __future__ import annotations

import functools
from typing import Sequence

import tensorflow as tf

from kdet.data.example import WarnedImages
from kdet.data.pipeline import check_image_size, preprocess_example

_EPOCH_SEED_STRIDE = 1_000_003  # any large prime: (seed, epoch) pairs stay distinct for small seeds


def num_examples(examples: tf.data.Dataset) -> int:
    """Examples in one pass of ``examples`` (counted once when tf.data does not know)."""
    count = int(examples.cardinality())
    if count == tf.data.INFINITE_CARDINALITY:
        raise ValueError("the training examples must be finite (one epoch); do not .repeat() them")
    if count < 0:
        count = int(examples.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
    if count == 0:
        raise ValueError("the training data has no examples")
    return count


def epoch_order(examples: tf.data.Dataset, *, seed: int, epochs: range, shuffle_buffer: int = 1000) -> tf.data.Dataset:
    """``examples`` once per epoch in ``epochs``, epoch ``e`` shuffled with its own Python seed.

    (Python seeds: a tensor seed inside ``flat_map`` trips ``get_seed`` once a
    global seed is set; one ``shuffle`` per epoch also lets a resumed run
    start at its epoch without reading the earlier ones.)
    """
    dataset = None
    for epoch in epochs:
        one = examples.shuffle(shuffle_buffer, seed=seed * _EPOCH_SEED_STRIDE + epoch, reshuffle_each_iteration=False)
        dataset = one if dataset is None else dataset.concatenate(one)
    return dataset


def training_stream(
    examples: tf.data.Dataset,
    *,
    image_size: Sequence[int],
    batch_size: int,
    seed: int,
    start_step: int = 0,
    num_steps: int,
    max_boxes: int = 100,
    flip: bool = True,
    scale_jitter: tuple[float, float] | None = None,
    shuffle_buffer: int = 1000,
    num_shards: int = 1,
    shard_index: int = 0,
) -> tf.data.Dataset:
    """``num_steps`` ``(images, targets)`` batches from global step ``start_step`` on.

    Args:
      examples: a finite dataset of example dicts (one epoch).
      image_size: ``(H, W)`` padded image size.
      batch_size: images per batch of THIS stream (per worker when sharded).
      seed: the run's seed; the stream is a pure function of it.
      start_step: first global step to produce (steps already done are skipped).
      num_steps: steps to produce.
      max_boxes, flip, scale_jitter: as :func:`kdet.data.pipeline.make_pipeline`.
      shuffle_buffer: shuffle window inside each epoch.
      num_shards, shard_index: multi-worker input sharding: this stream takes
        every ``num_shards``-th example of the global stream, so the workers'
        batches together are the single-worker global batches.

    Returns:
      Dataset of ``(images [B, H, W, 3] float32, targets)`` as ``make_pipeline``'s.
    """
    image_size = check_image_size(image_size)
    if start_step < 0 or batch_size < 1 or num_steps < 1:
        raise ValueError(f"need start_step >= 0, num_steps >= 1 and batch_size >= 1, got {start_step}, "
                         f"{num_steps}, {batch_size}")
    count = num_examples(examples)
    global_batch = batch_size * num_shards
    first, last = start_step * global_batch, (start_step + num_steps) * global_batch  # examples [first, last)
    epochs = range(first // count, -(-last // count))
    dataset = epoch_order(examples, seed=seed, epochs=epochs, shuffle_buffer=shuffle_buffer)
    dataset = dataset.enumerate(start=epochs.start * count).skip(first - epochs.start * count)
    if num_shards > 1:
        dataset = dataset.shard(num_shards, shard_index)
    preprocess = functools.partial(preprocess_example, image_size=image_size, max_boxes=max_boxes, flip=flip,
                                   scale_jitter=scale_jitter, warned=WarnedImages())  # one record for the stream

    def augment(index, example):
        return preprocess(example, tf.stack([tf.constant(seed, tf.int64), index]))

    dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
