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

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from kdet import boxes as box_ops
from kdet import losses, postprocess
from kdet.detectors.base import Detector
from kdet.face_pyramid import (
    PYRAMID_METHODS,
    best_levels,
    block_cells,
    block_maxima_values,
    block_winners,
    build_pyramid,
    crop_boxes_for,
    gather_crops,
    level_crop_boxes,
    pyramid_scales,
    square_boxes,
    window_boxes,
)
from kdet.heads.face import Face12Net, Face24Net, Face48Net, ThresholdControl

BRANCHES = ("x12", "x24", "x48")
CROP_SOURCES = ("pyramid", "image")
#: compute_dtype -> the branches' Keras dtype policy (variables float32 in both).
COMPUTE_DTYPES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
#: ImageNet RGB mean and a common scale: "patches are mean removed" (Sec. 4.2).
PIXEL_MEAN = (123.68, 116.78, 103.94)
PIXEL_SCALE = 1.0 / 64.0
#: The later stages run on their survivors padded to a multiple of this. Their cost is linear in the
#: batch (x12-x24-x48: ~0.3 ms a patch on one core), and the CPU kernels set themselves up once per batch
#: size (1.5-3 ms, then cached): 4 pads ~2 patches on average (x12-x24-x48 sees 30-40 survivors a VGA
#: frame), with at most 12 batch sizes under a budget of 48, all met within a few frames of a video; 8 was
#: ~3% slower a VGA frame on one core.
PATCH_BATCH_MULTIPLE = 4
#: With ``stage1_nms_iou``, x12's NMS sees its best ``STAGE1_NMS_CANDIDATES * stage1_max_boxes`` windows
#: above the threshold (the same budget as NMS over all of them unless it suppressed more than 7 in 8).
STAGE1_NMS_CANDIDATES = 8


