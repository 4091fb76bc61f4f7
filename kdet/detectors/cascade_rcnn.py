"""Cascade R-CNN (Cai & Vasconcelos 2018): an RPN plus a cascade of RoI heads at rising IoU.

Composition, not inheritance: a :class:`RegionProposalNetwork` (backbone,
FPN P2-P6, RPN head, the excerpt's RPN loss and proposals), a
:class:`kdet.roi_align.RoIAlign` on P2-P5 and one :class:`BoxHead` per stage.

Training (all in the graph, inside :meth:`CascadeRCNN.compute_loss`):

1. RPN loss; proposals with the training budget (no gradient), plus the
   ground-truth boxes;
2. stage 1 labels every RoI at IoU ``stages.ious[0]`` (0.5) and samples
   ``roi_sampling.num_samples`` (512) per image at its ``positive_fraction``
   (25%);
3. stage t > 1 takes *all* boxes regressed by stage t - 1 (gradient
   stopped) and relabels them at its own IoU (0.6, 0.7);
4. each stage: softmax log loss over ``C + 1`` classes and smooth-L1 on the
   positives' codes with that stage's box weights (the paper's per-stage
   regression statistics), both over the stage's RoI count, weighted by
   ``stages.loss_weights`` (1, 0.5, 0.25).

Inference: proposals with the test budget run through stages 1..k
(``stages.test_stages``, default all); the final boxes come from stage k's
regressor; the scores are the *softmax probabilities* of stage k alone, or
(``stages.ensemble``, the paper's "1~k") the mean of the probabilities of the
classifiers of stages 1..k applied to stage k's input RoIs, as the authors'
code does; then class-aware NMS at 0.5 and ``max_detections``.
Probabilities, not logits, are averaged: the stages' logits are trained at
different IoUs and their scales differ, while probabilities are comparable.

The paper's Table 1 baselines are the same class with other constructor data
(a :class:`~kdet.rcnn_specs.CascadeSpec`):

* Faster R-CNN (FPN+): one stage, ``CascadeSpec(ious=(0.5,), box_weights=((10,
  10, 5, 5),), loss_weights=(1.0,))``;
* *iterative BBox*: that model with ``test_iterations=3`` (its one head
  applied three times at inference; scores from its classifier on the last
  input boxes; no retraining);
* *integral loss* (Eq. 4): one stage with ``integral_ious=(0.5, 0.6, 0.7)``,
  three classifiers, each trained at its own IoU on the same sampled RoIs,
  sharing one regressor trained at ``ious[0]``; their probabilities
  are always averaged at inference ("by definition ... ensembled").
"""

from __future__ import annotations

from typing import Mapping

import keras
import tensorflow as tf

from kdet import boxes as box_ops
from kdet import losses, postprocess
from kdet.detectors.base import Detector
from kdet.detectors.rpn import RegionProposalNetwork
from kdet.heads.cascade import BoxHead
from kdet.matching import Matcher, sample_balanced, trimmed_ground_truth
from kdet.rcnn_specs import CascadeSpec, RoIPoolerSpec
from kdet.roi_align import RoIAlign
from kdet.specs import PostProcessSpec, SamplingSpec, coerce, override


TRAINING_PROPOSALS = ("rpn", "targets")

#: Cascade R-CNN's defaults: three stages at IoU 0.5 / 0.6 / 0.7 with the authors' regression statistics and
#: mmdetection's loss weights, 512 RoIs at 25% foreground, 7x7 RoIAlign (224 px on P4), 1024-wide heads.
STAGES = CascadeSpec()
ROI_SAMPLING = SamplingSpec(num_samples=512, positive_fraction=0.25)
ROI_POOLER = RoIPoolerSpec(output_size=7, sampling_ratio=2, canonical_size=224.0)
POSTPROCESS = PostProcessSpec(pre_nms_top_k=None, score_threshold=0.05, nms_iou_threshold=0.5, max_detections=100)


def given_proposals(targets: dict) -> dict[str, tf.Tensor]:
    """``targets["proposals"] [B, P, 4]`` as a proposals dict (``levels`` -1 on zero-area padding rows)."""
    if "proposals" not in targets:
        raise ValueError("training_proposals='targets' needs y['proposals'] [B, P, 4] next to the ground truth")
    boxes = tf.cast(targets["proposals"], tf.float32)
    valid = box_ops.area(boxes) > 0
    return {"boxes": tf.where(valid[..., None], boxes, 0.0), "levels": tf.where(valid, 0, -1)}


