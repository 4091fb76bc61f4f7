"""The face cascade's test pipeline, stage by stage: the only copy of each step.

Every user of the cascade's stages calls these functions with a built
:class:`~kdet.face.cascade.FaceCascade`: its ``detect``
(:func:`detect_steps`), the three-model TFLite host loop
(:mod:`kdet.face.lite`: :func:`stage1`, :func:`stage_scores`), hard-sample
mining (:func:`window_scorer`) and the speed profilers in ``benchmarks/``
(:func:`detect_steps`, :func:`refine`).

* :func:`stage1`: x12 fully convolutional over the pyramid, response-map max
  pooling (Sec. 4.3), the first threshold and the window budget.
* :func:`refine`: one later branch on the boxes still alive (x12-x24 at 24
  px, x12-x24-x48 at 48 px), cropped from the pyramid (Sec. 6.5).
* :func:`stage_scores`: a branch's face probability (and regressed boxes) on
  patches, what :func:`refine`, the host loop and the mining scorer share.
* :func:`budget`: the best ``keep`` boxes, by score or greedy NMS.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow as tf

from kdet import boxes as box_ops
from kdet import postprocess
from kdet.face.pyramid import (
    best_levels,
    block_cells,
    block_maxima_values,
    block_winners,
    build_pyramid,
    corner_sampled_boxes,
    crop_boxes_for,
    gather_crops,
    level_crop_boxes,
    pyramid_scales,
    square_boxes,
    window_boxes,
)

BRANCHES = ("x12", "x24", "x48")
#: Patch side of each branch depth.
SIDES = {1: 12, 2: 24, 3: 48}
#: The later stages run on their survivors padded to a multiple of this: the CPU kernels set themselves up
#: once per batch size (then cached), so a few sizes beat a new one every frame (timings: docs/benchmarks.md).
PATCH_BATCH_MULTIPLE = 4
#: With ``stage1_nms_iou``, x12's NMS sees its best ``STAGE1_NMS_CANDIDATES * stage1_max_boxes`` windows
#: above the threshold (the same budget as NMS over all of them unless it suppressed more than 7 in 8).
STAGE1_NMS_CANDIDATES = 8


def test_scales(model, image_size) -> list[float]:
    """The test pyramid's scales for ``(height, width)`` images (empty: smaller than one window)."""
    test = model.test_spec
    return pyramid_scales(image_size, min_face_size=test.min_face_size, window=12,
                          levels_per_octave=test.levels_per_octave)


def crop_sources(model, x, levels, scales):
    """``(maps, their scales)`` the later stages crop from: the image, and the levels below it (Sec. 6.5)."""
    if model.test_spec.crop_source == "pyramid" and scales[0] < 1.0:
        return [x] + list(levels), [1.0] + list(scales)
    return [x], [1.0]