@keras.saving.register_keras_serializable(package="kdet")
class FaceCascade(Detector):
    """The 12/24/48 face cascade as one Keras model.

    Args:
      thresholds: threshold-control values after x12 and x12-x24 (training).
      loss_weights: Eq. 6's ``(lambda_1, lambda_2, lambda_3)``.
      box_loss_weight: Eq. 1's ``lambda``.
      smooth_l1_beta: smooth-L1's quadratic zone (1 as in Fast R-CNN).
      offset_mean: per-coordinate mean of the raw offsets (``ty, tx, th, tw``).
      offset_std: their standard deviation; see
        :func:`kdet.data.face_mining.offset_statistics`.
      dropout: rate before every classification / regression layer.
      train_branches: branches whose weights learn and whose losses count.
      min_face_size: smallest face found at test, pixels.
      levels_per_octave: test pyramid levels per halving (2 ~ factor 0.71).
      pyramid: how the test pyramid is built, see
        :func:`kdet.face_pyramid.build_pyramid`: "antialias" (every level
        an antialiased resize, as training-sample mining builds it),
        "octave" (a level half the size of the one an octave up is its 2x2
        average: ~1 ms less at VGA, the same recall on the embedded set) or
        "area" (box-filtered levels: ~4 ms less than "antialias" at VGA on
        one core, +0.7 recall on the embedded validation split).
      test_thresholds: face probability kept after x12, x12-x24, x12-x24-x48.
        The first two default to the training threshold controls: trained
        at 5% positives, the early branches give faces probabilities well
        below 0.5 (on the embedded set x12 averages ~0.3 on test faces), so
        MTCNN-like 0.5-0.7 thresholds lose most faces. Raise them for speed.
      pool_size: response-map max pooling block (1 disables it).
      stage1_max_boxes: windows passed from x12 to x12-x24, per image.
      stage2_max_boxes: boxes passed from x12-x24 to x12-x24-x48, per image.
      stage1_nms_iou: greedy NMS at this IoU over x12's windows of all
        levels before the ``stage1_max_boxes`` budget (None: the best by
        score, response-map pooling being the only suppression, Sec. 4.3).
      stage2_nms_iou: the same over x12-x24's regressed boxes before the
        ``stage2_max_boxes`` budget (MTCNN suppresses after every stage).
      crop_source: "pyramid" crops later patches from the pyramid level
        closest to the patch size (Sec. 6.5), "image" from the image.
      crop_method: "bilinear" or "nearest" (nearest from the pyramid is the
        paper's no-resize crop).
      nms_iou_threshold: the final NMS.
      max_detections: K of the output contract.
      use_gather: build the pyramid and crop the patches with gathers and
        arithmetic (:func:`kdet.face_pyramid.resize_level_gather`,
        :func:`kdet.face_pyramid.gather_crops`) instead of ``tf.image``
        resize / ``crop_and_resize``: the same values to float rounding,
        and TFLite builtins only (what :mod:`kdet.tflite` converts).
        Bilinear crops only.
      compute_dtype: "float32", or "bfloat16" to run the three branches'
        convolutions and fully-connected layers in bfloat16 (Keras
        ``mixed_bfloat16``: the weights stay float32, the output layers,
        box and score arithmetic float32). A test-time switch for CPUs with
        bfloat16 units (AVX512-BF16 / AMX; oneDNN): about 1.5x faster
        branches there, slower where bfloat16 is emulated; train in float32.
        Not with ``use_gather`` (TFLite export computes float32).
      x24_trunk: x12-x24's conv trunk, "li" (Li et al.'s 24-net), "li32"
        (it with 32 filters, ~0.6x the time per patch) or "rnet" (MTCNN's
        R-net trunk, ~0.55x), see
        :data:`kdet.heads.face.X24_TRUNKS`. Changes the weights: train with it.
    """

    default_evaluation = "face"
    default_class_names = ("face",)
    export_switches = {"use_gather": True}  # pyramid and crops by gathers: TFLite builtins

    def __init__(
        self,
        *,
        thresholds: Sequence[float] = (0.1, 0.003),
        loss_weights: Sequence[float] = (1.0, 1.0, 1.0),
        box_loss_weight: float = 1.0,
        smooth_l1_beta: float = 1.0,
        offset_mean: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        offset_std: Sequence[float] = (0.1, 0.1, 0.1, 0.1),
        dropout: float = 0.25,
        train_branches: Sequence[str] = BRANCHES,
        min_face_size: float = 20.0,
        levels_per_octave: int = 2,
        pyramid: str = "antialias",
        test_thresholds: Sequence[float] = (0.1, 0.003, 0.7),
        pool_size: int = 2,
        stage1_max_boxes: int = 300,
        stage2_max_boxes: int = 60,
        stage1_nms_iou: float | None = None,
        stage2_nms_iou: float | None = None,
        crop_source: str = "pyramid",
        crop_method: str = "bilinear",
        nms_iou_threshold: float = 0.3,
        max_detections: int = 100,
        use_gather: bool = False,
        compute_dtype: str = "float32",
        x24_trunk: str = "li",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._config = {k: v for k, v in locals().items() if k not in ("self", "kwargs", "__class__")}
        unknown = set(train_branches) - set(BRANCHES)
        if unknown or not train_branches:
            raise ValueError(f"train_branches must be a non-empty subset of {BRANCHES}, got {train_branches!r}")
        if crop_source not in CROP_SOURCES:
            raise ValueError(f"crop_source must be one of {CROP_SOURCES}, got {crop_source!r}")
        if crop_method not in ("bilinear", "nearest"):
            raise ValueError(f"crop_method must be 'bilinear' or 'nearest', got {crop_method!r}")
        if use_gather and crop_method != "bilinear":
            raise ValueError("use_gather=True crops bilinearly only: pass crop_method='bilinear'")
        if pyramid not in PYRAMID_METHODS:
            raise ValueError(f"pyramid must be one of {PYRAMID_METHODS}, got {pyramid!r}")
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {tuple(COMPUTE_DTYPES)}, got {compute_dtype!r}")
        if use_gather and compute_dtype != "float32":
            raise ValueError("use_gather=True (the TFLite twin) computes float32: pass compute_dtype='float32'")
        for name, value, size in (("thresholds", thresholds, 2), ("loss_weights", loss_weights, 3),
                                  ("test_thresholds", test_thresholds, 3), ("offset_mean", offset_mean, 4),
                                  ("offset_std", offset_std, 4)):
            if len(value) != size:
                raise ValueError(f"{name} needs {size} values, got {list(value)}")
        # Keras gives a layer's sublayers the global dtype policy, not the layer's own: set it while the
        # branches are built (the output layers are float32 whatever it is, see kdet.heads.face).
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(COMPUTE_DTYPES[compute_dtype])
        try:
            self.x12 = Face12Net(dropout=dropout, name="x12")
            self.x24 = Face24Net(dropout=dropout, trunk=x24_trunk, name="x24")
            self.x48 = Face48Net(dropout=dropout, name="x48")
        finally:
            keras.config.set_dtype_policy(previous)
        self.control24 = ThresholdControl(threshold=thresholds[0], name="threshold_control_24")
        self.control48 = ThresholdControl(threshold=thresholds[1], name="threshold_control_48")
        for name in BRANCHES:
            getattr(self, name).trainable = name in train_branches
        self.box_coder = box_ops.BoxCoder()
        self.trackers = {f"{b}_{t}": keras.metrics.Mean(name=f"{b}_{t}")
                         for b in BRANCHES for t in ("cls_loss", "box_loss", "samples")}

    def build(self, input_shape=None):
        if self.built:
            return
        for branch, shape in ((self.x12, (None, 12, 12, 3)), (self.x24, ((None, 24, 24, 3), (None, 16))),
                              (self.x48, ((None, 48, 48, 3), (None, 144)))):
            if not branch.built:  # detect() may have built some already
                branch.build(shape)
        self.built = True

    # ----------------------------------------------------------------- network
    @staticmethod
    def preprocess(images: tf.Tensor) -> tf.Tensor:
        """uint8 / float RGB in [0, 255] ``[..., 3]`` -> mean-removed, scaled float32.

        Rank-4 images go through one 1x1 convolution with a bias (``x *
        PIXEL_SCALE - PIXEL_MEAN * PIXEL_SCALE`` per channel): on one CPU core
        ~3x faster than the broadcast subtract and multiply at VGA (~1.5 ms
        against ~4), the same values to float rounding.
        """
        x = tf.cast(images, tf.float32)
        if x.shape.rank != 4:
            return (x - tf.constant(PIXEL_MEAN)) * PIXEL_SCALE
        kernel = tf.constant(np.diag([PIXEL_SCALE] * 3).reshape(1, 1, 3, 3), tf.float32)
        bias = tf.constant([-m * PIXEL_SCALE for m in PIXEL_MEAN], tf.float32)
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
    def normalize_offsets(self, offsets: tf.Tensor) -> tf.Tensor:
        return (tf.cast(offsets, tf.float32) - tf.constant(self._config["offset_mean"], tf.float32)) / tf.constant(
            self._config["offset_std"], tf.float32)

    def denormalize_offsets(self, offsets: tf.Tensor) -> tf.Tensor:
        return tf.cast(offsets, tf.float32) * tf.constant(self._config["offset_std"], tf.float32) + tf.constant(
            self._config["offset_mean"], tf.float32)

    def branch_masks(self, outputs: dict, labels: tf.Tensor, later_only: tf.Tensor | None = None
                     ) -> dict[str, tf.Tensor]:
        """Which samples each branch's loss sees: valid for x12, then the threshold controls.

        ``later_only`` ``[N]`` bool marks samples that x12's own loss skips
        (bootstrapped hard samples, :func:`kdet.face_training.bootstrap_samples`);
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
        cfg = self._config
        labels = tf.cast(y["labels"], tf.int32)
        targets = self.normalize_offsets(y["offsets"])
        masks = self.branch_masks(y_pred, labels, y.get("later_only"))
        positive = tf.cast(labels == 1, tf.float32)
        total = 0.0
        for k, name in enumerate(BRANCHES):
            mask = masks[name]
            count = tf.maximum(losses.replica_mean(tf.reduce_sum(mask)), 1.0)
            cls = losses.softmax_cross_entropy(tf.maximum(labels, 0), y_pred[f"{name}_logits"], mask) / count
            box = cfg["box_loss_weight"] * losses.smooth_l1(
                targets, y_pred[f"{name}_offsets"], mask * positive, beta=cfg["smooth_l1_beta"]) / count
            batch = tf.shape(labels)[0]
            self.trackers[f"{name}_cls_loss"].update_state(cls, sample_weight=batch)
            self.trackers[f"{name}_box_loss"].update_state(box, sample_weight=batch)
            self.trackers[f"{name}_samples"].update_state(tf.reduce_sum(mask), sample_weight=1)
            if name in cfg["train_branches"]:
                total += cfg["loss_weights"][k] * (cls + box)
        return losses.scale_for_replicas(total)

    # ---------------------------------------------------------------- inference
    def patch_samples(self, depth: int) -> int:
        """Rows (and columns) of a ``depth`` patch (24 or 48 pixels) that :meth:`branches` reads.

        Every branch sees the patch average-pooled to its own size and reads
        only its top-left ``input_extent`` (:func:`kdet.heads.face.trunk_extent`):
        23 of x12-x24's 24 and 46 of x12-x24-x48's 48 (x12-x24 needs 23 of
        the 24 it pools the 48 to); the test pipeline crops only these.
        """
        size = {1: 12, 2: 24, 3: 48}[depth]
        branches = (self.x12, self.x24, self.x48)[:depth]
        return max(branch.input_extent * (size // side) for branch, side in zip(branches, (12, 24, 48)))

    def crop_patches(self, levels, level_scales, boxes, box_index, image_size, crop: int,
                     samples: int | None = None) -> tf.Tensor:
        """``[n, crop, crop, 3]`` patches of ``boxes [n, 4]`` (image pixels) of images ``box_index [n]``.

        With ``samples``, only the first ``samples`` rows and columns of
        each (``[n, samples, samples, 3]``, see :func:`kdet.face_pyramid.crop_boxes_for`).

        Each box is cut from one source: the level of ``levels`` (scales
        ``level_scales``, decreasing, the image first at 1.0) where it is
        smallest but still at least ``crop`` pixels (Sec. 6.5), so the
        resampling never shrinks by more than one pyramid step. The crop
        boxes of all boxes are computed at once from a table of the levels'
        (static) sizes, then partitioned by level: one ``crop_and_resize``
        per level on its own boxes only (per-level box arithmetic was ~550
        small ops a VGA frame, ~4% of its time on one core).
        """
        method = self._config["crop_method"]
        side = crop if samples is None else samples
        if self._config["use_gather"]:
            return gather_crops(levels, level_scales, boxes, box_index, image_size=image_size, crop=crop,
                                samples=samples)
        if len(levels) == 1:
            return tf.image.crop_and_resize(
                levels[0], crop_boxes_for(boxes, image_size=image_size, crop=crop, samples=samples),
                box_index, (side, side), method)
        chosen = best_levels(boxes, level_scales, crop=crop)
        sizes = [(int(level.shape[1]), int(level.shape[2])) for level in levels]  # static
        crop_boxes = level_crop_boxes(boxes, chosen, sizes, image_size=image_size, crop=crop, samples=samples)
        count = len(levels)
        positions = tf.dynamic_partition(tf.range(tf.shape(boxes)[0]), chosen, count)
        level_boxes = tf.dynamic_partition(crop_boxes, chosen, count)
        level_index = tf.dynamic_partition(box_index, chosen, count)
        parts = [tf.image.crop_and_resize(level, b, i, (side, side), method)
                 for level, b, i in zip(levels, level_boxes, level_index)]
        return tf.dynamic_stitch(positions, parts)

    def test_scales(self, image_size) -> list[float]:
        """The test pyramid's scales for ``(height, width)`` images (empty: smaller than one window)."""
        return pyramid_scales(image_size, min_face_size=self._config["min_face_size"], window=12,
                              levels_per_octave=self._config["levels_per_octave"])

    def crop_sources(self, x, levels, scales):
        """``(maps, their scales)`` the later stages crop from: the image, and the levels below it (Sec. 6.5)."""
        if self._config["crop_source"] == "pyramid" and scales[0] < 1.0:
            return [x] + list(levels), [1.0] + list(scales)
        return [x], [1.0]

    def _stage1(self, levels, image_size, *, threshold: float, keep: int):
        """x12 over every level: the best ``keep`` windows scoring at least ``threshold``.

        Returns ``(scores [B, K], boxes [B, K, 4])``, ``K = min(keep,
        blocks)``, best first; scores below ``threshold`` are 0 (padding).
        Response-map max pooling (Sec. 4.3) leaves one window per ``k x k``
        block, so the budget is taken over the blocks' maxima
        (:func:`kdet.face_pyramid.block_maxima_values`), and only the ``K``
        blocks chosen are resolved to their winning window (the first
        maximum in row-major order, :func:`kdet.face_pyramid.response_map_max_pool`'s
        rule), box-regressed and decoded: a VGA frame has ~50,000 windows,
        ~12,500 blocks. TFLite builtins only.
        """
        k = self._config["pool_size"]
        faces, features, anchors, maxima, shapes = [], [], [], [], []
        for level in levels:
            feature = self.x12.trunk(level)
            logits = self.x12.logits(feature)
            # the softmax's face probability, two classes: one op instead of softmax + slice
            face = tf.sigmoid(logits[..., 1] - logits[..., 0])
            h, w = int(face.shape[1]), int(face.shape[2])
            batch = tf.shape(face)[0]
            best = block_maxima_values(face, k)
            maxima.append(tf.reshape(best, [batch, int(best.shape[1]) * int(best.shape[2])]))  # static H, W
            faces.append(tf.reshape(face, [batch, h * w]))
            features.append(tf.reshape(feature, [batch, h * w, feature.shape[-1]]))
            shapes.append((h, w))
            level_hw = level.shape[1:3]
            anchors.append(window_boxes((h, w), stride=2, window=12,
                                        scale_yx=(level_hw[0] / image_size[0], level_hw[1] / image_size[1])))
        maxima = tf.concat(maxima, axis=1)
        top, blocks = tf.math.top_k(tf.where(maxima >= threshold, maxima, 0.0), k=min(keep, int(maxima.shape[1])))
        chosen = block_winners(tf.concat(faces, axis=1), block_cells(shapes, k), blocks)  # [B, K] windows
        feature = tf.gather(tf.concat(features, axis=1), chosen, batch_dims=1)  # [B, K, 16]
        codes = self.denormalize_offsets(self.x12.offsets(feature[:, :, None, :])[:, :, 0, :])
        return top, self.box_coder.decode(codes, tf.gather(tf.concat(anchors, axis=0), chosen))

    def _refine(self, sources, boxes, scores, *, depth: int, threshold: float, image_size):
        """One later stage on the boxes still scored above 0: ``(scores, boxes)``, same shapes.

        Only the survivors are cropped and run (compute follows the
        survivors, not the padded budget); the others keep score 0.
        """
        batch, k = tf.shape(boxes)[0], tf.shape(boxes)[1]
        squares = tf.reshape(square_boxes(boxes), [-1, 4])
        keep = tf.cast(tf.where(tf.reshape(scores, [-1]) > 0)[:, 0], tf.int32)  # int32: TFLite has no int64 FloorDiv
        total = batch * k

        # Pad the survivors to a multiple of PATCH_BATCH_MULTIPLE (at least that) by repeating the first
        # (or row 0): the CPU kernels set themselves up once per batch size (1.5-3 ms, then cached), so
        # a few sizes beat a new one every frame, and TF's CPU Conv2D mishandles an empty batch. No
        # tf.cond: TFLite keeps variables read inside an IF branch as resource variables, not constants.
        count = tf.size(keep)
        multiple = PATCH_BATCH_MULTIPLE
        padded = tf.maximum((count + multiple - 1) // multiple * multiple, multiple)
        rows = tf.concat([keep, tf.fill([padded - count], tf.concat([keep, [0]], axis=0)[0])], axis=0)
        kept = tf.gather(squares, rows)
        crop = {2: 24, 3: 48}[depth]
        patches = self.crop_patches(*sources, kept, rows // k, image_size, crop, self.patch_samples(depth))
        out = self.branches(patches, depth=depth)
        name = BRANCHES[depth - 1]
        probs = tf.nn.softmax(out[f"{name}_logits"], axis=-1)[:, 1]
        refined = self.box_coder.decode(self.denormalize_offsets(out[f"{name}_offsets"]), kept)
        # Padding rows scatter into one extra slot that is then dropped: no tensor is ever empty
        # (TFLite's UNPACK refuses an empty input, so an image without survivors would fail there).
        targets = tf.concat([keep, tf.fill([padded - count], total)], axis=0)[:, None]
        new_scores = tf.scatter_nd(targets, tf.where(probs >= threshold, probs, 0.0), [total + 1])[:total]
        new_boxes = tf.scatter_nd(targets, refined, tf.stack([total + 1, 4]))[:total]
        return tf.reshape(new_scores, [batch, k]), tf.reshape(new_boxes, [batch, k, 4])

    @staticmethod
    def _top(scores, boxes, keep: int):
        top, index = tf.math.top_k(scores, k=tf.minimum(keep, tf.shape(scores)[1]))
        return top, tf.gather(boxes, index, batch_dims=1)

    def _nms_budget(self, scores, boxes, keep: int, iou_threshold: float | None):
        """The best ``keep`` boxes: top-k, or greedy NMS at ``iou_threshold`` (zero scores are padding)."""
        if iou_threshold is None:
            return self._top(scores, boxes, keep)
        out = postprocess.class_aware_nms(boxes, scores, tf.zeros_like(scores, tf.int32),
                                          iou_threshold=iou_threshold, max_detections=keep)
        return out["scores"], out["boxes"]

    def detect_steps(self, images: tf.Tensor):
        """:meth:`detect` one step at a time: yields ``(step, outputs)`` after each.

        Steps ``"pyramid"`` (``{"image": preprocessed, "levels": [...]}``), ``"x12"``, ``"x24"``,
        ``"x48"`` (``{"scores": [B, K], "boxes": [B, K, 4]}``: the boxes
        passed on, score 0 on padding) and ``"nms"`` (the output contract).
        ``detect`` runs them all; a profiler stops early to time a prefix.
        An image smaller than one window at ``min_face_size`` yields only ``"nms"``.
        """
        cfg = self._config
        if images.shape.rank != 4 or images.shape[-1] != 3 or images.shape[1] is None or images.shape[2] is None:
            raise ValueError(f"FaceCascade.detect needs [B, H, W, 3] images with static H, W; got {images.shape}")
        image_size = (int(images.shape[1]), int(images.shape[2]))
        self.build()  # the branches' parts are called one by one below (x12's trunk, then its outputs)
        scales = self.test_scales(image_size)
        if not scales:
            yield "nms", postprocess.empty_detections(tf.shape(images)[0], cfg["max_detections"])
            return
        x = self.preprocess(images)
        levels = build_pyramid(x, scales, use_gather=cfg["use_gather"], method=cfg["pyramid"])
        yield "pyramid", {"image": x, "levels": levels}
        t1, t2, t3 = cfg["test_thresholds"]
        budget, iou = cfg["stage1_max_boxes"], cfg["stage1_nms_iou"]
        scores, boxes = self._stage1(levels, image_size, threshold=t1,
                                     keep=budget if iou is None else STAGE1_NMS_CANDIDATES * budget)
        if iou is not None:  # without it _stage1's top-k already is the budget
            scores, boxes = self._nms_budget(scores, boxes, budget, iou)
        yield "x12", {"scores": scores, "boxes": boxes}
        sources = self.crop_sources(x, levels, scales)
        scores, boxes = self._refine(sources, boxes, scores, depth=2, threshold=t2, image_size=image_size)
        scores, boxes = self._nms_budget(scores, boxes, cfg["stage2_max_boxes"], cfg["stage2_nms_iou"])
        yield "x24", {"scores": scores, "boxes": boxes}
        scores, boxes = self._refine(sources, boxes, scores, depth=3, threshold=t3, image_size=image_size)
        yield "x48", {"scores": scores, "boxes": boxes}
        boxes = box_ops.clip_boxes(boxes, image_size)
        yield "nms", postprocess.class_aware_nms(boxes, scores, tf.zeros_like(scores, tf.int32),
                                                 iou_threshold=cfg["nms_iou_threshold"],
                                                 max_detections=cfg["max_detections"])

    def detect_clean(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Detects faces in finite ``[B, H, W, 3]`` images in [0, 255] (static H, W; ``detect`` guards the input).

        Returns the output contract with boxes in pixels of ``images``.
        """
        for _, outputs in self.detect_steps(images):
            pass
        return outputs
