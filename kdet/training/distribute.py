"""Distribution and precision: which ``tf.distribute`` strategy a run uses, which worker writes, the dtype policy."""

from __future__ import annotations

import json
import os
from typing import Any

import keras
import tensorflow as tf

from kdet.training.command import PRECISIONS, STRATEGIES
from kdet.training.stream import training_stream


def _tf_config_workers() -> int:
    text = os.environ.get("TF_CONFIG")
    if not text:
        return 0
    try:
        cluster = json.loads(text).get("cluster", {})
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def choose_strategy(kind: str = "auto") -> tf.distribute.Strategy:
    """The distribution strategy for ``kind`` (one of :data:`STRATEGIES`).

    ``auto``: ``multi_worker`` when ``TF_CONFIG`` names more than one worker,
    ``mirrored`` when GPUs are visible, otherwise the default strategy.
    """
    if kind not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {kind!r}")
    if kind == "auto":
        kind = ("multi_worker" if _tf_config_workers() > 1 else
                "mirrored" if tf.config.list_logical_devices("GPU") else "default")
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_multi_worker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy) -> bool:
    """True on the worker that writes the model directory and the logs."""
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().jobs)


def set_precision(policy: str | None) -> None:
    """Sets Keras' global dtype policy (``mixed_float16`` also scales the loss: Keras wraps the optimiser)."""
    policy = policy or "float32"
    if policy not in PRECISIONS:
        raise ValueError(f"mixed precision must be one of {PRECISIONS}, got {policy!r}")
    keras.mixed_precision.set_dtype_policy(policy)


def custom_loop(model, strategy, examples, callbacks, *, epoch, epochs, steps, start_step, batch_size, verbose,
                 **stream_args) -> dict[str, list[float]]:
    """``epochs`` epochs of ``steps`` steps with ``strategy.run`` over ``model.train_step``, driving Keras callbacks.

    The multi-worker path: ``model.fit`` fails under
    ``MultiWorkerMirroredStrategy`` in Keras 3 (keras-team/keras#20585), while
    ``strategy.run`` of the same ``train_step`` works. Each worker reads its
    shard of the global stream; gradients are all-reduced by the optimiser.
    """
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(f"the global batch {batch_size} must be a multiple of the {replicas} replicas")

    def dataset_fn(context: tf.distribute.InputContext):
        return training_stream(examples, batch_size=context.get_per_replica_batch_size(batch_size),
                               start_step=start_step, num_steps=epochs * steps,
                               num_shards=context.num_input_pipelines, shard_index=context.input_pipeline_id,
                               **stream_args)

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))

    @tf.function
    def train_step(iterator):
        logs = strategy.run(model.train_step, args=(next(iterator),))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in logs.items()}

    callback_list = keras.callbacks.CallbackList(callbacks, add_history=True, add_progbar=verbose != 0,
                                                 model=model, verbose=verbose, epochs=epoch + epochs, steps=steps)
    model.stop_training = False
    callback_list.on_train_begin()
    logs: dict[str, Any] = {}
    for current in range(epoch, epoch + epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(current)
        for batch in range(steps):
            callback_list.on_train_batch_begin(batch)
            logs = {k: float(v) for k, v in train_step(iterator).items()}
            callback_list.on_train_batch_end(batch, logs)
            if model.stop_training:
                break
        epoch_logs = dict(logs)
        callback_list.on_epoch_end(current, epoch_logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return model.history.history
