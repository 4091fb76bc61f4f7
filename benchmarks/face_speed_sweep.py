"""Face cascade stage budgets and thresholds: recall / AP50 of many test-time settings from one pass.

Which windows reach x12-x24 and x12-x24-x48 is decided by the test
thresholds, the budgets ``stage1_max_boxes`` / ``stage2_max_boxes`` and the
optional stage NMS (``stage1_nms_iou`` / ``stage2_nms_iou``). A window's
x12-x24 score and box depend only on that window, and its x12-x24-x48 score
only on the box x12-x24 gave it, so one pass that runs both later branches
on *every* window x12 keeps after response-map pooling (about 3,000 per VGA
image, ~1.5 s) gives every setting's detections by selection alone: this
script collects that pass once per split (cached in ``--cache``) and then
replays each setting in NumPy (thresholds, stable top-k as
``tf.math.top_k``, greedy NMS as ``NonMaxSuppressionV5``), scoring it like
the face benchmark (faces >= 20 px; AP50, recall and precision at the
operating point). ``--check`` runs ``FaceCascade.detect`` itself (the
benchmark's thresholds, the trained budgets) and compares, so the replay
is known to be exact (it was, for the octave pipeline before stage 1 ran on
block winners: the same detections, score differences 0, on 200 validation
images in float32 and in bfloat16).

The cost of a setting is the windows it sends to each branch: x12-x24 and
x12-x24-x48 run on the survivors padded to a multiple of
``PATCH_BATCH_MULTIPLE`` (``kdet.face.stages.refine``), so the table gives the padded counts and an
estimate of the later stages' milliseconds from ``--ms-per-patch`` (CPU ms
per padded patch on one core, measured with ``face_speed_profile.py``).
Choose on ``validation``; report the choice on ``test`` with
``face_speed_profile.py``.

Run (from the repository root)::

    .venv/bin/python -m benchmarks.face_speed_sweep --mtcnn \
        --overrides '{"pyramid": "area", "crop_method": "nearest", "compute_dtype": "bfloat16"}' \
        --ms-per-patch 0.05 0.2 --grid '{"t1": [0.005, 0.01, 0.015, 0.02, 0.03, 0.05], "stage1_max_boxes":
        [128, 160, 192, 256], "stage1_nms_iou": [null, 0.7, 0.8], "t2": [0.001, 0.01, 0.05],
        "stage2_max_boxes": [32, 48], "stage2_nms_iou": [null, 0.7, 0.5]}'
        # the benchmark's choice: the pass ~11 min on one core, the sweep ~2 min

The pass is cached with the identity of the weights it ran (path, size,
modification time): retrained weights are collected again, never replayed
from another model's pass.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks import face_benchmark  # noqa: E402
from benchmarks import face_peers  # noqa: E402

FIELDS = ("s12", "b12", "s24", "b24", "s48", "b48")
#: The grid swept by default: every combination (stage NMS None = off).
GRID = {
    "t1": (0.02, 0.05, 0.1),
    "stage1_max_boxes": (96, 128, 160, 192, 224, 256, 300),
    "stage1_nms_iou": (None, 0.8),
    "t2": (0.001, 0.01, 0.05),
    "stage2_max_boxes": (16, 24, 32, 40, 48, 60),
    "stage2_nms_iou": (None, 0.7, 0.5),
    "t3": (0.5,),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="validation", choices=("validation", "test"))
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--target", default="cascade_joint_from_separate")
    parser.add_argument("--weights-dir", default="benchmarks/results/face_benchmark")
    parser.add_argument("--overrides", default="{}",
                        help="JSON FaceCascade overrides of the pass (pyramid, crops); not thresholds or budgets")
    parser.add_argument("--cache", default=None, help="npz of the pass (default: in the temp dir, per split)")
    parser.add_argument("--check", action="store_true", help="compare the replay with detect() at the benchmark's "
                                                             "setting")
    parser.add_argument("--mtcnn", action="store_true", help="MTCNN's metrics on the split too")
    parser.add_argument("--ms-per-patch", type=float, nargs=2, default=(0.08, 0.37), metavar=("X24", "X48"))
    parser.add_argument("--max-recall-drop", type=float, default=0.0,
                        help="the table lists the cheapest settings within this many recall points of the best")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--grid", type=json.loads, default=None, metavar="JSON",
                        help="{key: [values]} replacing GRID's values for those keys")
    parser.add_argument("--all-rows", action="store_true", help="every setting's row in the JSON (~0.7 MB)")
    parser.add_argument("--json", default=None, help="default benchmarks/results/face_speed_sweep_<split>.json")
    args = parser.parse_args(argv)
    overrides = json.loads(args.overrides)
    tag = "_".join(f"{k}-{v}" for k, v in sorted(overrides.items()))
    args.cache = args.cache or os.path.join(tempfile.gettempdir(), f"kdet_face_sweep_{args.split}_{args.images}"
                                            f"{'_' + tag if tag else ''}.npz")
    args.json = args.json or f"benchmarks/results/face_speed_sweep_{args.split}.json"
    return args


def weights_identity(args) -> str:
    """The target's weights file as ``path:size:mtime``: what a cached pass must have been collected with."""
    path = os.path.abspath(face_benchmark.Store(args.weights_dir).paths(args.target, 0)[0])
    stat = os.stat(path)
    return f"{path}:{stat.st_size}:{int(stat.st_mtime)}"


