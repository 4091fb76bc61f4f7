"""Cascade R-CNN (Cai & Vasconcelos 2018): an RPN plus a cascade of RoI heads at rising IoU.

Composition, not inheritance: a :class:`RegionProposalNetwork` (backbone,
FPN P2-P6, RPN head, the excerpt's RPN loss and proposals), a
:class:`kdet.roi_align.RoIAlign` on P2-P5 and one :class:`BoxHead` per stage.

Training (all in the graph, inside :meth:`CascadeRCNN.compute_loss`):

1. RPN loss; proposals with the training budget (no gradient), plus the
   ground-truth boxes;
2. stage 1 labels every RoI at IoU ``stage_ious[0]`` (0.5) and samples
   ``num_rois`` (512) per image at ``roi_positive_fraction`` (25%);
3. stage t > 1 takes *all* boxes regressed by stage t - 1 (gradient
   stopped) and relabels them at its own IoU (0.6, 0.7);
4. each stage: softmax log loss over ``C + 1`` classes and smooth-L1 on the
   positives' codes with that stage's box weights (the paper's per-stage
   regression statistics), both over the stage's RoI count, weighted by
   ``stage_loss_weights`` (1, 0.5, 0.25).

Inference: proposals with the test budget run through stages 1..k
(``test_stages``, default all); the final boxes come from stage k's
regressor; the scores are the *softmax probabilities* of stage k alone, or
(``ensemble=True``, the paper's "1~k") the mean of the probabilities of the
classifiers of stages 1..k applied to stage k's input RoIs, as the authors'
code does; then class-aware NMS at 0.5 and ``max_detections``.
Probabilities, not logits, are averaged: the stages' logits are trained at
different IoUs and their scales differ, while probabilities are comparable.

The paper's Table 1 baselines are the same class with other constructor data:

* Faster R-CNN (FPN+): one stage, ``stage_ious=(0.5,)``;
* *iterative BBox*: that model with ``test_iterations=3`` (its one head
  applied three times at inference; scores from its classifier on the last
  input boxes; no retraining);
* *integral loss* (Eq. 4): one stage with ``integral_ious=(0.5, 0.6, 0.7)``,
  three classifiers, each trained at its own IoU on the same sampled RoIs,
  sharing one regressor trained at ``stage_ious[0]``; their probabilities
  are always averaged at inference ("by definition ... ensembled").
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from kdet import boxes as box_ops
from kdet import losses, postprocess
from kdet.detectors.base import Detector
from kdet.detectors.rpn import RegionProposalNetwork
from kdet.heads.cascade import BoxHead
from kdet.matching import Matcher, sample_balanced, trimmed_ground_truth
from kdet.roi_align import RoIAlign


TRAINING_PROPOSALS = ("rpn", "targets")


def given_proposals(targets: dict) -> dict[str, tf.Tensor]:
    """``targets["proposals"] [B, P, 4]`` as a proposals dict (``levels`` -1 on zero-area padding rows)."""
    if "proposals" not in targets:
        raise ValueError("training_proposals='targets' needs y['proposals'] [B, P, 4] next to the ground truth")
    boxes = tf.cast(targets["proposals"], tf.float32)
    valid = box_ops.area(boxes) > 0
    return {"boxes": tf.where(valid[..., None], boxes, 0.0), "levels": tf.where(valid, 0, -1)}


@keras.saving.register_keras_serializable(package="kdet")
class CascadeRCNN(Detector):
    """Cascade R-CNN; ``len(stage_ious)`` stages (1 stage is Faster R-CNN).

    Args (keyword-only; they are also :meth:`get_config`):
      num_classes: foreground classes C.
      rpn: keyword arguments of :class:`RegionProposalNetwork` (backbone,
        anchors, RPN loss, proposal budgets).
      stage_ious: IoU threshold of each stage.
      stage_box_weights: box coder weights of each stage.
      stage_loss_weights: loss weight of each stage.
      num_rois, roi_positive_fraction: stage-1 sampling.
      fc_dim: width of the box heads.
      roi_size, sampling_ratio, use_gather_roi_align: RoIAlign.
      roi_canonical_size: box size pooled from P4 (224, FPN's ImageNet
        size; scale it with the images: 56 suits 128-px images).
      smooth_l1_beta: of the stage box losses.
      test_stages: stages run at inference (None: all).
      ensemble: average the classifiers of stages 1..k (else stage k only).
      test_iterations: times the last stage's head is applied at inference
        (1; 3 on a one-stage model is the paper's iterative BBox).
      integral_ious: one classifier per IoU on the (only) stage: the
        paper's integral-loss detector (None: off).
      score_threshold, nms_iou_threshold, max_detections: inference.
      rpn_loss_weight: weight of the RPN's loss in the total (0 trains the
        RoI heads alone, e.g. the later steps of Faster R-CNN's alternating
        training).
      training_proposals: where stage 1's training RoIs come from: "rpn",
        the model's own proposals of this step (end-to-end), or "targets",
        fixed proposals passed with the ground truth as ``y["proposals"]
        [B, P, 4]`` (rows of zero area are padding): the proposals of an
        earlier RPN, as in Fast R-CNN training and the two-step joint
        training of Qin et al. (Sec. 5.2).
    """

    export_switches = {"use_gather_roi_align": True}  # RoIAlign by gathers: TFLite builtins

    def __init__(
        self,
        *,
        num_classes: int,
        rpn: dict | None = None,
        stage_ious: Sequence[float] = (0.5, 0.6, 0.7),
        stage_box_weights: Sequence[Sequence[float]] = ((10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)),
        stage_loss_weights: Sequence[float] = (1.0, 0.5, 0.25),
        num_rois: int = 512,
        roi_positive_fraction: float = 0.25,
        fc_dim: int = 1024,
        roi_size: int = 7,
        sampling_ratio: int = 2,
        use_gather_roi_align: bool = False,
        roi_canonical_size: float = 224.0,
        smooth_l1_beta: float = 1.0,
        test_stages: int | None = None,
        ensemble: bool = True,
        score_threshold: float = 0.05,
        nms_iou_threshold: float = 0.5,
        max_detections: int = 100,
        test_iterations: int = 1,
        integral_ious: Sequence[float] | None = None,
        rpn_loss_weight: float = 1.0,
        training_proposals: str = "rpn",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._config = {k: v for k, v in locals().items() if k not in ("self", "kwargs", "__class__")}
        num_stages = len(stage_ious)
        if not (len(stage_box_weights) == len(stage_loss_weights) == num_stages >= 1):
            raise ValueError(
                f"stage_ious, stage_box_weights and stage_loss_weights need one entry per stage, got "
                f"{len(stage_ious)}, {len(stage_box_weights)}, {len(stage_loss_weights)}")
        if test_stages is not None and not 1 <= test_stages <= num_stages:
            raise ValueError(f"test_stages must be in 1..{num_stages}, got {test_stages}")
        if training_proposals not in TRAINING_PROPOSALS:
            raise ValueError(f"training_proposals must be one of {TRAINING_PROPOSALS}, got {training_proposals!r}")
        if test_iterations < 1:
            raise ValueError(f"test_iterations must be >= 1, got {test_iterations}")
        if integral_ious is not None and (num_stages != 1 or len(integral_ious) < 1):
            raise ValueError(
                f"integral_ious (the integral-loss detector) needs exactly one stage and at least one IoU, got "
                f"{num_stages} stages and integral_ious={integral_ious}")
        self.integral_ious = tuple(integral_ious or ())
        self.num_classes = num_classes
        self.num_stages = num_stages
        self.rpn = RegionProposalNetwork(**(rpn or {}), name="rpn")
        self.roi_align = RoIAlign(output_size=roi_size, sampling_ratio=sampling_ratio,
                                  canonical_size=roi_canonical_size, use_gather=use_gather_roi_align, name="roi_align",
                                  dtype="float32")  # pixel boxes stay float32 under mixed precision
        self.heads = [
            BoxHead(num_classes=num_classes, fc_dim=fc_dim, num_classifiers=max(1, len(self.integral_ious)) if s == 0 else 1,
                    name=f"stage{s + 1}")
            for s in range(num_stages)
        ]
        # Built now: the heads are only called inside compute_loss / detect, never by call().
        fpn_filters = self.rpn.get_config()["fpn_filters"]
        for head in self.heads:
            head.build((None, None, roi_size, roi_size, fpn_filters))
        self.roi_align.built = True  # no weights
        self.coders = [box_ops.BoxCoder(w) for w in stage_box_weights]
        self.matchers = [Matcher((iou,), (0, 1)) for iou in stage_ious]
        # Keras does not report the metrics of a nested model: the RPN terms are logged here.
        self.rpn_trackers = (keras.metrics.Mean(name="rpn_cls_loss"), keras.metrics.Mean(name="rpn_box_loss"))
        self.stage_trackers = [
            (keras.metrics.Mean(name=f"stage{s + 1}_cls_loss"), keras.metrics.Mean(name=f"stage{s + 1}_box_loss"))
            for s in range(num_stages)
        ]
        self.integral_matchers = [Matcher((iou,), (0, 1)) for iou in self.integral_ious]
        self.integral_trackers = [
            keras.metrics.Mean(name=f"stage1_cls_loss_u{round(100 * iou)}") for iou in self.integral_ious]

    def build(self, input_shape):
        """Creates every weight by running the network once on a small zero image (any input size works later)."""
        size = 2 ** max(self.rpn.anchor_spec.levels)
        self.call(tf.zeros([1, size, size, 3]))
        self.built = True

    def call(self, images, training=False):
        """``{"features": {"P2".."P6"}, "rpn": {"objectness", "box_codes"}}``."""
        features = self.rpn.features(images, training=training)
        levels = [features[f"P{lvl}"] for lvl in self.rpn.anchor_spec.levels]
        return {"features": features, "rpn": self.rpn.head(levels)}

    def run_stage(self, stage: int, features: dict, rois: tf.Tensor) -> dict[str, tf.Tensor]:
        """Stage ``stage`` (0-based) on ``rois [B, R, 4]``: the head's outputs, decoded ``boxes``, pooled ``roi_features``."""
        pooled = self.roi_align(features, rois)
        out = self.heads[stage](pooled)
        out["boxes"] = self.coders[stage].decode(out["box_codes"], rois)
        out["roi_features"] = pooled
        return out

    # ----------------------------------------------------------------- training
    def stage_targets(self, stage: int, rois: tf.Tensor, gt, *, rois_valid: tf.Tensor) -> dict[str, tf.Tensor]:
        """Labels ``rois`` at the stage's IoU: class targets (0 = background) and box codes.

        With ``integral_ious``, ``"integral_classes"`` holds the class
        targets at each of those IoUs (same matched ground truth: the argmax).
        """
        iou = box_ops.pairwise_iou(rois, gt.boxes, gt.objects)
        match = self.matchers[stage](iou)
        foreground = (match.labels == 1) & rois_valid
        classes = tf.gather(gt.classes, match.matched_gt, batch_dims=1) + 1
        targets = {
            "classes": tf.where(foreground, classes, 0),
            "foreground": foreground,
            "box_targets": self.coders[stage].encode(tf.gather(gt.boxes, match.matched_gt, batch_dims=1), rois),
        }
        if stage == 0 and self.integral_matchers:
            targets["integral_classes"] = [
                tf.where((m(iou).labels == 1) & rois_valid, classes, 0) for m in self.integral_matchers]
        return targets

    def sample_rois(self, proposals: dict, gt) -> tuple[tf.Tensor, tf.Tensor]:
        """Stage-1 RoIs: proposals + ground truth, ``num_rois`` sampled at the positive fraction."""
        rois = tf.concat([proposals["boxes"], gt.boxes], axis=1)
        valid = tf.concat([proposals["levels"] >= 0, gt.objects], axis=1)
        iou = box_ops.pairwise_iou(rois, gt.boxes, gt.objects)
        labels = tf.where(valid, self.matchers[0](iou).labels, -1)
        indices, sampled = sample_balanced(labels, num_samples=self._config["num_rois"],
                                           positive_fraction=self._config["roi_positive_fraction"])
        return tf.gather(rois, indices, batch_dims=1), sampled

    def stage_loss(self, stage: int, features: dict, rois: tf.Tensor, gt, valid: tf.Tensor):
        """Stage ``stage``'s ``(cls_loss, box_loss, decoded boxes)`` on ``rois [B, R, 4]``.

        Both terms are sums over the valid RoIs divided by their count (over the whole batch, on any
        number of replicas). The
        integral-loss stage's classification term is the sum of its
        classifiers' terms (Eq. 4), each logged as ``stage1_cls_loss_uNN``.
        """
        t = self.stage_targets(stage, rois, gt, rois_valid=valid)
        out = self.run_stage(stage, features, rois)
        # the whole batch's count, also under a distribution strategy (each replica's own count would
        # weight its RoIs differently from one device)
        count = tf.maximum(losses.replica_mean(tf.reduce_sum(tf.cast(valid, tf.float32))), 1.0)
        weights = tf.cast(valid, tf.float32)
        if "integral_classes" in t:
            terms = [losses.softmax_cross_entropy(c, logits, weights) / count
                     for c, logits in zip(t["integral_classes"], out["all_class_logits"])]
            for tracker, term in zip(self.integral_trackers, terms):
                tracker.update_state(term, sample_weight=tf.shape(rois)[0])
            cls_loss = tf.add_n(terms)
        else:
            cls_loss = losses.softmax_cross_entropy(t["classes"], out["class_logits"], weights) / count
        box_loss = losses.smooth_l1(t["box_targets"], out["box_codes"], tf.cast(t["foreground"], tf.float32),
                                    beta=self._config["smooth_l1_beta"])
        return cls_loss, box_loss / count, out["boxes"]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        del sample_weight, training
        if y is None:
            raise ValueError("CascadeRCNN.compute_loss needs targets: fit on (images, targets) pairs")
        batch = tf.shape(x)[0]
        rpn_cls, rpn_box = self.rpn.rpn_loss(x, y, y_pred["rpn"])
        self.rpn_trackers[0].update_state(rpn_cls, sample_weight=batch)
        self.rpn_trackers[1].update_state(rpn_box, sample_weight=batch)
        total = self._config["rpn_loss_weight"] * (rpn_cls + rpn_box)
        gt = trimmed_ground_truth(y)
        if self._config["training_proposals"] == "rpn":
            proposals = self.rpn.proposals(x, y_pred["rpn"], training=True)
        else:
            proposals = given_proposals(y)
        rois, valid = self.sample_rois(proposals, gt)
        for stage in range(self.num_stages):
            cls_loss, box_loss, boxes = self.stage_loss(stage, y_pred["features"], rois, gt, valid)
            cls_tracker, box_tracker = self.stage_trackers[stage]
            cls_tracker.update_state(cls_loss, sample_weight=batch)
            box_tracker.update_state(box_loss, sample_weight=batch)
            total += self._config["stage_loss_weights"][stage] * (cls_loss + box_loss)
            # The next stage trains on this stage's regressed boxes, as constants.
            rois = tf.stop_gradient(box_ops.clip_boxes(boxes, tf.shape(x)[1:3]))
        return losses.scale_for_replicas(total)

    # ---------------------------------------------------------------- inference
    def cascade_inference(self, images, outputs, *, stages: int, ensemble: bool,
                          iterations: int = 1) -> dict[str, tf.Tensor]:
        """Runs stages 1..``stages`` on the test proposals, the last one ``iterations`` times.

        Returns:
          ``boxes [B, R, 4]`` (the last step's regression), ``scores [B, R,
          C + 1]`` softmax probabilities on the last step's input RoIs (the
          last stage's, or with ``ensemble`` the mean over stages
          1..``stages``), ``valid [B, R]``, and ``stage_boxes``: the input RoIs
          of every step.
        """
        if not 1 <= stages <= self.num_stages or iterations < 1:
            raise ValueError(f"stages must be in 1..{self.num_stages} and iterations >= 1, "
                             f"got stages={stages}, iterations={iterations}")
        proposals = self.rpn.proposals(images, outputs["rpn"], training=False)
        image_size = tf.shape(images)[1:3]
        schedule = list(range(stages)) + [stages - 1] * (iterations - 1)
        rois, stage_boxes = proposals["boxes"], []
        for step, stage in enumerate(schedule):
            stage_boxes.append(rois)
            out = self.run_stage(stage, outputs["features"], rois)
            if step < len(schedule) - 1:
                rois = box_ops.clip_boxes(out["boxes"], image_size)
        # Every classifier scores the last step's input RoIs, pooled once (out["roi_features"]).
        used = range(stages) if ensemble else [stages - 1]
        probabilities = [
            self.heads[s].probabilities(out["hidden"] if s == stages - 1 else self.heads[s].hidden(out["roi_features"]))
            for s in used]
        scores = probabilities[0] if len(probabilities) == 1 else tf.add_n(probabilities) / float(len(probabilities))
        return {"boxes": box_ops.clip_boxes(out["boxes"], image_size), "scores": scores,
                "valid": proposals["levels"] >= 0, "stage_boxes": stage_boxes}

    def detect_clean(self, images, *, stages: int | None = None, ensemble: bool | None = None,
                     iterations: int | None = None) -> dict[str, tf.Tensor]:
        """Finite images ``[B, H, W, 3]`` (0..255) -> the output contract (``detect`` guards the input).

        ``stages``, ``ensemble`` and ``iterations`` override ``test_stages``,
        ``ensemble`` and ``test_iterations`` for this call (Table 2: one stage
        alone is ``stages=k, ensemble=False``; "1~k" is ``stages=k,
        ensemble=True``).
        """
        cfg = self._config
        stages = stages or cfg["test_stages"] or self.num_stages
        ensemble = cfg["ensemble"] if ensemble is None else ensemble
        iterations = iterations or cfg["test_iterations"]
        result = self.cascade_inference(images, self(images, training=False), stages=stages, ensemble=ensemble,
                                        iterations=iterations)
        scores = tf.where(result["valid"][..., None], result["scores"][..., 1:], 0.0)  # drop background
        top, box_index, class_id = postprocess.top_k_candidates(
            scores, cfg["max_detections"] * 10, cfg["score_threshold"], activation=None)
        boxes = tf.gather(result["boxes"], box_index, batch_dims=1)
        return postprocess.class_aware_nms(
            boxes, top, class_id, iou_threshold=cfg["nms_iou_threshold"], max_detections=cfg["max_detections"])
