"""What several paper recipes share: their data, Detectron's schedules at batch 8, the smoke overrides, variants.

Not a recipe itself (no ``RECIPES``): ``kdet train`` does not list it.

* data: :data:`COCO`, :data:`VOC0712`, :data:`WIDER_FACE` (``train_data`` and
  ``val_data`` of a :class:`~kdet.training.Recipe`) and the sizes of the
  training sets, to count epochs in steps;
* Detectron's solver at the batch of 8 that the FPN+ baseline of Cascade
  R-CNN (Sec. 5.1.1) and the RetinaNet baseline of Consistent Optimization
  (Sec. 6.2) train with: :data:`WARMUP`, :data:`SGD`, and the schedules
  :data:`COCO_1X`, :data:`COCO_LONG` (1.5x) and :data:`VOC0712_1X`;
* :data:`SMOKE`: what ``--smoke`` changes;
* :data:`SMALL`: the ``:small`` variant of every COCO/VOC recipe, CPU-sized
  (with :mod:`kdet.presets`' model changes);
* :func:`make_variants` and :func:`standard_variants`: a recipe's ``RECIPES``
  dict from one table of what its variants change.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

from kdet.backbones import IMAGENET
from kdet.presets import SMALL_RETINANET
from kdet.training import Recipe, StepSchedule

COCO_TRAIN_IMAGES = 118_287  # coco/2017 train (= the trainval35k of the older papers)
VOC0712_TRAINVAL_IMAGES = 16_551  # VOC 2007 trainval (5,011) + VOC 2012 trainval (11,540)

#: COCO 2017 train, evaluated on val (the older papers' minival).
COCO = dict(train_data="tfds:coco/2017:train", val_data="tfds:coco/2017:validation")
#: VOC 2007 + 2012 trainval (the two tfds datasets read one after the other), evaluated on VOC 2007 test.
VOC0712 = dict(train_data="tfds:voc/2007:train+validation,tfds:voc/2012:train+validation",
               val_data="tfds:voc/2007:test")
#: WIDER FACE train, evaluated on its validation split.
WIDER_FACE = dict(train_data="tfds:wider_face:train", val_data="tfds:wider_face:validation")

# Cascade R-CNN Sec. 5.1.1: "8 synchronized GPUs, each holding one image per iteration"; Consistent Optimization
# Sec. 6.2: "4 GPUs with a total of 8 images per mini-batch (2 images per GPU)"
BATCH = 8
# Detectron's warm-up (500 iterations at its batch of 16, linear from 1/3), scaled to batch 8 as
# StepSchedule.for_batch scales it; the papers do not mention one.
WARMUP = dict(warmup_steps=1000, warmup_factor=1.0 / 3.0)
# SGD momentum 0.9 and weight decay 1e-4: Detectron's (and mmdetection's) defaults.
SGD = dict(optimizer="sgd", momentum=0.9, weight_decay=1e-4)

# Detectron's RetinaNet solver (batch 16: lr 0.01, 90k, steps 60k / 80k, warm-up 500 from 1/3) at batch 8
COCO_1X = StepSchedule(base_lr=0.005, reference_batch=BATCH, total_steps=180_000, boundaries=(120_000, 160_000),
                       **WARMUP, **SGD)
# "1.5x longer" (the steps too, as the RetinaNet paper's 1.5x schedule)
COCO_LONG = StepSchedule(base_lr=0.005, reference_batch=BATCH, total_steps=270_000, boundaries=(180_000, 240_000),
                         **WARMUP, **SGD)
# mmdetection's voc0712 1x at batch 8 and its per-image rate (0.01 / 16 = 0.005 / 8): 12 epochs of VOC 07+12
# trainval, the rate / 10 after 9
VOC0712_1X = StepSchedule(base_lr=0.005, reference_batch=BATCH,
                          total_steps=round(12 * VOC0712_TRAINVAL_IMAGES / BATCH),
                          boundaries=(round(9 * VOC0712_TRAINVAL_IMAGES / BATCH),), **WARMUP, **SGD)

# --smoke checks a recipe's wiring (its detector settings, data, schedule, evaluation, model directory) in a
# few seconds, so it swaps the ResNet for the tiny backbone: ResNet-50/101 builds and steps are tested on their
# own (tests/test_backbones.py, tests/detectors/test_cascade_rcnn.py) and its weight files alone made CI slower.
SMOKE = {"image_size": (128, 128), "batch_size": 2, "steps": 2, "val_images": 2, "steps_per_epoch": 2,
         "backbone": "tiny", "backbone_weights": None}
# The papers start from ImageNet-pretrained ResNets: every COCO / VOC variant (make_variants) loads
# keras.applications' ImageNet weights (Keras downloads them once into its cache, on this request).
RESNETS = ("resnet50", "resnet101")

#: The ``:small`` variant's solver: Adam at 1e-3 and batch 8, as ``kdet demo`` trains the same tiny backbone from
#: scratch (its peak rate), warm-up over the first 10% from 1/10, the rate / 10 at 2/3 and 8/9 of the run;
#: 3,000 steps at batch 8 are 8 epochs of 3,000 images (12 of the embedded 2,000). --epochs/--steps rescale it.
SMALL_SCHEDULE = StepSchedule(base_lr=1e-3, reference_batch=8, total_steps=3000, boundaries=(2000, 2667),
                              warmup_steps=300, warmup_factor=0.1, optimizer="adam", weight_decay=None, clipnorm=10.0)
#: ``kdet train NAME:small``: the recipe's detector narrowed by :mod:`kdet.presets` (``changes``, given to its
#: ``build_model``) on the tiny backbone from scratch, 256-px images, batch 8: sized so that a few thousand images
#: train in tens of minutes on a 2-core CPU. It trains on the embedded synthetic shapes unless ``--data`` names
#: the user's own (``--val-data`` for their validation split). Not a paper setting.
SMALL = dict(suffix="_small", paper="; CPU-sized (kdet's :small: tiny backbone, narrow FPN and heads, 256 px)",
             train_data="embedded:shapes:train[:2000]", val_data="embedded:shapes:validation[:200]",
             image_size=(256, 256), batch_size=8, schedule=SMALL_SCHEDULE, backbone="tiny", backbone_weights=None,
             scale_jitter=None, steps_per_epoch=250, val_images=200)

#: The variants of the RetinaNet recipes: Consistent Optimization's settings (Sec. 6.2, Tables 1-4 and 6) and
#: mmdetection's VOC 07+12 schedule (``retinanet_r50_fpn_1x_voc0712``). Each entry: the suffix of the recipe's
#: name, what the variant adds to the paper string, and its own :class:`Recipe` fields.
STANDARD_VARIANTS = {
    # shorter side 500, longer <= 833 (Detectron's RetinaNet-500) in kdet's one padded square: 640 x 640
    # (0.41 Mpx, as 500 x 833; a 4:3 image gets 480 x 640)
    "coco": dict(suffix="", paper="; ResNet-50, scale 500, COCO (Tables 1-4)", **COCO, image_size=(640, 640),
                 schedule=COCO_1X),
    # shorter side 800, longer <= 1333: a 1024 x 1024 square (1.05 Mpx; a 4:3 image gets 768 x 1024)
    "coco_800": dict(suffix="_800", paper="; scale 800, COCO (Table 4)", **COCO, image_size=(1024, 1024),
                     schedule=COCO_1X),
    # Table 6: "scale jitter and 1.5x longer"; the shorter side drawn from 640-800 (0.8-1.0 of the 800 scale)
    "coco_800_jitter": dict(suffix="_800_jitter", paper="; scale 800, scale jitter, 1.5x schedule, COCO (Table 6)",
                            **COCO, image_size=(1024, 1024), scale_jitter=(0.8, 1.0), schedule=COCO_LONG),
    # shorter side 600 / longer <= 1000: a 768 x 768 square (a 4:3 image gets 576 x 768)
    "voc": dict(suffix="_voc", paper="; VOC 07+12 (mmdetection's VOC schedule)", **VOC0712, image_size=(768, 768),
                schedule=VOC0712_1X),
    "small": dict(SMALL, changes=SMALL_RETINANET),
}


def make_variants(name: str, paper: str, variants: Mapping[str, Mapping[str, Any]], **common) -> dict[str, Recipe]:
    """A recipe's ``RECIPES``: one :class:`Recipe` per entry of ``variants``, in its order (the first is the default).

    Args:
      name: the recipe's name; a variant's is ``name + suffix``.
      paper: the paper string; a variant's is ``paper + its "paper"``.
      variants: ``{variant: {"suffix": ..., "paper": ..., **Recipe fields}}``;
        an entry's ``"changes"`` (model settings, :func:`kdet.specs.override`)
        are passed to its ``build_model(..., changes=...)``.
      **common: the Recipe fields every variant shares (a variant's own win).
        A ResNet variant's ``backbone_weights`` defaults to ``"imagenet"``.
    """
    recipes = {}
    for variant, settings in variants.items():
        own = dict(settings)
        suffix, detail, changes = own.pop("suffix"), own.pop("paper"), own.pop("changes", None)
        fields = {**common, **own}
        if changes is not None:
            fields["build_model"] = functools.partial(fields["build_model"], changes=changes)
        if fields.get("backbone", "resnet50") in RESNETS:
            fields.setdefault("backbone_weights", IMAGENET)  # as the papers: ImageNet-initialised
        recipes[variant] = Recipe(name=name + suffix, paper=paper + detail, **fields)
    return recipes


def standard_variants(name: str, paper: str, build_model: Callable, **common) -> dict[str, Recipe]:
    """``coco``, ``coco_800``, ``coco_800_jitter``, ``voc`` and ``small`` (:data:`STANDARD_VARIANTS`) of a detector."""
    return make_variants(name, paper, STANDARD_VARIANTS, build_model=build_model, **common)
