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
backbone=dict(weights=path, freeze_batchnorm=True)))``, as the benchmark does.
"""

from __future__ import annotations

from kdet.anchors import AnchorSpec
from kdet.backbones import BackboneSpec
from kdet.detectors.cascade_rcnn import CascadeRCNN
from kdet.rcnn_specs import CascadeSpec, ProposalSpec, RoIPoolerSpec
from kdet.specs import PostProcessSpec, SamplingSpec, override

#: The RPN of the face detector (arguments of :class:`RegionProposalNetwork`; the rest are its defaults:
#: Faster R-CNN's labels, sampling and Eq. 1).
FACE_RPN = dict(
    backbone=BackboneSpec(name="tiny", weights=None, freeze_batchnorm=False),  # trained from scratch (Sec. 6.7)
    fpn_filters=64,
    head_filters=64,
    # one square size per level (faces are annotated as squares): 4 x stride, 16 px on P2 ... 256 px on P6
    anchors=AnchorSpec(min_level=2, max_level=6, num_scales=1, aspect_ratios=(1.0,), anchor_size=4.0),
    proposals=ProposalSpec(pre_nms_top_k_train=1000, pre_nms_top_k_test=500, max_proposals_train=300,
                           max_proposals_test=100),
)

#: The RoI branch and inference settings.
FACE_RCNN = dict(
    num_classes=1,
    stages=CascadeSpec(ious=(0.5,), box_weights=((10.0, 10.0, 5.0, 5.0),), loss_weights=(1.0,)),  # one stage
    roi_sampling=SamplingSpec(num_samples=128, positive_fraction=0.25),
    fc_dim=256,
    roi_pooler=RoIPoolerSpec(canonical_size=64.0),  # 16-px faces pool from P2, 64 px from P4, 128+ from P5
    postprocess=PostProcessSpec(pre_nms_top_k=None, score_threshold=0.05, nms_iou_threshold=0.3, max_detections=100),
    class_names=("face",),
    evaluation="face",  # face AP, AFW AP30 and the discrete ROC, as the face cascade
)


def face_rcnn_config(*, rpn: dict | None = None, scale: float = 1.0, **overrides) -> dict:
    """The face detector's :class:`CascadeRCNN` keyword arguments, with overrides.

    A change of a spec argument may be a dict of the fields it changes
    (:func:`kdet.specs.override`): ``rpn=dict(proposals=dict(max_proposals_test=50))``
    keeps the face RPN's other proposal settings.

    Args:
      rpn: entries that replace those of :data:`FACE_RPN`.
      scale: the size of the detector's input relative to the images the
        face sizes refer to: the anchors (16-256 px) and the RoI level
        assignment (``canonical_size`` 64) are multiplied by it (0.5: VGA
        images seen at 320x240, anchors of 8-128 input pixels).
      **overrides: entries that replace those of :data:`FACE_RCNN` (e.g.
        ``rpn_loss_weight``, ``training_proposals``).

    Returns:
      A new dict (safe to modify).
    """
    config = {**override(FACE_RCNN, overrides), "rpn": override(FACE_RPN, rpn or {})}
    if scale != 1.0:
        anchors, pooler = config["rpn"]["anchors"], config["roi_pooler"]
        config["rpn"]["anchors"] = anchors.replace(anchor_size=anchors.anchor_size * scale)
        config["roi_pooler"] = pooler.replace(canonical_size=pooler.canonical_size * scale)
    return config


def face_rcnn(*, rpn: dict | None = None, scale: float = 1.0, **overrides) -> CascadeRCNN:
    """A face RPN + Fast R-CNN (see :func:`face_rcnn_config` for the arguments)."""
    return CascadeRCNN(**face_rcnn_config(rpn=rpn, scale=scale, **overrides))
