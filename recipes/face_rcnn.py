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

Variants (``kdet train face_rcnn:VARIANT``): ``wider_face``.

Run::

    kdet train face_rcnn --data tfds:wider_face:train --model-dir runs/face_rcnn
    kdet train face_rcnn --backbone-weights tiny_backbone.weights.h5 --model-dir runs/face_rcnn_pretrained
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
  statistics (batches of 8); with ``--backbone-weights`` (a tiny backbone
  trained before) it is frozen, as kdet's face benchmark does;
* ``max_train_images``: :func:`kdet.face.procedures.train_rcnn_joint` holds the
  training images in memory ([N, 768, 1024, 3] uint8, 2.4 MB each, twice
  with their mirrored copies, and again in tf.data's copy); 1,000 images
  spread over WIDER FACE train are ~5 GB. None uses all 12,880 (~60 GB).
"""

from kdet.anchors import AnchorSpec
from kdet.backbones import BackboneSpec
from kdet.detectors import CascadeRCNN
from kdet.face.recipe import train_face_rcnn
from kdet.rcnn_specs import CascadeSpec, ProposalSpec, RoIPoolerSpec
from kdet.specs import BoxRegressionSpec, MatcherSpec, PostProcessSpec, SamplingSpec
from kdet.training import Recipe, StepSchedule, recipe_main
from recipes.common import WIDER_FACE

PAPER = "Qin et al. 2016, Joint Training of Cascaded CNN for Face Detection, Sec. 5.2 / 6.6 (RPN + Fast R-CNN)"
BATCH = 8


def build_model(num_classes, *, backbone, backbone_weights):
    """The face RPN + Fast R-CNN: a one-stage :class:`CascadeRCNN` with face anchors."""
    return CascadeRCNN(
        num_classes=num_classes,  # 1: faces
        rpn=dict(
            backbone=BackboneSpec(
                name=backbone,  # "tiny": a small network trained from scratch (Sec. 6.6-6.7)
                weights=backbone_weights,
                freeze_batchnorm=backbone_weights is not None,  # see the module docstring
            ),
            fpn_filters=64,
            head_filters=64,
            # faces are annotated as squares (Sec. 6.1); 4 x stride: 16 px on P2 ... 256 px on P6
            anchors=AnchorSpec(min_level=2, max_level=6, num_scales=1, aspect_ratios=(1.0,), anchor_size=4.0),
            # Faster R-CNN's labels (papers/004 Sec. 3.1.2)
            matcher=MatcherSpec(thresholds=(0.3, 0.7), allow_low_quality_matches=True),
            # 256 anchors per image at up to 1:1 (papers/004 Sec. 3.1.3)
            sampling=SamplingSpec(num_samples=256, positive_fraction=0.5),
            box_regression=BoxRegressionSpec(weights=(1.0, 1.0, 1.0, 1.0), smooth_l1_beta=1.0, loss_weight=10.0),
            loss_normalization="paper",  # Eq. 1 with lambda = 10
            proposals=ProposalSpec(
                pre_nms_top_k_train=1000,
                pre_nms_top_k_test=500,
                max_proposals_train=300,  # "we can fix the proposal number, which is exactly what we did" (Sec. 4.2)
                max_proposals_test=100,
                nms_iou_threshold=0.7,
                min_size=0.0,
            ),
        ),
        stages=CascadeSpec(
            ious=(0.5,),  # one Fast R-CNN stage
            box_weights=((10.0, 10.0, 5.0, 5.0),),
            loss_weights=(1.0,),  # the joint loss sums the RPN's and the RoI branch's (Sec. 5.2)
            smooth_l1_beta=1.0,
        ),
        roi_sampling=SamplingSpec(num_samples=128, positive_fraction=0.25),
        fc_dim=256,
        # 16-px faces pool from P2, 64 px from P4, 128 px and up from P5
        roi_pooler=RoIPoolerSpec(output_size=7, sampling_ratio=2, canonical_size=64.0),
        postprocess=PostProcessSpec(pre_nms_top_k=None, score_threshold=0.05, nms_iou_threshold=0.3,
                                    max_detections=100),
        evaluation="face",  # kdet's face metrics (AP50, recall at false-positive counts), as the face cascade
    )


RECIPES = {
    "wider_face": Recipe(
        name="face_rcnn",
        paper=PAPER,
        build_model=build_model,
        **WIDER_FACE,
        image_size=(768, 1024),  # WIDER FACE images are 1024 px wide: kept at their size
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

if __name__ == "__main__":
    raise SystemExit(recipe_main(RECIPES))
