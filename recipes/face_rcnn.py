"""The jointly trained RPN + Fast R-CNN face detector (Qin et al., Sec. 5) on WIDER FACE.

Paper: Qin et al., "Joint Training of Cascaded CNN for Face Detection"
(papers/002), Sec. 5 and 6.6. A small network trained from scratch (kdet's
tiny backbone with FPN P2-P6 in place of the paper's ZF-net without LRN)
shares its convolutions between an RPN branch and a RoI branch (one Fast
R-CNN stage, RoIAlign); multi-scale square anchors replace the cascade's
image pyramid. Training (Sec. 5.2, :func:`kdet.face.recipe.train_face_rcnn`),
the two-step joint procedure: the RPN "as in separate training", then the
joint network fine-tuned from it, its RoI branch fed the proposals of that
RPN on the training images and both losses summed; a fixed number of
proposals (Sec. 4.2). Its separate baseline, Faster R-CNN's four-step
alternating training, is in ``benchmarks/face_benchmark.py``.

The paper trains on AFLW and its own 3R set (not public) and tests on AFW and
FDDB; this recipe trains on tfds ``wider_face`` train and evaluates on its
validation split with kdet's face metrics (faces under 20 px ignored).

Variants (``kdet train face_rcnn:VARIANT``): ``wider_face`` (the paper's
from-scratch network) and ``embedded``: the face benchmark's ``rcnn_joint``
on the embedded (synthetic) face set, 500 training images at half their
640x480 size, batch 4, Adam at 1e-3 for 3 + 3 epochs, starting from the tiny
backbone pretrained on synthetic shapes (``--backbone-weights shapes``,
:mod:`kdet.training.pretrain`) with frozen BatchNorm. From scratch with
batch statistics the same detector reached validation AP50 4.9 there.

Run::

    kdet train face_rcnn --data tfds:wider_face:train --model-dir runs/face_rcnn
    kdet train face_rcnn --backbone-weights shapes --model-dir runs/face_rcnn_pretrained
    kdet train face_rcnn:embedded --model-dir runs/face_rcnn_embedded
    python -m recipes.face_rcnn --smoke --model-dir /tmp/face_rcnn_smoke

Settings the paper leaves open, and what is used:

* the solver: "All settings in training separate and joint networks are the
  same, e.g. ... learning rates" without values; Faster R-CNN's (papers/004
  Sec. 3.1.3: one image per mini-batch, 0.001 then 0.0001, momentum 0.9,
  weight decay 5e-4) at batch 8 by the linear scaling rule (0.008), 16
  epochs per step with the rate / 10 after 12 (Faster R-CNN's 60k + 20k
  iterations on VOC 2007's 5,011 images);
* the RPN's labelling and sampling: Faster R-CNN's (IoU 0.7 / 0.3, 256
  anchors at up to 1:1, Eq. 1 with lambda = 10);
* anchors 16-256 px (one square size per level), 300 proposals per image in
  training, 128 RoIs, a 256-wide box head (kdet's face detector,
  :mod:`kdet.face.rcnn`);
* trained from scratch the backbone's batch normalisation learns its
  statistics (batches of 8); with ``--backbone-weights`` (``shapes``: the
  tiny backbone kdet pretrains on synthetic shapes, or a file of a tiny
  backbone trained before) it is frozen, as kdet's face benchmark does;
* ``max_train_images``: :func:`kdet.face.procedures.train_rcnn_joint` holds the
  training images in memory ([N, 768, 1024, 3] uint8, 2.4 MB each, twice
  with their mirrored copies, and again in tf.data's copy); 1,000 images
  spread over WIDER FACE train are ~5 GB. None uses all 12,880 (~60 GB).
"""

import functools

from kdet.backbones import BackboneSpec
from kdet.face.rcnn import FACE_RPN, face_rcnn
from kdet.face.recipe import train_face_rcnn
from kdet.training import Recipe, StepSchedule, recipe_main
from kdet.training.pretrain import SHAPES
from recipes.common import WIDER_FACE

PAPER = "Qin et al. 2016, Joint Training of Cascaded CNN for Face Detection, Sec. 5.2 / 6.6 (RPN + Fast R-CNN)"
BATCH = 8


