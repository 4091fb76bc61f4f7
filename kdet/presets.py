"""CPU-sized detector settings: what a small model changes in a paper's detector.

One definition, used by ``kdet demo`` (:func:`kdet.demo.demo_model_config`),
the ``:small`` variant of every COCO/VOC recipe (``kdet train
retinanet:small``, ``cascade_rcnn_fpn:small``, ...) and the ablation
benchmarks. Each is a dict of changes for :func:`kdet.specs.override`: a spec
argument changes only the fields it names, so a recipe's paper settings (its
losses, matcher thresholds, cascade IoUs) stay and only the widths, anchors
and budgets shrink. The backbone itself is named by the recipe
(``backbone="tiny"``), so ``--backbone`` still picks another one.

Measured on a 2-core AVX2 CPU (docs/benchmarks.md): the RetinaNet preset
steps in 0.09-0.17 s at 8 images of 128 px and 0.33-0.49 s at 256 px.
"""

from __future__ import annotations

#: RetinaNet (and its ConRetinaNet / AP-loss versions): 64-wide FPN, two 64-wide convs per head (the paper's
#: four 256-wide), anchors from 16 px on P3 (``anchor_size=2``: small objects of small images), every ground
#: truth's best anchor made foreground, and BatchNorm that learns (small models train from scratch).
SMALL_RETINANET = dict(
    backbone=dict(freeze_batchnorm=False),
    fpn_filters=64,
    anchors=dict(anchor_size=2.0),
    head=dict(num_convs=2, filters=64),
    matcher=dict(allow_low_quality_matches=True),
)


def small_rcnn(image_side: int, *, freeze_batchnorm: bool = False) -> dict:
    """Faster / Cascade R-CNN at ``image_side`` px: narrow RPN, FPN and box heads, fewer proposals and RoIs.

    RPN anchors from 16 px on P2 (``anchor_size=4``); 512 proposals in training
    and 300 in testing (the papers' 2000 / 1000); 128 RoIs per image; 256-wide
    fully-connected heads (the papers' 1024); RoIs pooled from P4 at
    ``224 * image_side / 512`` px (FPN's 224 scaled with the image: 56 at 128 px).

    Args:
        image_side: the side of the (square) training images.
        freeze_batchnorm: keep the backbone's BatchNorm statistics (a
            pretrained backbone); False trains them (from scratch).
    """
    rpn = dict(backbone=dict(freeze_batchnorm=freeze_batchnorm), fpn_filters=64, head_filters=64,
               anchors=dict(anchor_size=4.0),
               proposals=dict(pre_nms_top_k_train=1000, max_proposals_train=512, pre_nms_top_k_test=500,
                              max_proposals_test=300))
    return dict(rpn=rpn, roi_sampling=dict(num_samples=128), fc_dim=256,
                roi_pooler=dict(canonical_size=224.0 * image_side / 512))
