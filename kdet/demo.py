"""The main job: train RetinaNet on the embedded synthetic shapes, evaluate, draw.

``kdet demo`` runs :func:`run_demo`: it generates the deterministic synthetic
set (no download), trains a small-backbone RetinaNet with ``model.fit`` and
Keras' progress bar, evaluates on the held-out validation split with
pycocotools, prints the COCO table and writes into ``out_dir``:

* ``predictions.png``: detections (coloured, with scores) and ground truth
  (dashed white) on a few validation images;
* ``metrics.json``: the COCO metrics, the config and the timings;
* ``coco_results.json``: the detections in COCO result format;
* ``model.weights.h5`` and ``kdet_model.json``: a model directory
  (:mod:`kdet.model_dir`) that ``kdet export --model-dir kdet_demo`` reads.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # TensorFlow is imported by run_demo, not by `kdet --help` (which reads its defaults)
    import keras

#: Side of the embedded shapes (the dataset's images).
IMAGE_SIZE = 128
#: Side of the network input. Measured from a fresh clone on the 2-core AVX2 machine (docs/benchmarks.md): at
#: 128 px, 14 epochs (the default) reach 14.5 AP in 446 s of training and 18 epochs 18.3 AP in 508-594 s; at 256
#: px (the ``:small`` recipes' size) 4 epochs took 402 s and reached 7.1 AP; 12 epochs there reach 35.6 but take
#: 21 minutes, twice the main job's budget.
INPUT_SIZE = 128


def demo_model_config(num_classes: int) -> dict:
    """RetinaNet P3-P7, 9 anchors, focal loss, sized for 128-px images on a CPU.

    RetinaNet's defaults with :data:`kdet.presets.SMALL_RETINANET` (the
    ``:small`` recipes' RetinaNet) on the tiny backbone: the anchors start at
    16 px (``anchor_size=2``) because the synthetic objects go down to ~10 px,
    and each ground truth also gets its best anchor
    (``allow_low_quality_matches``) so the smallest objects are trained.
    Returns :class:`RetinaNet` keyword arguments, specs as dicts of the fields
    they change (plain data, as ``metrics.json`` records them).
    """
    from kdet.presets import SMALL_RETINANET
    from kdet.specs import override

    return override(dict(num_classes=num_classes, backbone=dict(name="tiny")), SMALL_RETINANET)


def warmup_cosine_adam(total_steps: int, *, peak_lr: float = 1e-3) -> keras.optimizers.Optimizer:
    """Adam with a linear warm-up over 10% of the steps, then cosine decay.

    A peak of 2e-3 diverged from scratch in one of two otherwise identical
    runs (the tiny backbone has no pretrained weights); 1e-3 trains reliably.
    """
    import keras

    warmup = max(total_steps // 10, 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak_lr / 10, decay_steps=max(total_steps - warmup, 1), alpha=0.02,
        warmup_target=peak_lr, warmup_steps=warmup,
    )
    return keras.optimizers.Adam(learning_rate=schedule, clipnorm=10.0)


#: The picture: detections scored at least this, one label per object (see :func:`picture_scenes`).
PICTURE_SCORE_THRESHOLD = 0.5
PICTURE_MAX_OVERLAP = 0.5


def picture_scenes(seed: int, count: int = 8):
    """``(images, targets)``: the picture's scenes, a batch of ``count`` (the pipeline's evaluation contract).

    They are validation scenes rendered without the distracting lines and arcs
    (``clutter=False``) and with at least one object, so that a person sees the
    shapes; the COCO table is on the validation split as it is, clutter included.
    """
    import tensorflow as tf

    from kdet.data.pipeline import make_pipeline
    from kdet.data.synthetic import synthetic_dataset

    scenes = synthetic_dataset("validation", seed=seed, num_images=4 * count, image_size=IMAGE_SIZE, clutter=False)[0]
    scenes = scenes.filter(lambda e: tf.size(e["classes"]) > 0).take(count)
    return next(iter(make_pipeline(scenes, image_size=(INPUT_SIZE, INPUT_SIZE), batch_size=count, training=False)))


def _write_outputs(model, evaluator, out_dir: str, *, info, size, val_images: int, recipe: dict,
                   seed: int) -> str:
    """The predictions picture, the COCO results json and the model directory; returns the picture's path."""
    from kdet.model_dir import save_model_dir
    from kdet.visualize import save_detection_grid

    images, targets = picture_scenes(seed)
    picture = save_detection_grid(
        images.numpy(), model.predict_on_batch(images), os.path.join(out_dir, "predictions.png"),
        class_names=info.class_names, ground_truth={k: v.numpy() for k, v in targets.items()},
        score_threshold=PICTURE_SCORE_THRESHOLD, max_overlap=PICTURE_MAX_OVERLAP,
    )
    evaluator.write_results_json(os.path.join(out_dir, "coco_results.json"))
    save_model_dir(model, out_dir, input_size=size, class_names=info.class_names, category_ids=info.category_ids,
                   data=f"embedded:shapes:validation[:{val_images}]", recipe=recipe)
    return picture