def pass_model(args):
    """The target cascade with no thresholds and no budgets (every pooled window reaches every branch)."""
    from benchmarks import face_speed_profile

    everything = {"test_thresholds": [0.0, 0.0, 0.0], "stage1_max_boxes": 1 << 20, "stage2_max_boxes": 1 << 20,
                  "stage1_nms_iou": None, "stage2_nms_iou": None, **json.loads(args.overrides)}
    return face_speed_profile.load_model(args, everything)


def collect(args, examples) -> list[dict]:
    """Per image: every window x12 kept, in x12 order, with its x12, x12-x24 and x12-x24-x48 scores and boxes.

    Only windows with an x12 score above 0 (response-map pooling keeps one per
    block) are kept; ``s24 = 0`` / ``s48 = 0`` cannot happen for a kept
    window except by underflow.
    """
    weights = weights_identity(args)
    if os.path.exists(args.cache):
        data = np.load(args.cache)
        # a pass of other weights (retrained, or another --weights-dir) is collected again, not replayed
        cached = str(data["weights"]) if "weights" in data.files else ""
        if int(data["images"]) == len(examples) and cached == weights:
            print(f"using the pass cached in {args.cache}", flush=True)
            return [{f: data[f"{i}_{f}"] for f in FIELDS} for i in range(len(examples))]
        print(f"{args.cache} holds another pass (other weights or images): collecting again", flush=True)
    import tensorflow as tf

    from kdet.face import stages

    model, _ = pass_model(args)
    size = face_benchmark.VGA

    @tf.function(input_signature=[tf.TensorSpec([1, *size, 3], tf.uint8)])
    def every_window(images):
        for name, outputs in stages.detect_steps(model, images):  # up to x12's (unlimited) budget, as detect runs it
            if name == "pyramid":
                x, levels = outputs["image"], outputs["levels"]
            if name == "x12":
                break
        s12, b12 = outputs["scores"], outputs["boxes"]
        sources = stages.crop_sources(model, x, levels, stages.test_scales(model, size))
        # what detect_steps does next, minus the budgets (they reorder; the replay applies them)
        s24, b24 = stages.refine(model, sources, b12, s12, depth=2, threshold=0.0, image_size=size)
        s48, b48 = stages.refine(model, sources, b24, s24, depth=3, threshold=0.0, image_size=size)
        n = tf.reduce_sum(tf.cast(s12[0] > 0, tf.int32))  # sorted: the kept windows come first
        return {"s12": s12[0, :n], "b12": b12[0, :n], "s24": s24[0, :n], "b24": b24[0, :n], "s48": s48[0, :n],
                "b48": b48[0, :n]}

    started, per_image = time.perf_counter(), []
    for i, example in enumerate(examples):
        per_image.append({k: v.numpy() for k, v in every_window(tf.constant(example["image"][None])).items()})
        if (i + 1) % 20 == 0:
            print(f"  pass: {i + 1} images, {time.perf_counter() - started:.0f}s", flush=True)
    np.savez_compressed(args.cache, images=len(examples), weights=weights,
                        **{f"{i}_{f}": d[f] for i, d in enumerate(per_image) for f in FIELDS})
    return per_image


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_output: int) -> np.ndarray:
    """Indices kept by NonMaxSuppressionV5's rule (highest first, stable; drop IoU > threshold; scores > 0)."""
    from kdet.face.lite import greedy_nms as nms

    positive = np.flatnonzero(scores > 0)
    return positive[nms(boxes[positive], scores[positive], iou_threshold, max_output)]


