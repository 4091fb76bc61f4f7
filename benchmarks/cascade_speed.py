"""Speed of kdet's Cascade R-CNN against TF Model Garden's cascade Faster R-CNN, in one process.

Both models are ResNet-50 + FPN P2-P6, one anchor scale and 3 ratios per
level (32..512 px), 512x512 input, random initialisation, 80 foreground
classes, trainable BatchNormalization (kdet ``freeze_batchnorm=False``), no
weight decay, SGD with momentum 0.9, and a 3-stage cascade at IoU 0.5 / 0.6 /
0.7 with per-stage box weights (10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15,
15), one class-agnostic box per RoI and stage, 2-fc (1024) box heads, 512
RoIs per image at 25% foreground for stage 1, RoIAlign 7x7, 2000 training /
1000 test proposals (RPN NMS 0.7), the ensemble of the stage classifiers at
inference, score threshold 0.05, NMS 0.5, 100 detections. Timing follows
``retinanet_speed.py`` (whose helpers it imports): kdet and Model Garden calls
are interleaved (the order rotates every round), each is traced and warmed up
first; reported per call are the wall-time median and IQR and the median CPU
time of the process (all threads).

* ``backbone``  -- ResNet-50 + FPN alone at batch 1, inference mode. kdet:
  ``model.rpn.features``; Model Garden: ``decoder(backbone(x))``.
* ``inference`` -- images to final detections at batch 1, random init. kdet:
  ``model.detect`` (proposals, 3 stages, ensemble, top 1000 (box, class)
  pairs, class-aware NMS); Model Garden: ``MaskRCNNModel(images,
  image_shape, anchor_boxes, training=False)`` built by
  ``factory.build_maskrcnn`` with ``include_mask=False`` and its detection
  generator at its defaults (see below). ``inference - backbone``
  (difference of the medians) is what each spends after the backbone: RPN
  head, proposals, RoIAlign, 3 heads, final top-k and NMS.
* ``inference_dense`` -- the same calls with dense scores, as a trained
  detector has: many RoIs score above 0.05, so the final NMS works. Every
  stage's final classifier is rescaled in both models (``dense_scores``):
  kdet's ``heads[s].classifier``, Model Garden's ``detection_head[s].
  _classifier`` (the ``detection-scores`` Dense of its ``DetectionHead``),
  both 81 logits with index 0 = background. Per stage, on this image's RoIs,
  the kernel is scaled so that its term has a standard deviation of 1 logit
  across RoIs (one scalar per stage) and the bias is set so that the mean
  logits are ``log(p / p_rest)`` for p = 0.5 (background), 0.1 for each of
  foreground classes 1..4 (twice the threshold), and 0.1 / 76 for each of
  the other 76 (``dense_bias``: 5.94, 4.33 x 4, 0 x 76). Both models then
  score ~3500 (RoI, class) pairs of 1000 RoIs x 80 classes above 0.05
  (``score_check`` prints the counts and the detections; 100 in both). The
  backbone is timed again in that phase (``backbone_dense``) so that its
  "after the backbone" compares calls made under the same load. Weights are
  restored before the train step is timed.
* ``train``     -- one step at batch 2. kdet: ``model.compile(SGD)`` then
  ``model.train_on_batch(images, {"boxes", "classes"})`` (ground truth padded
  to 100; RPN targets, RoI sampling and stage labels in-graph inside
  ``compute_loss``). Model Garden: ``MaskRCNNTask.train_step`` itself
  (``official/vision/tasks/maskrcnn.py``: forward with ``training=True``,
  ``gt_boxes`` / ``gt_classes`` padded to 100 with -1, RPN + cascade Fast
  R-CNN losses, ``apply_gradients``) in a ``tf.function``, on RPN targets from
  ``anchor.RpnAnchorLabeler`` computed beforehand (Model Garden labels anchors
  in its input pipeline; ``mg_rpn_labeler`` times that for reference). Its
  RoI sampling and stage labelling are in its model, in-graph, as kdet's.

Model Garden's detection generator is left at Model Garden's defaults for this
experiment, except the settings the comparison must share (score threshold
0.05, NMS 0.5, 100 detections): ``nms_version="v2"`` (``--mg-nms-version``:
``v2`` (default), ``v1``, ``batched``) and ``pre_nms_top_k=5000``. v2 is
per class: top ``min(5000, 1000 RoIs)`` = every RoI for each of the 80
classes, then 80 padded ``sorted_non_max_suppression_padded`` calls (tiles of
512 boxes; sub-threshold boxes are zeroed, not removed, so it runs whatever
the scores). kdet's equivalent budget is one top-k of ``max_detections * 10 =
1000`` (box, class) pairs over all classes, then one class-aware
``NonMaxSuppressionV5`` on those (sub-threshold pairs dropped). Its
``roi_generator.use_batched_nms`` also stays at Model Garden's default,
``False`` (per-level NMS with its padded NMS, not
``combined_non_max_suppression``). Both generators' settings are in the JSON
(``mg_generators``).

Model Garden configuration: experiment ``maskrcnn_resnetfpn_coco`` with the
cascade fields of ``cascadercnn_spinenet_coco``
(``roi_sampler.cascade_iou_thresholds=[0.6, 0.7]`` after the first stage's
``foreground_iou_threshold=0.5``, ``detection_head.class_agnostic_bbox_pred``
and ``cascade_class_ensemble``), ``include_mask=False``, input 512x512,
``detection_head`` ``num_convs=0, num_fcs=2, fc_dims=1024`` (its default is
4 convs + 1 fc; kdet's head is the paper's 2 fc), ``roi_generator.
num_proposals=2000`` (kdet's training budget) and ``use_sync_bn=False`` (one
device). The per-stage box weights are hard-coded in ``MaskRCNNModel``
(``_cascade_layer_to_weights``, a TODO to make them configurable); they are
the values above, so nothing is set. Model Garden reserves logit 0 for
the background as kdet does: ``num_classes=81``, labels 1..80 (kdet: 0..79).

Known differences that are not settings:

* Ensemble: Model Garden averages the stage *logits*, each stage's on its own
  input RoIs, then takes the softmax; kdet averages the stage *probabilities*
  on the last stage's input RoIs (the authors' code), so it runs the fc layers
  of stages 1 and 2 a second time (on already pooled features: 5 head passes
  against Model Garden's 3, but 3 RoIAligns in both).
* Stages 2 and 3 in training: Model Garden's samplers keep the 512 RoIs of
  stage 1 (``skip_subsampling``); kdet relabels the previous stage's 512
  regressed boxes: the same RoI count per stage.
* Losses: Model Garden averages the stage losses (weight 1/3 each), kdet
  weights them 1, 0.5, 0.25; Huber vs smooth L1. No effect on speed.
* Model Garden's FPN output convs, RPN head conv and fc layers are followed by
  BatchNormalization (kdet's have none); its P6 is a stride-2 conv on P5,
  kdet's a stride-2 max pool (detectron2's); its RoIAlign is a gather-based
  ``multilevel_crop_and_resize``, kdet's uses ``tf.image.crop_and_resize``
  per level (``use_gather_roi_align=False``, the default).
* Random initialisation is not the same load in ``inference``: Model
  Garden's classifier (after BatchNorm'd fcs) scores every class at about
  1/81 < 0.05, so nothing passes its threshold (its v2 NMS runs anyway, see
  above; with ``batched`` it has nothing to do), while kdet's fc7 (no
  BatchNorm, kernel term std ~2 logits against Model Garden's ~0.4) puts a
  few classes above 0.05 on every RoI, so kdet's top-k is full and its final
  NMS works even at random init. ``inference_dense`` gives both the same
  score distribution. The RPN's NMS (1000 test proposals) runs at full load
  in both conditions.

Run (from the repository root)::

    .venv/bin/python -m benchmarks.cascade_speed            # full run (~8 min on 2 cores)
    .venv/bin/python -m benchmarks.cascade_speed --quick    # smoke run (~4.5 min)
    .venv/bin/python -m benchmarks.cascade_speed --quick --mg-nms-version batched
    .venv/bin/python -m benchmarks.cascade_speed --json out.json

Prints the environment, then one JSON object, then a table and the issue's
targets (kdet inference <= 0.5x Model Garden's, in both inference conditions,
train step <= 0.8x), each on wall time and on CPU time, and how many
backbones' time each model spends after its backbone (the issue expects about
10 for Model Garden).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from benchmarks.retinanet_speed import (  # noqa: E402  (generic helpers shared with the RetinaNet benchmark)
    IMAGE_SIZE,
    LEARNING_RATE,
    MAX_GT,
    NUM_CLASSES,
    TRAIN_BATCH,
    configure_threads,
    count_params,
    count_traces,
    environment,
    kdet_targets,
    mg_normalize,
    random_inputs,
    summarise,
    timed_phase,
    tracing_counts,
)

STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_BOX_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
HEAD = dict(num_rois=512, roi_positive_fraction=0.25, fc_dim=1024)
PROPOSALS = dict(pre_nms_top_k_train=2000, max_proposals_train=2000, pre_nms_top_k_test=1000,
                 max_proposals_test=1000, nms_iou_threshold=0.7)
POSTPROCESS = dict(score_threshold=0.05, nms_iou_threshold=0.5, max_detections=100)
MG_NMS_VERSIONS = ("v2", "v1", "batched")  # Model Garden's detection generator; "v2" is its default
# Dense scores (``inference_dense``): the bias of every stage's final classifier, both models (index 0 =
# background). Logit ``log(p_c / p_rest)`` for the background and the first DENSE_CLASSES foreground classes,
# 0 for the other 76: probabilities background 0.5, classes 1..4 0.1 each, the other 76 0.1 together.
DENSE_CLASSES = 4
DENSE_PROBS = dict(background=0.5, foreground=0.1, rest=0.1)
DENSE_SIGMA = 1.0  # per-RoI spread of every logit around those means (see dense_scores)
TARGETS = {"kdet_inference/mg_inference": 0.5, "kdet_train/mg_train": 0.8}  # from the issue
# The inference target applies to both inference conditions.
TARGET_RATIOS = {"kdet_inference/mg_inference": 0.5, "kdet_inference_dense/mg_inference_dense": 0.5,
                 "kdet_train/mg_train": 0.8}


def parse_args(argv=None) -> argparse.Namespace:
    """Same options as ``retinanet_speed.py``; fewer default iterations (a cascade step is ~3x slower)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few iterations (smoke run)")
    parser.add_argument("--train-iters", type=int, default=8)
    parser.add_argument("--infer-iters", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls after tracing")
    parser.add_argument("--gt-boxes", type=int, default=5, help="ground-truth boxes per training image")
    parser.add_argument("--intra-threads", type=int, default=os.cpu_count())
    parser.add_argument("--inter-threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the JSON object here")
    parser.add_argument("--mg-nms-version", choices=MG_NMS_VERSIONS, default="v2",
                        help="Model Garden's detection_generator.nms_version (default: v2, Model Garden's default)")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_iters, args.infer_iters, args.warmup = 3, 4, 1
    return args


# --------------------------------------------------------------------- kdet
def build_kdet():
    import keras

    from kdet.detectors.cascade_rcnn import CascadeRCNN

    model = CascadeRCNN(
        num_classes=NUM_CLASSES,
        rpn=dict(backbone=dict(name="resnet50", freeze_batchnorm=False), proposals=PROPOSALS),
        stages=dict(ious=STAGE_IOUS, box_weights=STAGE_BOX_WEIGHTS, ensemble=True),
        roi_sampling=dict(num_samples=HEAD["num_rois"], positive_fraction=HEAD["roi_positive_fraction"]),
        fc_dim=HEAD["fc_dim"], postprocess=POSTPROCESS,
    )
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE, momentum=0.9))
    model(tf.zeros([1, IMAGE_SIZE, IMAGE_SIZE, 3]))  # build the backbone, FPN and RPN head
    model.detect(tf.zeros([1, IMAGE_SIZE, IMAGE_SIZE, 3]))  # and the stage heads
    return model


