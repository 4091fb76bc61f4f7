"""The jointly trained 12/24/48 face cascade ("FaceCraft", Qin et al. Sec. 4).

Training (Fig. 1): one network on 48x48 samples. Branch x12 sees the sample
average-pooled to 12x12, x12-x24 sees it pooled to 24x24 and concatenates
x12's feature, x12-x24-x48 sees it whole and concatenates x12-x24's feature.
Threshold-control layers pass to x12-x24's loss only the samples whose x12
face probability is at least ``thresholds[0]`` (0.1), and to
x12-x24-x48's loss only those that also reach ``thresholds[1]`` (0.003)
at x12-x24. The joint loss is Eq. 6, ``sum_k lambda_k L_k``, each ``L_k``
Eq. 1: softmax log loss + ``box_loss_weight`` * smooth-L1 on the faces'
normalised offsets, both averaged over the samples that reach the branch.

``train_branches`` makes the same model the paper's greedy baseline: with
``("x12",)`` only x12 learns; then, its weights copied in,
``("x24",)`` trains x12-x24 with x12 frozen on x12's survivors; then
``("x48",)``. Joint training is all three (and may start from the greedy
weights, as the paper does).

Inference (Sec. 4.3, 6.5), all tensors, no per-box Python: an image
pyramid from ``min_face_size``; x12 over every level; response-map max
pooling (``pool_size``) instead of NMS; the best ``stage1_max_boxes``
windows over all levels; each squared and cropped to 24x24 (from the
pyramid level closest to that size, or from the image); x12-x24 scores and
regresses them; the best ``stage2_max_boxes`` are cropped at 48x48 for
x12-x24-x48; a final NMS. Scores are the last branch's face probability.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from kdet import boxes as box_ops
from kdet import losses
from kdet.detectors.base import Detector
from kdet.face import stages
from kdet.face import mtcnn
from kdet.face.nets import Face12Net, Face24Net, Face48Net, ThresholdControl
from kdet.face.specs import FLAT_CONFIG_KEYS, FaceTestSpec, FaceTrainingSpec
from kdet.face.stages import BRANCHES
from kdet.specs import coerce

TRAINING = FaceTrainingSpec()
TEST = FaceTestSpec()
#: compute_dtype -> the branches' Keras dtype policy (variables float32 in both).
COMPUTE_DTYPES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
#: ImageNet RGB mean and a common scale: "patches are mean removed" (Sec. 4.2).
PIXEL_MEAN = (123.68, 116.78, 103.94)
PIXEL_SCALE = 1.0 / 64.0
#: The branch architectures: "qin" (the paper's, :mod:`kdet.face.nets`) or "mtcnn" (P-, R-, O-Net,
#: :mod:`kdet.face.mtcnn`), with each one's input normalisation (mean, scale) and box parameterisation.
ARCHITECTURES = ("qin", "mtcnn")
PIXEL_NORMALIZATION = {"qin": (PIXEL_MEAN, PIXEL_SCALE), "mtcnn": (mtcnn.PIXEL_MEAN, mtcnn.PIXEL_SCALE)}
#: The test pipeline chosen on the embedded face set's validation split (``benchmarks/face_speed_sweep.py``
#: and ``face_speed_profile.py``; the numbers are in docs/benchmarks.md): the face recipes and the face
#: benchmark test with it.
VALIDATED_TEST_SETTINGS = {"thresholds": (0.01, 0.05, 0.5), "pyramid": "area", "crop_method": "nearest",
                           "stage1_max_boxes": 160, "stage1_nms_iou": 0.7, "stage2_max_boxes": 32,
                           "stage2_nms_iou": 0.7}
#: The default test pipeline with :data:`VALIDATED_TEST_SETTINGS`.
VALIDATED_TEST = TEST.replace(**VALIDATED_TEST_SETTINGS)


def _check_arguments(train_branches, use_gather: bool, compute_dtype: str, architecture: str, x24_trunk: str
                     ) -> None:
    """Raises ValueError naming the first FaceCascade argument that is out of range."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if architecture == "mtcnn" and x24_trunk != "li":
        raise ValueError(f"x24_trunk={x24_trunk!r} chooses a trunk of the 'qin' branches; architecture='mtcnn' "
                         "has R-Net's")
    unknown = set(train_branches) - set(BRANCHES)
    if unknown or not train_branches:
        raise ValueError(f"train_branches must be a non-empty subset of {BRANCHES}, got {train_branches!r}")
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {tuple(COMPUTE_DTYPES)}, got {compute_dtype!r}")
    if use_gather and compute_dtype != "float32":
        raise ValueError("use_gather=True (the TFLite twin) computes float32: pass compute_dtype='float32'")


