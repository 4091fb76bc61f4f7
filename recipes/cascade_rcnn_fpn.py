"""Cascade R-CNN with ResNet-50/101-FPN+ (Cai & Vasconcelos 2018).

Paper: Cai & Vasconcelos, "Cascade R-CNN: Delving into High Quality Object
Detection" (papers/000). Four stages, an RPN and three detection stages at
IoU U = {0.5, 0.6, 0.7} (Sec. 5.1), each stage resampled from the boxes the
previous one regressed (Sec. 4.2) and normalised by its own regression
statistics (Sec. 4.1, Table 3 "stat"); at test, the average of the three
classifiers' probabilities on the third stage's boxes ("1~3", Table 2). The
baseline is the FPN+ detector of Sec. 5.1.1 (:mod:`recipes.faster_rcnn_fpn`
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
* ``small``: CPU-sized, not a paper setting (:data:`recipes.common.SMALL`:
  the tiny backbone, :func:`kdet.presets.small_rcnn`, 256 px, Adam).

Run::

    kdet train cascade_rcnn_fpn --data tfds:coco/2017:train --model-dir runs/cascade
    kdet train cascade_rcnn_fpn:voc --model-dir runs/cascade_voc
    kdet train cascade_rcnn_fpn:coco_280k --backbone-weights resnet101_notop.h5 --model-dir runs/cascade_r101
    kdet train cascade_rcnn_fpn --backbone resnet101 --model-dir runs/cascade_r101_180k
    python -m recipes.cascade_rcnn_fpn --smoke --model-dir /tmp/cascade_smoke

Settings the paper leaves open, and what is used (each says where it is from):
the weights of the three stage losses (mmdetection's 1, 0.5, 0.25), the
per-stage regression statistics (those of the authors' public code), image
size (FPN's shorter side 800 / longer <= 1333), momentum / weight decay /
warm-up (Detectron's) and the proposal budgets (Detectron's FPN).
"""

from kdet.detectors import CascadeRCNN
from kdet.rcnn_specs import CascadeSpec
from kdet.specs import override
from kdet.training import recipe_main
from recipes.faster_rcnn_fpn import fpn_plus_settings, fpn_plus_variants

PAPER = "Cai & Vasconcelos 2018, Cascade R-CNN (FPN+, Sec. 5.1); RPN: Ren et al., Faster R-CNN, Sec. 3.1"

#: What the cascade changes in the FPN+ baseline (:func:`recipes.faster_rcnn_fpn.fpn_plus_settings`): two more
#: stages (its ``stages`` argument). Stage 1 samples its RoIs as Fast / Faster R-CNN [13, 30], the later stages take
#: all boxes; every stage has the baseline's head (FPN's 2-fc head on RoIAlign).
CASCADE = CascadeSpec(
    ious=(0.5, 0.6, 0.7),  # Sec. 5.1: U = {0.5, 0.6, 0.7}
    # Sec. 4.1 / Table 3: each stage's deltas normalised by that stage's statistics; the stds of the
    # authors' code, 0.1/0.2, 0.05/0.1, 0.033/0.067, as coder weights (1 / std)
    box_weights=((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0)),
    loss_weights=(1.0, 0.5, 0.25),  # not in the paper (Eq. 6 has lambda = 1 inside a stage); mmdetection's
    smooth_l1_beta=1.0,  # the baseline's
    test_stages=None,  # all three stages at test ...
    ensemble=True,  # ... scored by the mean of the three classifiers' probabilities ("1~3", Table 2)
)


def build_model(num_classes, *, backbone, backbone_weights, num_rois=256, changes=None):
    """The three-stage Cascade R-CNN (``num_rois`` 256 in the ablations, 512 in Sec. 5.5)."""
    settings = fpn_plus_settings(num_classes, backbone=backbone, backbone_weights=backbone_weights, num_rois=num_rois)
    return CascadeRCNN(**override({**settings, "stages": CASCADE}, changes or {}))


# --smoke (recipes.common.SMOKE) runs on the tiny backbone: with ResNet-50 the run (two 128-px steps, two
# evaluations, the model directory) took twice as long on a 2-core CPU (three box heads and their graph dominate).
RECIPES = fpn_plus_variants("cascade_rcnn_fpn", PAPER, build_model, coco="; ResNet-50, COCO (Tables 1-4)",
                            voc="; VOC 07+12, Sec. 5.7 (Table 7 protocol, COCO metrics)")

if __name__ == "__main__":
    raise SystemExit(recipe_main(RECIPES))