def kdet_callables(model, inputs: dict) -> dict:
    """The kdet calls to time; each returns something to block on."""
    image, images = tf.constant(inputs["image"]), tf.constant(inputs["images"])
    targets = kdet_targets(inputs)
    backbone = tf.function(lambda x: model.rpn.features(x, training=False))
    detect = tf.function(model.detect)

    def scores():  # the ensemble's [1, R, 80] foreground probabilities, 0 on invalid RoIs (as detect ranks them)
        result = model.cascade_inference(image, model(image, training=False), stages=len(STAGE_IOUS), ensemble=True)
        return tf.where(result["valid"][..., None], result["scores"][..., 1:], 0.0)

    return {
        "backbone": lambda: backbone(image),
        "inference": lambda: detect(image),
        "_scores": scores,
        "_image": image,
        "train": lambda: model.train_on_batch(images, targets, return_dict=True),
        "_functions": {"backbone": backbone, "inference": detect},
    }


# ------------------------------------------------------------ Model Garden
def mg_experiment_config(nms_version: str = "v2"):
    """``maskrcnn_resnetfpn_coco`` with ``cascadercnn_spinenet_coco``'s cascade, at this benchmark's settings."""
    from official.core import exp_factory
    from official.vision.configs import maskrcnn as maskrcnn_cfg  # noqa: F401  (registers the experiment)

    config = exp_factory.get_exp_config("maskrcnn_resnetfpn_coco")
    config.task.init_checkpoint = None  # random initialisation
    model = config.task.model
    model.num_classes = NUM_CLASSES + 1  # index 0 = background
    model.input_size = [IMAGE_SIZE, IMAGE_SIZE, 3]
    model.include_mask = False
    model.min_level, model.max_level = 2, 6
    model.norm_activation.use_sync_bn = False
    head = model.detection_head
    head.num_convs, head.num_fcs, head.fc_dims = 0, 2, HEAD["fc_dim"]
    head.class_agnostic_bbox_pred = True
    head.cascade_class_ensemble = True
    sampler = model.roi_sampler
    sampler.num_sampled_rois = HEAD["num_rois"]
    sampler.foreground_fraction = HEAD["roi_positive_fraction"]
    sampler.foreground_iou_threshold = sampler.background_iou_high_threshold = STAGE_IOUS[0]
    sampler.cascade_iou_thresholds = list(STAGE_IOUS[1:])
    roi = model.roi_generator
    roi.pre_nms_top_k, roi.num_proposals = PROPOSALS["pre_nms_top_k_train"], PROPOSALS["max_proposals_train"]
    roi.test_pre_nms_top_k, roi.test_num_proposals = PROPOSALS["pre_nms_top_k_test"], PROPOSALS["max_proposals_test"]
    roi.nms_iou_threshold = roi.test_nms_iou_threshold = PROPOSALS["nms_iou_threshold"]
    generator = model.detection_generator
    generator.nms_version = nms_version  # pre_nms_top_k stays at Model Garden's default (5000 per class)
    generator.pre_nms_score_threshold = POSTPROCESS["score_threshold"]
    generator.nms_iou_threshold = POSTPROCESS["nms_iou_threshold"]
    generator.max_num_detections = POSTPROCESS["max_detections"]
    config.task.losses.l2_weight_decay = 0.0
    return config