@keras.saving.register_keras_serializable(package="kdet")
class FaceCascade(Detector):
    """The 12/24/48 face cascade as one Keras model.

    Args:
      training: the joint loss, a :class:`~kdet.face.specs.FaceTrainingSpec`
        or a dict of the fields to change (threshold controls, Eq. 6's
        weights, Eq. 1's box weight and smooth-L1, the offsets' statistics).
      dropout: rate before every classification / regression layer.
      train_branches: branches whose weights learn and whose losses count.
      test: the test pipeline, a :class:`~kdet.face.specs.FaceTestSpec` or a
        dict of the fields to change (pyramid, per-stage thresholds and
        budgets, crops, final NMS, ``max_detections``).
      use_gather: build the pyramid and crop the patches with gathers and
        arithmetic (:func:`kdet.face.pyramid.resize_level_gather`,
        :func:`kdet.face.pyramid.gather_crops`) instead of ``tf.image``
        resize / ``crop_and_resize``: the same values to float rounding,
        and TFLite builtins only (what :mod:`kdet.serving.tflite` converts),
        bilinear or nearest crops alike.
      compute_dtype: "float32", or "bfloat16" to run the three branches'
        convolutions and fully-connected layers in bfloat16 (Keras
        ``mixed_bfloat16``: the weights stay float32, the output layers,
        box and score arithmetic float32). A test-time switch for CPUs with
        bfloat16 units (AVX512-BF16 / AMX; oneDNN): faster branches there,
        slower where bfloat16 is emulated (timings: docs/benchmarks.md);
        train in float32.
        Not with ``use_gather`` (TFLite export computes float32).
      static_budgets: run x12-x24 and x12-x24-x48 on every box of the
        previous stage's fixed budget (``stage1_max_boxes``,
        ``stage2_max_boxes``), masking the boxes already rejected, instead
        of gathering the survivors into a batch of data-dependent size. The
        same detections (:func:`kdet.face.stages.refine`), and every tensor
        shape static, as a mobile GPU delegate needs (``kdet export
        --static-shapes``). On a CPU the survivors' form is faster (TF and
        TFLite's XNNPack alike: docs/benchmarks.md), so it is the default.
      x24_trunk: x12-x24's conv trunk, "li" (Li et al.'s 24-net), "li32"
        (it with 32 filters) or "rnet" (MTCNN's R-net trunk), both cheaper
        per patch (docs/benchmarks.md), see
        :data:`kdet.face.nets.X24_TRUNKS`. Changes the weights: train with it.
      architecture: "qin" (the paper's branches, :mod:`kdet.face.nets`) or
        "mtcnn" (MTCNN's P-, R- and O-Net with their ``(x - 127.5) / 128``
        input and corner box offsets, :mod:`kdet.face.mtcnn`; O-Net adds
        five landmarks). :func:`kdet.face.from_mtcnn` builds one with
        MTCNN's published weights.
    """

    default_evaluation = "face"
    default_class_names = ("face",)
    export_switches = {"use_gather": True}  # pyramid and crops by gathers: TFLite builtins
    static_shape_switches = {"static_budgets": True}  # later stages on their whole budgets
    input_stride = 1  # an image pyramid: any input size
    flat_config_keys = FLAT_CONFIG_KEYS

    def __init__(
        self,
        *,
        training: FaceTrainingSpec | Mapping = TRAINING,
        dropout: float = 0.25,
        train_branches: Sequence[str] = BRANCHES,
        test: FaceTestSpec | Mapping = TEST,
        use_gather: bool = False,
        static_budgets: bool = False,
        compute_dtype: str = "float32",
        x24_trunk: str = "li",
        architecture: str = "qin",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.training_spec = coerce(training, TRAINING, "training")
        self.test_spec = coerce(test, TEST, "test")
        train_branches = tuple(train_branches)
        _check_arguments(train_branches, use_gather, compute_dtype, architecture, x24_trunk)
        self.use_gather = bool(use_gather)
        self.static_budgets = bool(static_budgets)
        self.architecture = architecture
        self._set_arguments(training=self.training_spec, dropout=dropout, train_branches=train_branches,
                            test=self.test_spec, use_gather=self.use_gather, static_budgets=self.static_budgets,
                            compute_dtype=compute_dtype, x24_trunk=x24_trunk, architecture=architecture)
        # Keras gives a layer's sublayers the global dtype policy, not the layer's own: set it while the
        # branches are built (the output layers are float32 whatever it is, see kdet.face.nets).
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(COMPUTE_DTYPES[compute_dtype])
        try:
            if architecture == "mtcnn":
                self.x12 = mtcnn.PNetBranch(dropout=dropout, name="x12")
                self.x24 = mtcnn.RNetBranch(dropout=dropout, name="x24")
                self.x48 = mtcnn.ONetBranch(dropout=dropout, name="x48")
            else:
                self.x12 = Face12Net(dropout=dropout, name="x12")
                self.x24 = Face24Net(dropout=dropout, trunk=x24_trunk, name="x24")
                self.x48 = Face48Net(dropout=dropout, name="x48")
        finally:
            keras.config.set_dtype_policy(previous)
        self.control24 = ThresholdControl(threshold=self.training_spec.thresholds[0], name="threshold_control_24")
        self.control48 = ThresholdControl(threshold=self.training_spec.thresholds[1], name="threshold_control_48")
        for name in BRANCHES:
            getattr(self, name).trainable = name in train_branches
        # x12's windows: their top-left corner and box coder; the later branches' box coder; how patches
        # sample their box (pixel centres, or MTCNN's corners). MTCNN's conventions are its package's.
        if architecture == "mtcnn":
            self.window_start, self.window_coder = 1.0, box_ops.CornerCoder()
            self.box_coder, self.crop_convention = box_ops.CornerCoder(size_offset=1.0), "corners"
        else:
            self.window_start, self.window_coder = 0.0, box_ops.BoxCoder()
            self.box_coder, self.crop_convention = self.window_coder, "centres"
        self.pixel_mean, self.pixel_scale = PIXEL_NORMALIZATION[architecture]
        self.trackers = {f"{b}_{t}": keras.metrics.Mean(name=f"{b}_{t}")
                         for b in BRANCHES for t in ("cls_loss", "box_loss", "samples")}

    def build(self, input_shape=None):
        if self.built:
            return
        f12 = self.x12.feature_size
        for branch, shape in ((self.x12, (None, 12, 12, 3)), (self.x24, ((None, 24, 24, 3), (None, f12))),
                              (self.x48, ((None, 48, 48, 3), (None, f12 + self.x24.units)))):
            if not branch.built:  # detect() may have built some already
                branch.build(shape)
        self.built = True

    # ----------------------------------------------------------------- network
    def preprocess(self, images: tf.Tensor) -> tf.Tensor:
        """uint8 / float RGB in [0, 255] ``[..., 3]`` -> mean-removed, scaled float32.

        ``(x - mean) * scale`` with the architecture's :data:`PIXEL_NORMALIZATION`.
        Rank-4 images go through one 1x1 convolution with a bias (``x *
        scale - mean * scale`` per channel): on a CPU faster than the
        broadcast subtract and multiply (docs/benchmarks.md), the same values
        to float rounding.
        """
        mean, scale = self.pixel_mean, self.pixel_scale
        x = tf.cast(images, tf.float32)
        if x.shape.rank != 4:
            return (x - tf.constant(mean)) * scale
        kernel = tf.constant(np.diag([scale] * 3).reshape(1, 1, 3, 3), tf.float32)
        bias = tf.constant([-m * scale for m in mean], tf.float32)
        return tf.nn.bias_add(tf.nn.conv2d(x, kernel, 1, "VALID"), bias)

    def _training(self, name: str, training) -> bool:
        return bool(training) and name in self._config["train_branches"]

    def branches(self, patches48: tf.Tensor, *, training=False, depth: int = 3) -> dict[str, tf.Tensor]:
        """All branch outputs on preprocessed 48x48 patches (or 24x24 for ``depth=2``, 12x12 for 1).

        Returns ``{"x12_logits": [N, 2], "x12_offsets": [N, 4], ...}`` up to
        ``depth`` branches, plus each branch's ``*_feature``.
        """
        size = {1: 12, 2: 24, 3: 48}[depth]
        pool = lambda x, factor: x if factor == 1 else tf.nn.avg_pool2d(x, factor, factor, "VALID")  # noqa: E731
        o12 = self.x12(pool(patches48, size // 12), training=self._training("x12", training))
        o12 = {k: tf.reshape(v, [-1, v.shape[-1]]) for k, v in o12.items()}
        out = {f"x12_{k}": v for k, v in o12.items()}
        if depth >= 2:
            o24 = self.x24((pool(patches48, size // 24), o12["feature"]), training=self._training("x24", training))
            out.update({f"x24_{k}": v for k, v in o24.items()})
        if depth >= 3:
            o48 = self.x48((patches48, out["x24_feature"]), training=self._training("x48", training))
            out.update({f"x48_{k}": v for k, v in o48.items()})
        return out

    def call(self, patches, training=False):
        """Training forward pass on ``[N, 48, 48, 3]`` samples in [0, 255]."""
        return self.branches(self.preprocess(patches), training=training)

    # ----------------------------------------------------------------- training
    def regression_targets(self, offsets: tf.Tensor) -> tf.Tensor:
        """Mining's Eq. 2-5 offsets of a face in its sample ``[N, 4]`` -> this architecture's box codes.

        The same face: decoded in the unit box, encoded by :attr:`box_coder`
        (MTCNN's corner shifts for ``architecture="mtcnn"``, unchanged otherwise).
        """
        if self.architecture == "qin":
            return tf.cast(offsets, tf.float32)
        unit = tf.constant([0.0, 0.0, 1.0, 1.0])
        return self.box_coder.encode(box_ops.BoxCoder().decode(tf.cast(offsets, tf.float32), unit), unit)

    def normalize_offsets(self, offsets: tf.Tensor) -> tf.Tensor:
        spec = self.training_spec
        return (tf.cast(offsets, tf.float32) - tf.constant(spec.offset_mean)) / tf.constant(spec.offset_std)

    def denormalize_offsets(self, offsets: tf.Tensor) -> tf.Tensor:
        spec = self.training_spec
        return tf.cast(offsets, tf.float32) * tf.constant(spec.offset_std) + tf.constant(spec.offset_mean)

    def branch_masks(self, outputs: dict, labels: tf.Tensor, later_only: tf.Tensor | None = None
                     ) -> dict[str, tf.Tensor]:
        """Which samples each branch's loss sees: valid for x12, then the threshold controls.

        ``later_only`` ``[N]`` bool marks samples that x12's own loss skips
        (bootstrapped hard samples, :func:`kdet.face.procedures.bootstrap_samples`);
        they still pass x12's threshold control to the later branches.
        """
        valid = tf.cast(labels >= 0, tf.float32)
        m24 = self.control24(outputs["x12_logits"], valid)
        m48 = self.control48(outputs["x24_logits"], m24)
        m12 = valid if later_only is None else valid * (1.0 - tf.cast(later_only, tf.float32))
        return {"x12": m12, "x24": m24, "x48": m48}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Eq. 6 over the branches in ``train_branches``; every term logged.

        ``y`` is ``{"labels": [N] (1 face, 0 non-face, -1 unused), "offsets":
        [N, 4] raw}``, optionally ``"later_only": [N]`` bool (see
        :meth:`branch_masks`). Each branch's terms are averaged over the samples that
        reach it (over all replicas); the returned loss is scaled by
        ``1 / num_replicas`` like every kdet detector's.
        """
        del sample_weight, training
        if y is None:
            raise ValueError("FaceCascade.compute_loss needs targets: fit on (patches, {'labels', 'offsets'}) pairs")
        spec, train_branches = self.training_spec, self._config["train_branches"]
        labels = tf.cast(y["labels"], tf.int32)
        targets = self.normalize_offsets(self.regression_targets(y["offsets"]))
        masks = self.branch_masks(y_pred, labels, y.get("later_only"))
        positive = tf.cast(labels == 1, tf.float32)
        total = 0.0
        for k, name in enumerate(BRANCHES):
            mask = masks[name]
            count = tf.maximum(losses.replica_mean(tf.reduce_sum(mask)), 1.0)
            cls = losses.softmax_cross_entropy(tf.maximum(labels, 0), y_pred[f"{name}_logits"], mask) / count
            box = spec.box_loss_weight * losses.smooth_l1(
                targets, y_pred[f"{name}_offsets"], mask * positive, beta=spec.smooth_l1_beta) / count
            batch = tf.shape(labels)[0]
            self.trackers[f"{name}_cls_loss"].update_state(cls, sample_weight=batch)
            self.trackers[f"{name}_box_loss"].update_state(box, sample_weight=batch)
            self.trackers[f"{name}_samples"].update_state(tf.reduce_sum(mask), sample_weight=1)
            if name in train_branches:
                total += spec.loss_weights[k] * (cls + box)
        return losses.scale_for_replicas(total)

    # ---------------------------------------------------------------- inference
    def patch_samples(self, depth: int) -> int:
        """Rows (and columns) of a ``depth`` patch (24 or 48 pixels) that :meth:`branches` reads.

        Every branch sees the patch average-pooled to its own size and reads
        only its top-left ``input_extent`` (:func:`kdet.face.nets.trunk_extent`):
        23 of x12-x24's 24 and 46 of x12-x24-x48's 48 (x12-x24 needs 23 of
        the 24 it pools the 48 to); the test pipeline crops only these.
        """
        size = {1: 12, 2: 24, 3: 48}[depth]
        branches = (self.x12, self.x24, self.x48)[:depth]
        return max(branch.input_extent * (size // side) for branch, side in zip(branches, (12, 24, 48)))

    def detect_clean(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Detects faces in finite ``[B, H, W, 3]`` images in [0, 255] (static H, W; ``detect`` guards the input).

        Returns the output contract with boxes in pixels of ``images``.
        """
        for _, outputs in stages.detect_steps(self, images):
            pass
        return outputs

    def candidates_clean(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """x12-x24-x48's boxes before the final NMS: ``{"boxes" [B, K, 4], "scores" [B, K]}`` (``keypoints`` too).

        ``K`` = ``stage2_max_boxes``; boxes clipped to the image; score 0 on
        boxes a stage rejected. See :meth:`final_nms_settings`.
        """
        image_size = (int(images.shape[1]), int(images.shape[2]))
        for step, outputs in stages.detect_steps(self, images):
            if step == "x48":
                return {**outputs, "boxes": box_ops.clip_boxes(outputs["boxes"], image_size)}
        # smaller than one window: no candidates, the same outputs
        k = self.test_spec.stage2_max_boxes
        return {key: tf.zeros(tf.concat([tf.shape(images)[:1], [k], tf.shape(value)[2:]], axis=0))
                for key, value in outputs.items() if key in ("boxes", "scores", "keypoints")}

    def final_nms_settings(self) -> dict:
        """Greedy NMS at ``iou_threshold`` over the candidates scoring above 0, best first, then (if set) drop
        a detection that a higher-scored one covers by more than ``containment_threshold`` of the smaller box;
        keep ``max_detections``."""
        test = self.test_spec
        return {"iou_threshold": test.nms_iou_threshold, "containment_threshold": test.containment_threshold,
                "max_detections": test.max_detections}
