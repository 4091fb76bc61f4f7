"""Speed of kdet's RetinaNet against TF Model Garden's, in one process.

Both models are ResNet-50 + FPN P3-P7, 9 anchors per location, 512x512 input,
random initialisation, 80 foreground classes, trainable BatchNormalization
(kdet ``freeze_batchnorm=False``, Model Garden's default), no weight decay,
SGD with momentum 0.9. kdet and Model Garden calls are interleaved (the order
rotates every round) so that both see the same machine noise; each is traced
and warmed up first. Reported per call: wall-time median and IQR, and the
median CPU time of the process (all threads), which other programs on the
machine disturb less.

* ``forward``   -- raw head outputs at batch 1, inference mode.
* ``inference`` -- forward + decoding + NMS at batch 1. kdet: ``model.detect``;
  Model Garden: ``RetinaNetModel(images, image_shape, training=False)`` with
  ``nms_version="batched"`` (``combined_non_max_suppression``; that path
  ignores ``pre_nms_top_k``). Pre-NMS top-k 1000 per level (kdet), score
  threshold 0.05, IoU 0.5, 100 detections.
* ``postprocess`` -- decoding + NMS alone on the forward's outputs, and on
  ``dense`` synthetic outputs where about half of all scores pass 0.05 (a
  randomly initialised head scores everything at the 0.01 prior, so NMS has
  nothing to do).
* ``train``     -- one step at batch 2. kdet: ``model.compile(SGD)`` then
  ``model.train_on_batch(images, {"boxes", "classes"})`` (ground truth padded
  to 100, targets assigned in-graph inside ``compute_loss``). Model Garden: a
  ``tf.function`` with forward, its focal + Huber losses (as in
  ``official/vision/tasks/retinanet.py``) and ``apply_gradients``, on targets
  from ``anchor.AnchorLabeler`` computed beforehand (Model Garden labels
  anchors in its input pipeline).
* ``kdet_assign`` -- kdet's anchors + in-graph target assignment alone at
  batch 2 (and ``mg_labeler``, Model Garden's labeler, for reference).

Class count: Model Garden reserves logit 0 for an implicit background (its
detection generator drops it, COCO labels are 1..90), so it is built with
``num_classes=81`` and labels 1..80: 80 scored classes in both, 81 vs 80
logits per anchor in the heads. Known architecture differences: Model
Garden's FPN and head convs are followed by BatchNormalization (kdet's head
has none) and its P6 comes from P5, kdet's from C5 (as in the paper).

Run (from the repository root)::

    .venv/bin/python -m benchmarks.retinanet_speed            # full run (~4 min on 2 cores)
    .venv/bin/python -m benchmarks.retinanet_speed --quick    # smoke run
    .venv/bin/python -m benchmarks.retinanet_speed --json out.json

Prints the environment, then one JSON object, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

IMAGE_SIZE = 512
NUM_CLASSES = 80
TRAIN_BATCH = 2
MAX_GT = 100  # kdet's padded ground-truth length
LEARNING_RATE = 1e-3
POSTPROCESS = dict(pre_nms_top_k=1000, score_threshold=0.05, nms_iou_threshold=0.5, max_detections=100)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few iterations (smoke run)")
    parser.add_argument("--train-iters", type=int, default=10)
    parser.add_argument("--infer-iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls after tracing")
    parser.add_argument("--gt-boxes", type=int, default=5, help="ground-truth boxes per training image")
    parser.add_argument("--intra-threads", type=int, default=os.cpu_count())
    parser.add_argument("--inter-threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the JSON object here")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_iters, args.infer_iters, args.warmup = 3, 4, 1
    return args


def configure_threads(intra: int, inter: int) -> dict:
    """Sets TF's thread pools; must run before the first TF op."""
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    return {
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def environment(threads: dict) -> dict:
    import keras
    import tf_keras

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf_keras": tf_keras.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "devices": [d.name for d in tf.config.list_logical_devices()],
        **threads,
    }


