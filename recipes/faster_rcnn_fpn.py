"""Faster R-CNN with ResNet-50/101-FPN: the "FPN+" baseline of Cascade R-CNN (Cai & Vasconcelos 2018).

Paper: Cai & Vasconcelos, "Cascade R-CNN: Delving into High Quality Object
Detection" (papers/000), Sec. 5.1.1 "FPN" -- the FPN+ detector (FPN with
RoIAlign) that is the u = 0.5 baseline of Tables 1-3 (ResNet-50) and the
"FPN+" row of Table 5 (ResNet-101); its region proposal network labels and
samples anchors as Ren et al., "Faster R-CNN" (papers/004) Sec. 3.1.2-3.1.3.
In kdet it is a one-stage :class:`~kdet.detectors.CascadeRCNN`.

Variants (``kdet train faster_rcnn_fpn:VARIANT``):

* ``coco`` (default): the ablation setting, ResNet-50, COCO 2017 train,
  evaluated on val (Sec. 5.1.1: lr 0.005 for 120k iterations then 0.0005 for
  60k, 8 GPUs x 1 image, 256 RoIs per image);
* ``coco_280k``: the final setting of Sec. 5.5, ResNet-101, 280k iterations
  with the rate divided by 10 at 160k and 240k, 512 RoIs per image (Table 5's
  "FPN+ (ours)"; with ``--backbone resnet50`` the FPN+ ResNet-50 row of
  Table 6, which uses the same changes, Sec. 5.6);
* ``voc``: VOC 2007+2012 trainval, evaluated on VOC 2007 test with the COCO
  metrics as the paper's Sec. 5.7 (footnote 2). The paper trains no FPN on
  VOC; the schedule is mmdetection's ``faster_rcnn_r50_fpn_1x_voc0712`` (12
  epochs, rate / 10 after 9, shorter side 600 / longer <= 1000), at the FPN+
  batch of 8 and its per-image rate (0.01 / 16 = 0.005 / 8).
* ``small``: CPU-sized, not a paper setting (:data:`recipes.common.SMALL`:
  the tiny backbone, :func:`kdet.presets.small_rcnn`, 256 px, Adam).

Run::

    kdet train faster_rcnn_fpn --data tfds:coco/2017:train --model-dir runs/faster_rcnn
    kdet train faster_rcnn_fpn:coco_280k --backbone-weights resnet101_notop.h5 --model-dir runs/faster_rcnn_r101
    kdet train faster_rcnn_fpn:voc --model-dir runs/faster_rcnn_voc
    kdet train faster_rcnn_fpn --backbone resnet101 --smoke --model-dir /tmp/smoke
    python -m recipes.faster_rcnn_fpn --variant voc --model-dir runs/faster_rcnn_voc

Settings the paper leaves open, and what is used (each says where it is from):
image size (FPN's shorter side 800, longer <= 1333), momentum / weight
decay / warm-up (Detectron's), the box-head regression statistics (stds 0.1 /
0.2 = coder weights 10, 10, 5, 5) and the proposal budgets (Detectron's FPN).
"""

import functools

from kdet.anchors import AnchorSpec
from kdet.backbones import BackboneSpec
from kdet.detectors import CascadeRCNN
from kdet.rcnn_specs import CascadeSpec, ProposalSpec, RoIPoolerSpec
from kdet.presets import small_rcnn
from kdet.specs import BoxRegressionSpec, MatcherSpec, PostProcessSpec, SamplingSpec, override
from kdet.training import StepSchedule, recipe_main
from recipes.common import BATCH, COCO, SGD, SMALL, SMOKE, VOC0712, VOC0712_1X, WARMUP, make_variants

PAPER = "Cai & Vasconcelos 2018, Cascade R-CNN, Sec. 5.1.1 (FPN+ baseline); RPN: Ren et al., Faster R-CNN, Sec. 3.1"
# Sec. 5.1.1: "a learning rate of 0.005 for 120k iterations and 0.0005 for the next 60k iterations"
COCO_SCHEDULE = StepSchedule(base_lr=0.005, reference_batch=BATCH, total_steps=180_000, boundaries=(120_000,),
                             **WARMUP, **SGD)
# Sec. 5.5: "a total of 280k training iterations ... the learning rate dropped at 160k and 240k"
COCO_280K_SCHEDULE = StepSchedule(base_lr=0.005, reference_batch=BATCH, total_steps=280_000,
                                  boundaries=(160_000, 240_000), **WARMUP, **SGD)

# The RPN's proposal budgets: Detectron's FPN (2000 per level before NMS, 2000 per image after, in training;
# 1000 / 1000 at test), NMS 0.7
PROPOSALS = ProposalSpec(pre_nms_top_k_train=2000, pre_nms_top_k_test=1000, max_proposals_train=2000,
                         max_proposals_test=1000, nms_iou_threshold=0.7, min_size=0.0)