def build_mg(nms_version: str = "v2"):
    import tf_keras
    from official.vision.modeling import factory
    from official.vision.tasks import maskrcnn as maskrcnn_task

    config = mg_experiment_config(nms_version)
    specs = tf_keras.layers.InputSpec(shape=[None, IMAGE_SIZE, IMAGE_SIZE, 3])
    model = factory.build_maskrcnn(specs, config.task.model, l2_regularizer=None)
    weights = [tuple(w) for w in model._cascade_layer_to_weights[: len(STAGE_IOUS)]]  # hard-coded in Model Garden
    if weights != list(STAGE_BOX_WEIGHTS):
        raise RuntimeError(f"Model Garden's cascade box weights changed: {weights}")
    optimizer = tf_keras.optimizers.SGD(learning_rate=LEARNING_RATE, momentum=0.9)
    return model, optimizer, config, maskrcnn_task.MaskRCNNTask(config.task)


def mg_anchor_boxes(model_config, batch: int) -> dict:
    """Model Garden's multilevel anchors ``{level: [batch, H_l, W_l, A * 4]}`` (its input pipeline's)."""
    from official.vision.ops import anchor

    boxes = anchor.Anchor(
        min_level=model_config.min_level, max_level=model_config.max_level,
        num_scales=model_config.anchor.num_scales, aspect_ratios=model_config.anchor.aspect_ratios,
        anchor_size=model_config.anchor.anchor_size, image_size=(IMAGE_SIZE, IMAGE_SIZE),
    ).multilevel_boxes
    return {level: tf.tile(b[None], [batch, 1, 1, 1]) for level, b in boxes.items()}


