"""ConRetinaNet: RetinaNet ResNet-50-FPN trained with consistent optimization (Kong et al.).

Paper: Kong et al., "Consistent Optimization for Single-Shot Object
Detection" (papers/001). The anchors regressed by the box branch (gradient
stopped) are labelled again and train the same classifier (Eq. 1, alpha = 1,
Sec. 6.1) and a second regression (Eq. 2), whose last convolution alone is
not shared (Fig. 4(d), footnote 2), at mu_neg = 0.5 / mu_pos = 0.6 (Table 2,
"used for all other experiments"); two classification and two regression
terms ("#cls 2, #reg 2", the best row of Table 3: 33.7 AP at scale 500) and
both regressions applied at test ("2*" of Table 3 is one:
``test_regressions=1``). Inference scores as RetinaNet does (Sec. 4).
Everything else is the RetinaNet baseline of Sec. 6.2 (:mod:`recipes.retinanet`):
Detectron's settings on "4 GPUs with a total of 8 images per mini-batch",
ResNet-50-FPN, shorter side 500.

Variants (``kdet train con_retinanet:VARIANT``):

* ``coco`` (default): the ablation setting, shorter side 500 (Tables 1-3;
  Table 4: 33.7 AP against RetinaNet's 32.5);
* ``coco_800``: shorter side 800 (Table 4: 36.4 AP with ResNet-50, 38.7 with
  ``--backbone resnet101``);
* ``coco_800_jitter``: Table 6's training, "scale jitter and for 1.5x
  longer" (ConRetinaNet-101: 40.1 AP on test-dev with ``--backbone resnet101``);
* ``voc``: VOC 2007+2012 trainval, evaluated on VOC 2007 test (COCO
  metrics); the paper has no VOC experiment: mmdetection's
  ``retinanet_r50_fpn_1x_voc0712`` schedule at batch 8 (as ``retinanet:voc``).

Schedule: the baseline's (:mod:`recipes.retinanet`), Detectron's RetinaNet 1x
at the paper's batch of 8: lr 0.005, 180k iterations, steps at 120k and 160k,
warm-up 1000 (:data:`recipes.common.COCO_1X`).
* ``small``: CPU-sized, not a paper setting (:data:`recipes.common.SMALL`:
  the tiny backbone, :data:`kdet.presets.SMALL_RETINANET`, 256 px, Adam).

Run::

    kdet train con_retinanet --data tfds:coco/2017:train --model-dir runs/con_retinanet
    kdet train con_retinanet:coco_800_jitter --backbone resnet101 --model-dir runs/con_retinanet_r101
    kdet train con_retinanet:voc --model-dir runs/con_retinanet_voc
    kdet evaluate --model-dir runs/con_retinanet --data tfds:coco/2017:validation
    python -m recipes.con_retinanet --smoke --model-dir /tmp/con_retinanet_smoke
"""

from kdet.detectors import RetinaNet
from kdet.specs import ConsistentOptimizationSpec, override
from kdet.training import recipe_main
from recipes import retinanet
from recipes.common import standard_variants

PAPER = "Kong et al. 2019, Consistent Optimization (ConRetinaNet, Sec. 4, 6; Detectron settings, Sec. 6.2)"

#: What consistent optimization adds to the RetinaNet baseline (:class:`RetinaNet`'s ``consistent`` argument).
CONSISTENT_OPTIMIZATION = ConsistentOptimizationSpec(
    cls_terms=2,  # Eq. 1: the anchors' labels, plus the refined anchors' labels ...
    alpha=1.0,  # ... weighted alpha = 1 (Sec. 6.1)
    reg_terms=2,  # Eq. 2: a second regression from the refined anchors
    thresholds=((0.5, 0.6),),  # refined anchors: negative below mu_neg 0.5, positive from mu_pos 0.6
    test_regressions=None,  # both regressions at test (#reg = 2; Table 3's "2*" would be 1)
)


def build_model(num_classes, *, backbone, backbone_weights, changes=None):
    """ConRetinaNet: Detectron's RetinaNet plus Eq. 1 and Eq. 2's consistent terms (``changes``: ``:small``'s)."""
    settings = retinanet.retinanet_settings(num_classes, backbone=backbone, backbone_weights=backbone_weights)
    return RetinaNet(**override(settings, changes or {}), consistent=CONSISTENT_OPTIMIZATION)


RECIPES = standard_variants("con_retinanet", PAPER, build_model, **retinanet.COMMON)

if __name__ == "__main__":
    raise SystemExit(recipe_main(RECIPES))