def _write_summary(summary: dict, out_dir: str, picture: str) -> None:
    """``metrics.json``, and where everything is (absolute paths) with the commands that use it next."""
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(summary, f, indent=2)
    where = os.path.abspath(out_dir)
    print(f"\ntraining {summary['train_seconds']:.0f}s, total {summary['total_seconds']:.0f}s")
    print(f"picture:           {os.path.abspath(picture)}")
    print(f"model directory:   {where} (metrics.json, coco_results.json, model.weights.h5)")
    print(f"next: kdet detect IMAGE --model-dir {out_dir} | kdet export --model-dir {out_dir} --format tflite "
          f"--out demo.tflite")


def _demo_data(train_images: int, val_images: int, batch_size: int, seed: int):
    """``(train pipeline, validation pipeline, DetectionInfo)`` of the synthetic shapes."""
    from kdet.data.pipeline import make_pipeline
    from kdet.data.synthetic import synthetic_dataset

    started, size = time.time(), (INPUT_SIZE, INPUT_SIZE)
    train_examples, info = synthetic_dataset("train", seed=seed, num_images=train_images, image_size=IMAGE_SIZE)
    train = make_pipeline(train_examples, image_size=size, batch_size=batch_size, training=True, seed=seed)
    val = make_pipeline(synthetic_dataset("validation", seed=seed, num_images=val_images, image_size=IMAGE_SIZE)[0],
                        image_size=size, batch_size=16, training=False)
    print(f"kdet demo: {train_images} train / {val_images} validation synthetic images "
          f"({', '.join(info.class_names)}) generated in {time.time() - started:.1f}s")
    return train, val, info


def run_demo(
    *,
    out_dir: str = "kdet_demo",
    epochs: int = 14,
    train_images: int = 2000,
    val_images: int = 200,
    batch_size: int = 8,
    seed: int = 0,
    verbose: int | None = None,
) -> dict[str, float]:
    """Trains, evaluates and draws; returns the COCO metrics.

    Args:
      out_dir: where the PNG, json files and weights go.
      epochs: passes over the training split.
      train_images: training-split size (the set is generated from ``seed``).
      val_images: validation-split size.
      batch_size: images per step.
      seed: seeds the data, the pipeline and the weights.
      verbose: Keras fit verbosity; default: a progress bar on a terminal,
        one line per epoch otherwise.
    """
    import keras
    import numpy as np

    from kdet.detectors.retinanet import RetinaNet
    from kdet.evaluation.coco import CocoEvaluator, format_metrics_table
    from kdet.evaluation.loop import evaluate_model

    keras.utils.set_random_seed(seed)
    os.makedirs(out_dir, exist_ok=True)
    verbose = (1 if sys.stdout.isatty() else 2) if verbose is None else verbose
    started, size = time.time(), (INPUT_SIZE, INPUT_SIZE)
    train, val, info = _demo_data(train_images, val_images, batch_size, seed)

    config = demo_model_config(info.num_classes)
    model = RetinaNet(**config)
    steps = epochs * (train_images // batch_size)
    model.compile(optimizer=warmup_cosine_adam(steps))
    fit_started = time.time()
    history = model.fit(train, epochs=epochs, verbose=verbose, shuffle=False)  # the pipeline shuffles
    train_seconds = time.time() - fit_started

    evaluator = CocoEvaluator(category_ids=info.category_ids, class_names=info.class_names)
    metrics = evaluate_model(model, val, evaluator, progress=verbose == 1)
    print(f"\nCOCO metrics on the validation split ({val_images} images):")
    print(format_metrics_table(metrics))

    record = {"name": "kdet demo", "train_data": f"embedded:shapes:train[:{train_images}]", "epochs": epochs,
              "train_images": train_images, "batch_size": batch_size, "seed": seed}
    picture = _write_outputs(model, evaluator, out_dir, info=info, size=size, val_images=val_images,
                             recipe=record, seed=seed)
    summary = {"metrics": {k: float(v) for k, v in metrics.items()}, "config": config, "epochs": epochs,
               "train_images": train_images, "train_seconds": round(train_seconds, 1),
               "total_seconds": round(time.time() - started, 1),
               "final_loss": {k: float(np.asarray(v[-1])) for k, v in history.history.items()}}
    _write_summary(summary, out_dir, picture)
    return metrics