def mg_rpn_labeler_fn(config):
    """Model Garden's per-image ``RpnAnchorLabeler`` (its parser's settings) over the batch, in one tf.function."""
    from official.vision.ops import anchor

    parser = config.task.train_data.parser
    labeler = anchor.RpnAnchorLabeler(parser.rpn_match_threshold, parser.rpn_unmatched_threshold,
                                      parser.rpn_batch_size_per_im, parser.rpn_fg_fraction)
    anchor_boxes = {k: v[0] for k, v in mg_anchor_boxes(config.task.model, 1).items()}

    @tf.function
    def label(boxes, classes):
        per_image = []
        for i in range(TRAIN_BATCH):
            scores, box_targets = labeler.label_anchors(anchor_boxes, boxes[i], tf.cast(classes[i][:, None] + 1,
                                                                                        tf.float32))
            per_image.append({"rpn_score_targets": scores, "rpn_box_targets": box_targets})
        return tf.nest.map_structure(lambda *t: tf.stack(t), *per_image)

    return label


def mg_labels(config, inputs: dict, rpn_targets: dict) -> dict:
    """The labels dict of Model Garden's Mask R-CNN parser (no resize: scale 1, offset 0)."""
    n = inputs["boxes"].shape[1]
    boxes = -np.ones((TRAIN_BATCH, MAX_GT, 4), np.float32)
    classes = -np.ones((TRAIN_BATCH, MAX_GT), np.int32)
    boxes[:, :n], classes[:, :n] = inputs["boxes"], inputs["classes"] + 1
    info = np.array([[IMAGE_SIZE, IMAGE_SIZE], [IMAGE_SIZE, IMAGE_SIZE], [1.0, 1.0], [0.0, 0.0]], np.float32)
    return {
        "anchor_boxes": mg_anchor_boxes(config.task.model, TRAIN_BATCH),
        "image_info": tf.constant(np.tile(info[None], [TRAIN_BATCH, 1, 1])),
        "gt_boxes": tf.constant(boxes),
        "gt_classes": tf.constant(classes),
        **rpn_targets,
    }


