"""Faster R-CNN's region proposal network on FPN P2-P6, as a ``keras.Model``.

Trains with ``model.fit((images, targets))`` exactly as the excerpt states
(see :mod:`kdet.rpn`); ``predict_step`` returns the proposals in the output
contract (class 0 = "object", score = objectness probability) so that
:class:`kdet.evaluation.CocoEvaluator` measures class-agnostic proposal
recall. Cascade R-CNN composes the same pieces (head, targets, proposals).
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from kdet import anchors as anchor_ops
from kdet import boxes as box_ops
from kdet import losses, rpn
from kdet.backbones import FPN, build_backbone
from kdet.detectors.base import Detector
from kdet.heads.rpn import RPNHead
from kdet.matching import Matcher


@keras.saving.register_keras_serializable(package="kdet")
class RegionProposalNetwork(Detector):
    """RPN with one anchor scale per level and three ratios (32..512 px on P2..P6).

    Args (keyword-only; they are also :meth:`get_config`):
      backbone, backbone_weights, freeze_batchnorm: see ``kdet.backbones``.
      fpn_filters, head_filters: channels.
      min_level, max_level, aspect_ratios, anchor_size: anchors (one scale).
      match_thresholds: ``(negative_below, positive_above)``: 0.3 / 0.7.
      allow_low_quality_matches: the excerpt's "highest IoU with a ground
        truth" rule.
      num_samples, positive_fraction: 256 at up to 1:1.
      loss_normalization, reg_weight, smooth_l1_beta: Eq. 1 (see
        :func:`kdet.rpn.rpn_losses`).
      box_weights: coder weights; (1, 1, 1, 1) is Eq. 2.
      pre_nms_top_k_train / _test, max_proposals_train / _test,
      nms_iou_threshold, min_size: proposal generation.
    """

    default_class_names = ("object",)

    def __init__(
        self,
        *,
        backbone: str = "resnet50",
        backbone_weights: str | None = None,
        freeze_batchnorm: bool = True,
        fpn_filters: int = 256,
        head_filters: int = 256,
        min_level: int = 2,
        max_level: int = 6,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        anchor_size: float = 8.0,
        match_thresholds: Sequence[float] = (0.3, 0.7),
        allow_low_quality_matches: bool = True,
        num_samples: int = 256,
        positive_fraction: float = 0.5,
        loss_normalization: str = "paper",
        reg_weight: float = 10.0,
        smooth_l1_beta: float = 1.0,
        box_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        pre_nms_top_k_train: int = 2000,
        pre_nms_top_k_test: int = 1000,
        max_proposals_train: int = 2000,
        max_proposals_test: int = 1000,
        nms_iou_threshold: float = 0.7,
        min_size: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._config = {k: v for k, v in locals().items() if k not in ("self", "kwargs", "__class__")}
        if loss_normalization not in rpn.NORMALIZATIONS:
            raise ValueError(f"loss_normalization must be one of {rpn.NORMALIZATIONS}, got {loss_normalization!r}")
        self.anchor_spec = anchor_ops.AnchorSpec(
            min_level=min_level, max_level=max_level, num_scales=1, aspect_ratios=aspect_ratios,
            anchor_size=anchor_size,
        )
        self.backbone = build_backbone(backbone, weights=backbone_weights, freeze_batchnorm=freeze_batchnorm)
        self.fpn = FPN(min_level=min_level, max_level=max_level, filters=fpn_filters, extra="maxpool", name="fpn")
        self.head = RPNHead(num_anchors=self.anchor_spec.anchors_per_location, filters=head_filters, name="rpn_head")
        neg_below, pos_above = match_thresholds
        self.matcher = Matcher((neg_below, pos_above), (0, -1, 1), allow_low_quality_matches=allow_low_quality_matches)
        self.box_coder = box_ops.BoxCoder(box_weights)
        self.cls_loss_tracker = keras.metrics.Mean(name="rpn_cls_loss")
        self.box_loss_tracker = keras.metrics.Mean(name="rpn_box_loss")

    def features(self, images, training=False) -> dict[str, tf.Tensor]:
        """FPN features ``{"P2".."P6"}`` (shared with a second stage)."""
        return self.fpn(self.backbone(images, training=training))

    def call(self, images, training=False):
        """Raw outputs: ``{"objectness": [B, N], "box_codes": [B, N, 4]}``."""
        features = self.features(images, training=training)
        return self.head([features[f"P{lvl}"] for lvl in self.anchor_spec.levels])

    def anchors_per_level(self, image_size) -> list[tf.Tensor]:
        """``[N_l, 4]`` anchors per level for an input of ``image_size`` (h, w)."""
        return anchor_ops.anchors_for_image(self.anchor_spec, image_size)

    def rpn_loss(self, images, targets, outputs) -> tuple[tf.Tensor, tf.Tensor]:
        """``(cls_loss, box_loss)`` of Eq. 1 for a batch (the caller logs them)."""
        anchors = self.anchors_per_level(tf.shape(images)[1:3])
        cfg = self._config
        t = rpn.rpn_targets(
            tf.concat(anchors, axis=0), targets, matcher=self.matcher, box_coder=self.box_coder,
            num_samples=cfg["num_samples"], positive_fraction=cfg["positive_fraction"],
        )
        num_locations = tf.add_n([tf.shape(a)[0] for a in anchors]) // self.anchor_spec.anchors_per_location
        cls_loss, box_loss = rpn.rpn_losses(
            outputs["objectness"], outputs["box_codes"], t, normalization=cfg["loss_normalization"],
            num_samples=cfg["num_samples"], num_locations=num_locations, reg_weight=cfg["reg_weight"],
            smooth_l1_beta=cfg["smooth_l1_beta"],
        )
        return cls_loss, box_loss

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        del sample_weight, training
        if y is None:
            raise ValueError("RegionProposalNetwork.compute_loss needs targets: fit on (images, targets) pairs")
        cls_loss, box_loss = self.rpn_loss(x, y, y_pred)
        batch = tf.shape(x)[0]
        self.cls_loss_tracker.update_state(cls_loss, sample_weight=batch)
        self.box_loss_tracker.update_state(box_loss, sample_weight=batch)
        return losses.scale_for_replicas(cls_loss + box_loss)

    def proposals(self, images, outputs, *, training: bool) -> dict[str, tf.Tensor]:
        """Proposals of :func:`kdet.rpn.generate_proposals` (train or test budgets)."""
        anchors = self.anchors_per_level(tf.shape(images)[1:3])
        sizes = [tf.shape(a)[0] for a in anchors]
        cfg = self._config
        phase = "train" if training else "test"
        return rpn.generate_proposals(
            tf.split(outputs["objectness"], sizes, axis=1), tf.split(outputs["box_codes"], sizes, axis=1), anchors,
            box_coder=self.box_coder, image_shape=tf.shape(images)[1:3],
            pre_nms_top_k=cfg[f"pre_nms_top_k_{phase}"], max_proposals=cfg[f"max_proposals_{phase}"],
            nms_iou_threshold=cfg["nms_iou_threshold"], min_size=cfg["min_size"],
        )

    def detect_clean(self, images) -> dict[str, tf.Tensor]:
        """Finite images -> the test proposals as the output contract (class 0 "object", score = objectness)."""
        found = self.proposals(images, self(images, training=False), training=False)
        valid = found["levels"] >= 0
        return {"boxes": found["boxes"], "scores": found["scores"], "classes": tf.where(valid, 0, -1),
                "num_detections": found["num_proposals"]}
