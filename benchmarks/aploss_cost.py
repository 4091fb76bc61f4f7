"""What AP-loss costs: inside a RetinaNet training step, and as the number of box-class pairs grows.

Two measurements, printed as one JSON object and two tables:

* ``step``: RetinaNet ResNet-50-FPN, 512x512, batch 8, 80 classes, random
  initialisation, SGD, ``train_on_batch`` with 5 ground-truth boxes per image;
  the classification loss is the focal loss or AP-loss (``method="sorted"``,
  delta 1, interpolated; every one of the 8 * 49104 * 80 = 31.4M anchor-class
  pairs ranked together). Each loss runs in its own process, alternating
  (focal, ap, focal, ap ...), so that peak memory (the process's maximum RSS)
  is measured per loss; wall time per step is the median after warm-up.
  Targets from the issue: AP-loss step overhead <= 15% and extra peak memory
  <= 10% over the focal loss. At random initialisation every logit sits near
  the 0.01 prior, so *no* negative is trivial: the worst case for AP-loss.
* ``scaling``: the loss alone (forward + the custom gradient) on ``n`` random
  pairs, ``n`` from 1e5 to 2e7, 2.5e-5 of them positive (a detector's share),
  scores as at initialisation (all negatives non-trivial): AP-loss sorted and
  pairwise (Algorithm 1's loop over positives; it is O(|P| |N|), so only up to
  ``--pairwise-max``), the AUC-loss, and the focal loss for reference. The
  log-log slope of time against ``n`` says how the cost grows (1 = linear).

Run (from the repository root)::

    .venv/bin/python -m benchmarks.aploss_cost             # full run (~15 min on 2 cores)
    .venv/bin/python -m benchmarks.aploss_cost --quick     # tiny backbone, 256 px, small n
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import worker_command  # noqa: E402
import numpy as np  # noqa: E402

NUM_CLASSES = 80
POSITIVE_SHARE = 2.5e-5


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny backbone, 256 px, small sizes (smoke run)")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="processes per loss, alternating")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e5, 3e5, 1e6, 3e6, 1e7, 2e7])
    parser.add_argument("--pairwise-max", type=float, default=1e6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--step-worker", choices=["focal", "ap"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.backbone, args.image_size, args.batch, args.steps, args.rounds = "tiny", 256, 2, 2, 1
        args.sizes, args.pairwise_max, args.repeats = [1e5, 3e5, 1e6], 3e5, 1
    return args


# ------------------------------------------------------------------ step
def step_worker(args) -> dict:
    """Runs in its own process: builds the model, times ``steps`` training steps, reports peak RSS."""
    import keras

    from kdet.detectors.retinanet import RetinaNet

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, [args.batch, args.image_size, args.image_size, 3]).astype(np.float32)
    corner = rng.uniform(0, args.image_size * 0.6, [args.batch, 5, 2])
    size = rng.uniform(24, args.image_size * 0.4, [args.batch, 5, 2])
    boxes = np.concatenate([corner, np.minimum(corner + size, args.image_size)], -1).astype(np.float32)
    targets = {"boxes": boxes, "classes": rng.integers(0, NUM_CLASSES, [args.batch, 5]).astype(np.int32)}
    keras.utils.set_random_seed(0)
    model = RetinaNet(num_classes=NUM_CLASSES, backbone=dict(name=args.backbone, freeze_batchnorm=False),
                      classification_loss=args.step_worker)
    model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9))
    times = []
    for i in range(1 + args.warmup + args.steps):  # the first call traces
        started = time.perf_counter()
        logs = model.train_on_batch(images, targets, return_dict=True)
        times.append(time.perf_counter() - started)
    timed = times[1 + args.warmup:]
    return {"loss": args.step_worker, "median_s": float(np.median(timed)), "times_s": timed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "final_logs": {k: float(v) for k, v in logs.items()}}


def run_step_workers(args) -> dict:
    results = {"focal": [], "ap": []}
    forwarded = ["--backbone", args.backbone, "--image-size", str(args.image_size), "--batch", str(args.batch),
                 "--steps", str(args.steps), "--warmup", str(args.warmup)]
    for round_ in range(args.rounds):
        for loss in (("focal", "ap") if round_ % 2 == 0 else ("ap", "focal")):
            print(f"step: {loss}, round {round_ + 1}/{args.rounds} ...", flush=True)
            command, env = worker_command("benchmarks.aploss_cost", "--step-worker", loss, *forwarded)
            done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
            if done.returncode != 0:
                raise RuntimeError(f"step worker {loss} failed:\n{done.stderr[-3000:]}")
            results[loss].append(json.loads(done.stdout.strip().splitlines()[-1]))
    summary = {}
    for loss, runs in results.items():
        summary[loss] = {"median_s": float(np.median([t for r in runs for t in r["times_s"]])),
                         "peak_rss_mb": float(max(r["peak_rss_mb"] for r in runs)), "runs": runs}
    summary["overhead"] = summary["ap"]["median_s"] / summary["focal"]["median_s"] - 1.0
    summary["extra_peak_memory"] = summary["ap"]["peak_rss_mb"] / summary["focal"]["peak_rss_mb"] - 1.0
    summary["targets"] = {"overhead<=0.15": summary["overhead"] <= 0.15,
                          "extra_peak_memory<=0.10": summary["extra_peak_memory"] <= 0.10}
    return summary


# --------------------------------------------------------------- scaling
def time_loss(fn, scores, labels, repeats: int) -> float:
    import tensorflow as tf

    variable = tf.Variable(scores)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = fn(variable, labels)
        return loss, tape.gradient(loss, variable)

    step()  # trace
    best = []
    for _ in range(repeats):
        started = time.perf_counter()
        _, grad = step()
        grad.numpy()
        best.append(time.perf_counter() - started)
    return float(np.median(best))


def scaling(args) -> dict:
    import tensorflow as tf

    from kdet import losses

    rows = []
    for n in (int(x) for x in args.sizes):
        rng = np.random.default_rng(n)
        anchors = n // NUM_CLASSES
        scores = rng.normal(-4.6, 0.3, [anchors, NUM_CLASSES]).astype(np.float32)  # ~ the 0.01 prior
        labels = np.zeros([anchors, NUM_CLASSES], np.int32)
        flat = labels.reshape(-1)
        flat[rng.choice(flat.size, max(10, int(flat.size * POSITIVE_SHARE)), replace=False)] = 1
        flat[rng.choice(flat.size, flat.size // 50, replace=False)] = -1
        labels_t = tf.constant(labels)
        one_hot = tf.cast(labels_t == 1, tf.float32)
        weights = tf.cast(tf.reduce_min(labels_t, axis=-1) >= 0, tf.float32)
        row = {"pairs": anchors * NUM_CLASSES, "positives": int((labels == 1).sum())}
        row["ap_sorted_s"] = time_loss(lambda s, t: losses.ap_loss(s, t), scores, labels_t, args.repeats)
        row["auc_sorted_s"] = time_loss(lambda s, t: losses.auc_loss(s, t), scores, labels_t, args.repeats)
        row["focal_s"] = time_loss(lambda s, t: losses.sigmoid_focal(one_hot, s, weights), scores, labels_t,
                                   args.repeats)
        if n <= args.pairwise_max:
            row["ap_pairwise_s"] = time_loss(lambda s, t: losses.ap_loss(s, t, method="pairwise"), scores, labels_t,
                                             args.repeats)
        rows.append(row)
        print("scaling: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in row.items()), flush=True)
    pairs = np.log([r["pairs"] for r in rows])
    slopes = {key: float(np.polyfit(pairs[: len(t)], np.log(t), 1)[0])
              for key in ("ap_sorted_s", "auc_sorted_s", "focal_s", "ap_pairwise_s")
              if len(t := [r[key] for r in rows if key in r]) >= 2}
    return {"rows": rows, "loglog_slopes": slopes}


def print_tables(report: dict) -> None:
    step = report.get("step")
    if step:
        print("\nTraining step (median wall time, peak RSS):")
        print("| loss | step s | peak RSS MB |\n|---|---|---|")
        for loss in ("focal", "ap"):
            print(f"| {loss} | {step[loss]['median_s']:.2f} | {step[loss]['peak_rss_mb']:.0f} |")
        print(f"AP-loss overhead {100 * step['overhead']:+.1f}% (target <= 15%), extra peak memory "
              f"{100 * step['extra_peak_memory']:+.1f}% (target <= 10%)")
    rows = report["scaling"]["rows"]
    print("\nLoss forward + gradient alone, seconds (all negatives non-trivial):")
    print("| pairs | positives | AP sorted | AUC sorted | AP pairwise | focal |\n|---|---|---|---|---|---|")
    for r in rows:
        pairwise = f"{r['ap_pairwise_s']:.4f}" if "ap_pairwise_s" in r else "-"
        print(f"| {r['pairs']:.2e} | {r['positives']} | {r['ap_sorted_s']:.4f} | {r['auc_sorted_s']:.4f} | "
              f"{pairwise} | {r['focal_s']:.4f} |")
    print("log-log slopes (1 = linear): " + ", ".join(f"{k} {v:.2f}" for k, v in report["scaling"]["loglog_slopes"].items()))


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.step_worker:
        print(json.dumps(step_worker(args)))
        return {}
    import tensorflow as tf

    report = {"environment": {"tensorflow": tf.__version__, "cpus": os.cpu_count(), "python": sys.version.split()[0]},
              "args": {k: v for k, v in vars(args).items() if k != "step_worker"}}
    report["scaling"] = scaling(args)
    report["step"] = run_step_workers(args)
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print_tables(report)
    return report


if __name__ == "__main__":
    main()