def rpn_settings(backbone: str, backbone_weights: str | None) -> dict:
    """The region proposal network: Ren et al. Sec. 3.1.2-3.1.3 rules on FPN's P2-P6 anchors."""
    return dict(
        # ImageNet statistics kept (1 image per GPU), as Detectron's FPN
        backbone=BackboneSpec(name=backbone, weights=backbone_weights, freeze_batchnorm=True),
        fpn_filters=256,
        head_filters=256,
        # one scale per level: 32 px on P2 ... 512 px on P6 (FPN)
        anchors=AnchorSpec(min_level=2, max_level=6, num_scales=1, aspect_ratios=(0.5, 1.0, 2.0), anchor_size=8.0),
        matcher=MatcherSpec(
            thresholds=(0.3, 0.7),  # Sec. 3.1.2: negative below 0.3, positive above 0.7 ...
            allow_low_quality_matches=True,  # ... or the highest IoU with a ground-truth box
        ),
        sampling=SamplingSpec(
            num_samples=256,  # Sec. 3.1.3: 256 anchors per image ...
            positive_fraction=0.5,  # ... positives and negatives up to 1:1
        ),
        box_regression=BoxRegressionSpec(
            weights=(1.0, 1.0, 1.0, 1.0),  # Eq. 2
            smooth_l1_beta=1.0,  # Fast R-CNN's smooth L1
            loss_weight=10.0,  # Eq. 1's lambda = 10 ...
        ),
        loss_normalization="paper",  # ... with N_cls = 256, N_reg = anchor locations
        proposals=PROPOSALS,
    )


def fpn_plus_settings(num_classes, *, backbone, backbone_weights, num_rois=256) -> dict:
    """The :class:`CascadeRCNN` arguments of FPN+: the RPN and one RoI stage at IoU 0.5."""
    return dict(
        num_classes=num_classes,
        rpn=rpn_settings(backbone, backbone_weights),
        stages=CascadeSpec(
            ious=(0.5,),  # the u = 0.5 detector
            box_weights=((10.0, 10.0, 5.0, 5.0),),  # regression statistics: stds (0.1, 0.1, 0.2, 0.2)
            loss_weights=(1.0,),
            smooth_l1_beta=1.0,
        ),
        # "the sampling of the first detection stage follows [13, 30]": 25% foreground
        roi_sampling=SamplingSpec(num_samples=num_rois, positive_fraction=0.25),
        fc_dim=1024,  # FPN's 2-fc head
        roi_pooler=RoIPoolerSpec(
            output_size=7,
            sampling_ratio=2,  # RoIAlign (Mask R-CNN), 2x2 samples per bin as Detectron
            canonical_size=224.0,  # FPN's level assignment: 224 px -> P4
        ),
        postprocess=PostProcessSpec(pre_nms_top_k=None, score_threshold=0.05, nms_iou_threshold=0.5,
                                    max_detections=100),
    )


def build_model(num_classes, *, backbone, backbone_weights, num_rois=256, changes=None):
    """Faster R-CNN FPN+: one RoI stage at IoU 0.5 (``num_rois`` 256 in the ablations, 512 in Table 5).

    ``changes`` (:func:`kdet.specs.override`): the ``:small`` variant's.
    """
    settings = fpn_plus_settings(num_classes, backbone=backbone, backbone_weights=backbone_weights, num_rois=num_rois)
    return CascadeRCNN(**override(settings, changes or {}))


#: The variants of the FPN+ detectors (this one and Cascade R-CNN); the paper strings of ``coco`` and ``voc``
#: are each recipe's.
VARIANTS = {
    # FPN's shorter side 800 / longer <= 1333 (Sec. 5.1.1: "their default settings were used"); kdet fits every
    # image into one padded square, 1024 x 1024 (1.05 Mpx, as 800 x 1333; a 4:3 image gets 768 x 1024).
    # "ResNet-50 was used for ablation studies"
    "coco": dict(suffix="", **COCO, image_size=(1024, 1024), schedule=COCO_SCHEDULE, backbone="resnet50"),
    # "ResNet-101 for final detection"; 512 RoIs per image (fpn_plus_variants)
    "coco_280k": dict(suffix="_280k", paper="; ResNet-101, COCO, Sec. 5.5 (Table 5; Table 6 with ResNet-50)",
                      **COCO, image_size=(1024, 1024), schedule=COCO_280K_SCHEDULE, backbone="resnet101"),
    # shorter side 600 / longer <= 1000 (Faster R-CNN's VOC scale): a 768 x 768 square (0.59 Mpx, as 600 x 1000;
    # a 4:3 image gets 576 x 768); mmdetection's voc0712 1x schedule
    "voc": dict(suffix="_voc", **VOC0712, image_size=(768, 768), schedule=VOC0712_1X, backbone="resnet50"),
    # CPU-sized (recipes.common.SMALL; kdet.presets.small_rcnn), not a paper setting
    "small": dict(SMALL, changes=small_rcnn(SMALL["image_size"][0])),
}


def fpn_plus_variants(name: str, paper: str, build_model, *, coco: str, voc: str) -> dict:
    """``coco``, ``coco_280k`` and ``voc`` (:data:`VARIANTS`) of an FPN+ detector.

    ``build_model`` takes ``num_rois`` (512 in ``coco_280k``); ``coco`` and
    ``voc`` are what those variants add to ``paper``.
    """
    variants = {variant: dict(settings) for variant, settings in VARIANTS.items()}
    variants["coco"]["paper"], variants["voc"]["paper"] = coco, voc
    variants["coco_280k"]["build_model"] = functools.partial(build_model, num_rois=512)  # Sec. 5.5: "increased to 512"
    return make_variants(
        name, paper, variants,
        build_model=build_model,
        batch_size=BATCH,
        flip=True,  # Sec. 5.1: "No data augmentation was used except standard horizontal image flipping"
        steps_per_epoch=2000,
        val_images=500,
        smoke=SMOKE,
    )


RECIPES = fpn_plus_variants("faster_rcnn_fpn", PAPER, build_model, coco="; ResNet-50, COCO (Tables 1-3 baseline)",
                            voc="; VOC 07+12 (Sec. 5.7 protocol; mmdetection's VOC schedule)")

if __name__ == "__main__":
    raise SystemExit(recipe_main(RECIPES))