# ------------------------------------------------------------------- inputs
def random_inputs(seed: int, num_gt: int) -> dict:
    """Same random images and ground truth for both libraries (numpy).

    Returns ``image`` [1, S, S, 3], ``images`` [B, S, S, 3] (RGB 0..255),
    ``boxes`` [B, num_gt, 4] yxyx pixels and ``classes`` [B, num_gt] in 0..79.
    """
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, size=(TRAIN_BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    corner = rng.uniform(0, IMAGE_SIZE * 0.6, size=(TRAIN_BATCH, num_gt, 2))
    size = rng.uniform(24, IMAGE_SIZE * 0.4, size=(TRAIN_BATCH, num_gt, 2))
    boxes = np.concatenate([corner, np.minimum(corner + size, IMAGE_SIZE)], -1).astype(np.float32)
    classes = rng.integers(0, NUM_CLASSES, size=(TRAIN_BATCH, num_gt)).astype(np.int32)
    return {"image": images[:1], "images": images, "boxes": boxes, "classes": classes, "seed": seed}


def kdet_targets(inputs: dict) -> dict:
    """The pipeline's padded dict: boxes [B, MAX_GT, 4], classes [B, MAX_GT] with -1 padding."""
    n = inputs["boxes"].shape[1]
    boxes = np.zeros((TRAIN_BATCH, MAX_GT, 4), np.float32)
    classes = -np.ones((TRAIN_BATCH, MAX_GT), np.int32)
    boxes[:, :n], classes[:, :n] = inputs["boxes"], inputs["classes"]
    return {"boxes": tf.constant(boxes), "classes": tf.constant(classes)}


def dense_outputs(raw, seed: int):
    """Raw outputs shaped like ``raw`` with logits ~ N(-3, 1), codes ~ N(0, 0.1).

    About half of all (anchor, class) scores then pass the 0.05 threshold, so
    top-k and NMS run at full load; a randomly initialised head scores every
    pair at the 0.01 prior and leaves NMS nothing to do.
    """
    rng = np.random.default_rng(seed)

    def draw(t, mean, std):
        return tf.constant(rng.normal(mean, std, size=t.shape).astype(np.float32))

    def like(key, value):
        mean, std = (-3.0, 1.0) if key in ("class_logits", "cls") else (0.0, 0.1)
        return tf.nest.map_structure(lambda t: draw(t, mean, std), value)

    return {key: like(key, value) for key, value in raw.items()}


def mg_normalize(images: np.ndarray) -> tf.Tensor:
    """Model Garden's input-pipeline normalisation (its model takes normalised pixels)."""
    from official.vision.ops import preprocess_ops

    mean = np.array(preprocess_ops.MEAN_RGB, np.float32)
    std = np.array(preprocess_ops.STDDEV_RGB, np.float32)
    return tf.constant((images - mean) / std)


# --------------------------------------------------------------------- kdet
def build_kdet():
    import keras

    from kdet.detectors.retinanet import RetinaNet

    model = RetinaNet(num_classes=NUM_CLASSES, backbone=dict(name="resnet50", freeze_batchnorm=False),
                      postprocess=POSTPROCESS)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE, momentum=0.9))
    model(tf.zeros([1, IMAGE_SIZE, IMAGE_SIZE, 3]))  # build the weights
    return model


def count_traces(model) -> list:
    """Wraps ``model.train_step`` so that each trace of Keras' train function is counted."""
    traces = []
    step = model.train_step

    def counted(data):
        traces.append(1)  # Python side effect: runs only while tracing
        return step(data)

    model.train_step = counted
    return traces


def kdet_callables(model, inputs: dict) -> dict:
    """The kdet calls to time; each returns something to block on."""
    image, images = tf.constant(inputs["image"]), tf.constant(inputs["images"])
    targets = kdet_targets(inputs)
    forward = tf.function(lambda x: model(x, training=False))
    detect = tf.function(model.detect)
    post = tf.function(model.postprocess)
    raw = model(image, training=False)
    dense = dense_outputs(raw, inputs["seed"])

    @tf.function
    def assign(x, y):
        anchors = tf.concat(model.anchors_per_level(tf.shape(x)[1:3]), axis=0)
        return model.assign_targets(anchors, y)

    return {
        "forward": lambda: forward(image),
        "inference": lambda: detect(image),
        "postprocess": lambda: post(image, raw),
        "postprocess_dense": lambda: post(image, dense),
        "train": lambda: model.train_on_batch(images, targets, return_dict=True),
        "assign": lambda: assign(images, targets),
        "_functions": {"forward": forward, "inference": detect, "postprocess": post, "assign": assign},
    }


