"""The jointly trained 12/24/48 face cascade ("FaceCraft", Qin et al.) on WIDER FACE.

Paper: Qin et al., "Joint Training of Cascaded CNN for Face Detection"
(papers/002), Sec. 4. Three branches on one 48 x 48 sample (x12 on it
average-pooled to 12 x 12, x12-x24 at 24 x 24 with x12's feature, x12-x24-x48
with x12-x24's), threshold-control layers at 0.1 and 0.003 passing samples
to the later branches' losses (Sec. 4.1), the joint loss of Eq. 6. Training
(Sec. 4.2, :func:`kdet.face.recipe.train_face_cascade`): samples mined by
sliding 48-px windows at stride 8 over image pyramids of 5 levels per octave
(faces above IoU 0.8, non-faces below 0.5, 5% faces, every sample also
flipped, offsets normalised to zero mean and unit variance); the three
branches trained separately, then the joint network initialised from them
"to make it converge easily"; SGD at 0.001 then 0.0001, momentum 0.9, weight
decay 5e-4, "5 to 10 epochs". Test (Sec. 4.3): an image pyramid, x12 over
it with response-map max pooling (k = 2) instead of NMS, the survivors
cropped from the pyramid (Sec. 6.5) for x12-x24 and x12-x24-x48, a final NMS.

The paper trains on AFLW and its own 3R set (not public) and tests on AFW and
FDDB; this recipe trains on tfds ``wider_face`` train and evaluates on its
validation split with kdet's face metrics (AP50, recall at false-positive
counts; faces under 20 px ignored).

Variants (``kdet train face_cascade:VARIANT``):

* ``wider_face`` (default): WIDER FACE train / validation (tfds, prepared
  beforehand);
* ``embedded``: the face benchmark's ``cascade_joint_from_separate`` exactly
  (``benchmarks/face_benchmark.py``: the same 500 embedded training images,
  samples, bootstrapping, epochs, batch, Adam at 1e-3 and test pipeline), so
  ``kdet train face_cascade:embedded`` trains the detector whose (synthetic
  data) numbers docs/benchmarks.md reports. The embedded faces are grey
  25x25 LFW crops: a detector trained on them is not a real-photo detector.
* ``mtcnn``: WIDER FACE as ``wider_face``, but the joint network starts
  from MTCNN's published P-, R- and O-Net (``kdet.face.from_mtcnn``; needs
  the optional ``mtcnn`` package) with the cross-stage links at zero: the
  paper's "initialise the joint network from the separately trained
  stages", with stages trained on real faces. No greedy step; MTCNN's P-Net
  bootstraps the hard samples and the model tests with MTCNN's pipeline.
  Fine-tuning on the embedded (synthetic) faces costs real-photo recall
  (``benchmarks/face_mtcnn_finetune.py``): fine-tune on real faces.

Run::

    kdet train face_cascade --data tfds:wider_face:train --model-dir runs/face_cascade
    kdet train face_cascade:embedded --model-dir runs/face_cascade_embedded
    kdet train face_cascade:mtcnn --model-dir runs/face_cascade_mtcnn
    python -m recipes.face_cascade --smoke --model-dir /tmp/face_cascade_smoke

Settings the paper leaves open, and what is used:

* the schedule's length: 8 epochs per training step (each greedy branch, then
  the joint network), the rate divided by 10 after 6 (within the paper's
  "5 to 10 epochs"); the batch (128 samples) is not given either;
* the loss weights of Eq. 6 (1, 1, 1) and dropout (0.25);
* bootstrapping: the later branches also train on the windows a first x12
  lets through (the paper's "negative mining stages" with "harder" samples
  for the later stages, Sec. 4.2), as ``benchmarks/face_benchmark.py``;
* the test pipeline (thresholds 0.01 / 0.05 / 0.5 after each branch, area
  pyramid, nearest crops, budgets 160 / 32 with NMS at 0.7), chosen on the
  embedded face set's validation split
  (:data:`kdet.face.cascade.VALIDATED_TEST`); the paper: "as high
  as possible while keeping the recall";
* the smallest face found, 20 px (the paper's fast version: 24 px);
* ``max_train_images``: the procedure holds the training images decoded
  (for mining, then bootstrapping) and all their samples in memory: all
  12,880 WIDER FACE training images are ~30 GB of pixels alone, the 2,000
  used here (spread over the split) a sixth of that. None uses all of them.
"""

from kdet.face.cascade import VALIDATED_TEST, FaceCascade
from kdet.face.specs import FaceTrainingSpec
from kdet.face.recipe import train_face_cascade
from kdet.training import Recipe, StepSchedule, recipe_main
from recipes.common import WIDER_FACE

PAPER = "Qin et al. 2016, Joint Training of Cascaded CNN for Face Detection, Sec. 4 (4.2 training, 4.3 test)"
MIN_FACE = 20.0
#: kdet.face.procedures.CascadeTraining fields besides epochs and batch (the schedule's and the run's):
#: Sec. 4.2's windows (stride 8, 5 levels an octave, faces above IoU 0.8, non-faces below 0.5, 5% faces),
#: hard samples from a first x12 training every branch, the joint network from the greedy branches.
PROCEDURE = {"min_face_size": MIN_FACE, "stride": 8, "levels_per_octave": 5, "positive_iou": 0.8,
             "negative_iou": 0.5, "positive_fraction": 0.05, "max_positives_per_face": 4,
             "negatives_per_image": 80, "bootstrap_depth": 1, "bootstrap_negatives": 64,
             "bootstrap_positives": 2, "hard_samples": "all", "start": "separate"}


