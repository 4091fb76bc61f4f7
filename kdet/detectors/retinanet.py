"""RetinaNet (Lin et al. 2017) as a ``keras.Model`` trained through ``compute_loss``.

Inputs are raw RGB images ``[B, H, W, 3]`` in ``[0, 255]`` (H, W multiples of
``2**max_level``). ``model.fit`` takes ``(images, targets)`` where targets is
the pipeline's dict (``boxes [B, M, 4]`` yxyx pixels, ``classes [B, M]`` with
-1 padding, optional ``is_crowd [B, M]``); anchors are matched to ground truth
in the graph, inside :meth:`RetinaNet.compute_loss`, because later variants
(consistent optimization) need the predictions to build their targets.
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from kdet import anchors as anchor_ops
from kdet import boxes as box_ops
from kdet import losses, postprocess
from kdet.backbones import FPN, build_backbone
from kdet.heads.retinanet import RetinaNetHead
from kdet.matching import Matcher, trimmed_ground_truth, with_sentinel_column


@keras.saving.register_keras_serializable(package="kdet")
class RetinaNet(keras.Model):
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
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._config = {k: v for k, v in locals().items() if k not in ("self", "kwargs", "__class__")}
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.anchor_spec = anchor_ops.AnchorSpec(
            min_level=min_level, max_level=max_level, num_scales=num_scales,
            aspect_ratios=aspect_ratios, anchor_size=anchor_size,
        )
        self.backbone = build_backbone(backbone, weights=backbone_weights, freeze_batchnorm=freeze_batchnorm)
        self.fpn = FPN(min_level=min_level, max_level=max_level, filters=fpn_filters, extra="conv", name="fpn")
        self.head = RetinaNetHead(
            num_classes=num_classes, num_anchors=self.anchor_spec.anchors_per_location,
            num_convs=head_convs, filters=head_filters, prior_probability=prior_probability, name="head",
        )
        neg_below, pos_from = match_thresholds
        self.matcher = Matcher((neg_below, pos_from), (0, -1, 1), allow_low_quality_matches=allow_low_quality_matches)
        self.box_coder = box_ops.BoxCoder(box_weights)
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
    def assign_targets(self, anchors: tf.Tensor, targets: dict) -> dict[str, tf.Tensor]:
        """Matches anchors to ground truth (in-graph, batched).

        Args:
          anchors: ``[N, 4]`` (or ``[B, N, 4]``, e.g. refined anchors).
          targets: pipeline dict with ``boxes [B, M, 4]``, ``classes [B, M]``
            (-1 = padding) and optional ``is_crowd [B, M]``.

        Returns:
          ``labels [B, N]`` in {-1, 0, 1}, ``class_targets [B, N, C]`` one-hot,
          ``box_targets [B, N, 4]`` codes.
        """
        gt = trimmed_ground_truth(targets)
        if anchors.shape.rank == 2:
            anchors = anchors[None]
        iou = box_ops.pairwise_iou(anchors, gt.boxes, gt.objects | gt.crowd)  # [B, N, m]
        iou_objects = tf.where(gt.crowd[:, None, :], -1.0, iou)
        match = self.matcher(iou_objects)
        # Background anchors that overlap a crowd region are ignored, not negatives.
        crowd_iou = tf.reduce_max(with_sentinel_column(tf.where(gt.crowd[:, None, :], iou, -1.0)), axis=-1)
        labels = tf.where((match.labels == 0) & (crowd_iou >= self.matcher.thresholds[0]), -1, match.labels)
        matched_classes = tf.gather(gt.classes, match.matched_gt, batch_dims=1)
        matched_boxes = tf.gather(gt.boxes, match.matched_gt, batch_dims=1)
        positive = labels == 1
        one_hot = tf.one_hot(tf.maximum(matched_classes, 0), self.num_classes)
        return {
            "labels": labels,
            "class_targets": one_hot * tf.cast(positive, tf.float32)[..., None],
            "box_targets": self.box_coder.encode(matched_boxes, anchors),
        }

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Focal + smooth-L1, both normalised by the number of positive anchors.

        Returns the per-replica loss scaled by ``1 / num_replicas`` (see
        `kdet.losses.scale_for_replicas`); the logged terms are unscaled.
        """
        del sample_weight, training
        if y is None:
            raise ValueError("RetinaNet.compute_loss needs targets: fit/evaluate on (images, targets) pairs")
        anchors = tf.concat(self.anchors_per_level(tf.shape(x)[1:3]), axis=0)
        t = self.assign_targets(anchors, y)
        positive = tf.cast(t["labels"] == 1, tf.float32)
        num_pos = tf.reduce_sum(positive)
        normalizer = tf.maximum(num_pos, 1.0)
        cls_loss = losses.sigmoid_focal(
            t["class_targets"], y_pred["class_logits"], tf.cast(t["labels"] >= 0, tf.float32),
            alpha=self._config["focal_alpha"], gamma=self._config["focal_gamma"],
        ) / normalizer
        box_loss = self._config["box_loss_weight"] * losses.smooth_l1(
            t["box_targets"], y_pred["box_codes"], positive, beta=self._config["smooth_l1_beta"]
        ) / normalizer
        batch = tf.shape(x)[0]
        self.cls_loss_tracker.update_state(cls_loss, sample_weight=batch)
        self.box_loss_tracker.update_state(box_loss, sample_weight=batch)
        self.num_pos_tracker.update_state(num_pos / tf.cast(batch, tf.float32), sample_weight=batch)
        return losses.scale_for_replicas(cls_loss + box_loss)

    # ---------------------------------------------------------------- inference
    def postprocess(self, images: tf.Tensor, outputs: dict) -> dict[str, tf.Tensor]:
        """Decodes raw outputs of :meth:`call` into the output contract."""
        image_size = tf.shape(images)[1:3]
        anchors = self.anchors_per_level(image_size)
        sizes = [tf.shape(a)[0] for a in anchors]
        cfg = self._config
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
        )
        return postprocess.suppress_non_finite(images, detections)

    def detect(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Images ``[B, H, W, 3]`` (0..255) -> the output contract.

        Non-finite pixels are zeroed before the network and their image
        reports zero detections.
        """
        images = tf.cast(images, tf.float32)
        return self.postprocess(images, self(postprocess.zero_non_finite(images), training=False))

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.detect(x)

    def get_config(self):
        return dict(self._config)

    @classmethod
    def from_config(cls, config):
        return cls(**config)
