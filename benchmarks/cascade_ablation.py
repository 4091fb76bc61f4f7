"""The Cascade R-CNN paper's Table 1 and Table 2, reproduced on the embedded synthetic shapes.

For each seed, three detectors of the same family are trained with
``model.fit`` on the synthetic training split (tiny CPU backbone, FPN P2-P6,
the same RPN, data, schedule and step count for all) and evaluated with
pycocotools on the validation split. As the paper starts from an ImageNet
backbone with frozen BatchNorm, all start from one tiny backbone pretrained
once as a RetinaNet on *other* synthetic images (seed 100; cached in
``--out-dir``), with frozen BatchNorm. (From scratch, with batch statistics,
the RoI heads barely learn in this budget and the inference-mode statistics
disagree with the training-mode ones: AP 0.2 after 1200 steps.)

* **Faster R-CNN** (the paper's FPN+ baseline): one RoI stage at IoU 0.5;
* **Iterative BBox**: the *same trained* Faster R-CNN with its head applied
  three times at inference (``iterations=3``);
* **Integral loss**: one stage, three classifiers at U = {0.5, 0.6, 0.7}
  sharing one regressor, their probabilities averaged;
* **Cascade R-CNN**: three stages at (0.5, 0.6, 0.7), per-stage box weights,
  probability ensemble "1~3".

Table 1 prints AP, AP50, AP60, AP70, AP80 and AP90 of the four (mean +- sample
std over the seeds). Table 2 tests the trained cascade at stage 1, 2 or 3 alone
and with the ensembles "1~2" and "1~3", next to the baseline. The paper's claim
is that the cascade beats the baseline on AP, with the largest gains at AP80
and AP90.

Every finished (seed, detector) run is saved to ``--out-dir`` as JSON and
skipped when the script is started again, so a killed run resumes where it
stopped. Prints one JSON object (everything) and then the two tables.

Run (from the repository root)::

    .venv/bin/python benchmarks/cascade_ablation.py                  # 3 seeds (see README for the time)
    .venv/bin/python benchmarks/cascade_ablation.py --quick          # smoke run, ~2 min
    .venv/bin/python benchmarks/cascade_ablation.py --seeds 0 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kdet.data.pipeline import make_pipeline  # noqa: E402
from kdet.data.synthetic import synthetic_dataset  # noqa: E402
from kdet.demo import warmup_cosine_adam  # noqa: E402
from kdet.demo import demo_model_config  # noqa: E402
from kdet.detectors.cascade_rcnn import CascadeRCNN  # noqa: E402
from kdet.detectors.retinanet import RetinaNet  # noqa: E402
from kdet.evaluation import CocoEvaluator, evaluate_model  # noqa: E402

IMAGE_SIZE = 128
PRETRAIN_SEED = 100
METRICS = ("AP", "AP50", "AP60", "AP70", "AP80", "AP90")
BOX_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))

# Detector -> the constructor data that makes it (everything else is shared).
DETECTORS = {
    "faster_rcnn": dict(stage_ious=(0.5,), stage_box_weights=BOX_WEIGHTS[:1], stage_loss_weights=(1.0,)),
    "integral_loss": dict(stage_ious=(0.5,), stage_box_weights=BOX_WEIGHTS[:1], stage_loss_weights=(1.0,),
                          integral_ious=(0.5, 0.6, 0.7)),
    "cascade": dict(stage_ious=(0.5, 0.6, 0.7), stage_box_weights=BOX_WEIGHTS, stage_loss_weights=(1.0, 0.5, 0.25)),
}

# Table rows: (label, detector trained, detect() options).
TABLE1 = (
    ("Faster R-CNN (FPN+)", "faster_rcnn", dict(stages=1, ensemble=False, iterations=1)),
    ("Iterative BBox", "faster_rcnn", dict(stages=1, ensemble=False, iterations=3)),
    ("Integral Loss", "integral_loss", dict(stages=1, ensemble=True, iterations=1)),
    ("Cascade R-CNN", "cascade", dict(stages=3, ensemble=True, iterations=1)),
)
TABLE2 = (
    ("FPN+ baseline", "faster_rcnn", dict(stages=1, ensemble=False, iterations=1)),
    ("stage 1", "cascade", dict(stages=1, ensemble=False, iterations=1)),
    ("stage 2", "cascade", dict(stages=2, ensemble=False, iterations=1)),
    ("stage 3", "cascade", dict(stages=3, ensemble=False, iterations=1)),
    ("stages 1~2", "cascade", dict(stages=2, ensemble=True, iterations=1)),
    ("stages 1~3", "cascade", dict(stages=3, ensemble=True, iterations=1)),
)


def model_config(detector: str, num_classes: int, backbone_weights: str | None = None) -> dict:
    """Shared Faster/Cascade R-CNN data sized for 128-px images on a CPU, plus the detector's own.

    RPN anchors 16..256 px on P2..P6 (the synthetic objects are 10..115
    px); RoIs pooled from P4 at 56 px (224 scaled like the images, so the
    objects spread over P2..P5); 128 RoIs per image at 25% positives (the
    images hold at most 8 objects); 256-wide box heads; frozen BatchNorm.
    """
    rpn = dict(backbone="tiny", backbone_weights=backbone_weights, freeze_batchnorm=True, fpn_filters=64,
               head_filters=64, anchor_size=4.0, pre_nms_top_k_train=1000, max_proposals_train=512,
               pre_nms_top_k_test=500, max_proposals_test=300)
    return dict(num_classes=num_classes, rpn=rpn, num_rois=128, fc_dim=256, roi_canonical_size=56.0,
                **DETECTORS[detector])


def pretrain_backbone(args) -> str:
    """The shared starting point: a tiny backbone trained as the demo's RetinaNet on seed-100 images (cached)."""
    path = os.path.join(args.out_dir, f"pretrained_tiny_backbone_{args.pretrain_steps}.weights.h5")
    if os.path.exists(path):
        print(f"pretrained backbone: {path} (cached)")
        return path
    print(f"\n== pretraining the tiny backbone as a RetinaNet, {args.pretrain_steps} steps ==", flush=True)
    keras.utils.set_random_seed(PRETRAIN_SEED)
    examples, info = synthetic_dataset("train", seed=PRETRAIN_SEED, image_size=IMAGE_SIZE)
    data = make_pipeline(examples, image_size=(IMAGE_SIZE, IMAGE_SIZE), batch_size=args.batch_size, training=True,
                         seed=PRETRAIN_SEED).repeat()
    model = RetinaNet(**demo_model_config(info.num_classes))
    model.compile(optimizer=warmup_cosine_adam(args.pretrain_steps))
    started = time.time()
    model.fit(data, steps_per_epoch=args.pretrain_steps, epochs=1, verbose=2)
    model.backbone.save_weights(path)
    print(f"pretrained in {time.time() - started:.0f}s -> {path}")
    return path