def mg_callables(model, optimizer, config, task, inputs: dict) -> dict:
    """The Model Garden calls to time; RPN labels are computed once, outside the step."""
    image, images = mg_normalize(inputs["image"]), mg_normalize(inputs["images"])
    shape = tf.constant([[IMAGE_SIZE, IMAGE_SIZE]], tf.float32)
    anchors = mg_anchor_boxes(config.task.model, 1)
    label = mg_rpn_labeler_fn(config)
    boxes, classes = tf.constant(inputs["boxes"]), tf.constant(inputs["classes"])
    labels = mg_labels(config, inputs, label(boxes, classes))
    backbone = tf.function(lambda x: model.decoder(model.backbone(x, training=False), training=False))
    infer = tf.function(lambda x: model(x, image_shape=shape, anchor_boxes=anchors, training=False))
    train = tf.function(lambda x, y: task.train_step((x, y), model, optimizer))
    return {
        "backbone": lambda: backbone(image),
        "inference": lambda: {k: v for k, v in infer(image).items() if k.startswith(("detection_", "num_"))},
        "train": lambda: train(images, labels),
        "rpn_labeler": lambda: label(boxes, classes),
        # Model Garden's ensemble: softmax of the stage logits' mean (cls_outputs), background dropped.
        "_scores": lambda: tf.nn.softmax(infer(image)["cls_outputs"], axis=-1)[..., 1:],
        "_raw_inference": lambda: infer(image),
        "_functions": {"backbone": backbone, "inference": infer, "train": train, "rpn_labeler": label},
    }


# ------------------------------------------------------------ dense scores
def dense_bias() -> np.ndarray:
    """The target mean logits of ``inference_dense``, ``[81]`` (index 0 = background), the same in both models.

    ``log(p / p_rest)``: background 5.94 (p = 0.5), foreground classes 1..4
    4.33 (p = 0.1 each, twice the 0.05 threshold), the other 76 classes 0 (p =
    0.1 / 76 = 0.0013 each).
    """
    p_rest = DENSE_PROBS["rest"] / (NUM_CLASSES - DENSE_CLASSES)
    bias = np.zeros(NUM_CLASSES + 1, np.float32)
    bias[0] = np.log(DENSE_PROBS["background"] / p_rest)
    bias[1:1 + DENSE_CLASSES] = np.log(DENSE_PROBS["foreground"] / p_rest)
    return bias


def stage_classifiers(kdet_model, mg_model) -> dict:
    """``(kernel, bias)`` of every stage's final classifier: kdet ``heads[s].classifier``, Model Garden
    ``detection_head[s]._classifier`` (its ``DetectionHead``'s ``detection-scores`` Dense, built on the first call)."""
    found = {"kdet": [(h.classifier.kernel, h.classifier.bias) for h in kdet_model.heads],
             "mg": [(h._classifier.kernel, h._classifier.bias) for h in mg_model.detection_head]}
    if any(len(h.classifiers) != 1 for h in kdet_model.heads):
        raise RuntimeError("kdet's stage heads have more than one classifier")
    for lib, layers in found.items():
        if len(layers) != len(STAGE_IOUS) or any(tuple(b.shape) != (NUM_CLASSES + 1,) for _, b in layers):
            raise RuntimeError(f"{lib}: expected {len(STAGE_IOUS)} stage classifiers with {NUM_CLASSES + 1} outputs")
    return found


