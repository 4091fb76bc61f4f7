"""Faster R-CNN's region proposal network on FPN P2-P6, as a ``keras.Model``.

Trains with ``model.fit((images, targets))`` exactly as the excerpt states
(see :mod:`kdet.rpn`); ``predict_step`` returns the proposals in the output
contract (class 0 = "object", score = objectness probability) so that
:class:`kdet.evaluation.CocoEvaluator` measures class-agnostic proposal
recall. Cascade R-CNN composes the same pieces (head, targets, proposals).
"""

from __future__ import annotations

from typing import Mapping

import keras
import tensorflow as tf

from kdet import anchors as anchor_ops
from kdet import boxes as box_ops
from kdet import losses, rpn
from kdet.anchors import AnchorSpec
from kdet.backbones import FPN, BackboneSpec, detector_backbone
from kdet.detectors.base import Detector
from kdet.heads.rpn import RPNHead
from kdet.matching import Matcher
from kdet.rcnn_specs import ProposalSpec
from kdet.specs import BoxRegressionSpec, MatcherSpec, SamplingSpec, coerce

#: The RPN's defaults (Ren et al. Sec. 3.1 on FPN): ResNet-50, one scale x 3 ratios of 8 x stride on P2-P6
#: (32..512 px), negative below IoU 0.3 / positive from 0.7 or best, 256 anchors at up to 1:1, Eq. 2 codes with
#: lambda = 10, Detectron's FPN proposal budgets.
BACKBONE = BackboneSpec()
ANCHORS = AnchorSpec(min_level=2, max_level=6, num_scales=1, aspect_ratios=(0.5, 1.0, 2.0), anchor_size=8.0)
MATCHER = MatcherSpec(thresholds=(0.3, 0.7), allow_low_quality_matches=True)
SAMPLING = SamplingSpec(num_samples=256, positive_fraction=0.5)
BOX_REGRESSION = BoxRegressionSpec(weights=(1.0, 1.0, 1.0, 1.0), smooth_l1_beta=1.0, loss_weight=10.0)
PROPOSALS = ProposalSpec()