class Tester:
    """``predict_on_batch`` of a trained model with fixed ``detect()`` options (for :func:`evaluate_model`)."""

    def __init__(self, model: CascadeRCNN, options: dict):
        self._detect = tf.function(lambda images: model.detect(images, **options), reduce_retracing=True)

    def predict_on_batch(self, images):
        return {k: v.numpy() for k, v in self._detect(tf.convert_to_tensor(images)).items()}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train-images", type=int, default=1600)
    parser.add_argument("--pretrain-steps", type=int, default=3000, help="RetinaNet steps that pretrain the backbone")
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=list(DETECTORS))
    parser.add_argument("--out-dir", default="benchmarks/results/cascade_ablation",
                        help="per-run JSON (finished runs are skipped on restart)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 64 images, 1 epoch (smoke run)")
    parser.add_argument("--json", metavar="PATH", help="also write the JSON object here")
    parser.add_argument("--plot", metavar="PNG", default="docs/cascade_ablation.png",
                        help="AP against IoU threshold for both tables ('' for none)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.train_images, args.val_images, args.pretrain_steps = [0], 1, 64, 16, 8
        args.out_dir = os.path.join(args.out_dir, "quick")
        args.plot = os.path.join(args.out_dir, "cascade_ablation.png") if args.plot else ""
    return args


def train_and_test(detector: str, seed: int, args, backbone_weights: str) -> dict:
    """Trains one detector on one seed; returns the metrics of every table row that uses it."""
    keras.utils.set_random_seed(seed)
    train_examples, info = synthetic_dataset("train", seed=seed, num_images=args.train_images, image_size=IMAGE_SIZE)
    val_examples, _ = synthetic_dataset("validation", seed=seed, num_images=args.val_images, image_size=IMAGE_SIZE)
    size = (IMAGE_SIZE, IMAGE_SIZE)
    train = make_pipeline(train_examples, image_size=size, batch_size=args.batch_size, training=True, seed=seed)
    val = make_pipeline(val_examples, image_size=size, batch_size=16, training=False)
    config = model_config(detector, info.num_classes, backbone_weights)
    model = CascadeRCNN(**config)
    steps = args.epochs * (args.train_images // args.batch_size)
    model.compile(optimizer=warmup_cosine_adam(steps))
    started = time.time()
    history = model.fit(train, epochs=args.epochs, verbose=2)
    train_seconds = time.time() - started
    rows = {}
    for label, trained, options in TABLE1 + TABLE2:
        key = json.dumps(options, sort_keys=True)
        if trained != detector or key in rows:
            continue
        evaluator = CocoEvaluator(category_ids=info.category_ids, class_names=info.class_names)
        rows[key] = {k: float(v) for k, v in evaluate_model(Tester(model, options), val, evaluator,
                                                            progress=False).items()}
        print(f"  {detector} seed {seed} {options}: " + " ".join(f"{m} {rows[key][m]:.1f}" for m in METRICS))
    return {"detector": detector, "seed": seed, "config": config, "train_seconds": round(train_seconds, 1),
            "final_losses": {k: float(v[-1]) for k, v in history.history.items()}, "results": rows}


def run_all(args) -> list[dict]:
    os.makedirs(args.out_dir, exist_ok=True)
    backbone_weights = pretrain_backbone(args)
    runs = []
    for seed in args.seeds:
        for detector in args.detectors:
            path = os.path.join(args.out_dir, f"{detector}_seed{seed}.json")
            if os.path.exists(path):
                with open(path) as f:
                    run = json.load(f)
                print(f"{detector} seed {seed}: done before ({path})")
            else:
                print(f"\n== {detector}, seed {seed} ==", flush=True)
                run = train_and_test(detector, seed, args, backbone_weights)
                run["args"] = {k: v for k, v in vars(args).items() if k not in ("json", "out_dir")}
                with open(path, "w") as f:
                    json.dump(run, f, indent=1)
            runs.append(run)
    return runs


def table(rows: tuple, runs: list[dict]) -> list[dict]:
    """One entry per row: mean and sample std of each metric over the seeds that have it."""
    out = []
    for label, detector, options in rows:
        key = json.dumps(options, sort_keys=True)
        found = [r["results"][key] for r in runs if r["detector"] == detector and key in r["results"]]
        if not found:
            continue
        entry = {"row": label, "detector": detector, "options": options, "seeds": len(found)}
        for m in METRICS:
            values = np.array([f[m] for f in found])
            entry[m] = {"mean": round(float(values.mean()), 2),
                        "std": round(float(values.std(ddof=1)), 2) if len(values) > 1 else 0.0}
        out.append(entry)
    return out


def format_table(title: str, entries: list[dict]) -> str:
    lines = [title, "", "| | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for e in entries:
        lines.append(f"| {e['row']} | " + " | ".join(f"{e[m]['mean']:.1f} ± {e[m]['std']:.1f}" for m in METRICS)
                     + " |")
    return "\n".join(lines)


def plot(t1: list[dict], t2: list[dict], path: str) -> str:
    """AP against the IoU threshold for Table 1's detectors (left) and Table 2's tests (right), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ious = [int(m[2:]) / 100 for m in METRICS[1:]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, entries, title in ((axes[0], t1, "Table 1: detectors"), (axes[1], t2, "Table 2: cascade tested at")):
        for e in entries:
            means = np.array([e[m]["mean"] for m in METRICS[1:]])
            stds = np.array([e[m]["std"] for m in METRICS[1:]])
            line, = ax.plot(ious, means, marker="o", label=f"{e['row']} (AP {e['AP']['mean']:.1f})")
            ax.fill_between(ious, means - stds, means + stds, color=line.get_color(), alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("IoU threshold")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("AP (mean ± std over seeds)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def gains(t1: list[dict]) -> dict:
    """Cascade minus baseline, per metric (means)."""
    by_row = {e["row"]: e for e in t1}
    base, cascade = by_row.get("Faster R-CNN (FPN+)"), by_row.get("Cascade R-CNN")
    if not (base and cascade):
        return {}
    return {m: round(cascade[m]["mean"] - base[m]["mean"], 2) for m in METRICS}


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.time()
    runs = run_all(args)
    t1, t2 = table(TABLE1, runs), table(TABLE2, runs)
    report = {
        "environment": {"python": sys.version.split()[0], "tensorflow": tf.__version__, "keras": keras.__version__,
                        "machine": platform.machine(), "cpus": os.cpu_count()},
        "args": {k: v for k, v in vars(args).items()},
        "wall_seconds_this_invocation": round(time.time() - started, 1),
        "train_seconds": {f"{r['detector']}_seed{r['seed']}": r["train_seconds"] for r in runs},
        "table1": t1,
        "table2": t2,
        "cascade_minus_baseline": gains(t1),
    }
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    seeds = len(args.seeds)
    print()
    print(format_table(f"Table 1 form: COCO AP on the synthetic validation split (mean ± std, {seeds} seeds)", t1))
    print()
    print(format_table("Table 2 form: the cascade tested at each stage and with the stage ensembles", t2))
    if args.plot and t1:
        print(f"\nwrote {plot(t1, t2, args.plot)}")
    if report["cascade_minus_baseline"]:
        print("\ncascade - baseline: " + ", ".join(f"{m} {v:+.1f}" for m, v in report["cascade_minus_baseline"].items()))
    return report


if __name__ == "__main__":
    main()
