"""AP-loss RetinaNet: RetinaNet ResNet-50-FPN with its classification task replaced by ranking (Chen et al.).

Paper: Chen et al., "AP-Loss for Accurate One-Stage Object Detection"
(papers/003). Every anchor-class pair of a mini-batch is ranked by its raw
score and trained by the error-driven update of the interpolated AP-loss
(Algorithm 1; Sec. 3.4.2's piecewise step function with delta = 1, Eq. 21;
interpolated AP, Table 1), the batch ranked together ("mini-batch
training", Sec. 3.4.1). Sec. 4.1.1: RetinaNet (Lin et al.) "implementation
details ... the same as in [6]" except 2 sub-octave anchor scales x 3
ratios, frozen batch normalisation, "2 GPUs with 8 images per GPU", SSD's
data augmentation, 512 x 512 training images, weight decay 1e-4, momentum
0.9, NMS at 0.5 per class. Sec. 4.1.2: the schedules in epochs.

Variants (``kdet train ap_loss_retinanet:VARIANT``):

* ``coco`` (default): Table 2's "RetinaNet + COCO" AP-loss row (35.0 AP on
  minival): ResNet-50, COCO 2017 train (= trainval35k), 512 x 512, 100
  epochs at lr 0.001, divided by 10 at epochs 60 and 80;
* ``voc``: the ablations' setting (Tables 1-3: 53.1 AP on VOC 2007 test,
  COCO-style metrics): VOC 2007+2012 trainval, 512 x 512, 160 epochs at lr
  0.001, divided by 10 at epochs 110 and 140;
* ``coco_800``: AP-loss800 of Table 6 (40.8 AP on test-dev with ResNet-101,
  ``--backbone resnet101``): 800 x 800 training (768 x 768 here: sizes are
  multiples of P7's stride 128), the COCO schedule.
* ``small``: CPU-sized, not a paper setting (:data:`recipes.common.SMALL`:
  the tiny backbone, :data:`kdet.presets.SMALL_RETINANET`, 256 px, Adam).

Run::

    kdet train ap_loss_retinanet --data tfds:coco/2017:train --model-dir runs/ap_loss
    kdet train ap_loss_retinanet:voc --model-dir runs/ap_loss_voc
    kdet train ap_loss_retinanet:coco_800 --backbone resnet101 --model-dir runs/ap_loss800_r101
    python -m recipes.ap_loss_retinanet --smoke --model-dir /tmp/ap_loss_smoke

Settings the paper leaves open or kdet cannot express, and what is used:

* warm-up: not mentioned; RetinaNet's [6] (Detectron: 500 iterations from
  1/3 at batch 16);
* augmentation: SSD's photometric distortion, zoom-out (up to 4x) and
  min-IoU random crops (down to 0.3 of the side) become kdet's scale jitter
  from 0.25x to 3x of the 512 square (random resize + crop) and flipping;
  no photometric distortion;
* SSD warps images to 512 x 512; kdet keeps the aspect ratio and pads;
* evaluation: the paper tests at a shorter side of 600 (ablations) or
  500 / 800 (Table 6); a recipe has one image size, so kdet evaluates at the
  training square;
* ranking per replica: the paper ranks each GPU's 8 images together; on one
  device the whole batch of 16 is one ranking (``rank_across_replicas``
  stays False, so on 2 replicas each ranks its own 8, as the paper).
"""

from kdet.detectors import RetinaNet
from kdet.specs import APLossSpec, override
from kdet.training import StepSchedule, recipe_main
from kdet.presets import SMALL_RETINANET
from recipes.common import COCO, COCO_TRAIN_IMAGES, SMALL, SMOKE, VOC0712, VOC0712_TRAINVAL_IMAGES, make_variants
from recipes.retinanet import retinanet_settings

PAPER = "Chen et al., AP-Loss for Accurate One-Stage Object Detection, Sec. 4.1"
BATCH = 16  # Sec. 4.1.1: "mini-batch training on 2 GPUs with 8 images per GPU"
# RetinaNet's [6] warm-up (Detectron: 500 iterations at batch 16, linear from 1/3); the paper does not mention one
COMMON_SOLVER = dict(warmup_steps=500, warmup_factor=1.0 / 3.0, optimizer="sgd", momentum=0.9,
                     weight_decay=1e-4)  # Sec. 4.1.1: "Weight decay of 0.0001 and momentum of 0.9"


