"""Draw detections and ground truth on images (PIL only, no matplotlib).

Boxes are kdet's ``[ymin, xmin, ymax, xmax]`` pixels of the image they are drawn
on. Images may be uint8, or float in 0..255 (the range the data pipeline
feeds the model); the result is always a new uint8 RGB array.
"""

import colorsys
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Ground truth is drawn in one colour, thin and dashed, to set it apart from
# the per-class detection colours.
GROUND_TRUTH_COLOR = (255, 255, 255)
_GOLDEN_RATIO = 0.618033988749895  # hue steps that keep neighbouring classes apart
_MIN_TILE_SIDE = 256  # auto-upscale small images until the short side reaches this


def _numpy(value) -> np.ndarray:
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def to_rgb_uint8(image) -> np.ndarray:
    """Returns ``image`` ([H, W], [H, W, 1] or [H, W, 3]; uint8 or 0..255 float) as uint8 [H, W, 3]."""
    image = _numpy(image)
    if image.dtype != np.uint8:
        image = np.clip(np.round(np.nan_to_num(image.astype(np.float64))), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an image [H, W, 1|3|4], got shape {image.shape}.")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def class_color(label: int, *, color_seed: int = 0) -> tuple[int, int, int]:
    """A bright RGB colour for a label id, fixed for a given ``color_seed``."""
    hue = (label * _GOLDEN_RATIO + color_seed * 0.1234) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(255 * r), int(255 * g), int(255 * b)


def _line_width(image_size: tuple[int, int]) -> int:
    return max(2, round(min(image_size) / 160))


def _label_text(label: int, score: float | None, class_names: Sequence[str] | None) -> str:
    name = class_names[label] if class_names is not None and label < len(class_names) else str(label)
    return name if score is None else f"{name} {score:.2f}"


def _draw_label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str,
                color: tuple[int, int, int], *, image_width: int) -> None:
    """Text on a filled box of ``color`` just above ``xy`` (kept inside the image)."""
    font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 2
    x = min(max(xy[0], 0), max(image_width - w, 0))
    y = xy[1] - h if xy[1] - h >= 0 else xy[1]
    draw.rectangle([x, y, x + w, y + h], fill=color)
    brightness = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    draw.text((x + 2 - left, y + 1 - top), text, fill=(0, 0, 0) if brightness > 128 else (255, 255, 255),
              font=font)


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box, *, color, dash: int = 4) -> None:
    """A 1-pixel dashed rectangle; ``box`` is yxyx."""
    y0, x0, y1, x1 = box
    for (ax, ay), (bx, by) in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)),
                               ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = math.hypot(bx - ax, by - ay)
        for start in np.arange(0.0, length, 2 * dash):
            end = min(start + dash, length)
            t0, t1 = start / max(length, 1e-9), end / max(length, 1e-9)
            draw.line([(ax + (bx - ax) * t0, ay + (by - ay) * t0),
                       (ax + (bx - ax) * t1, ay + (by - ay) * t1)], fill=color, width=1)


def draw_detections(image, boxes, classes, scores=None, *,
                    class_names: Sequence[str] | None = None, score_threshold: float = 0.3,
                    max_overlap: float | None = None, color_seed: int = 0, keypoints=None) -> np.ndarray:
    """Draws labelled boxes, one colour per class (and each detection's keypoints as dots).

    Args:
        image: [H, W, 3] (or grey [H, W]) uint8, or float in 0..255.
        boxes: float [N, 4] yxyx pixels of ``image``.
        classes: int [N] label ids; rows with -1 (padding) are skipped.
        scores: float [N] or None (ground truth: everything drawn, no score).
        class_names: label id -> name in the label text ("name 0.87").
        score_threshold: rows with a lower score are skipped. Detections are
            drawn in increasing score order, so the best one is on top.
        max_overlap: one label per object: a detection whose IoU with a
            higher-scoring drawn one exceeds this is not drawn (whatever its
            class); None draws every detection above the threshold.
        color_seed: shifts the class colours.
        keypoints: float [N, P, 2] (y, x) pixels, e.g. MTCNN's five face
            landmarks; drawn as dots in the box's colour.

    Returns:
        A new uint8 [H, W, 3] array; ``image`` is left untouched.
    """
    canvas = Image.fromarray(to_rgb_uint8(image))
    draw = ImageDraw.Draw(canvas)
    boxes = _numpy(boxes).reshape(-1, 4).astype(np.float64)
    classes = _numpy(classes).reshape(-1).astype(np.int64)
    scores = None if scores is None else _numpy(scores).reshape(-1).astype(np.float64)
    width = _line_width(canvas.size)
    # Best last: where boxes and labels overlap, the higher score is drawn on top and stays readable.
    order = range(len(classes)) if scores is None else np.argsort(np.nan_to_num(scores, nan=-1.0), kind="stable")
    drawn = [i for i in order if classes[i] >= 0 and np.all(np.isfinite(boxes[i]))
             and (scores is None or scores[i] >= score_threshold)]
    if max_overlap is not None and scores is not None and drawn:
        from kdet.boxes import greedy_nms

        kept = greedy_nms(boxes[drawn], scores[drawn], max_overlap, len(drawn))
        drawn = [drawn[k] for k in sorted(kept.tolist(), key=lambda k: scores[drawn[k]])]  # best last, as above
    for i in drawn:
        color = class_color(int(classes[i]), color_seed=color_seed)
        y0, x0, y1, x1 = boxes[i]
        draw.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=color, width=width)
        score = None if scores is None else float(scores[i])
        _draw_label(draw, (x0, y0), _label_text(int(classes[i]), score, class_names), color,
                    image_width=canvas.size[0])
        for y, x in ([] if keypoints is None else _numpy(keypoints)[i].reshape(-1, 2)):
            if np.isfinite(y) and np.isfinite(x):
                draw.ellipse([x - width - 1, y - width - 1, x + width + 1, y + width + 1], fill=color)
    return np.asarray(canvas)