def kdet_stage_logits(model, image) -> list:
    """Each stage's class logits ``[R, 81]`` on its own input RoIs (valid ones), as ``cascade_inference`` runs them."""
    from kdet import boxes as box_ops

    outputs = model(image, training=False)
    proposals = model.rpn.proposals(image, outputs["rpn"], training=False)
    valid = (proposals["levels"] >= 0).numpy()[0]
    rois, logits = proposals["boxes"], []
    for s in range(len(STAGE_IOUS)):
        out = model.run_stage(s, outputs["features"], rois)
        logits.append(out["class_logits"].numpy()[0][valid])
        rois = box_ops.clip_boxes(out["boxes"], tf.shape(image)[1:3])
    return logits


def mg_stage_logits(mg: dict) -> list:
    """Each stage's class logits ``[R, 81]`` on its own input RoIs (Model Garden's ``class_outputs[_s]``)."""
    raw = mg["_raw_inference"]()
    keys = ["class_outputs"] + [f"class_outputs_{s}" for s in range(1, len(STAGE_IOUS))]
    if any(k not in raw for k in keys):
        raise RuntimeError(f"Model Garden's inference outputs lack {keys}: {sorted(raw)}")
    return [raw[k].numpy()[0] for k in keys]


@contextlib.contextmanager
def dense_scores(classifiers: dict, logits: dict):
    """Sets every stage classifier (both models) so that its logits are ``dense_bias() + DENSE_SIGMA * z``.

    For stage s of each model, ``k = logits - bias`` (the kernel's term) on
    this image's RoIs; ``z = (k - mean over RoIs per class) / std of that``
    (one scalar per stage). The kernel is multiplied by ``DENSE_SIGMA / std``
    and the bias set to ``dense_bias() - DENSE_SIGMA * mean / std``: logits
    with the same per-class mean and the same per-RoI spread in both models
    (their random fc7 features differ: Model Garden's fcs have BatchNorm,
    kdet's none; kdet's raw kernel term is ~5x larger). Traced functions
    read the variables; everything is restored on exit. Yields the scales.
    """
    saved = {lib: [(k.numpy(), b.numpy()) for k, b in layers] for lib, layers in classifiers.items()}
    scales = {}
    try:
        for lib, layers in classifiers.items():
            scales[lib] = []
            for (kernel, bias), (k0, b0), stage_logits in zip(layers, saved[lib], logits[lib]):
                term = stage_logits - b0
                mean = term.mean(axis=0)
                scale = DENSE_SIGMA / float((term - mean).std())
                kernel.assign(k0 * scale)
                bias.assign(dense_bias() - scale * mean)
                scales[lib].append(round(scale, 5))
        yield scales
    finally:
        for lib, layers in classifiers.items():
            for (kernel, bias), (k0, b0) in zip(layers, saved[lib]):
                kernel.assign(k0)
                bias.assign(b0)


def score_check(kdet: dict, mg: dict) -> dict:
    """Per model, one call each: (RoI, class) pairs at or above the score threshold before NMS, and detections."""
    threshold = POSTPROCESS["score_threshold"]

    def summary(scores, detections):
        n = int(detections["num_detections"][0])
        classes = detections["detection_classes"] if "detection_classes" in detections else detections["classes"]
        offset = 1 if "detection_classes" in detections else 0  # Model Garden's labels are 1..80
        scores = scores.numpy()
        return {"pairs_above_threshold": int((scores >= threshold).sum()),
                "rois_with_a_class_above": int((scores >= threshold).any(-1).sum()),
                "max_foreground_score": round(float(scores.max()), 4),
                "num_detections": n,
                "detected_labels": sorted({int(c) - offset for c in np.asarray(classes)[0, :n]})}

    return {"kdet": summary(kdet["_scores"](), kdet["inference"]()),
            "mg": summary(mg["_scores"](), mg["inference"]())}


# ------------------------------------------------------------------ report
CONDITIONS = (("", "random init"), ("_dense", "dense scores"))


