"""RetinaNet (Lin et al. 2017) as a ``keras.Model`` trained through ``compute_loss``.

Inputs are raw RGB images ``[B, H, W, 3]`` in ``[0, 255]`` (H, W multiples of
``2**max_level``). ``model.fit`` takes ``(images, targets)`` where targets is
the pipeline's dict (``boxes [B, M, 4]`` yxyx pixels, ``classes [B, M]`` with
-1 padding, optional ``is_crowd [B, M]``); anchors are matched to ground truth
in the graph, inside :meth:`RetinaNet.compute_loss`, because consistent
optimization needs the predictions to build its targets.

Two independent arguments turn it into the papers' variants:

* ``classification_loss``: ``"focal"`` (RetinaNet), ``"ap"`` (AP-Loss: every
  anchor-class pair of the batch ranked together, trained by the error-driven
  update, :func:`kdet.losses.ap_loss`) or ``"auc"`` (its Eq. 7 variant), or
  their specs with their parameters (:class:`kdet.specs.APLossSpec`, ...);
* ``consistent``, a :class:`kdet.specs.ConsistentOptimizationSpec`
  (ConRetinaNet, Kong et al., Fig. 4(d)): with ``cls_terms`` / ``reg_terms``
  above 1, the anchors decoded by the box branch (gradient stopped) are
  matched again at its ``thresholds`` and add Eq. 1's second classification
  term (same classifier, weight ``alpha``) and Eq. 2's second regression
  term, from a second box output whose last conv alone is not shared.
  Inference scores exactly as RetinaNet does and applies
  ``test_regressions`` regressions in turn (Table 3's "2*" is
  ``reg_terms=2, test_regressions=1``).

Both combine (AP-loss with consistent optimization trains too). With
``cls_terms = reg_terms = 1`` and the focal loss the model is exactly the
plain RetinaNet: same variables, loss and detections.
"""

from __future__ import annotations

from typing import Mapping

import keras
import tensorflow as tf

from kdet import anchors as anchor_ops
from kdet import boxes as box_ops
from kdet import losses, postprocess
from kdet.anchors import AnchorSpec
from kdet.backbones import FPN, BackboneSpec, detector_backbone
from kdet.detectors.base import Detector
from kdet.heads.retinanet import RetinaNetHead
from kdet.matching import Matcher, trimmed_ground_truth, with_sentinel_column
from kdet.specs import (
    BoxRegressionSpec,
    ClassificationLoss,
    ConsistentOptimizationSpec,
    FocalLossSpec,
    MatcherSpec,
    PostProcessSpec,
    RetinaNetHeadSpec,
    classification_loss as loss_spec,
    coerce,
)

#: RetinaNet's defaults (Lin et al. 2017): ResNet-50, P3-P7 with 3 scales x 3 ratios of 4 x stride (32..512 px),
#: 4-conv 256-wide towers, background below IoU 0.4 / foreground from 0.5, smooth-L1 at beta 0.1, focal loss.
BACKBONE = BackboneSpec()
ANCHORS = AnchorSpec(min_level=3, max_level=7, num_scales=3, aspect_ratios=(0.5, 1.0, 2.0), anchor_size=4.0)
HEAD = RetinaNetHeadSpec()
MATCHER = MatcherSpec(thresholds=(0.4, 0.5), allow_low_quality_matches=False)
BOX_REGRESSION = BoxRegressionSpec(weights=(1.0, 1.0, 1.0, 1.0), smooth_l1_beta=0.1, loss_weight=1.0)
CLASSIFICATION_LOSS = FocalLossSpec(alpha=0.25, gamma=2.0)
CONSISTENT = ConsistentOptimizationSpec()  # off: one classification and one regression term
POSTPROCESS = PostProcessSpec(pre_nms_top_k=1000, score_threshold=0.05, nms_iou_threshold=0.5, max_detections=100)


def box_codes_key(regression: int) -> str:
    """Output key of the box regression ``regression`` (0-based): ``box_codes``, ``box_codes_2``, ..."""
    return "box_codes" if regression == 0 else f"box_codes_{regression + 1}"


