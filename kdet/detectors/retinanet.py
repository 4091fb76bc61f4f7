"""RetinaNet (Lin et al. 2017) as a ``keras.Model`` trained through ``compute_loss``.

Inputs are raw RGB images ``[B, H, W, 3]`` in ``[0, 255]`` (H, W multiples of
``2**max_level``). ``model.fit`` takes ``(images, targets)`` where targets is
the pipeline's dict (``boxes [B, M, 4]`` yxyx pixels, ``classes [B, M]`` with
-1 padding, optional ``is_crowd [B, M]``); anchors are matched to ground truth
in the graph, inside :meth:`RetinaNet.compute_loss`, because consistent
optimization needs the predictions to build its targets.

Two independent switches turn it into the papers' variants:

* ``classification_loss``: ``"focal"`` (RetinaNet), ``"ap"`` (AP-Loss: every
  anchor-class pair of the batch ranked together, trained by the error-driven
  update, :func:`kdet.losses.ap_loss`) or ``"auc"`` (its Eq. 7 variant);
* ``consistent_cls_terms`` / ``consistent_reg_terms`` (ConRetinaNet, Kong et
  al., Fig. 4(d)): the anchors decoded by the box branch (gradient stopped)
  are matched again at ``consistent_thresholds`` and add Eq. 1's second
  classification term (same classifier, weight ``consistent_alpha``) and
  Eq. 2's second regression term, from a second box output whose last conv
  alone is not shared. Inference scores exactly as RetinaNet does and applies
  ``test_regressions`` regressions in turn (Table 3's "2*" is
  ``consistent_reg_terms=2, test_regressions=1``).

Both combine (AP-loss with consistent optimization trains too). With
``consistent_cls_terms = consistent_reg_terms = 1`` and the focal loss the
model is exactly the plain RetinaNet: same variables, loss and detections.
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from kdet import anchors as anchor_ops
from kdet import boxes as box_ops
from kdet import losses, postprocess
from kdet.backbones import FPN, build_backbone
from kdet.detectors.base import Detector
from kdet.heads.retinanet import RetinaNetHead
from kdet.matching import Matcher, trimmed_ground_truth, with_sentinel_column


CLASSIFICATION_LOSSES = ("focal", "ap", "auc")


def box_codes_key(regression: int) -> str:
    """Output key of the box regression ``regression`` (0-based): ``box_codes``, ``box_codes_2``, ..."""
    return "box_codes" if regression == 0 else f"box_codes_{regression + 1}"


@keras.saving.register_keras_serializable(package="kdet")
class RetinaNet(Detector):
    """RetinaNet with FPN P3-P7, 9 anchors per location and the focal loss.

    Args (keyword-only; they are also :meth:`get_config`):
      num_classes: foreground classes C.
      backbone: one of ``kdet.backbones.BACKBONES``.
      backbone_weights: local ImageNet weights file or None.
      freeze_batchnorm: frozen-BN policy of the backbone.
      min_level, max_level, num_scales, aspect_ratios, anchor_size: anchors
        (see :class:`kdet.anchors.AnchorSpec`).
      fpn_filters, head_convs, head_filters, prior_probability: network.
      match_thresholds: ``(negative_below, positive_from)``; in between is
        ignored (paper: 0.4 / 0.5).
      allow_low_quality_matches: make each ground truth's best anchor positive.
      focal_alpha, focal_gamma: focal loss.
      box_weights: box coder weights ``(wy, wx, wh, ww)``.
      smooth_l1_beta, box_loss_weight: box loss.
      pre_nms_top_k, score_threshold, nms_iou_threshold, max_detections:
        inference (per-level top-k, class-aware NMS, K).
      classification_loss: ``"focal"``, ``"ap"`` or ``"auc"``.
      ap_delta, ap_interpolate: AP-loss's step half width (Eq. 21) and
        interpolated AP.
      rank_across_replicas: under a distribution strategy, rank the scores
        of all replicas together (an all-gather; N replicas of B images then
        equal one device with N * B images) instead of per replica.
      consistent_cls_terms: #cls of Table 3 (1 = off, 2 = Eq. 1, 3 = a third
        term on twice-regressed anchors).
      consistent_reg_terms: #reg of Table 3 (1 = off, 2 = Eq. 2).
      consistent_thresholds: ``(negative_below, positive_from)`` of the
        refined terms 2, 3 (0.5/0.6 and 0.6/0.7 as in Table 3).
      consistent_alpha: alpha of Eq. 1.
      test_regressions: regressions applied at inference (None: #reg).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str = "resnet50",
        backbone_weights: str | None = None,
        freeze_batchnorm: bool = True,
        min_level: int = 3,
        max_level: int = 7,
        num_scales: int = 3,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        anchor_size: float = 4.0,
        fpn_filters: int = 256,
        head_convs: int = 4,
        head_filters: int = 256,
        prior_probability: float = 0.01,
        match_thresholds: Sequence[float] = (0.4, 0.5),
        allow_low_quality_matches: bool = False,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        box_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        smooth_l1_beta: float = 0.1,
        box_loss_weight: float = 1.0,
        pre_nms_top_k: int = 1000,
        score_threshold: float = 0.05,
        nms_iou_threshold: float = 0.5,
        max_detections: int = 100,
        classification_loss: str = "focal",
        ap_delta: float = 1.0,
        ap_interpolate: bool = True,
        rank_across_replicas: bool = False,
        consistent_cls_terms: int = 1,
        consistent_reg_terms: int = 1,
        consistent_thresholds: Sequence[Sequence[float]] = ((0.5, 0.6), (0.6, 0.7)),
        consistent_alpha: float = 1.0,
        test_regressions: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._config = {k: v for k, v in locals().items() if k not in ("self", "kwargs", "__class__")}
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if classification_loss not in CLASSIFICATION_LOSSES:
            raise ValueError(f"classification_loss must be one of {CLASSIFICATION_LOSSES}, got {classification_loss!r}")
        if not (consistent_reg_terms >= 1 and 1 <= consistent_cls_terms <= consistent_reg_terms + 1):
            raise ValueError(
                "need consistent_reg_terms >= 1 and 1 <= consistent_cls_terms <= consistent_reg_terms + 1 (term k "
                f"classifies anchors regressed k - 1 times), got #cls={consistent_cls_terms}, "
                f"#reg={consistent_reg_terms}")
        num_refined = max(consistent_cls_terms, consistent_reg_terms) - 1
        if len(consistent_thresholds) < num_refined:
            raise ValueError(f"consistent_thresholds needs {num_refined} (negative_below, positive_from) pairs, got "
                             f"{list(consistent_thresholds)}")
        if test_regressions is not None and not 1 <= test_regressions <= consistent_reg_terms:
            raise ValueError(f"test_regressions must be in 1..{consistent_reg_terms}, got {test_regressions}")
        self.num_classes = num_classes
        self.anchor_spec = anchor_ops.AnchorSpec(
            min_level=min_level, max_level=max_level, num_scales=num_scales,
            aspect_ratios=aspect_ratios, anchor_size=anchor_size,
        )
        self.backbone = build_backbone(backbone, weights=backbone_weights, freeze_batchnorm=freeze_batchnorm)
        self.fpn = FPN(min_level=min_level, max_level=max_level, filters=fpn_filters, extra="conv", name="fpn")
        self.head = RetinaNetHead(
            num_classes=num_classes, num_anchors=self.anchor_spec.anchors_per_location,
            num_convs=head_convs, filters=head_filters, prior_probability=prior_probability,
            num_box_outputs=consistent_reg_terms, name="head",
        )
        neg_below, pos_from = match_thresholds
        self.matcher = Matcher((neg_below, pos_from), (0, -1, 1), allow_low_quality_matches=allow_low_quality_matches)
        self.consistent_matchers = [Matcher(tuple(t), (0, -1, 1)) for t in consistent_thresholds[:num_refined]]
        self.box_coder = box_ops.BoxCoder(box_weights)
        terms = max(consistent_cls_terms, consistent_reg_terms)
        self.term_trackers = [
            (keras.metrics.Mean(name=f"cls_loss_term{j + 1}") if j < consistent_cls_terms else None,
             keras.metrics.Mean(name=f"box_loss_term{j + 1}") if j < consistent_reg_terms else None)
            for j in range(terms)] if terms > 1 else []
        self.cls_loss_tracker = keras.metrics.Mean(name="cls_loss")
        self.box_loss_tracker = keras.metrics.Mean(name="box_loss")
        self.num_pos_tracker = keras.metrics.Mean(name="num_positives")

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
        term ``j - 1`` and matches them at ``consistent_thresholds[j - 1]``.
        Each entry is :meth:`assign_targets`'s dict plus its ``boxes``.
        """
        cfg = self._config
        boxes = anchors
        out = [dict(self.assign_targets(anchors, targets), boxes=anchors)]
        for j in range(1, max(cfg["consistent_cls_terms"], cfg["consistent_reg_terms"])):
            boxes = tf.stop_gradient(self.box_coder.decode(outputs[box_codes_key(j - 1)], boxes))
            out.append(dict(self.assign_targets(boxes, targets, self.consistent_matchers[j - 1]), boxes=boxes))
        return out

    def classification_term(self, logits: tf.Tensor, t: dict, normalizer: tf.Tensor) -> tf.Tensor:
        """One classification term: focal / ``normalizer``, or the (already normalised) AP- or AUC-loss."""
        cfg = self._config
        if cfg["classification_loss"] == "focal":
            return losses.sigmoid_focal(t["class_targets"], logits, tf.cast(t["labels"] >= 0, tf.float32),
                                        alpha=cfg["focal_alpha"], gamma=cfg["focal_gamma"]) / normalizer
        # Each anchor replicated per class: 1 for its class if positive, 0 otherwise, -1 if ignored.
        labels = tf.where(t["labels"][..., None] < 0, -1, tf.cast(t["class_targets"], tf.int32))
        if cfg["rank_across_replicas"]:
            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1:
                # all_gather's gradient sums over replicas; scale_for_replicas divides it back.
                logits, labels = context.all_gather(logits, axis=0), context.all_gather(labels, axis=0)
        fn = losses.ap_loss if cfg["classification_loss"] == "ap" else losses.auc_loss
        kwargs = {"interpolate": cfg["ap_interpolate"]} if cfg["classification_loss"] == "ap" else {}
        return fn(logits, labels, delta=cfg["ap_delta"], **kwargs)

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
        cfg = self._config
        anchors = tf.concat(self.anchors_per_level(tf.shape(x)[1:3]), axis=0)
        terms = self.consistent_targets(anchors, y_pred, y)
        num_pos = tf.reduce_sum(tf.cast(terms[0]["labels"] == 1, tf.float32))
        normalizer = tf.maximum(losses.replica_mean(num_pos), 1.0)  # the whole batch's count, on any replicas
        batch = tf.shape(x)[0]
        cls_loss = box_loss = 0.0
        for j, t in enumerate(terms):
            cls_term = box_term = None
            if j < cfg["consistent_cls_terms"]:
                cls_term = self.classification_term(y_pred["class_logits"], t, normalizer)
                cls_loss += (1.0 if j == 0 else cfg["consistent_alpha"]) * cls_term
            if j < cfg["consistent_reg_terms"]:
                positive = tf.cast(t["labels"] == 1, tf.float32)
                box_term = cfg["box_loss_weight"] * losses.smooth_l1(
                    t["box_targets"], y_pred[box_codes_key(j)], positive, beta=cfg["smooth_l1_beta"]
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
        cfg = self._config
        regressions = regressions or cfg["test_regressions"] or cfg["consistent_reg_terms"]
        if not 1 <= regressions <= cfg["consistent_reg_terms"]:
            raise ValueError(f"regressions must be in 1..{cfg['consistent_reg_terms']}, got {regressions}")
        refinements = [tf.split(outputs[box_codes_key(j)], sizes, axis=1) for j in range(1, regressions)]
        detections = postprocess.multilevel_detections(
            tf.split(outputs["class_logits"], sizes, axis=1),
            tf.split(outputs["box_codes"], sizes, axis=1),
            anchors,
            box_coder=self.box_coder,
            image_shape=image_size,
            pre_nms_top_k=cfg["pre_nms_top_k"],
            score_threshold=cfg["score_threshold"],
            nms_iou_threshold=cfg["nms_iou_threshold"],
            max_detections=cfg["max_detections"],
            refinements=refinements,
        )
        return detections

    def detect_clean(self, images: tf.Tensor, *, regressions: int | None = None) -> dict[str, tf.Tensor]:
        """Finite images ``[B, H, W, 3]`` (0..255) -> the output contract (``detect`` guards the input).

        ``regressions`` overrides ``test_regressions`` for this call (1 on a
        #reg = 2 model is "2*").
        """
        return self.postprocess(images, self(images, training=False), regressions=regressions)