def draw_ground_truth(image, boxes, classes=None, *, color=GROUND_TRUTH_COLOR) -> np.ndarray:
    """Draws ground-truth boxes as thin dashed rectangles in one colour.

    Args:
        image: [H, W, 3] uint8, or float in 0..255.
        boxes: float [M, 4] yxyx pixels.
        classes: optional int [M]; rows with -1 (padding) are skipped.
        color: RGB outline colour.

    Returns:
        A new uint8 [H, W, 3] array.
    """
    canvas = Image.fromarray(to_rgb_uint8(image))
    draw = ImageDraw.Draw(canvas)
    boxes = _numpy(boxes).reshape(-1, 4).astype(np.float64)
    valid = np.ones(len(boxes), bool) if classes is None else _numpy(classes).reshape(-1) >= 0
    for box in boxes[valid]:
        _dashed_rectangle(draw, box, color=color)
    return np.asarray(canvas)


def _per_image(batch, count: int, keys: Sequence[str]) -> list[dict]:
    """A batched dict ([B, K, ...] plus optional ``num_detections``) or a list -> list of dicts."""
    if not isinstance(batch, Mapping):
        return [{k: _numpy(v) for k, v in item.items()} for item in batch]
    arrays = {k: _numpy(batch[k]) for k in keys if k in batch}
    counts = _numpy(batch["num_detections"]) if "num_detections" in batch else None
    items = []
    for b in range(count):
        n = None if counts is None else int(counts[b])
        items.append({k: v[b][:n] for k, v in arrays.items()})
    return items


def _upscale_factor(images: list[np.ndarray], upscale: int | None) -> int:
    if upscale is not None:
        return max(1, int(upscale))
    short = min(min(image.shape[:2]) for image in images)
    return max(1, math.ceil(_MIN_TILE_SIDE / max(short, 1)))


def save_detection_grid(images, detections, path: str | os.PathLike, *,
                        class_names: Sequence[str] | None, ground_truth=None,
                        score_threshold: float = 0.3, max_overlap: float | None = None, cols: int = 4,
                        upscale: int | None = None) -> str:
    """Writes one PNG with several images and their detections side by side.

    Args:
        images: [B, H, W, 3] array or a list of B images (uint8 or 0..255 float).
        detections: the detector output dict (``boxes`` [B, K, 4], ``scores``,
            ``classes``, optional ``num_detections``) or a list of B dicts with
            ``boxes``, ``scores``, ``classes``; boxes in the images' pixels.
        path: output PNG path; parent folders are created.
        class_names: label id -> name (None: label ids are printed).
        ground_truth: optional targets-like dict (``boxes`` [B, M, 4],
            ``classes`` [B, M], -1 padding) or list of dicts, drawn thin,
            dashed and white under the detections.
        score_threshold: detections below it are not drawn.
        max_overlap: one label per object (see :func:`draw_detections`).
        cols: images per row.
        upscale: integer pixel-repeat factor; None: enough for the shortest
            image side to reach 256 pixels (tiny test images stay visible).

    Returns:
        ``path`` as a string.
    """
    images = [to_rgb_uint8(image) for image in images]
    if not images:
        raise ValueError("no images to draw.")
    dets = _per_image(detections, len(images), ("boxes", "scores", "classes"))
    gts = None if ground_truth is None else _per_image(ground_truth, len(images), ("boxes", "classes"))
    factor = _upscale_factor(images, upscale)
    tiles = []
    for b, image in enumerate(images):
        big = np.asarray(Image.fromarray(image).resize(
            (image.shape[1] * factor, image.shape[0] * factor), Image.NEAREST))
        if gts is not None:
            big = draw_ground_truth(big, gts[b]["boxes"] * factor, gts[b].get("classes"))
        big = draw_detections(big, dets[b]["boxes"] * factor, dets[b]["classes"], dets[b].get("scores"),
                              class_names=class_names, score_threshold=score_threshold, max_overlap=max_overlap)
        tiles.append(big)
    cols = max(1, min(cols, len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    gap = 4
    tile_h = max(t.shape[0] for t in tiles)
    tile_w = max(t.shape[1] for t in tiles)
    grid = np.full((rows * tile_h + (rows + 1) * gap, cols * tile_w + (cols + 1) * gap, 3), 40, np.uint8)
    for i, tile in enumerate(tiles):
        top = gap + (i // cols) * (tile_h + gap)
        left = gap + (i % cols) * (tile_w + gap)
        grid[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(grid).save(path, format="PNG")
    return path