@keras.saving.register_keras_serializable(package="kdet")
class CascadeRCNN(Detector):
    """Cascade R-CNN; ``stages.num_stages`` stages (1 stage is Faster R-CNN).

    Args (keyword-only; as plain data they are also :meth:`get_config`). A
    spec argument also takes a dict of the spec's fields, which replace
    those of the default (the module's constants, e.g. :data:`STAGES`):

      num_classes: foreground classes C.
      rpn: a :class:`RegionProposalNetwork` (backbone, anchors, RPN loss,
        proposal budgets) or a dict of its keyword arguments.
      stages: :class:`~kdet.rcnn_specs.CascadeSpec`: each stage's IoU, box
        weights and loss weight; the integral loss; test stages, ensemble
        and iterations.
      roi_sampling: :class:`~kdet.specs.SamplingSpec` of stage 1's RoIs
        (512 at 25% foreground).
      roi_pooler: :class:`~kdet.rcnn_specs.RoIPoolerSpec` (7x7 RoIAlign, 224
        px from P4: scale it with the images).
      fc_dim: width of the box heads.
      postprocess: :class:`~kdet.specs.PostProcessSpec` (its
        ``pre_nms_top_k``: (RoI, class) candidates before NMS, None: 10 x K).
      rpn_loss_weight: weight of the RPN's loss in the total (0 trains the
        RoI heads alone, e.g. the later steps of Faster R-CNN's alternating
        training; see :meth:`training_variant`).
      training_proposals: where stage 1's training RoIs come from: "rpn",
        the model's own proposals of this step (end-to-end), or "targets",
        fixed proposals passed with the ground truth as ``y["proposals"]
        [B, P, 4]`` (rows of zero area are padding): the proposals of an
        earlier RPN, as in Fast R-CNN training and the two-step joint
        training of Qin et al. (Sec. 5.2).
      use_gather_roi_align: RoIAlign by gathers (TFLite builtins; same
        values), the switch of :meth:`export_variant`.
      **kwargs: :class:`~kdet.detectors.base.Detector`'s and ``keras.Model``'s.
    """

    export_switches = {"use_gather_roi_align": True}  # RoIAlign by gathers: TFLite builtins
    flat_config_keys = {
        "stage_ious": ("stages", "ious"), "stage_box_weights": ("stages", "box_weights"),
        "stage_loss_weights": ("stages", "loss_weights"), "smooth_l1_beta": ("stages", "smooth_l1_beta"),
        **{k: ("stages", k) for k in ("integral_ious", "test_stages", "ensemble", "test_iterations")},
        "num_rois": ("roi_sampling", "num_samples"), "roi_positive_fraction": ("roi_sampling", "positive_fraction"),
        "roi_size": ("roi_pooler", "output_size"), "sampling_ratio": ("roi_pooler", "sampling_ratio"),
        "roi_canonical_size": ("roi_pooler", "canonical_size"),
        **{k: ("postprocess", k) for k in ("score_threshold", "nms_iou_threshold", "max_detections")},
    }

    def __init__(
        self,
        *,
        num_classes: int,
        rpn: RegionProposalNetwork | Mapping | None = None,
        stages: CascadeSpec | Mapping = STAGES,
        roi_sampling: SamplingSpec | Mapping = ROI_SAMPLING,
        roi_pooler: RoIPoolerSpec | Mapping = ROI_POOLER,
        fc_dim: int = 1024,
        postprocess: PostProcessSpec | Mapping = POSTPROCESS,
        rpn_loss_weight: float = 1.0,
        training_proposals: str = "rpn",
        use_gather_roi_align: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if training_proposals not in TRAINING_PROPOSALS:
            raise ValueError(f"training_proposals must be one of {TRAINING_PROPOSALS}, got {training_proposals!r}")
        self.stage_spec = coerce(stages, STAGES, "stages")
        self.sampling_spec = coerce(roi_sampling, ROI_SAMPLING, "roi_sampling")
        self.pooler_spec = coerce(roi_pooler, ROI_POOLER, "roi_pooler")
        self.postprocess_spec = coerce(postprocess, POSTPROCESS, "postprocess")
        self.integral_ious = tuple(self.stage_spec.integral_ious or ())
        self.num_stages = self.stage_spec.num_stages
        self.rpn = rpn if isinstance(rpn, RegionProposalNetwork) else RegionProposalNetwork(**(rpn or {}), name="rpn")
        self._set_arguments(
            num_classes=num_classes, rpn=self.rpn, stages=self.stage_spec, roi_sampling=self.sampling_spec,
            roi_pooler=self.pooler_spec, fc_dim=fc_dim, postprocess=self.postprocess_spec,
            rpn_loss_weight=rpn_loss_weight, training_proposals=training_proposals,
            use_gather_roi_align=use_gather_roi_align)
        self._build_stages(num_classes, fc_dim, use_gather_roi_align)

    def _build_stages(self, num_classes: int, fc_dim: int, use_gather_roi_align: bool) -> None:
        pooler, stages = self.pooler_spec, self.stage_spec
        self.roi_align = RoIAlign(output_size=pooler.output_size, sampling_ratio=pooler.sampling_ratio,
                                  canonical_size=pooler.canonical_size, use_gather=use_gather_roi_align,
                                  name="roi_align", dtype="float32")  # pixel boxes stay float32 under mixed precision
        self.heads = [
            BoxHead(num_classes=num_classes, fc_dim=fc_dim,
                    num_classifiers=max(1, len(self.integral_ious)) if s == 0 else 1, name=f"stage{s + 1}")
            for s in range(self.num_stages)
        ]
        # Built now: the heads are only called inside compute_loss / detect, never by call().
        fpn_filters = self.rpn.arguments()["fpn_filters"]
        for head in self.heads:
            head.build((None, None, pooler.output_size, pooler.output_size, fpn_filters))
        self.roi_align.built = True  # no weights
        self.coders = [box_ops.BoxCoder(w) for w in stages.box_weights]
        self.matchers = [Matcher((iou,), (0, 1)) for iou in stages.ious]
        # Keras does not report the metrics of a nested model: the RPN terms are logged here.
        self.rpn_trackers = (keras.metrics.Mean(name="rpn_cls_loss"), keras.metrics.Mean(name="rpn_box_loss"))
        self.stage_trackers = [
            (keras.metrics.Mean(name=f"stage{s + 1}_cls_loss"), keras.metrics.Mean(name=f"stage{s + 1}_box_loss"))
            for s in range(self.num_stages)
        ]
        self.integral_matchers = [Matcher((iou,), (0, 1)) for iou in self.integral_ious]
        self.integral_trackers = [
            keras.metrics.Mean(name=f"stage1_cls_loss_u{round(100 * iou)}") for iou in self.integral_ious]

    # ----------------------------------------------------------------- config
    @classmethod
    def upgrade_config(cls, config: Mapping) -> dict:
        """A flat config (model directory formats 1-2) as the grouped arguments, its ``rpn`` dict too."""
        grouped = super().upgrade_config(config)
        grouped["rpn"] = RegionProposalNetwork.upgrade_config(grouped.get("rpn") or {})
        return grouped

    @classmethod
    def training_variant(cls, config: Mapping, *, rpn_loss: bool = True, stage_losses: bool = True,
                         proposals: str | None = None) -> dict:
        """``config`` (keyword arguments or a ``get_config()``) for one step of a multi-step training procedure.

        Args:
          config: the detector's arguments.
          rpn_loss: False sets ``rpn_loss_weight`` 0: the RoI heads train alone.
          stage_losses: False sets every stage's loss weight 0: the RPN trains alone.
          proposals: the ``training_proposals`` ("targets": stage 1 trains on
            proposals given with the ground truth, Fast R-CNN style); None
            keeps the config's.

        Returns:
          A new dict; the rest of ``config`` is unchanged.
        """
        changes: dict = {} if rpn_loss else {"rpn_loss_weight": 0.0}
        if not stage_losses:
            spec = coerce(config.get("stages"), STAGES, "stages")
            changes["stages"] = {"loss_weights": (0.0,) * spec.num_stages}
        if proposals is not None:
            changes["training_proposals"] = proposals
        return override(config, changes)

    @property
    def input_stride(self) -> int:
        """Input sizes are multiples of the RPN's largest feature stride (64 for P2-P6)."""
        return self.rpn.input_stride

    def build(self, input_shape):
        """Creates every weight by running the network once on a small zero image (any input size works later)."""
        self.call(tf.zeros([1, self.input_stride, self.input_stride, 3]))
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
        indices, sampled = sample_balanced(labels, num_samples=self.sampling_spec.num_samples,
                                           positive_fraction=self.sampling_spec.positive_fraction)
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
                                    beta=self.stage_spec.smooth_l1_beta)
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
            total += self.stage_spec.loss_weights[stage] * (cls_loss + box_loss)
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

        ``stages``, ``ensemble`` and ``iterations`` override the stage spec's
        ``test_stages``, ``ensemble`` and ``test_iterations`` for this call
        (Table 2: one stage alone is ``stages=k, ensemble=False``; "1~k" is
        ``stages=k, ensemble=True``).
        """
        spec, post = self.stage_spec, self.postprocess_spec
        stages = stages or spec.test_stages or self.num_stages
        ensemble = spec.ensemble if ensemble is None else ensemble
        iterations = iterations or spec.test_iterations
        result = self.cascade_inference(images, self(images, training=False), stages=stages, ensemble=ensemble,
                                        iterations=iterations)
        scores = tf.where(result["valid"][..., None], result["scores"][..., 1:], 0.0)  # drop background
        top, box_index, class_id = postprocess.top_k_candidates(
            scores, post.candidates, post.score_threshold, activation=None)
        boxes = tf.gather(result["boxes"], box_index, batch_dims=1)
        return postprocess.class_aware_nms(
            boxes, top, class_id, iou_threshold=post.nms_iou_threshold, max_detections=post.max_detections)