# ------------------------------------------------------------ Model Garden
def mg_experiment_config():
    """``retinanet_resnetfpn_coco`` changed to this benchmark's settings."""
    from official.core import exp_factory
    from official.vision.configs import retinanet as retinanet_cfg  # noqa: F401  (registers the experiment)

    config = exp_factory.get_exp_config("retinanet_resnetfpn_coco")
    model = config.task.model
    model.num_classes = NUM_CLASSES + 1  # index 0 = implicit background
    model.input_size = [IMAGE_SIZE, IMAGE_SIZE, 3]
    generator = model.detection_generator
    generator.nms_version = "batched"
    generator.pre_nms_top_k = POSTPROCESS["pre_nms_top_k"]
    generator.pre_nms_score_threshold = POSTPROCESS["score_threshold"]
    generator.nms_iou_threshold = POSTPROCESS["nms_iou_threshold"]
    generator.max_num_detections = POSTPROCESS["max_detections"]
    config.task.losses.focal_loss_gamma = 2.0  # kdet's (and the paper's) gamma
    return config


def build_mg():
    import tf_keras
    from official.vision.modeling import factory

    config = mg_experiment_config()
    specs = tf_keras.layers.InputSpec(shape=[None, IMAGE_SIZE, IMAGE_SIZE, 3])
    model = factory.build_retinanet(specs, config.task.model, l2_regularizer=None)
    optimizer = tf_keras.optimizers.SGD(learning_rate=LEARNING_RATE, momentum=0.9)
    return model, optimizer, config


def mg_anchor_boxes(model_config) -> dict:
    from official.vision.ops import anchor

    return anchor.Anchor(
        min_level=model_config.min_level, max_level=model_config.max_level,
        num_scales=model_config.anchor.num_scales, aspect_ratios=model_config.anchor.aspect_ratios,
        anchor_size=model_config.anchor.anchor_size, image_size=(IMAGE_SIZE, IMAGE_SIZE),
    ).multilevel_boxes


def mg_labeler_fn(model_config):
    """Model Garden's per-image ``AnchorLabeler`` over the batch, in one tf.function.

    Thresholds 0.5 / 0.4 as kdet's matcher (negatives below 0.4, ignored in between).
    """
    from official.vision.ops import anchor

    labeler = anchor.AnchorLabeler(match_threshold=0.5, unmatched_threshold=0.4)
    anchor_boxes = mg_anchor_boxes(model_config)

    @tf.function
    def label(boxes, classes):
        per_image = []
        for i in range(TRAIN_BATCH):
            cls, box, _, cls_w, box_w = labeler.label_anchors(anchor_boxes, boxes[i], classes[i][:, None] + 1)
            per_image.append({"cls_targets": cls, "box_targets": box, "cls_weights": cls_w, "box_weights": box_w})
        return tf.nest.map_structure(lambda *t: tf.stack(t), *per_image)

    return label


def mg_losses(config, outputs: dict, labels: dict) -> tf.Tensor:
    """Model Garden's RetinaNet loss with its public loss classes (tasks/retinanet.py)."""
    import tf_keras
    from official.vision.losses import focal_loss, loss_utils

    params = config.task.losses
    num_classes = config.task.model.num_classes
    cls_loss_fn = focal_loss.FocalLoss(
        alpha=params.focal_loss_alpha, gamma=params.focal_loss_gamma, reduction=tf_keras.losses.Reduction.SUM)
    box_loss_fn = tf_keras.losses.Huber(params.huber_loss_delta, reduction=tf_keras.losses.Reduction.SUM)
    num_positives = tf.reduce_sum(labels["box_weights"]) + 1.0
    y_true_cls = tf.one_hot(loss_utils.multi_level_flatten(labels["cls_targets"]), num_classes)
    y_pred_cls = loss_utils.multi_level_flatten(outputs["cls_outputs"], last_dim=num_classes)
    y_true_box = loss_utils.multi_level_flatten(labels["box_targets"], last_dim=4)
    y_pred_box = loss_utils.multi_level_flatten(outputs["box_outputs"], last_dim=4)
    cls_loss = cls_loss_fn(y_true_cls, y_pred_cls, sample_weight=labels["cls_weights"] / num_positives)
    box_loss = box_loss_fn(y_true_box, y_pred_box, sample_weight=labels["box_weights"] / num_positives)
    return cls_loss + params.box_loss_weight * box_loss


def mg_train_step_fn(model, optimizer, config):
    @tf.function
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            loss = mg_losses(config, outputs, labels)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return train_step


