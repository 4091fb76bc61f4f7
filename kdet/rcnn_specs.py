"""The specs of the two-stage detectors: proposal budgets, RoI pooling and the cascade's stages.

Frozen, validated, plain data as every :class:`kdet.specs.Spec`: the
:class:`~kdet.detectors.rpn.RegionProposalNetwork` takes a
:class:`ProposalSpec`; :class:`~kdet.detectors.cascade_rcnn.CascadeRCNN` a
:class:`RoIPoolerSpec` and a :class:`CascadeSpec` (one stage is Faster R-CNN).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from kdet.specs import Spec


@dataclasses.dataclass(frozen=True)
class ProposalSpec(Spec):
    """How the RPN turns its outputs into proposals (:func:`kdet.rpn.generate_proposals`), per phase.

    Attributes:
      pre_nms_top_k_train, pre_nms_top_k_test: boxes kept per pyramid level
        before NMS, in training and at test (Detectron's FPN: 2000 / 1000).
      max_proposals_train, max_proposals_test: proposals per image after NMS
        (2000 / 1000).
      nms_iou_threshold: NMS IoU over all levels together (0.7).
      min_size: proposals with a side below this (pixels) are dropped.
    """

    bounds = {"pre_nms_top_k_train": ">= 1", "pre_nms_top_k_test": ">= 1", "max_proposals_train": ">= 1",
              "max_proposals_test": ">= 1", "nms_iou_threshold": "(0, 1]", "min_size": ">= 0"}
    pre_nms_top_k_train: int = 2000
    pre_nms_top_k_test: int = 1000
    max_proposals_train: int = 2000
    max_proposals_test: int = 1000
    nms_iou_threshold: float = 0.7
    min_size: float = 0.0

    def budget(self, *, training: bool) -> tuple[int, int]:
        """``(pre_nms_top_k, max_proposals)`` of the training or the test phase."""
        if training:
            return self.pre_nms_top_k_train, self.max_proposals_train
        return self.pre_nms_top_k_test, self.max_proposals_test


@dataclasses.dataclass(frozen=True)
class RoIPoolerSpec(Spec):
    """Multilevel RoIAlign (:class:`kdet.roi_align.RoIAlign`) on FPN P2-P5.

    Attributes:
      output_size: bins per side of the pooled features (7).
      sampling_ratio: samples per bin per side (2).
      canonical_size: box side (pixels) pooled from P4 (FPN's 224, the
        ImageNet size; scale it with the images: 56 suits 128-px images).
    """

    bounds = {"output_size": ">= 1", "sampling_ratio": ">= 1", "canonical_size": "> 0"}
    output_size: int = 7
    sampling_ratio: int = 2
    canonical_size: float = 224.0


@dataclasses.dataclass(frozen=True)
class CascadeSpec(Spec):
    """Cascade R-CNN's stages (Cai & Vasconcelos), and how inference runs and scores them.

    One entry per stage in ``ious``, ``box_weights`` and ``loss_weights``;
    one stage is Faster R-CNN (FPN+).

    Attributes:
      ious: IoU at which each stage labels its RoIs (0.5, 0.6, 0.7).
      box_weights: box coder weights ``(wy, wx, wh, ww)`` of each stage (its
        regression statistics: 10/10/5/5, 20/20/10/10, 30/30/15/15).
      loss_weights: each stage's weight in the total loss (1, 0.5, 0.25).
      smooth_l1_beta: of the stages' box losses.
      integral_ious: one classifier per IoU on the (only) stage, sharing its
        regressor: the paper's integral-loss detector (None: off).
      test_stages: stages run at inference (None: all).
      ensemble: score with the mean of the probabilities of stages 1..k
        (the paper's "1~k"), else stage k's alone.
      test_iterations: times the last stage's head is applied at inference
        (3 on one stage is the paper's iterative BBox).
    """

    bounds = {"test_iterations": ">= 1", "smooth_l1_beta": ">= 0"}
    ious: Sequence[float] = (0.5, 0.6, 0.7)
    box_weights: Sequence[Sequence[float]] = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0),
                                              (30.0, 30.0, 15.0, 15.0))
    loss_weights: Sequence[float] = (1.0, 0.5, 0.25)
    smooth_l1_beta: float = 1.0
    integral_ious: Sequence[float] | None = None
    test_stages: int | None = None
    ensemble: bool = True
    test_iterations: int = 1

    def _check(self):
        counts = (len(self._tuple("ious")), len(self._tuple("box_weights", depth=2)), len(self._tuple("loss_weights")))
        if not counts[0] == counts[1] == counts[2] >= 1:
            raise ValueError(f"CascadeSpec.ious, box_weights and loss_weights need one entry per stage (at least "
                             f"one), got {counts[0]}, {counts[1]}, {counts[2]}")
        if any(len(w) != 4 for w in self.box_weights):
            self._fail("box_weights", "must hold 4 numbers (wy, wx, wh, ww) per stage")
        if self.integral_ious is not None and (not self._tuple("integral_ious") or self.num_stages != 1):
            self._fail("integral_ious", f"(the integral-loss detector) needs exactly one stage and at least one "
                                        f"IoU; this spec has {self.num_stages} stages")
        if self.test_stages is not None and not 1 <= self.test_stages <= self.num_stages:
            self._fail("test_stages", f"must be in 1..{self.num_stages} or None")

    @property
    def num_stages(self) -> int:
        return len(self.ious)
