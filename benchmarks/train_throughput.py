"""Training throughput of a recipe: kdet's training loop against a bare ``model.fit`` on one cached batch.

Both train the recipe's own model (``build_model``, its optimiser and
schedule) in the same process, at the same image size and global batch:

* ``kdet_train`` -- :func:`kdet.training.train`: the resumable data stream
  (decode, augment, pad), step-level backups, TerminateOnNaNTerm and
  TensorBoard (evaluation off), under the strategy ``train`` picks
  (MirroredStrategy over the visible GPUs);
* ``bare_fit`` -- ``model.fit`` on one preprocessed batch repeated from
  memory, no callbacks: the model's own step time, the ceiling of any loop.

The ratio ``kdet_train / bare_fit`` (steps per second) is the loop's cost.
Times are per step after ``--warmup`` steps (tracing), median and IQR over
the rest. On a GPU machine the same command gives the GPU figure.

Run (from the repository root)::

    .venv/bin/python -m benchmarks.train_throughput                       # retinanet, 512x512, batch 2 per replica
    .venv/bin/python -m benchmarks.train_throughput --recipe cascade_rcnn_fpn --steps 30
    .venv/bin/python -m benchmarks.train_throughput --quick               # smoke run (tiny backbone, 128 px)

Prints one JSON object, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def summary(times, warmup):
    rest = np.asarray(times[warmup:])
    q1, median, q3 = np.percentile(rest, [25, 50, 75])
    return {"steps_timed": int(rest.size), "median_s": float(median), "iqr_s": float(q3 - q1),
            "steps_per_s": float(1 / median)}


def time_kdet_train(recipe, args, data, model_dir):
    from kdet.training import loop

    timer = StepTimer()
    original = loop.TerminateOnNaNTerm

    class TimedGuard(original):  # rides along with the loop's own callbacks
        def on_train_batch_begin(self, batch, logs=None):
            timer.on_train_batch_begin(batch, logs)

        def on_train_batch_end(self, batch, logs=None):
            super().on_train_batch_end(batch, logs)
            timer.on_train_batch_end(batch, logs)

    loop.TerminateOnNaNTerm = TimedGuard
    try:
        result = loop.train(recipe, model_dir=model_dir, data=data, steps=args.steps, evaluate=False,
                            backup_every=max(args.steps // 2, 1), verbose=0, mixed_precision=args.mixed_precision)
    finally:
        loop.TerminateOnNaNTerm = original
    return summary(timer.times, args.warmup), result.model.distribute_strategy.num_replicas_in_sync


def time_bare_fit(recipe, args, data):
    from kdet.data.pipeline import make_pipeline
    from kdet.data.sources import open_source
    from kdet.model_dir import build_for

    examples, info = open_source(data)
    images, targets = next(iter(make_pipeline(examples, image_size=recipe.image_size, batch_size=recipe.batch_size,
                                              training=True, seed=0, max_boxes=recipe.max_boxes)))
    model = recipe.build_model(info.num_classes, backbone=recipe.backbone, backbone_weights=None)
    build_for(model, recipe.image_size)
    model.compile(optimizer=recipe.schedule.for_batch(recipe.batch_size).make_optimizer())
    batch = tf.data.Dataset.from_tensors((images, targets)).repeat(args.steps)
    timer = StepTimer()
    model.fit(batch, epochs=1, steps_per_epoch=args.steps, callbacks=[timer], verbose=0)
    return summary(timer.times, args.warmup)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="retinanet", help="recipe name or path (default: %(default)s)")
    parser.add_argument("--data", default="embedded:shapes:train[:64]", help="(default: %(default)s)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(512, 512))
    parser.add_argument("--batch-per-replica", type=int, default=2)
    parser.add_argument("--backbone", default=None, help="(default: the recipe's)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--mixed-precision", choices=("float32", "mixed_float16", "mixed_bfloat16"), default=None,
                        help="dtype policy of both runs (default: float32)")
    parser.add_argument("--quick", action="store_true", help="tiny backbone, 128 px, 8 steps")
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.backbone, args.image_size, args.steps, args.warmup = "tiny", (128, 128), 8, 3
    return args


def main(argv=None):
    args = parse_args(argv)
    from kdet.cli import resolve_recipe
    from kdet.training.distribute import choose_strategy

    recipe, variant = resolve_recipe(args.recipe)
    replicas = choose_strategy("auto").num_replicas_in_sync
    recipe = recipe.replace(image_size=tuple(args.image_size), batch_size=args.batch_per_replica * replicas,
                            steps_per_epoch=args.steps, backbone=args.backbone or recipe.backbone,
                            backbone_weights=None)
    model_dir = tempfile.mkdtemp(prefix="kdet_throughput_")
    try:
        kdet, replicas = time_kdet_train(recipe, args, args.data, model_dir)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    from kdet.training.distribute import set_precision

    set_precision(args.mixed_precision)  # the loop set it for its run; the bare fit runs under the same policy
    bare = time_bare_fit(recipe, args, args.data)
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    result = {
        "recipe": f"{recipe.name} ({variant})", "backbone": recipe.backbone, "image_size": list(recipe.image_size),
        "global_batch": recipe.batch_size, "replicas": replicas, "devices": gpus or ["CPU"],
        "mixed_precision": args.mixed_precision or "float32",
        "cpu_count": os.cpu_count(), "tensorflow": tf.__version__, "python": platform.python_version(),
        "kdet_train": kdet, "bare_fit": bare,
        "loop_speed_ratio": kdet["steps_per_s"] / bare["steps_per_s"],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(f"\n{'':12} {'steps/s':>8} {'images/s':>9} {'median s':>9} {'IQR s':>7}")
    for name in ("kdet_train", "bare_fit"):
        r = result[name]
        print(f"{name:12} {r['steps_per_s']:8.2f} {r['steps_per_s'] * recipe.batch_size:9.1f} "
              f"{r['median_s']:9.3f} {r['iqr_s']:7.3f}")
    print(f"kdet loop / bare fit: {result['loop_speed_ratio']:.2f}x "
          f"({recipe.name}, {recipe.image_size[0]}x{recipe.image_size[1]}, batch {recipe.batch_size}, "
          f"{replicas} replica(s) on {', '.join(result['devices'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