def build_model(num_classes, *, backbone, backbone_weights):
    """The face cascade (its 12/24/48 networks are the whole model: ``backbone`` is not used)."""
    if num_classes != 1:
        raise ValueError(f"the face cascade detects one class (faces), got num_classes={num_classes}")
    if backbone_weights is not None:
        raise ValueError("the face cascade has no backbone to load weights into")
    return FaceCascade(
        training=FaceTrainingSpec(
            thresholds=(0.1, 0.003),  # Sec. 4.1: the threshold-control layers after x12 and x12-x24
            loss_weights=(1.0, 1.0, 1.0),  # Eq. 6's lambda_1..3 (not given)
            box_loss_weight=1.0,  # Eq. 1: "We set lambda = 1"
            smooth_l1_beta=1.0,  # Fast R-CNN's smooth L1 [9]
        ),
        dropout=0.25,  # "drop-out before classification or regression layer" (rate not given)
        # thresholds, pyramid filter, crops, budgets: the validated pipeline (see the module docstring), and
        test=VALIDATED_TEST.replace(
            min_face_size=MIN_FACE,
            levels_per_octave=2,  # test pyramid: 2 levels per halving
            pool_size=2,  # Sec. 4.3: response-map max pooling, "k = 2 ... comparative to NMS with threshold 0.5"
            crop_source="pyramid",  # Sec. 6.5: patches from the pyramid level of twice the size, no resizing
            nms_iou_threshold=0.3,
            max_detections=100,
        ),
    )


RECIPES = {
    "wider_face": Recipe(
        name="face_cascade",
        paper=PAPER,
        build_model=build_model,
        **WIDER_FACE,
        # evaluation images: WIDER FACE images are 1024 px wide, kept at their size
        image_size=(768, 1024),
        image_stride=FaceCascade.input_stride,  # an image pyramid: any --image-size
        schedule_unit="epochs",
        batch_size=128,  # samples per step (not given in the paper)
        # Sec. 4.2 "SGD hyper-parameters": 0.001, lowered to 0.0001, momentum 0.9, weight decay 5e-4.
        # kdet.face.recipe counts this schedule in EPOCHS of the mined samples (their number is known only
        # after mining): 8 epochs per training step, the rate / 10 from epoch 6.
        schedule=StepSchedule(base_lr=0.001, reference_batch=128, total_steps=8, boundaries=(6,),
                              decay_factor=0.1, optimizer="sgd", momentum=0.9, weight_decay=5e-4),
        backbone="none",
        flip=True,  # Sec. 4.2: "each sample is horizontally flipped"
        max_boxes=500,  # WIDER FACE has up to ~2,000 faces per image (evaluation)
        val_images=500,
        train=train_face_cascade,
        extra={
            "max_train_images": 2000,  # see the module docstring
            "procedure": PROCEDURE,
            "min_face_size": MIN_FACE,  # evaluation: smaller faces are ignore regions
        },
        # Eight embedded face images: mining, bootstrapping and the four training steps of one epoch each.
        smoke={"train_data": "embedded:faces:train[:8]", "val_data": "embedded:faces:validation[:2]",
               "image_size": (120, 160), "batch_size": 64, "steps": 1, "val_images": 2},  # any size: a pyramid
    ),
}

# The face benchmark's procedure (benchmarks/face_benchmark.py: cascade_joint_from_separate at its defaults).
RECIPES["embedded"] = RECIPES["wider_face"].replace(
    name="face_cascade_embedded",
    paper=PAPER + "; the face benchmark's procedure on the embedded (synthetic) face set",
    train_data="embedded:faces:train[:500]",  # the benchmark's --train-images 500
    val_data="embedded:faces:validation",
    image_size=(480, 640),  # the embedded VGA images at their size, as the benchmark evaluates them
    # the benchmark's optimiser: Adam at 1e-3, constant, E = 2 epochs per step (fresh for every step)
    schedule=StepSchedule(base_lr=1e-3, reference_batch=128, total_steps=2, optimizer="adam", weight_decay=None),
    max_boxes=100,
    val_images=None,
    extra={"max_train_images": None, "procedure": PROCEDURE, "min_face_size": MIN_FACE},
)

# The joint network from MTCNN's published stages (the paper's start, with real-face stages), on WIDER FACE.
RECIPES["mtcnn"] = RECIPES["wider_face"].replace(
    name="face_cascade_mtcnn",
    paper=PAPER + "; the joint network initialised from MTCNN's published P-, R- and O-Net",
    extra={**RECIPES["wider_face"].extra, "procedure": {**PROCEDURE, "start": "mtcnn"}},
)

if __name__ == "__main__":
    raise SystemExit(recipe_main(RECIPES))
