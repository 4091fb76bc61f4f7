"""The face cascade's grouped arguments: its joint training (Eq. 1 and 6) and its test pipeline.

Frozen, validated, plain data as every :class:`kdet.specs.Spec`:
:class:`~kdet.face.cascade.FaceCascade` takes a :class:`FaceTrainingSpec`
(``training=``) and a :class:`FaceTestSpec` (``test=``), or dicts of the
fields to change (``test=dict(min_face_size=40)`` keeps the rest).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from kdet.face.pyramid import PYRAMID_METHODS
from kdet.specs import Spec

CROP_SOURCES = ("pyramid", "image")
CROP_METHODS = ("bilinear", "nearest")


@dataclasses.dataclass(frozen=True)
class FaceTrainingSpec(Spec):
    """The joint loss of the 12/24/48 cascade (Qin et al. Eq. 6, each term Eq. 1).

    Attributes:
      thresholds: threshold-control values after x12 and x12-x24: a sample
        reaches x12-x24's loss when x12's face probability is at least the
        first (0.1), x12-x24-x48's when x12-x24's also reaches the second
        (0.003).
      loss_weights: Eq. 6's ``(lambda_1, lambda_2, lambda_3)``.
      box_loss_weight: Eq. 1's ``lambda``.
      smooth_l1_beta: smooth-L1's quadratic zone (1 as in Fast R-CNN).
      offset_mean: per-coordinate mean of the raw offsets ``(ty, tx, th, tw)``.
      offset_std: their standard deviation (see
        :func:`kdet.face.mining.offset_statistics`).
    """

    bounds = {"box_loss_weight": ">= 0", "smooth_l1_beta": ">= 0"}
    thresholds: Sequence[float] = (0.1, 0.003)
    loss_weights: Sequence[float] = (1.0, 1.0, 1.0)
    box_loss_weight: float = 1.0
    smooth_l1_beta: float = 1.0
    offset_mean: Sequence[float] = (0.0, 0.0, 0.0, 0.0)
    offset_std: Sequence[float] = (0.1, 0.1, 0.1, 0.1)

    def _check(self):
        for field, size in (("thresholds", 2), ("loss_weights", 3), ("offset_mean", 4), ("offset_std", 4)):
            if len(self._tuple(field)) != size:
                self._fail(field, f"needs {size} values")
        if min(self.offset_std) <= 0:
            self._fail("offset_std", "must be positive")


@dataclasses.dataclass(frozen=True)
class FaceTestSpec(Spec):
    """The cascade's test pipeline (Sec. 4.3, 6.5): pyramid, per-stage thresholds and budgets, final NMS.

    Attributes:
      min_face_size: smallest face found, pixels.
      levels_per_octave: pyramid levels per halving (2 ~ factor 0.71).
      pyramid: how the pyramid is built (:func:`kdet.face.pyramid.build_pyramid`):
        "antialias" (every level an antialiased resize, as training-sample
        mining builds it), "octave" (a level half the size of the one an
        octave up is its 2x2 average) or "area" (box-filtered levels).
      thresholds: face probability kept after x12, x12-x24, x12-x24-x48.
        The first two default to the training threshold controls: trained at
        5% positives, the early branches give faces probabilities well below
        0.5, so MTCNN-like 0.5-0.7 thresholds lose most faces.
      pool_size: response-map max pooling block (1 disables it).
      stage1_max_boxes: windows passed from x12 to x12-x24, per image.
      stage2_max_boxes: boxes passed from x12-x24 to x12-x24-x48, per image.
      stage1_nms_iou: greedy NMS at this IoU over x12's windows of all
        levels before the ``stage1_max_boxes`` budget (None: the best by
        score, response-map pooling being the only suppression, Sec. 4.3).
      stage2_nms_iou: the same over x12-x24's regressed boxes before the
        ``stage2_max_boxes`` budget (MTCNN suppresses after every stage).
      crop_source: "pyramid" crops later patches from the pyramid level
        closest to the patch size (Sec. 6.5), "image" from the image.
      crop_method: "bilinear" or "nearest" (nearest from the pyramid is the
        paper's no-resize crop).
      nms_iou_threshold: the final NMS.
      containment_threshold: after it, drop a detection that a higher-scored
        one covers by more than this fraction of the smaller box (MTCNN's
        "min" NMS, :func:`kdet.postprocess.suppress_contained`); None: off.
      max_detections: K of the output contract.
    """

    bounds = {"min_face_size": "> 0", "levels_per_octave": ">= 1", "pool_size": ">= 1",
              "stage1_max_boxes": ">= 1", "stage2_max_boxes": ">= 1", "stage1_nms_iou": "(0, 1]",
              "stage2_nms_iou": "(0, 1]", "nms_iou_threshold": "(0, 1]", "containment_threshold": "(0, 1]",
              "max_detections": ">= 1"}
    min_face_size: float = 20.0
    levels_per_octave: int = 2
    pyramid: str = "antialias"
    thresholds: Sequence[float] = (0.1, 0.003, 0.7)
    pool_size: int = 2
    stage1_max_boxes: int = 300
    stage2_max_boxes: int = 60
    stage1_nms_iou: float | None = None
    stage2_nms_iou: float | None = None
    crop_source: str = "pyramid"
    crop_method: str = "bilinear"
    nms_iou_threshold: float = 0.3
    containment_threshold: float | None = None
    max_detections: int = 100

    def _check(self):
        if len(self._tuple("thresholds")) != 3:
            self._fail("thresholds", "needs 3 values (after x12, x12-x24, x12-x24-x48)")
        for field, choices in (("pyramid", PYRAMID_METHODS), ("crop_source", CROP_SOURCES),
                               ("crop_method", CROP_METHODS)):
            if getattr(self, field) not in choices:
                self._fail(field, f"must be one of {tuple(choices)}")


#: FaceCascade's flat config keys of model-directory formats 1-2 -> ``(argument, field)``.
FLAT_CONFIG_KEYS = {
    **{key: ("training", key) for key in ("thresholds", "loss_weights", "box_loss_weight", "smooth_l1_beta",
                                          "offset_mean", "offset_std")},
    **{key: ("test", key) for key in ("min_face_size", "levels_per_octave", "pyramid", "pool_size",
                                      "stage1_max_boxes", "stage2_max_boxes", "stage1_nms_iou", "stage2_nms_iou",
                                      "crop_source", "crop_method", "nms_iou_threshold", "max_detections")},
    "test_thresholds": ("test", "thresholds"),
}
