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

Run::

    kdet train faster_rcnn_fpn --data tfds:coco/2017:train --model-dir runs/faster_rcnn
    kdet train faster_rcnn_fpn:coco_280k --backbone-weights resnet101_notop.h5 --model-dir runs/faster_rcnn_r101
    kdet train faster_rcnn_fpn:voc --model-dir runs/faster_rcnn_voc
    kdet train faster_rcnn_fpn --backbone resnet101 --smoke --model-dir /tmp/smoke
    python recipes/faster_rcnn_fpn.py --variant voc --model-dir runs/faster_rcnn_voc

Settings the paper leaves open, and what is used (each says where it is from):
image size (FPN's shorter side 800, longer <= 1333), momentum / weight
decay / warm-up (Detectron's), the box-head regression statistics (stds 0.1 /
0.2 = coder weights 10, 10, 5, 5) and the proposal budgets (Detectron's FPN).
"""

import functools

from kdet.detectors import CascadeRCNN
from kdet.training import Recipe, StepSchedule, recipe_main

PAPER = "Cai & Vasconcelos 2018, Cascade R-CNN, Sec. 5.1.1 (FPN+ baseline); RPN: Ren et al., Faster R-CNN, Sec. 3.1"
COCO_TRAIN_IMAGES = 118_287  # coco/2017 train (= the trainval35k of the older papers)
VOC0712_TRAINVAL_IMAGES = 16_551  # VOC 2007 trainval (5,011) + VOC 2012 trainval (11,540)
BATCH = 8  # Sec. 5.1.1: "8 synchronized GPUs, each holding one image per iteration"
# Detectron's warm-up (500 iterations at its batch of 16, linear from 1/3), scaled to batch 8 as
# StepSchedule.for_batch scales it; the paper does not mention one.
WARMUP = dict(warmup_steps=1000, warmup_factor=1.0 / 3.0)
# SGD momentum 0.9 and weight decay 1e-4: not stated in the paper; Detectron's (and mmdetection's) defaults.
SGD = dict(optimizer="sgd", momentum=0.9, weight_decay=1e-4)
# --smoke keeps ResNet-50: ~37 s through kdet.training.train on a 2-core CPU (~33 s with the tiny backbone)
# --smoke checks this recipe's wiring (its detector settings, data, schedule, evaluation, model directory) in a
# few seconds, so it swaps the ResNet for the tiny backbone: ResNet-50/101 builds and steps are tested on their
# own (tests/test_backbones.py, tests/test_cascade_rcnn.py) and its weight files alone made CI slower.
SMOKE = {"image_size": (128, 128), "batch_size": 2, "steps": 2, "val_images": 2, "steps_per_epoch": 2,
         "backbone": "tiny"}


def rpn_settings(backbone: str, backbone_weights: str | None) -> dict:
    """The region proposal network: Ren et al. Sec. 3.1.2-3.1.3 rules on FPN's P2-P6 anchors."""
    return dict(
        backbone=backbone,
        backbone_weights=backbone_weights,
        freeze_batchnorm=True,  # ImageNet statistics kept (1 image per GPU), as Detectron's FPN
        fpn_filters=256,
        head_filters=256,
        min_level=2,
        max_level=6,
        aspect_ratios=(0.5, 1.0, 2.0),
        anchor_size=8.0,  # one scale per level: 32 px on P2 ... 512 px on P6 (FPN)
        match_thresholds=(0.3, 0.7),  # Sec. 3.1.2: negative below 0.3, positive above 0.7 ...
        allow_low_quality_matches=True,  # ... or the highest IoU with a ground-truth box
        num_samples=256,  # Sec. 3.1.3: 256 anchors per image ...
        positive_fraction=0.5,  # ... positives and negatives up to 1:1
        loss_normalization="paper",  # Eq. 1: N_cls = 256, N_reg = anchor locations ...
        reg_weight=10.0,  # ... lambda = 10
        smooth_l1_beta=1.0,  # Fast R-CNN's smooth L1
        box_weights=(1.0, 1.0, 1.0, 1.0),  # Eq. 2
        # proposal budgets: Detectron's FPN (2000 per level before NMS, 2000 per image after, in training;
        # 1000 / 1000 at test), NMS 0.7
        pre_nms_top_k_train=2000,
        pre_nms_top_k_test=1000,
        max_proposals_train=2000,
        max_proposals_test=1000,
        nms_iou_threshold=0.7,
        min_size=0.0,
    )


def build_model(num_classes, *, backbone, backbone_weights, num_rois=256):
    """Faster R-CNN FPN+: one RoI stage at IoU 0.5 (``num_rois`` 256 in the ablations, 512 in Table 5)."""
    return CascadeRCNN(
        num_classes=num_classes,
        rpn=rpn_settings(backbone, backbone_weights),
        stage_ious=(0.5,),  # the u = 0.5 detector
        stage_box_weights=((10.0, 10.0, 5.0, 5.0),),  # regression statistics: stds (0.1, 0.1, 0.2, 0.2)
        stage_loss_weights=(1.0,),
        num_rois=num_rois,
        roi_positive_fraction=0.25,  # "the sampling of the first detection stage follows [13, 30]": 25% fg
        fc_dim=1024,  # FPN's 2-fc head
        roi_size=7,
        sampling_ratio=2,  # RoIAlign (Mask R-CNN), 2x2 samples per bin as Detectron
        roi_canonical_size=224.0,  # FPN's level assignment: 224 px -> P4
        smooth_l1_beta=1.0,
        score_threshold=0.05,
        nms_iou_threshold=0.5,
        max_detections=100,
    )


RECIPES = {
    "coco": Recipe(
        name="faster_rcnn_fpn",
        paper=PAPER + "; ResNet-50, COCO (Tables 1-3 baseline)",
        build_model=build_model,
        train_data="tfds:coco/2017:train",
        val_data="tfds:coco/2017:validation",
        # FPN's shorter side 800 / longer <= 1333 (the paper: "their default settings were used"); kdet fits
        # every image into one padded square, 1024 x 1024 (1.05 Mpx, as 800 x 1333; a 4:3 image gets 768 x 1024)
        image_size=(1024, 1024),
        batch_size=BATCH,
        # Sec. 5.1.1: "a learning rate of 0.005 for 120k iterations and 0.0005 for the next 60k iterations"
        schedule=StepSchedule(base_lr=0.005, reference_batch=BATCH, total_steps=180_000, boundaries=(120_000,),
                              **WARMUP, **SGD),
        backbone="resnet50",  # "ResNet-50 was used for ablation studies"
        flip=True,  # Sec. 5.1: "No data augmentation was used except standard horizontal image flipping"
        steps_per_epoch=2000,
        val_images=500,
        smoke=SMOKE,
    ),
    "coco_280k": Recipe(
        name="faster_rcnn_fpn_280k",
        paper=PAPER + "; ResNet-101, COCO, Sec. 5.5 (Table 5; Table 6 with ResNet-50)",
        build_model=functools.partial(build_model, num_rois=512),  # Sec. 5.5: "increased to 512"
        train_data="tfds:coco/2017:train",
        val_data="tfds:coco/2017:validation",
        image_size=(1024, 1024),
        batch_size=BATCH,
        # Sec. 5.5: "a total of 280k training iterations ... the learning rate dropped at 160k and 240k"
        schedule=StepSchedule(base_lr=0.005, reference_batch=BATCH, total_steps=280_000,
                              boundaries=(160_000, 240_000), **WARMUP, **SGD),
        backbone="resnet101",  # "ResNet-101 for final detection"
        flip=True,
        steps_per_epoch=2000,
        val_images=500,
        smoke=SMOKE,
    ),
    "voc": Recipe(
        name="faster_rcnn_fpn_voc",
        paper=PAPER + "; VOC 07+12 (Sec. 5.7 protocol; mmdetection's VOC schedule)",
        build_model=build_model,
        # VOC 2007 + 2012 trainval (the two tfds datasets read one after the other)
        train_data="tfds:voc/2007:train+validation,tfds:voc/2012:train+validation",
        val_data="tfds:voc/2007:test",
        # shorter side 600 / longer <= 1000 (Faster R-CNN's VOC scale): a 768 x 768 square (0.59 Mpx,
        # as 600 x 1000; a 4:3 image gets 576 x 768)
        image_size=(768, 768),
        batch_size=BATCH,
        # 12 epochs of VOC 07+12 trainval at batch 8, the rate / 10 after 9 (mmdetection's voc0712 1x)
        schedule=StepSchedule(base_lr=0.005, reference_batch=BATCH,
                              total_steps=round(12 * VOC0712_TRAINVAL_IMAGES / BATCH),
                              boundaries=(round(9 * VOC0712_TRAINVAL_IMAGES / BATCH),), **WARMUP, **SGD),
        backbone="resnet50",
        flip=True,
        steps_per_epoch=2000,
        val_images=500,
        smoke=SMOKE,
    ),
}

if __name__ == "__main__":
    raise SystemExit(recipe_main(RECIPES))