def build_model(num_classes, *, backbone, backbone_weights, scale=1.0):
    """The face RPN + Fast R-CNN (:func:`kdet.face.rcnn.face_rcnn`: a one-stage :class:`CascadeRCNN` with face
    anchors, Faster R-CNN's RPN labels, sampling and Eq. 1 with lambda = 10), its anchors scaled by ``scale``.

    With ``backbone_weights`` (a tiny backbone trained before) its BatchNorm is frozen (module docstring).
    """
    if num_classes != 1:
        raise ValueError(f"the face R-CNN detects one class (faces), got num_classes={num_classes}")
    return face_rcnn(rpn=dict(backbone=BackboneSpec(name=backbone, weights=backbone_weights,
                                                    freeze_batchnorm=backbone_weights is not None)), scale=scale)


RECIPES = {
    "wider_face": Recipe(
        name="face_rcnn",
        paper=PAPER,
        build_model=build_model,
        **WIDER_FACE,
        image_size=(768, 1024),  # WIDER FACE images are 1024 px wide: kept at their size
        image_stride=2 ** FACE_RPN["anchors"].max_level,  # 64: FPN P2-P6, any multiple of P6's stride
        schedule_unit="epochs",
        batch_size=BATCH,
        # Faster R-CNN's solver (papers/004 Sec. 3.1.3: 0.001 at one image per mini-batch, then 0.0001; momentum
        # 0.9, weight decay 5e-4). kdet.face.recipe counts this schedule in EPOCHS: 16 for the RPN and 16 for
        # the joint network, the rate / 10 from epoch 12.
        schedule=StepSchedule(base_lr=0.001, reference_batch=1, total_steps=16, boundaries=(12,), decay_factor=0.1,
                              optimizer="sgd", momentum=0.9, weight_decay=5e-4),
        backbone="tiny",
        flip=True,  # every training image is also used mirrored
        max_boxes=500,  # WIDER FACE has up to ~2,000 faces per image; the RPN's IoU matrices grow with it
        val_images=500,
        train=train_face_rcnn,
        extra={"max_train_images": 1000, "min_face_size": 20.0},  # see the module docstring
        smoke={"train_data": "embedded:faces:train[:8]", "val_data": "embedded:faces:validation[:2]",
               "image_size": (128, 128), "batch_size": 2, "steps": 1, "val_images": 2},
    ),
}

# The face benchmark's rcnn_joint (benchmarks/face_benchmark.py at its defaults) on the embedded (synthetic) face set.
RECIPES["embedded"] = RECIPES["wider_face"].replace(
    name="face_rcnn_embedded",
    paper=PAPER + "; the face benchmark's procedure on the embedded (synthetic) face set",
    # the benchmark's --rcnn-scale 0.5: the 640x480 images at 320x240 padded to 320x256, anchors 8-128 px
    build_model=functools.partial(build_model, scale=0.5),
    train_data="embedded:faces:train[:500]",  # the benchmark's --train-images 500
    val_data="embedded:faces:validation",
    image_size=(256, 320),
    batch_size=4,  # the benchmark's --rcnn-batch-size
    # the benchmark's optimiser: Adam at 1e-3, constant, 3 epochs for the RPN and 3 for the joint network
    schedule=StepSchedule(base_lr=1e-3, reference_batch=4, total_steps=3, optimizer="adam", weight_decay=None),
    # From scratch at batch 4 this detector is unusable (validation AP50 4.9 after 2 + 2 epochs: BatchNorm's
    # statistics lag the weights); the benchmark's start, a tiny backbone pretrained on synthetic shapes with
    # frozen BatchNorm (kdet.training.pretrain, once per machine, ~5 min), makes it work.
    backbone_weights=SHAPES,
    flip=False,  # as the benchmark
    max_boxes=100,
    val_images=None,
    extra={"max_train_images": None, "min_face_size": 20.0},  # faces under 20 px (of the 640x480 image) ignored
    smoke={**RECIPES["wider_face"].smoke, "image_size": (128, 192), "backbone_weights": None},
)

if __name__ == "__main__":
    raise SystemExit(recipe_main(RECIPES))
