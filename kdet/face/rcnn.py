"""The RPN + Fast R-CNN face detector of Qin et al. (Sec. 5) as a configured :class:`CascadeRCNN`.

A small backbone trained from scratch (kdet's tiny ResNet-like CNN with
FPN P2-P6) shares its convolutions between an RPN branch and a RoI branch
(one Fast R-CNN stage on RoIAlign). Square anchors of 16..256 px, one size
per FPN level, replace the image pyramid of the cascade ("the use of
multi-scale anchors can replace image pyramids"). Nothing here is a new
model class: it is the Cascade R-CNN family with one stage and face
settings, so RoIAlign, the RPN rules, the losses and the output contract
are the tested ones.

The training procedures (the paper's two-step joint training and the
four-step alternating baseline) are in :mod:`kdet.face.procedures`.

From scratch, the backbone's BatchNorm needs batches large enough for its
moving statistics (the paper trained on GPUs): at batch 4 on a CPU they lag
the weights and inference-mode proposals are poor (measured in
``benchmarks/face_benchmark.py``'s docstring). On small budgets start from a
pretrained tiny backbone with frozen BatchNorm: ``face_rcnn(rpn=dict(
backbone_weights=path, freeze_batchnorm=True))``, as the benchmark does.
"""

from __future__ import annotations

import copy

from kdet.detectors.cascade_rcnn import CascadeRCNN

#: The RPN of the face detector (arguments of :class:`RegionProposalNetwork`).
FACE_RPN = dict(
    backbone="tiny",
    backbone_weights=None,  # trained from scratch (Sec. 6.7)
    freeze_batchnorm=False,
    fpn_filters=64,
    head_filters=64,
    aspect_ratios=(1.0,),  # faces are annotated as squares
    anchor_size=4.0,  # 4 x stride: 16 px on P2 ... 256 px on P6
    pre_nms_top_k_train=1000,
    pre_nms_top_k_test=500,
    max_proposals_train=300,
    max_proposals_test=100,
)

#: The RoI branch and inference settings.
FACE_RCNN = dict(
    num_classes=1,
    stage_ious=(0.5,),
    stage_box_weights=((10.0, 10.0, 5.0, 5.0),),
    stage_loss_weights=(1.0,),
    num_rois=128,
    fc_dim=256,
    roi_canonical_size=64.0,  # 16-px faces pool from P2, 64 px from P4, 128+ from P5
    score_threshold=0.05,
    nms_iou_threshold=0.3,
    max_detections=100,
    class_names=("face",),
    evaluation="face",  # face AP, AFW AP30 and the discrete ROC, as the face cascade
)


def face_rcnn_config(*, rpn: dict | None = None, **overrides) -> dict:
    """The face detector's :class:`CascadeRCNN` keyword arguments, with overrides.

    Args:
      rpn: entries that replace those of :data:`FACE_RPN`.
      **overrides: entries that replace those of :data:`FACE_RCNN` (e.g.
        ``rpn_loss_weight``, ``training_proposals``).

    Returns:
      A new dict (safe to modify).
    """
    config = copy.deepcopy(FACE_RCNN)
    config["rpn"] = {**copy.deepcopy(FACE_RPN), **(rpn or {})}
    config.update(overrides)
    return config


def face_rcnn(*, rpn: dict | None = None, **overrides) -> CascadeRCNN:
    """A face RPN + Fast R-CNN (see :func:`face_rcnn_config` for the arguments)."""
    return CascadeRCNN(**face_rcnn_config(rpn=rpn, **overrides))