def mg_callables(model, optimizer, config, inputs: dict) -> dict:
    """The Model Garden calls to time; labels are computed once, outside the step."""
    image, images = mg_normalize(inputs["image"]), mg_normalize(inputs["images"])
    shape = tf.constant([[IMAGE_SIZE, IMAGE_SIZE]], tf.float32)
    label = mg_labeler_fn(config.task.model)
    boxes, classes = tf.constant(inputs["boxes"]), tf.constant(inputs["classes"])
    labels = label(boxes, classes)
    forward = tf.function(
        lambda x: model.head(model.decoder(model.backbone(x, training=False), training=False), training=False))
    infer = tf.function(lambda x: model(x, image_shape=shape, training=False))
    train = mg_train_step_fn(model, optimizer, config)
    anchors = {k: v[None] for k, v in mg_anchor_boxes(config.task.model).items()}
    post = tf.function(lambda out: model.detection_generator(out["box"], out["cls"], anchors, shape))
    scores, raw_boxes, _ = forward(image)
    raw = {"cls": scores, "box": raw_boxes}
    dense = dense_outputs(raw, inputs["seed"])
    return {
        "forward": lambda: forward(image),
        "inference": lambda: infer(image),
        "postprocess": lambda: post(raw),
        "postprocess_dense": lambda: post(dense),
        "train": lambda: train(images, labels),
        "labeler": lambda: label(boxes, classes),
        "_functions": {"forward": forward, "inference": infer, "postprocess": post, "train": train,
                       "labeler": label},
    }


# ------------------------------------------------------------------ timing
def block(result) -> None:
    """Waits for a result by fetching every tensor in it."""
    for t in tf.nest.flatten(result):
        if isinstance(t, tf.Tensor):
            t.numpy()


def warm_up(calls: dict, warmup: int) -> None:
    """The first call of each traces; it and ``warmup`` more calls are not timed."""
    for call in calls.values():
        for _ in range(1 + warmup):
            block(call())


