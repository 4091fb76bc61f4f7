"""RetinaNet with ResNet-50-FPN and the focal loss: the baseline of Consistent Optimization (Kong et al.).

Paper: Kong et al., "Consistent Optimization for Single-Shot Object
Detection" (papers/001), Sec. 6.2 "Baseline": RetinaNet (Lin et al.) in the
Detectron codebase, "the experimental settings are exactly the same as that
in [12]" (Detectron) but on "4 GPUs with a total of 8 images per
mini-batch", ResNet-50-FPN, training and testing at a shorter side of 500
pixels. Its results are the "RetinaNet baseline" rows of Tables 1-4 (32.5 AP
on COCO minival at 500) and the RetinaNet rows of Tables 4 and 6; the same
settings with consistent optimization are :mod:`recipes.con_retinanet`.

Variants (``kdet train retinanet:VARIANT``):

* ``coco`` (default): the ablation setting, shorter side 500 (Tables 1-3,
  Table 4 row 1);
* ``coco_800``: shorter side 800 (Table 4);
* ``coco_800_jitter``: Table 6's training, "scale jitter and 1.5x longer"
  (shorter side 640-800 as Detectron's / the RetinaNet paper's jitter),
  ResNet-101 in the paper (``--backbone resnet101``);
* ``voc``: VOC 2007+2012 trainval, evaluated on VOC 2007 test (COCO
  metrics). The paper has no VOC experiment; the schedule is mmdetection's
  ``retinanet_r50_fpn_1x_voc0712`` (12 epochs, rate / 10 after 9, shorter
  side 600 / longer <= 1000) at batch 8 and its per-image rate.
* ``small``: CPU-sized (not a paper setting): the tiny backbone, a 64-wide
  FPN and two 64-wide convs per head (:data:`kdet.presets.SMALL_RETINANET`),
  256 px, Adam; on the embedded shapes unless ``--data`` names your own
  (:data:`recipes.common.SMALL`).

Schedule: Detectron's RetinaNet 1x (batch 16, lr 0.01, 90k iterations, rate
/ 10 at 60k and 80k, linear warm-up over 500 iterations from 1/3, momentum
0.9, weight decay 1e-4) at the paper's batch of 8 by the linear scaling rule
Detectron prescribes for fewer GPUs: lr 0.005, 180k iterations, steps at
120k and 160k, warm-up 1000.

Run::

    kdet train retinanet --data tfds:coco/2017:train --model-dir runs/retinanet
    kdet train retinanet:coco_800 --backbone resnet101 --model-dir runs/retinanet_r101_800
    kdet train retinanet:voc --model-dir runs/retinanet_voc
    kdet train retinanet:small --data coco-json:train.json --val-data coco-json:val.json --model-dir runs/mine
    python -m recipes.retinanet --smoke --model-dir /tmp/retinanet_smoke
"""

from kdet.anchors import AnchorSpec
from kdet.backbones import BackboneSpec
from kdet.detectors import RetinaNet
from kdet.specs import BoxRegressionSpec, FocalLossSpec, MatcherSpec, PostProcessSpec, RetinaNetHeadSpec, override
from kdet.training import recipe_main
from recipes.common import BATCH, SMOKE, standard_variants

PAPER = "Kong et al. 2019, Consistent Optimization, Sec. 6.2 (RetinaNet baseline, Detectron settings)"


def retinanet_settings(num_classes, *, backbone, backbone_weights) -> dict:
    """The :class:`RetinaNet` arguments of Detectron's RetinaNet (Lin et al.'s settings)."""
    return dict(
        num_classes=num_classes,
        # ImageNet statistics kept (2 images per GPU), as Detectron
        backbone=BackboneSpec(name=backbone, weights=backbone_weights, freeze_batchnorm=True),
        fpn_filters=256,
        anchors=AnchorSpec(
            min_level=3,  # P3-P7
            max_level=7,
            num_scales=3,  # 3 octave scales x 3 ratios = 9 anchors per location ...
            aspect_ratios=(0.5, 1.0, 2.0),
            anchor_size=4.0,  # ... of 4 x stride: 32 px on P3 ... 512 px on P7
        ),
        head=RetinaNetHeadSpec(num_convs=4, filters=256, prior_probability=0.01),
        matcher=MatcherSpec(
            thresholds=(0.4, 0.5),  # background below 0.4, foreground from 0.5, ignored between
            allow_low_quality_matches=True,  # Detectron also makes each ground truth's best anchors foreground
        ),
        box_regression=BoxRegressionSpec(
            weights=(1.0, 1.0, 1.0, 1.0),
            smooth_l1_beta=0.11,  # Detectron's RETINANET.BBOX_REG_BETA
            loss_weight=1.0,
        ),
        classification_loss=FocalLossSpec(alpha=0.25, gamma=2.0),
        postprocess=PostProcessSpec(pre_nms_top_k=1000,  # per level
                                    score_threshold=0.05, nms_iou_threshold=0.5, max_detections=100),
    )


def build_model(num_classes, *, backbone, backbone_weights, changes=None):
    """RetinaNet as Detectron configures it (Lin et al.'s settings), with ``changes`` (the ``:small`` variant's)."""
    settings = retinanet_settings(num_classes, backbone=backbone, backbone_weights=backbone_weights)
    return RetinaNet(**override(settings, changes or {}))


# What every variant shares (ConRetinaNet's too).
COMMON = dict(
    batch_size=BATCH,
    backbone="resnet50",  # "ResNet-50 with a Feature Pyramid Network"
    flip=True,  # Sec. 6.1: "no data augmentation is used except standard horizontal image flipping"
    steps_per_epoch=2000,
    val_images=500,
    smoke=SMOKE,
)

RECIPES = standard_variants("retinanet", PAPER, build_model, **COMMON)

if __name__ == "__main__":
    raise SystemExit(recipe_main(RECIPES))