def stage_outputs(model, x: tf.Tensor, depth: int, boxes: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    """Branch ``depth`` on preprocessed patches ``x [N, S, S, 3]`` (S = 12, 24, 48).

    Returns ``{"scores": [N]}`` (face probability); with ``boxes [N, 4]``
    (the patches' boxes, pixels) also ``"boxes" [N, 4]``, regressed by the
    branch, and, for a branch with landmarks (MTCNN's O-Net), ``"keypoints"
    [N, 5, 2]`` (y, x pixels).
    """
    out = model.branches(x, depth=depth)
    name = BRANCHES[depth - 1]
    found = {"scores": tf.nn.softmax(out[f"{name}_logits"], axis=-1)[:, 1]}
    if boxes is not None:
        found["boxes"] = model.box_coder.decode(model.denormalize_offsets(out[f"{name}_offsets"]), boxes)
        if f"{name}_landmarks" in out:
            found["keypoints"] = model.box_coder.decode_points(out[f"{name}_landmarks"], boxes)
    return found


def stage_scores(model, x: tf.Tensor, depth: int, boxes: tf.Tensor | None = None):
    """:func:`stage_outputs` as ``(scores [N], regressed boxes [N, 4] or None)``."""
    out = stage_outputs(model, x, depth, boxes)
    return out["scores"], out.get("boxes")


def stage1(model, levels, image_size, *, threshold: float, keep: int):
    """x12 over every level: the best ``keep`` windows scoring at least ``threshold``.

    Returns ``(scores [B, K], boxes [B, K, 4])``, ``K = min(keep, blocks)``,
    best first; scores below ``threshold`` are 0 (padding). Response-map max
    pooling (Sec. 4.3) leaves one window per ``k x k`` block, so the budget
    is taken over the blocks' maxima (:func:`kdet.face.pyramid.block_maxima_values`),
    and only the ``K`` blocks chosen are resolved to their winning window
    (the first maximum in row-major order), box-regressed and decoded.
    TFLite builtins only.
    """
    k = model.test_spec.pool_size
    faces, features, anchors, maxima, shapes = [], [], [], [], []
    for level in levels:
        feature = model.x12.trunk(level)
        logits = model.x12.logits(feature)
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
        anchors.append(window_boxes((h, w), stride=2, window=12, start=model.window_start,
                                    scale_yx=(level_hw[0] / image_size[0], level_hw[1] / image_size[1])))
    maxima = tf.concat(maxima, axis=1)
    top, blocks = tf.math.top_k(tf.where(maxima >= threshold, maxima, 0.0), k=min(keep, int(maxima.shape[1])))
    chosen = block_winners(tf.concat(faces, axis=1), block_cells(shapes, k), blocks)  # [B, K] windows
    feature = tf.gather(tf.concat(features, axis=1), chosen, batch_dims=1)  # [B, K, 16]
    codes = model.denormalize_offsets(model.x12.offsets(feature[:, :, None, :])[:, :, 0, :])
    return top, model.window_coder.decode(codes, tf.gather(tf.concat(anchors, axis=0), chosen))


def crop_patches(model, levels, level_scales, boxes, box_index, image_size, crop: int,
                 samples: int | None = None) -> tf.Tensor:
    """``[n, crop, crop, 3]`` patches of ``boxes [n, 4]`` (image pixels) of images ``box_index [n]``.

    With ``samples``, only the first ``samples`` rows and columns of each
    (``[n, samples, samples, 3]``, see :func:`kdet.face.pyramid.crop_boxes_for`).

    Each box is cut from one source: the level of ``levels`` (scales
    ``level_scales``, decreasing, the image first at 1.0) where it is
    smallest but still at least ``crop`` pixels (Sec. 6.5), so the
    resampling never shrinks by more than one pyramid step. The crop boxes
    of all boxes are computed at once from the levels' static sizes, then
    partitioned by level: one ``crop_and_resize`` per level on its own boxes.
    The model's ``use_gather`` twin crops with gathers (TFLite builtins).
    """
    method = model.test_spec.crop_method
    side = crop if samples is None else samples
    if model.use_gather:
        return gather_crops(levels, level_scales, boxes, box_index, image_size=image_size, crop=crop,
                            samples=samples, method=method)
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


def _padded_survivors(scores):
    """Indices of the scores above 0, padded to a multiple of :data:`PATCH_BATCH_MULTIPLE` (at least one).

    Padding repeats the first survivor (or row 0). No ``tf.cond``: TFLite keeps
    variables read inside an IF branch as resource variables, not constants;
    and TF's CPU Conv2D mishandles an empty batch.
    """
    keep = tf.cast(tf.where(tf.reshape(scores, [-1]) > 0)[:, 0], tf.int32)  # int32: TFLite has no int64 FloorDiv
    count = tf.size(keep)
    multiple = PATCH_BATCH_MULTIPLE
    padded = tf.maximum((count + multiple - 1) // multiple * multiple, multiple)
    rows = tf.concat([keep, tf.fill([padded - count], tf.concat([keep, [0]], axis=0)[0])], axis=0)
    return keep, rows, padded - count


def refine(model, sources, boxes, scores, *, depth: int, threshold: float, image_size, keypoints: bool = False):
    """One later stage on the boxes still scored above 0: ``(scores, boxes)``, same shapes.

    Only the survivors are cropped and run (compute follows the survivors,
    not the padded budget); the others keep score 0. With the model's
    ``static_budgets`` every box is cropped and run and the rejected ones
    are masked instead: the same scores, boxes for the survivors (the
    others keep their input box), and static shapes throughout. With
    ``keypoints`` (a branch with landmarks) returns ``(scores, boxes,
    keypoints [B, K, 5, 2])``.
    """
    if model.static_budgets:
        return _refine_all(model, sources, boxes, scores, depth=depth, threshold=threshold, image_size=image_size,
                           keypoints=keypoints)
    batch, k = tf.shape(boxes)[0], tf.shape(boxes)[1]
    total = batch * k
    keep, rows, pad = _padded_survivors(scores)
    found = _branch_on(model, sources, tf.gather(tf.reshape(boxes, [-1, 4]), rows), rows // k, depth, image_size)
    probs = found["scores"]
    # Padding rows scatter into one extra slot that is then dropped: no tensor is ever empty
    # (TFLite's UNPACK refuses an empty input, so an image without survivors would fail there).
    targets = tf.concat([keep, tf.fill([pad], total)], axis=0)[:, None]
    new_scores = tf.scatter_nd(targets, tf.where(probs >= threshold, probs, 0.0), [total + 1])[:total]
    new_boxes = tf.scatter_nd(targets, found["boxes"], tf.stack([total + 1, 4]))[:total]
    out = tf.reshape(new_scores, [batch, k]), tf.reshape(new_boxes, [batch, k, 4])
    if not keypoints:
        return out
    points = tf.scatter_nd(targets, found["keypoints"], tf.stack([total + 1, 5, 2]))[:total]
    return (*out, tf.reshape(points, [batch, k, 5, 2]))


def _refine_all(model, sources, boxes, scores, *, depth, threshold, image_size, keypoints):
    """:func:`refine` on every box of the budget, the rejected ones masked (static shapes)."""
    k = int(boxes.shape[1])  # static: a budget
    flat = tf.reshape(boxes, [-1, 4])
    found = _branch_on(model, sources, flat, tf.range(tf.size(scores)) // k, depth, image_size)
    alive = tf.reshape(scores, [-1]) > 0
    probs = found["scores"]
    new_scores = tf.reshape(tf.where(alive & (probs >= threshold), probs, 0.0), [-1, k])
    new_boxes = tf.reshape(tf.where(alive[:, None], found["boxes"], flat), [-1, k, 4])
    if not keypoints:
        return new_scores, new_boxes
    points = tf.where(alive[:, None, None], found["keypoints"], 0.0)
    return new_scores, new_boxes, tf.reshape(points, [-1, k, 5, 2])


def _branch_on(model, sources, boxes, box_index, depth: int, image_size) -> dict[str, tf.Tensor]:
    """:func:`stage_outputs` of branch ``depth`` on the square patches about ``boxes [N, 4]`` of images ``box_index``."""
    squares = square_boxes(boxes)
    cut = squares if model.crop_convention == "centres" else \
        corner_sampled_boxes(squares, image_size=image_size, crop=SIDES[depth])
    patches = crop_patches(model, *sources, cut, box_index, image_size, SIDES[depth], model.patch_samples(depth))
    return stage_outputs(model, patches, depth, squares)


def budget(scores, boxes, keep: int, iou_threshold: float | None = None):
    """The best ``keep`` boxes: top-k, or greedy NMS at ``iou_threshold`` (zero scores are padding)."""
    if iou_threshold is None:
        count = scores.shape[1]  # static where known: a static k keeps every later shape static
        top, index = tf.math.top_k(scores, k=min(keep, int(count)) if count is not None else
                                   tf.minimum(keep, tf.shape(scores)[1]))
        return top, tf.gather(boxes, index, batch_dims=1)
    out = postprocess.class_aware_nms(boxes, scores, tf.zeros_like(scores, tf.int32),
                                      iou_threshold=iou_threshold, max_detections=keep)
    return out["scores"], out["boxes"]


def detect_steps(model, images: tf.Tensor) -> Iterator[tuple[str, dict]]:
    """The cascade's ``detect`` one step at a time: yields ``(step, outputs)`` after each.

    Steps ``"pyramid"`` (``{"image": preprocessed, "levels": [...]}``), ``"x12"``, ``"x24"``,
    ``"x48"`` (``{"scores": [B, K], "boxes": [B, K, 4]}``: the boxes
    passed on, score 0 on padding; and ``"keypoints" [B, K, 5, 2]`` when
    x12-x24-x48 has landmarks) and ``"nms"`` (the output contract, with
    ``keypoints`` then).
    ``detect`` runs them all; a profiler stops early to time a prefix.
    An image smaller than one window at ``min_face_size`` yields only ``"nms"``.
    """
    test = model.test_spec
    if images.shape.rank != 4 or images.shape[-1] != 3 or images.shape[1] is None or images.shape[2] is None:
        raise ValueError(f"FaceCascade.detect needs [B, H, W, 3] images with static H, W; got {images.shape}")
    image_size = (int(images.shape[1]), int(images.shape[2]))
    model.build()  # the branches' parts are called one by one below (x12's trunk, then its outputs)
    landmarks = getattr(model.x48, "landmarks", None) is not None
    scales = test_scales(model, image_size)
    if not scales:
        empty = postprocess.empty_detections(tf.shape(images)[0], test.max_detections)
        if landmarks:  # the same outputs whatever the image size
            empty["keypoints"] = tf.zeros([tf.shape(images)[0], test.max_detections, 5, 2])
        yield "nms", empty
        return
    x = model.preprocess(images)
    levels = build_pyramid(x, scales, use_gather=model.use_gather, method=test.pyramid)
    yield "pyramid", {"image": x, "levels": levels}
    t1, t2, t3 = test.thresholds
    keep, iou = test.stage1_max_boxes, test.stage1_nms_iou
    scores, boxes = stage1(model, levels, image_size, threshold=t1,
                           keep=keep if iou is None else STAGE1_NMS_CANDIDATES * keep)
    if iou is not None:  # without it stage1's top-k already is the budget
        scores, boxes = budget(scores, boxes, keep, iou)
    yield "x12", {"scores": scores, "boxes": boxes}
    sources = crop_sources(model, x, levels, scales)
    scores, boxes = refine(model, sources, boxes, scores, depth=2, threshold=t2, image_size=image_size)
    scores, boxes = budget(scores, boxes, test.stage2_max_boxes, test.stage2_nms_iou)
    yield "x24", {"scores": scores, "boxes": boxes}
    last = refine(model, sources, boxes, scores, depth=3, threshold=t3, image_size=image_size, keypoints=landmarks)
    scores, boxes = last[:2]
    extras = {"keypoints": last[2]} if landmarks else {}
    yield "x48", {"scores": scores, "boxes": boxes, **extras}
    boxes = box_ops.clip_boxes(boxes, image_size)
    found = postprocess.class_aware_nms(boxes, scores, tf.zeros_like(scores, tf.int32),
                                        iou_threshold=test.nms_iou_threshold, max_detections=test.max_detections,
                                        extras=extras)
    if test.containment_threshold is not None:
        found = postprocess.suppress_contained(found, test.containment_threshold)
    yield "nms", found


def window_scorer(model, *, depth: int = 1, thresholds: tuple[float, ...] | None = None,
                  window: int = 48, batch_size: int = 512):
    """A :data:`kdet.face.mining.WindowScorer` of a cascade, scoring windows as its training sees them.

    ``depth=1`` scores x12's face probability. x12 runs fully convolutionally
    on the level average-pooled by ``window / 12``: with a window stride of
    ``2 * window / 12`` level pixels (8 for 48) every window is one output
    cell, and its score is x12's on the window's patch pooled to 12x12,
    exactly what x12 sees of a training sample. Windows off that grid are
    cut and run as patches. ``depth=2`` scores x12-x24's face probability
    on the windows that reach ``thresholds[0]`` (default: the model's
    training threshold control) at x12, and ``-1`` on the others; use it
    with ``threshold = thresholds[1]`` for the samples that reach x12-x24-x48.

    Args:
      model: a built FaceCascade.
      depth: 1 (x12) or 2 (x12 then x12-x24).
      thresholds: ``(x12,)`` threshold for depth 2.
      window: the sample size (48).
      batch_size: patches per forward pass.
    """
    if depth not in (1, 2):
        raise ValueError(f"depth must be 1 or 2, got {depth}")
    if window % 12:
        raise ValueError(f"window must be a multiple of 12, got {window}")
    factor = window // 12
    first = float((thresholds or model.training_spec.thresholds)[0])

    def run(patches, depth_):
        size, out = SIDES[depth_], []
        for i in range(0, patches.shape[0], batch_size):
            x = model.preprocess(tf.constant(patches[i:i + batch_size]))
            x = x if size == window else tf.nn.avg_pool2d(x, window // size, window // size, "VALID")
            out.append(stage_scores(model, x, depth_)[0].numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def cut(level_image, corners):
        return np.stack([level_image[y:y + window, x:x + window] for y, x in corners]) if len(corners) else \
            np.zeros((0, window, window, 3), np.uint8)

    def x12_scores(level_image, corners):
        step = 2 * factor
        if (corners % step).any():
            return run(cut(level_image, corners), 1)
        x = tf.nn.avg_pool2d(model.preprocess(tf.constant(level_image[None])), factor, factor, "VALID")
        probs = tf.nn.softmax(model.x12(x)["logits"], axis=-1)[0, ..., 1].numpy()
        return probs[corners[:, 0] // step, corners[:, 1] // step]

    def score(level_image, corners):
        corners = np.asarray(corners, np.int64).reshape(-1, 2)
        scores = x12_scores(level_image, corners).astype(np.float32)
        if depth == 1:
            return scores
        out = np.full(scores.shape, -1.0, np.float32)
        passed = np.flatnonzero(scores >= first)
        out[passed] = run(cut(level_image, corners[passed]), 2)
        return out

    return score