@keras.saving.register_keras_serializable(package="kdet")
class RetinaNet(Detector):
    """RetinaNet with FPN P3-P7, 9 anchors per location and the focal loss.

    Args (keyword-only; as plain data they are also :meth:`get_config`). A
    spec argument also takes a dict of the spec's fields, which replace
    those of the default (the module's constants, e.g. :data:`ANCHORS`):

      num_classes: foreground classes C.
      backbone: a name of ``kdet.backbones.BACKBONES``, a
        :class:`~kdet.backbones.BackboneSpec` (weights file, frozen
        BatchNorm) or a ``keras.Model`` mapping ``[B, H, W, 3]`` RGB 0..255
        to ``{"C3".."C5"}`` (see :func:`kdet.backbones.check_backbone`).
      fpn_filters: channels of the FPN levels.
      anchors: :class:`~kdet.anchors.AnchorSpec` (its levels are the FPN's).
      head: :class:`~kdet.specs.RetinaNetHeadSpec` (towers, prior).
      matcher: :class:`~kdet.specs.MatcherSpec` of the anchors (0.4 / 0.5).
      box_regression: :class:`~kdet.specs.BoxRegressionSpec`: coder
        weights, smooth-L1 beta, box loss weight.
      classification_loss: ``"focal"``, ``"ap"`` or ``"auc"``, or their
        spec (:class:`~kdet.specs.FocalLossSpec`,
        :class:`~kdet.specs.APLossSpec`, :class:`~kdet.specs.AUCLossSpec`)
        or its dict with ``"kind"``.
      consistent: :class:`~kdet.specs.ConsistentOptimizationSpec` (off by default).
      postprocess: :class:`~kdet.specs.PostProcessSpec` (per-level top-k,
        class-aware NMS, K).
      **kwargs: :class:`~kdet.detectors.base.Detector`'s (labels,
        evaluation) and ``keras.Model``'s.
    """

    flat_config_keys = {
        "backbone": ("backbone", "name"), "backbone_weights": ("backbone", "weights"),
        "freeze_batchnorm": ("backbone", "freeze_batchnorm"),
        **{k: ("anchors", k) for k in ("min_level", "max_level", "num_scales", "aspect_ratios", "anchor_size")},
        "head_convs": ("head", "num_convs"), "head_filters": ("head", "filters"),
        "prior_probability": ("head", "prior_probability"),
        "match_thresholds": ("matcher", "thresholds"),
        "allow_low_quality_matches": ("matcher", "allow_low_quality_matches"),
        "box_weights": ("box_regression", "weights"), "smooth_l1_beta": ("box_regression", "smooth_l1_beta"),
        "box_loss_weight": ("box_regression", "loss_weight"),
        "classification_loss": ("classification_loss", "kind"), "focal_alpha": ("classification_loss", "alpha"),
        "focal_gamma": ("classification_loss", "gamma"), "ap_delta": ("classification_loss", "delta"),
        "ap_interpolate": ("classification_loss", "interpolate"),
        "rank_across_replicas": ("classification_loss", "rank_across_replicas"),
        **{f"consistent_{k}": ("consistent", k) for k in ("cls_terms", "reg_terms", "thresholds", "alpha")},
        "test_regressions": ("consistent", "test_regressions"),
        **{k: ("postprocess", k) for k in ("pre_nms_top_k", "score_threshold", "nms_iou_threshold", "max_detections")},
    }

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str | BackboneSpec | keras.Model | Mapping = BACKBONE,
        fpn_filters: int = 256,
        anchors: AnchorSpec | Mapping = ANCHORS,
        head: RetinaNetHeadSpec | Mapping = HEAD,
        matcher: MatcherSpec | Mapping = MATCHER,
        box_regression: BoxRegressionSpec | Mapping = BOX_REGRESSION,
        classification_loss: str | ClassificationLoss | Mapping = CLASSIFICATION_LOSS,
        consistent: ConsistentOptimizationSpec | Mapping = CONSISTENT,
        postprocess: PostProcessSpec | Mapping = POSTPROCESS,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.anchor_spec = coerce(anchors, ANCHORS, "anchors")
        self.head_spec = coerce(head, HEAD, "head")
        self.matcher_spec = coerce(matcher, MATCHER, "matcher")
        self.box_spec = coerce(box_regression, BOX_REGRESSION, "box_regression")
        self.loss_spec = loss_spec(classification_loss, CLASSIFICATION_LOSS)
        self.consistent_spec = coerce(consistent, CONSISTENT, "consistent")
        self.postprocess_spec = coerce(postprocess, POSTPROCESS, "postprocess")
        self.backbone, backbone_config = detector_backbone(backbone, default=BACKBONE,
                                                           min_level=self.anchor_spec.min_level)
        self._set_arguments(
            num_classes=num_classes, backbone=backbone_config, fpn_filters=fpn_filters, anchors=self.anchor_spec,
            head=self.head_spec, matcher=self.matcher_spec, box_regression=self.box_spec,
            classification_loss=self.loss_spec, consistent=self.consistent_spec, postprocess=self.postprocess_spec)
        self._build_layers(num_classes, fpn_filters)

    def _build_layers(self, num_classes: int, fpn_filters: int) -> None:
        anchors, consistent = self.anchor_spec, self.consistent_spec
        self.fpn = FPN(min_level=anchors.min_level, max_level=anchors.max_level, filters=fpn_filters, extra="conv",
                       name="fpn")
        self.head = RetinaNetHead(
            num_classes=num_classes, num_anchors=anchors.anchors_per_location, num_convs=self.head_spec.num_convs,
            filters=self.head_spec.filters, prior_probability=self.head_spec.prior_probability,
            num_box_outputs=consistent.reg_terms, name="head",
        )
        self.matcher = Matcher(self.matcher_spec.thresholds, (0, -1, 1),
                               allow_low_quality_matches=self.matcher_spec.allow_low_quality_matches)
        self.consistent_matchers = [Matcher(t, (0, -1, 1)) for t in consistent.thresholds[:consistent.num_terms - 1]]
        self.box_coder = box_ops.BoxCoder(self.box_spec.weights)
        self.term_trackers = [
            (keras.metrics.Mean(name=f"cls_loss_term{j + 1}") if j < consistent.cls_terms else None,
             keras.metrics.Mean(name=f"box_loss_term{j + 1}") if j < consistent.reg_terms else None)
            for j in range(consistent.num_terms)] if consistent.num_terms > 1 else []
        self.cls_loss_tracker = keras.metrics.Mean(name="cls_loss")
        self.box_loss_tracker = keras.metrics.Mean(name="box_loss")
        self.num_pos_tracker = keras.metrics.Mean(name="num_positives")

    @classmethod
    def upgrade_config(cls, config: Mapping) -> dict:
        """A flat config (model directory formats 1-2) as the grouped arguments (the loss keeps its kind's fields)."""
        grouped = super().upgrade_config(config)
        loss = grouped.get("classification_loss")
        if isinstance(loss, dict):
            kind = loss.get("kind", CLASSIFICATION_LOSS.kind)
            fields = {f for f in loss_spec(kind).to_config()}
            grouped["classification_loss"] = {k: v for k, v in loss.items() if k in fields}
        return grouped

    # ----------------------------------------------------------------- network
    def call(self, images, training=False):
        """Raw head outputs: ``{"class_logits": [B, N, C], "box_codes": [B, N, 4]}``."""
        features = self.fpn(self.backbone(images, training=training))
        levels = [features[f"P{lvl}"] for lvl in self.anchor_spec.levels]
        return self.head(levels)

    def anchors_per_level(self, image_size) -> list[tf.Tensor]:
        """Anchors of each level for an input of ``image_size`` (h, w), possibly dynamic."""
        return anchor_ops.anchors_for_image(self.anchor_spec, image_size)

    # ----------------------------------------------------------------- training
    def assign_targets(self, anchors: tf.Tensor, targets: dict, matcher: Matcher | None = None) -> dict[str, tf.Tensor]:
        """Matches anchors to ground truth (in-graph, batched).

        Args:
          anchors: ``[N, 4]`` (or ``[B, N, 4]``, e.g. refined anchors).
          targets: pipeline dict with ``boxes [B, M, 4]``, ``classes [B, M]``
            (-1 = padding) and optional ``is_crowd [B, M]``.
          matcher: the rule (default: the anchors' 0.4 / 0.5 matcher).

        Returns:
          ``labels [B, N]`` in {-1, 0, 1}, ``class_targets [B, N, C]`` one-hot,
          ``box_targets [B, N, 4]`` codes.
        """
        matcher = matcher or self.matcher
        gt = trimmed_ground_truth(targets)
        if anchors.shape.rank == 2:
            anchors = anchors[None]
        iou = box_ops.pairwise_iou(anchors, gt.boxes, gt.objects | gt.crowd)  # [B, N, m]
        iou_objects = tf.where(gt.crowd[:, None, :], -1.0, iou)
        match = matcher(iou_objects)
        # Background anchors that overlap a crowd region are ignored, not negatives.
        crowd_iou = tf.reduce_max(with_sentinel_column(tf.where(gt.crowd[:, None, :], iou, -1.0)), axis=-1)
        labels = tf.where((match.labels == 0) & (crowd_iou >= matcher.thresholds[0]), -1, match.labels)
        matched_classes = tf.gather(gt.classes, match.matched_gt, batch_dims=1)
        matched_boxes = tf.gather(gt.boxes, match.matched_gt, batch_dims=1)
        positive = labels == 1
        one_hot = tf.one_hot(tf.maximum(matched_classes, 0), self.num_classes)
        return {
            "labels": labels,
            "class_targets": one_hot * tf.cast(positive, tf.float32)[..., None],
            "box_targets": self.box_coder.encode(matched_boxes, anchors),
        }

    def consistent_targets(self, anchors: tf.Tensor, outputs: dict, targets: dict) -> list[dict[str, tf.Tensor]]:
        """Targets of every term: the anchors, then the anchors regressed 1, 2, ... times (gradient stopped).

        Term ``j >= 1`` decodes ``box_codes`` of regression ``j`` on the boxes of
        term ``j - 1`` and matches them at the consistent spec's ``thresholds[j - 1]``.
        Each entry is :meth:`assign_targets`'s dict plus its ``boxes``.
        """
        boxes = anchors
        out = [dict(self.assign_targets(anchors, targets), boxes=anchors)]
        for j in range(1, self.consistent_spec.num_terms):
            boxes = tf.stop_gradient(self.box_coder.decode(outputs[box_codes_key(j - 1)], boxes))
            out.append(dict(self.assign_targets(boxes, targets, self.consistent_matchers[j - 1]), boxes=boxes))
        return out

    def classification_term(self, logits: tf.Tensor, t: dict, normalizer: tf.Tensor) -> tf.Tensor:
        """One classification term: focal / ``normalizer``, or the (already normalised) AP- or AUC-loss."""
        loss = self.loss_spec
        if loss.kind == "focal":
            return losses.sigmoid_focal(t["class_targets"], logits, tf.cast(t["labels"] >= 0, tf.float32),
                                        alpha=loss.alpha, gamma=loss.gamma) / normalizer
        # Each anchor replicated per class: 1 for its class if positive, 0 otherwise, -1 if ignored.
        labels = tf.where(t["labels"][..., None] < 0, -1, tf.cast(t["class_targets"], tf.int32))
        if loss.rank_across_replicas:
            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1:
                # all_gather's gradient sums over replicas; scale_for_replicas divides it back.
                logits, labels = context.all_gather(logits, axis=0), context.all_gather(labels, axis=0)
        if loss.kind == "ap":
            return losses.ap_loss(logits, labels, delta=loss.delta, interpolate=loss.interpolate)
        return losses.auc_loss(logits, labels, delta=loss.delta)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Classification (focal / AP / AUC) + smooth-L1, with the consistent terms if enabled.

        Focal terms are normalised by the number of positive anchors (one
        ``N_cls`` for all terms, Eq. 1); box term ``j`` by its own positives
        (Eq. 2); counts are over the whole batch, across replicas. Returns the per-replica loss scaled by ``1 / num_replicas``
        (see `kdet.losses.scale_for_replicas`); the logged terms are unscaled.
        """
        del sample_weight, training
        if y is None:
            raise ValueError("RetinaNet.compute_loss needs targets: fit/evaluate on (images, targets) pairs")
        consistent, box = self.consistent_spec, self.box_spec
        anchors = tf.concat(self.anchors_per_level(tf.shape(x)[1:3]), axis=0)
        terms = self.consistent_targets(anchors, y_pred, y)
        num_pos = tf.reduce_sum(tf.cast(terms[0]["labels"] == 1, tf.float32))
        normalizer = tf.maximum(losses.replica_mean(num_pos), 1.0)  # the whole batch's count, on any replicas
        batch = tf.shape(x)[0]
        cls_loss = box_loss = 0.0
        for j, t in enumerate(terms):
            cls_term = box_term = None
            if j < consistent.cls_terms:
                cls_term = self.classification_term(y_pred["class_logits"], t, normalizer)
                cls_loss += (1.0 if j == 0 else consistent.alpha) * cls_term
            if j < consistent.reg_terms:
                positive = tf.cast(t["labels"] == 1, tf.float32)
                box_term = box.loss_weight * losses.smooth_l1(
                    t["box_targets"], y_pred[box_codes_key(j)], positive, beta=box.smooth_l1_beta
                ) / (normalizer if j == 0 else tf.maximum(losses.replica_mean(tf.reduce_sum(positive)), 1.0))
                box_loss += box_term
            for tracker, term in zip(self.term_trackers[j] if self.term_trackers else (), (cls_term, box_term)):
                if tracker is not None:
                    tracker.update_state(term, sample_weight=batch)
        self.cls_loss_tracker.update_state(cls_loss, sample_weight=batch)
        self.box_loss_tracker.update_state(box_loss, sample_weight=batch)
        self.num_pos_tracker.update_state(num_pos / tf.cast(batch, tf.float32), sample_weight=batch)
        return losses.scale_for_replicas(cls_loss + box_loss)

    # ---------------------------------------------------------------- inference
    def postprocess(self, images: tf.Tensor, outputs: dict, *, regressions: int | None = None) -> dict[str, tf.Tensor]:
        """Decodes raw outputs of :meth:`call` into the output contract.

        ``regressions`` (default ``test_regressions``, else #reg) box
        regressions are applied in turn to the top-k candidates.
        """
        image_size = tf.shape(images)[1:3]
        anchors = self.anchors_per_level(image_size)
        sizes = [tf.shape(a)[0] for a in anchors]
        consistent, post = self.consistent_spec, self.postprocess_spec
        regressions = regressions or consistent.test_regressions or consistent.reg_terms
        if not 1 <= regressions <= consistent.reg_terms:
            raise ValueError(f"regressions must be in 1..{consistent.reg_terms}, got {regressions}")
        refinements = [tf.split(outputs[box_codes_key(j)], sizes, axis=1) for j in range(1, regressions)]
        detections = postprocess.multilevel_detections(
            tf.split(outputs["class_logits"], sizes, axis=1),
            tf.split(outputs["box_codes"], sizes, axis=1),
            anchors,
            box_coder=self.box_coder,
            image_shape=image_size,
            pre_nms_top_k=post.candidates,
            score_threshold=post.score_threshold,
            nms_iou_threshold=post.nms_iou_threshold,
            max_detections=post.max_detections,
            refinements=refinements,
        )
        return detections

    def detect_clean(self, images: tf.Tensor, *, regressions: int | None = None) -> dict[str, tf.Tensor]:
        """Finite images ``[B, H, W, 3]`` (0..255) -> the output contract (``detect`` guards the input).

        ``regressions`` overrides ``test_regressions`` for this call (1 on a
        #reg = 2 model is "2*").
        """
        return self.postprocess(images, self(images, training=False), regressions=regressions)