@keras.saving.register_keras_serializable(package="kdet")
class RegionProposalNetwork(Detector):
    """RPN with one anchor scale per level and three ratios (32..512 px on P2..P6).

    Args (keyword-only; as plain data they are also :meth:`get_config`). A
    spec argument also takes a dict of the spec's fields, which replace
    those of the default (the module's constants, e.g. :data:`ANCHORS`):

      backbone: a name, :class:`~kdet.backbones.BackboneSpec` or a
        ``keras.Model`` returning ``{"C2".."C5"}`` (see ``kdet.backbones``).
      fpn_filters, head_filters: channels of the FPN and the RPN head.
      anchors: :class:`~kdet.anchors.AnchorSpec` (P2-P6, one scale, size 8).
      matcher: :class:`~kdet.specs.MatcherSpec`: 0.3 / 0.7 and the
        excerpt's "highest IoU with a ground truth" rule.
      sampling: :class:`~kdet.specs.SamplingSpec`: 256 anchors at up to 1:1.
      box_regression: :class:`~kdet.specs.BoxRegressionSpec`: coder weights
        ((1, 1, 1, 1) is Eq. 2), smooth-L1 beta and lambda (``loss_weight``).
      loss_normalization: Eq. 1's ``"paper"`` or ``"sampled"`` (see
        :func:`kdet.rpn.rpn_losses`).
      proposals: :class:`~kdet.rcnn_specs.ProposalSpec`: budgets in training
        and at test, NMS, minimum size.
      **kwargs: :class:`~kdet.detectors.base.Detector`'s and ``keras.Model``'s.
    """

    default_class_names = ("object",)
    flat_config_keys = {
        "backbone": ("backbone", "name"), "backbone_weights": ("backbone", "weights"),
        "freeze_batchnorm": ("backbone", "freeze_batchnorm"),
        **{k: ("anchors", k) for k in ("min_level", "max_level", "aspect_ratios", "anchor_size")},
        "match_thresholds": ("matcher", "thresholds"),
        "allow_low_quality_matches": ("matcher", "allow_low_quality_matches"),
        "num_samples": ("sampling", "num_samples"), "positive_fraction": ("sampling", "positive_fraction"),
        "box_weights": ("box_regression", "weights"), "smooth_l1_beta": ("box_regression", "smooth_l1_beta"),
        "reg_weight": ("box_regression", "loss_weight"),
        **{k: ("proposals", k) for k in ("pre_nms_top_k_train", "pre_nms_top_k_test", "max_proposals_train",
                                         "max_proposals_test", "nms_iou_threshold", "min_size")},
    }

    def __init__(
        self,
        *,
        backbone: str | BackboneSpec | keras.Model | Mapping = BACKBONE,
        fpn_filters: int = 256,
        head_filters: int = 256,
        anchors: AnchorSpec | Mapping = ANCHORS,
        matcher: MatcherSpec | Mapping = MATCHER,
        sampling: SamplingSpec | Mapping = SAMPLING,
        box_regression: BoxRegressionSpec | Mapping = BOX_REGRESSION,
        loss_normalization: str = "paper",
        proposals: ProposalSpec | Mapping = PROPOSALS,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if loss_normalization not in rpn.NORMALIZATIONS:
            raise ValueError(f"loss_normalization must be one of {rpn.NORMALIZATIONS}, got {loss_normalization!r}")
        self.anchor_spec = coerce(anchors, ANCHORS, "anchors")
        self.matcher_spec = coerce(matcher, MATCHER, "matcher")
        self.sampling_spec = coerce(sampling, SAMPLING, "sampling")
        self.box_spec = coerce(box_regression, BOX_REGRESSION, "box_regression")
        self.proposal_spec = coerce(proposals, PROPOSALS, "proposals")
        self.backbone, backbone_config = detector_backbone(backbone, default=BACKBONE,
                                                           min_level=self.anchor_spec.min_level)
        self._set_arguments(
            backbone=backbone_config, fpn_filters=fpn_filters, head_filters=head_filters, anchors=self.anchor_spec,
            matcher=self.matcher_spec, sampling=self.sampling_spec, box_regression=self.box_spec,
            loss_normalization=loss_normalization, proposals=self.proposal_spec)
        self.fpn = FPN(min_level=self.anchor_spec.min_level, max_level=self.anchor_spec.max_level, filters=fpn_filters,
                       extra="maxpool", name="fpn")
        self.head = RPNHead(num_anchors=self.anchor_spec.anchors_per_location, filters=head_filters, name="rpn_head")
        self.matcher = Matcher(self.matcher_spec.thresholds, (0, -1, 1),
                               allow_low_quality_matches=self.matcher_spec.allow_low_quality_matches)
        self.box_coder = box_ops.BoxCoder(self.box_spec.weights)
        self.cls_loss_tracker = keras.metrics.Mean(name="rpn_cls_loss")
        self.box_loss_tracker = keras.metrics.Mean(name="rpn_box_loss")

    def features(self, images, training=False) -> dict[str, tf.Tensor]:
        """FPN features ``{"P2".."P6"}`` (shared with a second stage)."""
        return self.fpn(self.backbone(images, training=training))

    def call(self, images, training=False):
        """Raw outputs: ``{"objectness": [B, N], "box_codes": [B, N, 4]}``."""
        features = self.features(images, training=training)
        return self.head([features[f"P{lvl}"] for lvl in self.anchor_spec.levels])

    @property
    def input_stride(self) -> int:
        """Input sizes are multiples of the largest feature stride, ``2**max_level`` (64 for P2-P6)."""
        return 2 ** self.anchor_spec.max_level

    def anchors_per_level(self, image_size) -> list[tf.Tensor]:
        """``[N_l, 4]`` anchors per level for an input of ``image_size`` (h, w)."""
        return anchor_ops.anchors_for_image(self.anchor_spec, image_size)

    def rpn_loss(self, images, targets, outputs) -> tuple[tf.Tensor, tf.Tensor]:
        """``(cls_loss, box_loss)`` of Eq. 1 for a batch (the caller logs them)."""
        anchors = self.anchors_per_level(tf.shape(images)[1:3])
        sampling = self.sampling_spec
        t = rpn.rpn_targets(
            tf.concat(anchors, axis=0), targets, matcher=self.matcher, box_coder=self.box_coder,
            num_samples=sampling.num_samples, positive_fraction=sampling.positive_fraction,
        )
        num_locations = tf.add_n([tf.shape(a)[0] for a in anchors]) // self.anchor_spec.anchors_per_location
        cls_loss, box_loss = rpn.rpn_losses(
            outputs["objectness"], outputs["box_codes"], t, normalization=self._config["loss_normalization"],
            num_samples=sampling.num_samples, num_locations=num_locations, reg_weight=self.box_spec.loss_weight,
            smooth_l1_beta=self.box_spec.smooth_l1_beta,
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
        spec = self.proposal_spec
        pre_nms_top_k, max_proposals = spec.budget(training=training)
        return rpn.generate_proposals(
            tf.split(outputs["objectness"], sizes, axis=1), tf.split(outputs["box_codes"], sizes, axis=1), anchors,
            box_coder=self.box_coder, image_shape=tf.shape(images)[1:3], pre_nms_top_k=pre_nms_top_k,
            max_proposals=max_proposals, nms_iou_threshold=spec.nms_iou_threshold, min_size=spec.min_size,
        )

    def detect_clean(self, images) -> dict[str, tf.Tensor]:
        """Finite images -> the test proposals as the output contract (class 0 "object", score = objectness)."""
        found = self.proposals(images, self(images, training=False), training=False)
        valid = found["levels"] >= 0
        return {"boxes": found["boxes"], "scores": found["scores"], "classes": tf.where(valid, 0, -1),
                "num_detections": found["num_proposals"]}
