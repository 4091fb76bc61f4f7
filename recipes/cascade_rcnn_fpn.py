"""Cascade R-CNN with ResNet-50/101-FPN+ (Cai & Vasconcelos 2018).

Paper: Cai & Vasconcelos, "Cascade R-CNN: Delving into High Quality Object
Detection" (papers/000). Four stages, an RPN and three detection stages at
IoU U = {0.5, 0.6, 0.7} (Sec. 5.1), each stage resampled from the boxes the
previous one regressed (Sec. 4.2) and normalised by its own regression
statistics (Sec. 4.1, Table 3 "stat"); at test, the average of the three
classifiers' probabilities on the third stage's boxes ("1~3", Table 2). The
baseline is the FPN+ detector of Sec. 5.1.1 (``recipes/faster_rcnn_fpn.py``
is that baseline with the same settings); its RPN follows Ren et al.,
"Faster R-CNN" (papers/004) Sec. 3.1.2-3.1.3.

Variants (``kdet train cascade_rcnn_fpn:VARIANT``):

* ``coco`` (default): the ablation setting of Tables 1-4 -- ResNet-50, COCO
  2017 train, evaluated on val; lr 0.005 for 120k iterations then 0.0005 for
  60k at 8 images per iteration, 256 RoIs per image (Sec. 5.1.1);
* ``coco_280k``: Sec. 5.5's final setting, ResNet-101, 280k iterations with
  the rate divided by 10 at 160k and 240k, 512 RoIs per image (Table 5's
  Cascade R-CNN, 42.8 AP on test-dev; with ``--backbone resnet50`` the
  FPN+ ResNet-50 cascade row of Table 6, Sec. 5.6);
* ``voc``: VOC 2007+2012 trainval, evaluated on VOC 2007 test with the COCO
  metrics (Sec. 5.7, footnote 2; Table 7). The paper's VOC models are Faster
  R-CNN and R-FCN, "training details similar to Section 5.1.1"; for FPN+ the
  schedule is mmdetection's VOC 07+12 one (12 epochs, rate / 10 after 9,
  shorter side 600 / longer <= 1000) at the FPN+ batch of 8 and its per-image
  rate (0.01 / 16 = 0.005 / 8).

Run::

    kdet train cascade_rcnn_fpn --data tfds:coco/2017:train --model-dir runs/cascade
    kdet train cascade_rcnn_fpn:voc --model-dir runs/cascade_voc
    kdet train cascade_rcnn_fpn:coco_280k --backbone-weights resnet101_notop.h5 --model-dir runs/cascade_r101
    kdet train cascade_rcnn_fpn --backbone resnet101 --model-dir runs/cascade_r101_180k
    python recipes/cascade_rcnn_fpn.py --smoke --model-dir /tmp/cascade_smoke

Settings the paper leaves open, and what is used (each says where it is from):
the weights of the three stage losses (mmdetection's 1, 0.5, 0.25), the
per-stage regression statistics (those of the authors' public code), image
size (FPN's shorter side 800 / longer <= 1333), momentum / weight decay /
warm-up (Detectron's) and the proposal budgets (Detectron's FPN).
"""

import functools

from kdet.detectors import CascadeRCNN
from kdet.training import Recipe, StepSchedule, recipe_main

PAPER = "Cai & Vasconcelos 2018, Cascade R-CNN (FPN+, Sec. 5.1); RPN: Ren et al., Faster R-CNN, Sec. 3.1"
VOC0712_TRAINVAL_IMAGES = 16_551  # VOC 2007 trainval (5,011) + VOC 2012 trainval (11,540)
BATCH = 8  # Sec. 5.1.1: "8 synchronized GPUs, each holding one image per iteration"
# Detectron's warm-up (500 iterations at its batch of 16, linear from 1/3), scaled to batch 8 as
# StepSchedule.for_batch scales it; the paper does not mention one.
WARMUP = dict(warmup_steps=1000, warmup_factor=1.0 / 3.0)
# SGD momentum 0.9 and weight decay 1e-4: not stated in the paper; Detectron's (and mmdetection's) defaults.
SGD = dict(optimizer="sgd", momentum=0.9, weight_decay=1e-4)
# --smoke with the tiny backbone: with ResNet-50 the run (two 128-px steps, two evaluations, the model
# directory) took ~70 s through kdet.training.train on a 2-core CPU, ~35 s with the tiny one (three box heads
# and their graph dominate).
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
    """The three-stage Cascade R-CNN (``num_rois`` 256 in the ablations, 512 in Sec. 5.5)."""
    return CascadeRCNN(
        num_classes=num_classes,
        rpn=rpn_settings(backbone, backbone_weights),
        stage_ious=(0.5, 0.6, 0.7),  # Sec. 5.1: U = {0.5, 0.6, 0.7}
        # Sec. 4.1 / Table 3: each stage's deltas normalised by that stage's statistics; the stds of the
        # authors' code, 0.1/0.2, 0.05/0.1, 0.033/0.067, as coder weights (1 / std)
        stage_box_weights=((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0)),
        stage_loss_weights=(1.0, 0.5, 0.25),  # not in the paper (Eq. 6 has lambda = 1 inside a stage); mmdetection's
        num_rois=num_rois,
        roi_positive_fraction=0.25,  # stage 1 samples as Fast / Faster R-CNN [13, 30]; later stages take all boxes
        fc_dim=1024,  # every stage has the baseline's head: FPN's 2-fc head
        roi_size=7,
        sampling_ratio=2,  # RoIAlign (FPN+), 2x2 samples per bin as Detectron
        roi_canonical_size=224.0,  # FPN's level assignment: 224 px -> P4
        smooth_l1_beta=1.0,
        test_stages=None,  # all three stages at test ...
        ensemble=True,  # ... scored by the mean of the three classifiers' probabilities ("1~3", Table 2)
        score_threshold=0.05,
        nms_iou_threshold=0.5,
        max_detections=100,
    )


RECIPES = {
    "coco": Recipe(
        name="cascade_rcnn_fpn",
        paper=PAPER + "; ResNet-50, COCO (Tables 1-4)",
        build_model=build_model,
        train_data="tfds:coco/2017:train",
        val_data="tfds:coco/2017:validation",
        # FPN's shorter side 800 / longer <= 1333 (Sec. 5.1.1: "their default settings were used"); kdet fits
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
        name="cascade_rcnn_fpn_280k",
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
        name="cascade_rcnn_fpn_voc",
        paper=PAPER + "; VOC 07+12, Sec. 5.7 (Table 7 protocol, COCO metrics)",
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