def _ranked(boxes, scores, iou: float | None) -> np.ndarray:
    """Every index a budget could pass on, best first: a budget of ``k`` passes the first ``k``.

    Stable top-k by score among scores > 0 (``tf.math.top_k``), or greedy NMS
    at ``iou`` without a limit (NMS with a limit stops at the same prefix).
    """
    if iou is not None:
        return greedy_nms(boxes, scores, iou, len(scores))
    order = np.argsort(-scores, kind="stable")
    return order[scores[order] > 0]


def replay_grid(d: dict, grid: dict, *, image_size=face_benchmark.VGA, final_iou=0.3, max_detections=100):
    """One image at every setting of ``grid``: ``{setting tuple: (boxes, scores, to x24, to x48)}``.

    The setting tuple follows ``grid``'s keys (:data:`GRID`'s order); shared
    prefixes of the cascade are computed once.
    """
    height, width = image_size
    out = {}
    for t1, nms1 in itertools.product(grid["t1"], grid["stage1_nms_iou"]):
        ranked1 = _ranked(d["b12"], np.where(d["s12"] >= t1, d["s12"], 0.0), nms1)
        for budget1, t2, nms2 in itertools.product(grid["stage1_max_boxes"], grid["t2"], grid["stage2_nms_iou"]):
            first = ranked1[:budget1]
            s2 = np.zeros_like(d["s12"])
            s2[first] = np.where(d["s24"][first] >= t2, d["s24"][first], 0.0)
            ranked2 = _ranked(d["b24"], s2, nms2)
            for budget2, t3 in itertools.product(grid["stage2_max_boxes"], grid["t3"]):
                second = ranked2[:budget2]
                passed = second[d["s48"][second] >= t3]
                boxes = np.clip(d["b48"][passed], 0, [height, width, height, width]).astype(np.float32)
                scores = d["s48"][passed]
                kept = greedy_nms(boxes, scores, final_iou, max_detections)
                key = (t1, budget1, nms1, t2, budget2, nms2, t3)
                out[key] = (boxes[kept], scores[kept], len(first), len(second))
    return out


def replay(d: dict, p: dict, **kwargs):
    """One image's ``(boxes, scores, to x24, to x48)`` at setting ``p``."""
    return next(iter(replay_grid(d, {k: (p[k],) for k in GRID}, **kwargs).values()))


def padded(n: float) -> int:
    """Patches a later stage runs for ``n`` survivors (``kdet.face.stages.refine``'s padding)."""
    from kdet.face.stages import PATCH_BATCH_MULTIPLE as multiple

    return max(int(np.ceil(n / multiple)) * multiple, multiple)


def score(examples, detections, settings=("min20", "all")) -> dict:
    """The face benchmark's metrics (faces >= 20 px and all) of per-image ``(boxes, scores)``."""
    from kdet.evaluation.face import FaceEvaluator

    out = {}
    for setting in settings:
        minimum = face_benchmark.MIN_FACE if setting == "min20" else None
        evaluator = FaceEvaluator(false_positive_counts=face_benchmark.FP_COUNTS, min_face_size=minimum)
        for example, (boxes, scores) in zip(examples, detections):
            image_id = int(example["image_id"])
            evaluator.add_ground_truth(image_id, example["boxes"], example["is_crowd"])
            evaluator.add_detections(image_id, boxes, scores)
        values = evaluator.evaluate()
        pr = evaluator.last_curves.precision_recall
        found = len(pr.recall) > 0
        values["recall_at_op"] = float(pr.recall[-1]) if found else 0.0
        values["precision_at_op"] = float(pr.precision[-1]) if found else -1.0
        out[setting] = {k: float(v) for k, v in values.items()}
    return out


def sweep(args, examples, data, grid: dict) -> list[dict]:
    """Every setting of ``grid`` on the split: windows, padded patches, estimated later-stage ms, metrics."""
    per_image = [replay_grid(d, grid) for d in data]
    rows = []
    for key in per_image[0]:
        runs = [image[key] for image in per_image]
        metrics = score(examples, [(b, s) for b, s, _, _ in runs], settings=("min20",))
        n24 = np.array([r[2] for r in runs])
        n48 = np.array([r[3] for r in runs])
        pad24, pad48 = np.mean([padded(n) for n in n24]), np.mean([padded(n) for n in n48])
        rows.append({"setting": dict(zip(GRID, key)), "windows_x24": float(n24.mean()),
                     "windows_x48": float(n48.mean()), "padded_x24": float(pad24), "padded_x48": float(pad48),
                     "later_ms_estimate": float(pad24 * args.ms_per_patch[0] + pad48 * args.ms_per_patch[1]),
                     "AP50": metrics["min20"]["AP50"], "recall": metrics["min20"]["recall_at_op"],
                     "precision": metrics["min20"]["precision_at_op"]})
    return rows