def epochs(count: float, images: int) -> int:
    """Steps of ``count`` epochs over ``images`` at the paper's batch."""
    return round(count * images / BATCH)


# Sec. 4.1.2 MS COCO: "100 epochs with an initial learning rate of 0.001 ... divided by 10 at 60 epochs and
# again at 80 epochs"
COCO_SCHEDULE = StepSchedule(base_lr=0.001, reference_batch=BATCH, total_steps=epochs(100, COCO_TRAIN_IMAGES),
                             boundaries=(epochs(60, COCO_TRAIN_IMAGES), epochs(80, COCO_TRAIN_IMAGES)),
                             **COMMON_SOLVER)
# Sec. 4.1.2 PASCAL VOC: "160 epochs with an initial learning rate of 0.001 ... divided by 10 at 110 epochs and
# again at 140 epochs"
VOC_SCHEDULE = StepSchedule(base_lr=0.001, reference_batch=BATCH, total_steps=epochs(160, VOC0712_TRAINVAL_IMAGES),
                            boundaries=(epochs(110, VOC0712_TRAINVAL_IMAGES), epochs(140, VOC0712_TRAINVAL_IMAGES)),
                            **COMMON_SOLVER)

#: What AP-loss RetinaNet changes in RetinaNet (:func:`recipes.retinanet.retinanet_settings`, whose other
#: settings are Sec. 4.1.1's "the same as in [6]": FPN P3-P7, 3 aspect ratios [0.5, 1, 2], frozen batch
#: normalisation ("We fix the batch normalization layers to be frozen in training phase"), "non-maximum
#: suppression with IoU of 0.5 for each class").
AP_LOSS = dict(
    anchors=dict(num_scales=2),  # "2 sub-octave scales (2^(k/2), for k <= 1)" (x 3 aspect ratios)
    classification_loss=APLossSpec(  # the ranking task with the AP-loss (Sec. 3)
        delta=1.0,  # "We set delta = 1 in Equation 21" (Table 1)
        interpolate=True,  # "we use interpolated AP in all the following studies" (Table 1)
        rank_across_replicas=False,  # each GPU ranks its own 8 images (see the module docstring)
    ),
)


def build_model(num_classes, *, backbone, backbone_weights, changes=None):
    """RetinaNet with the interpolated AP-loss instead of the focal loss (``changes``: the ``:small`` one's)."""
    settings = retinanet_settings(num_classes, backbone=backbone, backbone_weights=backbone_weights)
    return RetinaNet(**override(override(settings, AP_LOSS), changes or {}))


VARIANTS = {
    # "the input image is fixed to 512 x 512 in training phase"
    "coco": dict(suffix="", paper="; ResNet-50, 512, COCO (Table 2)", **COCO, image_size=(512, 512),
                 schedule=COCO_SCHEDULE, steps_per_epoch=2000),
    "voc": dict(suffix="_voc", paper="; ResNet-50, 512, VOC 07+12 (Tables 1-3)", **VOC0712, image_size=(512, 512),
                schedule=VOC_SCHEDULE,
                steps_per_epoch=epochs(1, VOC0712_TRAINVAL_IMAGES)),  # one epoch of VOC 07+12 at batch 16
    # "800 x 800 in training" rounded down to a multiple of 128
    "coco_800": dict(suffix="_800", paper="; AP-loss800, COCO (Table 6, ResNet-101)", **COCO,
                     image_size=(768, 768), schedule=COCO_SCHEDULE, steps_per_epoch=2000),
    # CPU-sized (recipes.common.SMALL), with the recipe's SSD-style augmentation
    "small": dict(SMALL, scale_jitter=(0.25, 3.0), changes=SMALL_RETINANET),
}

RECIPES = make_variants(
    "ap_loss_retinanet", PAPER, VARIANTS,
    build_model=build_model,
    batch_size=BATCH,
    backbone="resnet50",  # "We fix the ResNet-50 ... as backbone" in the ablations
    flip=True,
    # SSD's zoom-out (expand up to 4x: 0.25) and random crops (down to 0.3 of the side: ~3x), see the docstring
    scale_jitter=(0.25, 3.0),
    val_images=500,
    smoke=SMOKE,
)

if __name__ == "__main__":
    raise SystemExit(recipe_main(RECIPES))