def ratios(t: dict) -> dict:
    """Ratios of wall-time medians (``cpu:`` keys: of CPU-time medians), for both inference conditions.

    ``after_backbone`` = inference - backbone, each condition with the backbone
    timed in its own phase; ``*_after_backbone/*_backbone`` is how many
    backbones' time a model spends after its backbone (the issue: about 10 for
    Model Garden).
    """

    def ratio(a, b, field="median_ms"):
        return round(t[a][field] / t[b][field], 3)

    def after(lib, cond, field="median_ms"):
        return t[f"{lib}_inference{cond}"][field] - t[f"{lib}_backbone{cond}"][field]

    out = {"kdet_train/mg_train": ratio("kdet_train", "mg_train"),
           "cpu:kdet_train/mg_train": ratio("kdet_train", "mg_train", "cpu_median_ms")}
    for c, _ in CONDITIONS:
        for prefix, field in (("", "median_ms"), ("cpu:", "cpu_median_ms")):
            out.update({
                f"{prefix}kdet_inference{c}/mg_inference{c}": ratio(f"kdet_inference{c}", f"mg_inference{c}", field),
                f"{prefix}kdet_backbone{c}/mg_backbone{c}": ratio(f"kdet_backbone{c}", f"mg_backbone{c}", field),
                f"{prefix}kdet_after_backbone{c}/mg_after_backbone{c}": round(
                    after("kdet", c, field) / after("mg", c, field), 3),
                **{f"{prefix}{lib}_after_backbone{c}/{lib}_backbone{c}": round(
                    after(lib, c, field) / t[f"{lib}_backbone{c}"][field], 3) for lib in ("kdet", "mg")},
                **{f"{prefix}{lib}_after_backbone{c}/{lib}_inference{c}": round(
                    after(lib, c, field) / t[f"{lib}_inference{c}"][field], 3) for lib in ("kdet", "mg")},
            })
    return out


def verdicts(r: dict) -> dict:
    """The issue's targets on wall time, and the same limits on CPU time (``cpu:``).

    The inference target (0.5x) is checked in both conditions. On a shared
    machine the wall-time ratio of the train step swings with the other
    programs' load (a step is seconds long); the CPU-time ratio, the work
    done, is the steadier of the two. Both are printed, neither replaces the
    other.
    """
    return {f"{prefix}{key} <= {limit}": {"value": r[prefix + key], "limit": limit, "met": r[prefix + key] <= limit}
            for prefix in ("", "cpu:") for key, limit in TARGET_RATIOS.items()}


def print_table(report: dict) -> None:
    t, r = report["timings"], report["ratios"]

    def cell(key):
        return f"{t[key]['median_ms']:.1f} ({t[key]['iqr_ms']:.1f})"

    def ratio(a, b, field="median_ms"):
        return f"{t[a][field] / t[b][field]:.3f}"

    def after(lib, c, field="median_ms"):
        return t[f"{lib}_inference{c}"][field] - t[f"{lib}_backbone{c}"][field]

    def row(label, key):
        k, m = f"kdet_{key}", f"mg_{key}"
        print(f"{label:<26}{cell(k):>17}{cell(m):>19}{ratio(k, m):>9}"
              f"{t[k]['cpu_median_ms']:>14.1f}{t[m]['cpu_median_ms']:>9.1f}{ratio(k, m, 'cpu_median_ms'):>9}")

    print(f"\n{'wall ms: median (IQR)':<26}{'kdet':>17}{'Model Garden':>19}{'kdet/MG':>9}"
          f"{'CPU ms: kdet':>14}{'MG':>9}{'kdet/MG':>9}")
    for c, name in CONDITIONS:
        row(f"backbone+FPN ({name})", f"backbone{c}")
        row(f"inference ({name})", f"inference{c}")
        print(f"{'  after the backbone':<26}{after('kdet', c):>17.1f}{after('mg', c):>19.1f}"
              f"{r[f'kdet_after_backbone{c}/mg_after_backbone{c}']:>9.3f}{after('kdet', c, 'cpu_median_ms'):>14.1f}"
              f"{after('mg', c, 'cpu_median_ms'):>9.1f}{r[f'cpu:kdet_after_backbone{c}/mg_after_backbone{c}']:>9.3f}")
    row("train step, batch 2", "train")
    print(f"{'RPN targets, batch 2':<26}{'(in train step)':>17}{cell('mg_rpn_labeler'):>19}"
          "   (MG: input pipeline, not in its step)")
    print(f"\nModel Garden detection generator: nms_version={report['config']['mg_nms_version']}, "
          f"pre_nms_top_k={report['config']['mg_pre_nms_top_k']} per class; kdet: top "
          f"{report['config']['kdet_pre_nms_candidates']} (box, class) pairs")
    for c, name in CONDITIONS:
        print(f"after the backbone, {name}: " + ", ".join(
            f"{lib} {100 * r[f'{lib}_after_backbone{c}/{lib}_inference{c}']:.1f}% of its inference = "
            f"{r[f'{lib}_after_backbone{c}/{lib}_backbone{c}']:.2f}x its backbone "
            f"(CPU {r[f'cpu:{lib}_after_backbone{c}/{lib}_backbone{c}']:.2f}x)" for lib in ("kdet", "mg")))
    for cond, check in report["score_check"].items():
        check = {lib: v for lib, v in check.items() if lib in ("kdet", "mg")}
        print(f"score check, {cond}: " + "; ".join(
            f"{lib}: {v['pairs_above_threshold']} (RoI, class) pairs >= {POSTPROCESS['score_threshold']} on "
            f"{v['rois_with_a_class_above']} RoIs, {v['num_detections']} detections, labels {v['detected_labels']}"
            for lib, v in check.items()))
    for name, v in report["targets"].items():
        print(f"target {name}: {'MET' if v['met'] else 'NOT MET'} ({v['value']:.3f})")