def benchmark_setting() -> dict:
    """The face benchmark's cascade setting (its test thresholds, FaceCascade's budgets)."""
    defaults = face_benchmark.parse_args([])
    t1, t2, t3 = defaults.cascade_test_thresholds
    return {"t1": t1, "stage1_max_boxes": 300, "stage1_nms_iou": None, "t2": t2, "stage2_max_boxes": 60,
            "stage2_nms_iou": None, "t3": t3}


def check(args, examples, data) -> dict:
    """The replay of the benchmark's setting against FaceCascade.detect itself: the same detections?"""
    from benchmarks import face_speed_profile

    p = benchmark_setting()
    model, _ = face_speed_profile.load_model(args, {"stage1_nms_iou": None, "stage2_nms_iou": None,
                                                    **json.loads(args.overrides)})
    detect = face_benchmark.kdet_detector("cascade", model, 0.0)
    same, worst = 0, 0.0
    for example, d in zip(examples, data):
        boxes, scores = detect(example["image"])
        b, s, _, _ = replay(d, p)
        if len(s) == len(scores):
            same += 1
            if len(s):
                worst = max(worst, float(np.abs(np.sort(s) - np.sort(scores)).max()))
    return {"images_with_same_count": same, "images": len(examples), "max_score_difference": worst}


def mtcnn_metrics(examples) -> dict:
    peer = face_peers.make_peer("mtcnn")
    return score(examples, [peer.detect(e["image"]) for e in examples])


def main(argv=None) -> dict:
    args = parse_args(argv)
    face_peers.limit_cores(1)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from kdet.data.faces import face_examples

    examples = list(face_examples(args.split, num_images=args.images))
    data = collect(args, examples)
    report = {"args": vars(args)}
    if args.check:
        report["check"] = check(args, examples, data)
        print("check against detect():", report["check"], flush=True)
    if args.mtcnn:
        report["mtcnn"] = mtcnn_metrics(examples)
        print(f"MTCNN on {args.split}: AP50 {100 * report['mtcnn']['min20']['AP50']:.1f}, recall "
              f"{100 * report['mtcnn']['min20']['recall_at_op']:.1f}", flush=True)
    started = time.perf_counter()
    base = sweep(args, examples, data, {k: (v,) for k, v in benchmark_setting().items()})[0]
    grid = {**GRID, **{k: tuple(v) for k, v in (args.grid or {}).items()}}
    unknown = sorted(set(grid) - set(GRID))
    if unknown:
        raise SystemExit(f"--grid: unknown keys {unknown}; known: {list(GRID)}")
    rows = sweep(args, examples, data, grid)
    print(f"swept {len(rows)} settings in {time.perf_counter() - started:.0f}s", flush=True)
    best_recall = max(r["recall"] for r in rows)
    eligible = [r for r in rows if r["recall"] >= best_recall - args.max_recall_drop / 100 - 1e-9]
    frontier = sorted(rows, key=lambda r: (r["later_ms_estimate"], -r["recall"]))
    pareto, best = [], -1.0
    for r in frontier:  # the cheapest setting for each recall level
        if r["recall"] > best + 1e-9:
            pareto.append(r)
            best = r["recall"]
    report.update(base=base, pareto=pareto, cheapest_at_best_recall=sorted(
        eligible, key=lambda r: r["later_ms_estimate"])[:args.top], rows=rows if args.all_rows else None)
    print(format_rows([base] + pareto[::-1][:args.top]))
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"wrote {args.json}")
    return report


def format_rows(rows) -> str:
    lines = ["| t1 | budget 1 | NMS 1 | t2 | budget 2 | NMS 2 | t3 | win x24 | win x48 | later ms (est.) | AP50 | "
             "recall | precision |", "|---" * 13 + "|"]
    for r in rows:
        p = r["setting"]
        lines.append(f"| {p['t1']:g} | {p['stage1_max_boxes']} | {p['stage1_nms_iou']} | {p['t2']:g} | "
                     f"{p['stage2_max_boxes']} | {p['stage2_nms_iou']} | {p['t3']:g} | {r['windows_x24']:.0f} | "
                     f"{r['windows_x48']:.0f} | {r['later_ms_estimate']:.1f} | {100 * r['AP50']:.1f} | "
                     f"{100 * r['recall']:.1f} | {100 * r['precision']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
