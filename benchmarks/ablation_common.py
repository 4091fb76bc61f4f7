"""Shared machinery of the paper-table benchmarks (``cascade_ablation.py``, ``onestage_ablation.py``).

An ablation trains a few detector variants per seed on the embedded synthetic
shapes (128-px images, tiny backbone, same data, schedule and step count for
all), evaluates each trained model under one or more test options with
pycocotools, and prints paper-style tables of mean +- sample std over seeds.

* :func:`pretrain_backbone`: every variant starts from one tiny backbone
  trained once as the demo's RetinaNet on *other* synthetic images (seed 100),
  the CPU-sized analogue of the papers' ImageNet initialisation; cached.
* :func:`run_all`: each finished (seed, variant) run is written to
  ``out_dir/<variant>_seed<k>.json`` and skipped on restart, so a killed run
  resumes where it stopped.
* :func:`table`, :func:`format_table`, :func:`plot`: the printed tables and a
  PNG of AP against the IoU threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from kdet.data.pipeline import make_pipeline
from kdet.data.synthetic import synthetic_dataset
from kdet.demo import warmup_cosine_adam
from kdet.evaluation import CocoEvaluator, evaluate_model
from kdet.training.pretrain import pretrain_tiny_backbone, shapes_backbone_path

IMAGE_SIZE = 128

# A table row: (label, variant trained, keyword options of that model's detect()).
Row = tuple[str, str, dict]


def add_common_args(parser: argparse.ArgumentParser, *, out_dir: str, plot: str, variants: Sequence[str]) -> None:
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train-images", type=int, default=1600)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pretrain-steps", type=int, default=3000, help="RetinaNet steps that pretrain the backbone")
    parser.add_argument("--detectors", nargs="+", default=list(variants), choices=list(variants))
    parser.add_argument("--out-dir", default=out_dir, help="per-run JSON (finished runs are skipped on restart)")
    parser.add_argument("--pretrained-dir", default="benchmarks/results/pretrained",
                        help="where the pretrained backbone is cached (shared by the ablations)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 64 images, 1 epoch (smoke run)")
    parser.add_argument("--json", metavar="PATH", help="also write the JSON object here")
    parser.add_argument("--plot", metavar="PNG", default=plot, help="AP against IoU threshold ('' for none)")


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    if args.quick:
        args.seeds, args.epochs, args.train_images, args.val_images, args.pretrain_steps = [0], 1, 64, 16, 8
        args.out_dir = args.pretrained_dir = os.path.join(args.out_dir, "quick")
        args.plot = os.path.join(args.out_dir, os.path.basename(args.plot)) if args.plot else ""
    return args


def pretrain_backbone(out_dir: str, steps: int, batch_size: int) -> str:
    """The tiny backbone pretrained on seed-100 synthetic shapes (:func:`kdet.training.pretrain.pretrain_tiny_backbone`,
    the procedure of ``--backbone-weights shapes``), cached in ``out_dir``: about 5 minutes on 2 cores for 3000
    steps on a fresh clone."""
    return pretrain_tiny_backbone(shapes_backbone_path(steps, out_dir), steps=steps, batch_size=batch_size)


class Tester:
    """``predict_on_batch`` of a trained model with fixed ``detect()`` options (for :func:`evaluate_model`)."""

    def __init__(self, model: keras.Model, options: dict):
        self._detect = tf.function(lambda images: model.detect(images, **options), reduce_retracing=True)

    def predict_on_batch(self, images):
        return {k: v.numpy() for k, v in self._detect(tf.convert_to_tensor(images)).items()}


def options_key(options: dict) -> str:
    return json.dumps(options, sort_keys=True)


def train_and_test(variant: str, seed: int, args, *, build: Callable[[int], keras.Model], rows: Sequence[Row],
                   metrics: Sequence[str]) -> dict:
    """Trains ``build(num_classes)`` on seed ``seed``'s data; returns the metrics of every row of ``variant``."""
    keras.utils.set_random_seed(seed)
    train_examples, info = synthetic_dataset("train", seed=seed, num_images=args.train_images, image_size=IMAGE_SIZE)
    val_examples, _ = synthetic_dataset("validation", seed=seed, num_images=args.val_images, image_size=IMAGE_SIZE)
    size = (IMAGE_SIZE, IMAGE_SIZE)
    train = make_pipeline(train_examples, image_size=size, batch_size=args.batch_size, training=True, seed=seed)
    val = make_pipeline(val_examples, image_size=size, batch_size=16, training=False)
    model = build(info.num_classes)
    steps = args.epochs * (args.train_images // args.batch_size)
    model.compile(optimizer=warmup_cosine_adam(steps))
    started = time.time()
    history = model.fit(train, epochs=args.epochs, verbose=2)
    train_seconds = time.time() - started
    results = {}
    for _, trained, options in rows:
        key = options_key(options)
        if trained != variant or key in results:
            continue
        evaluator = CocoEvaluator(category_ids=info.category_ids, class_names=info.class_names)
        results[key] = {k: float(v) for k, v in evaluate_model(Tester(model, options), val, evaluator,
                                                               progress=False).items()}
        print(f"  {variant} seed {seed} {options}: " + " ".join(f"{m} {100 * results[key][m]:.1f}" for m in metrics),
              flush=True)
    return {"detector": variant, "seed": seed, "config": model.get_config(), "train_seconds": round(train_seconds, 1),
            "final_losses": {k: float(v[-1]) for k, v in history.history.items()}, "results": results}


def run_all(args, train: Callable[[str, int, str], dict]) -> list[dict]:
    """Every (seed, variant) run, resuming from the JSON files of finished ones."""
    os.makedirs(args.out_dir, exist_ok=True)
    backbone_weights = pretrain_backbone(args.pretrained_dir, args.pretrain_steps, args.batch_size)
    runs = []
    for seed in args.seeds:
        for variant in args.detectors:
            path = os.path.join(args.out_dir, f"{variant}_seed{seed}.json")
            if os.path.exists(path):
                with open(path) as f:
                    run = json.load(f)
                print(f"{variant} seed {seed}: done before ({path})")
            else:
                print(f"\n== {variant}, seed {seed} ==", flush=True)
                run = train(variant, seed, backbone_weights)
                run["args"] = {k: v for k, v in vars(args).items() if k not in ("json", "out_dir")}
                with open(path, "w") as f:
                    json.dump(run, f, indent=1)
            runs.append(run)
    return runs


def table(rows: Sequence[Row], runs: list[dict], metrics: Sequence[str]) -> list[dict]:
    """One entry per row: mean and sample std of each metric over the seeds that have it, in percent.

    The runs store :meth:`CocoEvaluator.evaluate`'s fractions; the tables,
    like the papers', are x100.
    """
    out = []
    for label, variant, options in rows:
        key = options_key(options)
        found = [r["results"][key] for r in runs if r["detector"] == variant and key in r["results"]]
        if not found:
            continue
        entry = {"row": label, "detector": variant, "options": options, "seeds": len(found)}
        for m in metrics:
            values = 100.0 * np.array([f[m] for f in found])
            entry[m] = {"mean": round(float(values.mean()), 2),
                        "std": round(float(values.std(ddof=1)), 2) if len(values) > 1 else 0.0}
        out.append(entry)
    return out


def format_table(title: str, entries: list[dict], metrics: Sequence[str]) -> str:
    lines = [title, "", "| | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for e in entries:
        lines.append(f"| {e['row']} | " + " | ".join(f"{e[m]['mean']:.1f} ± {e[m]['std']:.1f}" for m in metrics)
                     + " |")
    return "\n".join(lines)


def difference(entries: list[dict], better: str, base: str, metrics: Sequence[str]) -> dict:
    """Row ``better`` minus row ``base``, per metric (means); {} if either is missing."""
    by_row = {e["row"]: e for e in entries}
    if better not in by_row or base not in by_row:
        return {}
    return {m: round(by_row[better][m]["mean"] - by_row[base][m]["mean"], 2) for m in metrics}


def plot(panels: Sequence[tuple[str, list[dict]]], path: str, metrics: Sequence[str]) -> str:
    """One panel per table: AP at each IoU threshold among ``metrics`` (``AP50``...), mean +- std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [m for m in metrics if m[2:].isdigit()]
    ious = [int(m[2:]) / 100 for m in columns]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), sharey=True, squeeze=False)
    for ax, (title, entries) in zip(axes[0], panels):
        for e in entries:
            means = np.array([e[m]["mean"] for m in columns])
            stds = np.array([e[m]["std"] for m in columns])
            line, = ax.plot(ious, means, marker="o", label=f"{e['row']} (AP {e['AP']['mean']:.1f})")
            ax.fill_between(ious, means - stds, means + stds, color=line.get_color(), alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("IoU threshold")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("AP (mean ± std over seeds)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(args, runs: list[dict], tables: dict[str, list[dict]], started: float, **extra) -> dict:
    """The JSON object every ablation prints (and writes to ``--json``)."""
    out = {
        "environment": {"python": sys.version.split()[0], "tensorflow": tf.__version__, "keras": keras.__version__,
                        "machine": platform.machine(), "cpus": os.cpu_count()},
        "args": dict(vars(args)),
        "wall_seconds_this_invocation": round(time.time() - started, 1),
        "train_seconds": {f"{r['detector']}_seed{r['seed']}": r["train_seconds"] for r in runs},
        **tables,
        **extra,
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out