def measure(args) -> dict:
    inputs = random_inputs(args.seed, args.gt_boxes)
    kdet_model = build_kdet()
    traces = count_traces(kdet_model)
    mg_model, optimizer, config, task = build_mg(args.mg_nms_version)
    kdet, mg = kdet_callables(kdet_model, inputs), mg_callables(mg_model, optimizer, config, task, inputs)

    def traced():
        return {"kdet": {**tracing_counts(kdet["_functions"]), "train_on_batch": len(traces)},
                "mg": tracing_counts(mg["_functions"])}

    def pick(keys, suffix=""):
        return {f"{lib}_{k}{suffix}": c[k] for k in keys for lib, c in (("kdet", kdet), ("mg", mg))}

    # Inference first (training moves the weights and BN statistics), then training. Dense scores: the same
    # traced functions with every stage classifier's bias set (restored before training); the backbone is
    # timed again in that phase so that "after the backbone" compares calls made under the same load.
    times, retraced = timed_phase(pick(("backbone", "inference")), args.infer_iters, args.warmup, traced)
    checks = {"random_init": score_check(kdet, mg)}
    logits = {"kdet": kdet_stage_logits(kdet_model, kdet["_image"]), "mg": mg_stage_logits(mg)}
    with dense_scores(stage_classifiers(kdet_model, mg_model), logits) as scales:  # MG's heads are built by now
        checks["dense_scores"] = {**score_check(kdet, mg), "kernel_scales": scales}
        dense_times, retraced_dense = timed_phase(
            pick(("backbone", "inference"), "_dense"), args.infer_iters, args.warmup, traced)
    train_times, retraced_train = timed_phase(
        {**pick(("train",)), "mg_rpn_labeler": mg["rpn_labeler"]}, args.train_iters, args.warmup, traced)
    return {
        "timings": {k: summarise(v) for k, v in sorted({**times, **dense_times, **train_times}.items())},
        "score_check": checks,
        "tracing_counts": traced(),
        "retraced_while_timed": retraced or retraced_dense or retraced_train,
        "trainable_params": {"kdet": count_params(kdet_model), "mg": count_params(mg_model)},
        "kdet_jit_compile": bool(kdet_model.jit_compile),
        "mg_generators": {"detection_generator": {k: v for k, v in mg_model.detection_generator.get_config().items()
                                                  if k in ("nms_version", "pre_nms_top_k", "pre_nms_score_threshold",
                                                           "nms_iou_threshold", "max_num_detections")},
                          "roi_generator.use_batched_nms": mg_model.roi_generator.get_config()["use_batched_nms"]},
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads = configure_threads(args.intra_threads, args.inter_threads)
    env = environment(threads)
    print("environment:", json.dumps(env))
    mg_model_config = mg_experiment_config(args.mg_nms_version).task.model
    report = {"environment": env, "config": {
        "image_size": IMAGE_SIZE, "num_classes": NUM_CLASSES, "mg_num_classes": NUM_CLASSES + 1,
        "train_batch": TRAIN_BATCH, "infer_batch": 1, "gt_boxes_per_image": args.gt_boxes,
        "gt_padding": MAX_GT, "freeze_batchnorm": False, "stage_ious": STAGE_IOUS,
        "stage_box_weights": STAGE_BOX_WEIGHTS, "ensemble": True, "mg_nms_version": args.mg_nms_version,
        "mg_pre_nms_top_k": mg_model_config.detection_generator.pre_nms_top_k,
        "mg_roi_generator_use_batched_nms": mg_model_config.roi_generator.use_batched_nms,
        "kdet_pre_nms_candidates": POSTPROCESS["max_detections"] * 10,
        "dense_scores_mean_logits": [round(float(b), 4) for b in dense_bias()[:DENSE_CLASSES + 2]] + ["0 ..."],
        "dense_scores_probs": {**DENSE_PROBS, "foreground_classes": DENSE_CLASSES},
        "dense_scores_sigma": DENSE_SIGMA,
        "train_iters": args.train_iters, "infer_iters": args.infer_iters, "warmup": args.warmup,
        **HEAD, **PROPOSALS, **POSTPROCESS}}
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