def time_interleaved(calls: dict, iters: int) -> dict:
    """Times each call ``iters`` times, rotating the order every round.

    Returns:
      name -> ``(wall_ms, cpu_ms)`` lists. CPU time is this process's, summed
      over its threads: the work done, less sensitive than wall time to other
      programs competing for the cores.
    """
    names = list(calls)
    times = {name: ([], []) for name in names}
    for i in range(iters):
        for name in names[i % len(names):] + names[: i % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            block(calls[name]())
            times[name][0].append(1e3 * (time.perf_counter() - wall))
            times[name][1].append(1e3 * (time.process_time() - cpu))
    return times


def summarise(samples: tuple) -> dict:
    wall, cpu = samples
    q1, median, q3 = np.percentile(wall, [25, 50, 75])
    return {"median_ms": round(float(median), 1), "iqr_ms": round(float(q3 - q1), 1),
            "cpu_median_ms": round(float(np.median(cpu)), 1), "n": len(wall)}


def tracing_counts(functions: dict) -> dict:
    return {name: fn.experimental_get_tracing_count() for name, fn in functions.items()}


# ------------------------------------------------------------------ report
def ratios(t: dict) -> dict:
    """Ratios of wall-time medians (``cpu:`` keys: of CPU-time medians)."""

    def ratio(a, b, field="median_ms"):
        return round(t[a][field] / t[b][field], 3)

    return {
        "kdet_train/mg_train": ratio("kdet_train", "mg_train"),
        "kdet_inference/kdet_forward": ratio("kdet_inference", "kdet_forward"),
        "mg_inference/mg_forward": ratio("mg_inference", "mg_forward"),
        "kdet_forward/mg_forward": ratio("kdet_forward", "mg_forward"),
        "kdet_inference/mg_inference": ratio("kdet_inference", "mg_inference"),
        "kdet_postprocess/kdet_forward": ratio("kdet_postprocess", "kdet_forward"),
        "kdet_postprocess_dense/kdet_forward": ratio("kdet_postprocess_dense", "kdet_forward"),
        "kdet_assign/kdet_train": ratio("kdet_assign", "kdet_train"),
        "cpu:kdet_train/mg_train": ratio("kdet_train", "mg_train", "cpu_median_ms"),
        "cpu:kdet_inference/kdet_forward": ratio("kdet_inference", "kdet_forward", "cpu_median_ms"),
    }


def verdicts(r: dict) -> dict:
    def verdict(key, limit):
        return {"value": r[key], "limit": limit, "met": r[key] <= limit}

    return {
        "kdet_train/mg_train <= 1.0": verdict("kdet_train/mg_train", 1.0),
        "kdet_inference/kdet_forward <= 1.1": verdict("kdet_inference/kdet_forward", 1.1),
    }


TABLE_ROWS = (
    ("forward, batch 1", "forward"),
    ("inference, batch 1", "inference"),
    ("  postprocess alone", "postprocess"),
    ("  same, dense scores", "postprocess_dense"),
    ("train step, batch 2", "train"),
)


def print_table(report: dict) -> None:
    t, r = report["timings"], report["ratios"]

    def cell(key):
        return f"{t[key]['median_ms']:.1f} ({t[key]['iqr_ms']:.1f})"

    def ratio(a, b, field="median_ms"):
        return f"{t[a][field] / t[b][field]:.3f}"

    print(f"\n{'wall ms: median (IQR)':<23}{'kdet':>17}{'Model Garden':>19}{'kdet/MG':>9}"
          f"{'CPU ms: kdet':>14}{'MG':>9}{'kdet/MG':>9}")
    for label, key in TABLE_ROWS:
        k, m = f"kdet_{key}", f"mg_{key}"
        print(f"{label:<23}{cell(k):>17}{cell(m):>19}{ratio(k, m):>9}"
              f"{t[k]['cpu_median_ms']:>14.1f}{t[m]['cpu_median_ms']:>9.1f}{ratio(k, m, 'cpu_median_ms'):>9}")
    print(f"{'targets, batch 2':<23}{cell('kdet_assign'):>17}{cell('mg_labeler'):>19}"
          "   (kdet: inside its train step; MG: input pipeline)")
    print(f"\ninference/forward: kdet {r['kdet_inference/kdet_forward']:.3f}, MG {r['mg_inference/mg_forward']:.3f}; "
          f"kdet target assignment = {100 * r['kdet_assign/kdet_train']:.1f}% of kdet's train step")
    for name, v in report["targets"].items():
        print(f"target {name}: {'MET' if v['met'] else 'NOT MET'} ({v['value']:.3f})")


def count_params(model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def timed_phase(calls: dict, iters: int, warmup: int, traced) -> tuple[dict, bool]:
    """Warms up, then times; also says whether anything re-traced while timed."""
    warm_up(calls, warmup)
    before = traced()
    times = time_interleaved(calls, iters)
    return times, traced() != before


def measure(args) -> dict:
    inputs = random_inputs(args.seed, args.gt_boxes)
    kdet_model = build_kdet()
    traces = count_traces(kdet_model)
    mg_model, optimizer, config = build_mg()
    kdet, mg = kdet_callables(kdet_model, inputs), mg_callables(mg_model, optimizer, config, inputs)

    def traced():
        return {"kdet": {**tracing_counts(kdet["_functions"]), "train_on_batch": len(traces)},
                "mg": tracing_counts(mg["_functions"])}

    def pick(keys):
        return {f"{lib}_{k}": c[k] for k in keys for lib, c in (("kdet", kdet), ("mg", mg))}

    # Inference first (training moves the weights and BN statistics), then training.
    times, retraced_infer = timed_phase(
        pick(("forward", "inference", "postprocess", "postprocess_dense")), args.infer_iters, args.warmup, traced)
    train_times, retraced_train = timed_phase(
        {**pick(("train",)), "kdet_assign": kdet["assign"], "mg_labeler": mg["labeler"]},
        args.train_iters, args.warmup, traced)
    return {
        "timings": {k: summarise(v) for k, v in sorted({**times, **train_times}.items())},
        "tracing_counts": traced(),
        "retraced_while_timed": retraced_infer or retraced_train,
        "trainable_params": {"kdet": count_params(kdet_model), "mg": count_params(mg_model)},
        "kdet_jit_compile": bool(kdet_model.jit_compile),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads = configure_threads(args.intra_threads, args.inter_threads)
    env = environment(threads)
    print("environment:", json.dumps(env))
    report = {"environment": env, "config": {
        "image_size": IMAGE_SIZE, "num_classes": NUM_CLASSES, "mg_num_classes": NUM_CLASSES + 1,
        "train_batch": TRAIN_BATCH, "infer_batch": 1, "gt_boxes_per_image": args.gt_boxes,
        "kdet_gt_padding": MAX_GT, "freeze_batchnorm": False, "mg_nms_version": "batched",
        "train_iters": args.train_iters, "infer_iters": args.infer_iters, "warmup": args.warmup, **POSTPROCESS}}
    report.update(measure(args))
    report["ratios"] = ratios(report["timings"])
    report["targets"] = verdicts(report["ratios"])
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print_table(report)
    return report


if __name__ == "__main__":
    main()
