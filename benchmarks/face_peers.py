"""Face-detector peers for the face benchmark: MTCNN, OpenCV's Haar cascade and BlazeFace.

These are *benchmark-only* extras (``pip install -e .[bench]``); kdet never imports
them at run time. Every peer has the same small interface::

    peer.name              # "mtcnn" | "haar" | "blazeface"
    peer.min_face_size     # smallest face (pixels) the peer is set up to find
    peer.num_threads       # threads the backend was asked to use
    peer.detect(image)     # image: uint8 [H, W, 3] RGB ->
                           #   boxes  float32 [N, 4] [ymin, xmin, ymax, xmax] absolute pixels
                           #   scores float32 [N], highest first
    peer.set_threads(n)

The peers
---------
* ``MTCNNPeer``: the ``mtcnn`` package (1.0.0: TensorFlow / Keras 3, weights ship in
  its wheel), all three stages (P-, R-, O-Net); the score is O-Net's face
  probability. ``min_face_size`` 20 (MTCNN's default), stage thresholds
  (0.6, 0.7, 0.8) by default; lower them to trace more of a precision-recall curve.
* ``HaarPeer``: OpenCV's ``haarcascade_frontalface_default.xml`` (shipped by the
  ``opencv-python-headless`` 4.x wheels; 5.x wheels ship no cascades). A Haar
  cascade gives no score, so ``detectMultiScale3(..., outputRejectLevels=True)`` is
  used and the *level weight* is the score: for a window that passed every
  stage, the sum of the last stage's weak classifiers (larger = more face-like;
  unbounded, may be negative). That ranks detections for AP; it is not a
  probability. Grayscale + histogram equalisation, as OpenCV's face sample;
  ``minNeighbors`` 3, ``scaleFactor`` 1.1, ``min_face_size`` 24 (the cascade's
  window; it can find nothing smaller).
* ``BlazeFacePeer``: MediaPipe's short-range BlazeFace
  (``face_detection_short_range.tflite``, taken out of the ``mediapipe`` 0.10.21
  wheel by :func:`fetch_blazeface`, since mediapipe itself would downgrade numpy),
  run with LiteRT (``ai_edge_litert``) and the decoding of MediaPipe's
  ``face_detection_short_range_common.pbtxt`` re-implemented here: the image is
  letterboxed (padded to a centred square, then resized) to 128x128 RGB in
  [-1, 1]; 896 SSD anchors (strides 8, 16, 16, 16: 16x16x2 + 8x8x6, offset 0.5,
  fixed size 1); boxes decoded with x/y/w/h scale 128; scores sigmoid of the
  logit clipped to +-100; ``min_score`` 0.5; then MediaPipe's *weighted* NMS
  (IoU 0.3: each kept box is the score-weighted mean of the boxes it
  suppresses, with the top score), or plain NMS with ``nms="plain"``; boxes are
  mapped back out of the letterbox. BlazeFace has no minimum-size parameter;
  its ``min_face_size`` (80) is informational, for VGA frames: the short-range
  model is meant for faces filling a good part of the frame (within ~2 m of a
  phone camera). The astronaut's face scaled into a VGA frame is found at 90 px
  tall, not at 70 (MTCNN finds it down to 16 px; Haar down to 60).

Threads
-------
``set_threads(n)`` / ``num_threads=``: LiteRT's interpreter ``num_threads``
(the interpreter is rebuilt), ``cv2.setNumThreads`` (process-wide), and for
MTCNN ``tf.config.threading`` intra- and inter-op threads. TensorFlow accepts
those only *before* it runs its first op, so a process measures one thread
setting: the benchmark runs one subprocess per core count (``limit_cores(n)``
also pins the process to ``n`` CPUs, so "one core" means one core, not one
thread that the OS may move around).

Command line::

    .venv/bin/python -m benchmarks.face_peers --fetch   # fetch BlazeFace, print available_peers()
    .venv/bin/python -m benchmarks.face_peers --demo [--threads 1]   # each peer on skimage's astronaut
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

DEFAULT_CACHE_DIR = Path(__file__).resolve().parent / "results" / "peers"
MEDIAPIPE_VERSION = "0.10.21"
BLAZEFACE_MEMBER = "mediapipe/modules/face_detection/face_detection_short_range.tflite"
BLAZEFACE_FILE = "face_detection_short_range.tflite"
HAAR_CASCADE = "haarcascade_frontalface_default.xml"


def __getattr__(name: str):
    """``ASTRONAUT_FACE``: the one face in skimage.data.astronaut() (512x512), [ymin, xmin, ymax, xmax] pixels,
    as the real-photo set boxes it (kdet.data.real_faces). Read on use: importing kdet.data starts TensorFlow,
    which this module must not do at import (a latency worker pins its CPUs first)."""
    if name == "ASTRONAUT_FACE":
        from kdet.data.real_faces import REAL_FACE_PHOTOS

        return next(p for p in REAL_FACE_PHOTOS if p.name == "astronaut").boxes[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- helpers


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] RGB image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)


def _sorted(boxes, scores) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order]


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one [ymin, xmin, ymax, xmax] box with each of ``boxes`` [N, 4]."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    ymin = np.maximum(box[0], boxes[:, 0])
    xmin = np.maximum(box[1], boxes[:, 1])
    ymax = np.minimum(box[2], boxes[:, 2])
    xmax = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ymax - ymin, 0, None) * np.clip(xmax - xmin, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def limit_cores(n: int) -> list[int]:
    """Pin this process to the first ``n`` CPUs it may use (Linux); returns them."""
    if not hasattr(os, "sched_getaffinity"):
        return []
    cpus = sorted(os.sched_getaffinity(0))[: max(1, n)]
    os.sched_setaffinity(0, cpus)
    return cpus


def vga_canvas(image: np.ndarray, height: int = 480, width: int = 640) -> np.ndarray:
    """``image`` pasted at the centre of a mid-grey VGA frame (no resizing; cropped if larger)."""
    canvas = np.full((height, width, 3), 128, np.uint8)
    h, w = min(image.shape[0], height), min(image.shape[1], width)
    top, left = (height - h) // 2, (width - w) // 2
    canvas[top:top + h, left:left + w] = image[:h, :w]
    return canvas


# ----------------------------------------------------------------------------- MTCNN


class MTCNNPeer:
    """The ``mtcnn`` package (P-, R-, O-Net); score = O-Net face probability."""

    name = "mtcnn"

    def __init__(self, min_face_size: int = 20, thresholds=(0.6, 0.7, 0.8), scale_factor: float = 0.709,
                 num_threads: int | None = None):
        self.min_face_size = int(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scale_factor = float(scale_factor)
        self.num_threads = None
        if num_threads is not None:
            self.set_threads(num_threads)  # before mtcnn builds its Keras models
        from mtcnn import MTCNN

        self._detector = MTCNN(stages="face_and_landmarks_detection", device="CPU:0")

    def set_threads(self, n: int) -> None:
        """TensorFlow intra/inter-op threads; only possible before TF has run an op in this process."""
        import tensorflow as tf

        n = int(n)
        threading = tf.config.threading
        if threading.get_intra_op_parallelism_threads() == n and threading.get_inter_op_parallelism_threads() == n:
            self.num_threads = n
            return
        try:
            threading.set_intra_op_parallelism_threads(n)
            threading.set_inter_op_parallelism_threads(n)
        except RuntimeError as err:
            raise RuntimeError(
                "TensorFlow's thread pools are fixed once it has run an op; measure each thread setting "
                f"in its own process (asked for {n}): {err}") from err
        self.num_threads = n

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image = _check_image(image)
        p, r, o = self.thresholds
        out = self._detector.detect_faces(
            image, output_type="numpy", box_format="xyxy", min_face_size=self.min_face_size,
            scale_factor=self.scale_factor, threshold_pnet=p, threshold_rnet=r, threshold_onet=o)
        out = np.asarray(out, np.float32).reshape(-1, 16) if np.size(out) else np.zeros((0, 16), np.float32)
        # Columns: image index, x1, y1, x2, y2, score, 10 landmark coordinates.
        boxes = out[:, [2, 1, 4, 3]]
        return _sorted(boxes, out[:, 5])


# ----------------------------------------------------------------------------- Haar


class HaarPeer:
    """OpenCV's frontal-face Haar cascade; score = the last stage's level weight (see module doc)."""

    name = "haar"

    def __init__(self, min_face_size: int = 24, scale_factor: float = 1.1, min_neighbors: int = 3,
                 equalize: bool = True, cascade: str = HAAR_CASCADE, num_threads: int | None = None):
        import cv2

        path = haar_cascade_path(cascade)
        if path is None:
            raise FileNotFoundError(f"{cascade} is not in this OpenCV ({cv2.__version__}): install "
                                    "opencv-python-headless>=4.8,<5 (5.x wheels ship no cascades)")
        self._cv2 = cv2
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise RuntimeError(f"OpenCV could not load {path}")
        self.min_face_size = int(min_face_size)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.equalize = bool(equalize)
        self.num_threads = None
        if num_threads is not None:
            self.set_threads(num_threads)

    def set_threads(self, n: int) -> None:
        """``cv2.setNumThreads`` (process-wide)."""
        self._cv2.setNumThreads(int(n))
        self.num_threads = int(n)

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cv2 = self._cv2
        gray = cv2.cvtColor(_check_image(image), cv2.COLOR_RGB2GRAY)
        if self.equalize:
            gray = cv2.equalizeHist(gray)
        rects, _levels, weights = self._cascade.detectMultiScale3(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(self.min_face_size, self.min_face_size), outputRejectLevels=True)
        if len(rects) == 0:
            return _empty()
        rects = np.asarray(rects, np.float32).reshape(-1, 4)  # x, y, w, h
        x, y, w, h = rects.T
        return _sorted(np.stack([y, x, y + h, x + w], axis=1), np.ravel(weights))


def haar_cascade_path(cascade: str = HAAR_CASCADE) -> Path | None:
    """The cascade file shipped with the installed OpenCV, or None."""
    import cv2

    root = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not root:
        return None
    path = Path(root) / cascade
    return path if path.is_file() else None


# ----------------------------------------------------------------------------- BlazeFace: model file


def blazeface_path(cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or DEFAULT_CACHE_DIR) / BLAZEFACE_FILE


def fetch_blazeface(cache_dir: str | os.PathLike | None = None, force: bool = False,
                    version: str = MEDIAPIPE_VERSION) -> Path:
    """Take ``face_detection_short_range.tflite`` out of the mediapipe wheel; returns its path.

    ``pip download mediapipe==<version> --no-deps`` (this platform's wheel; if
    there is none, the manylinux x86_64 CPython 3.11 one; the model file is the
    same in every wheel) into a temporary folder in ``cache_dir``, extracts the
    model and deletes the wheel. A provenance JSON (wheel name, sha256) goes
    next to the model. Skipped if the model is already there (unless ``force``).
    """
    cache = Path(cache_dir or DEFAULT_CACHE_DIR)
    target = cache / BLAZEFACE_FILE
    if target.is_file() and not force:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix="wheel-") as tmp:
        base = [sys.executable, "-m", "pip", "download", f"mediapipe=={version}", "--no-deps",
                "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", tmp]
        attempts = [base, base + ["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11"]]
        errors = []
        for cmd in attempts:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wheels = sorted(Path(tmp).glob("mediapipe-*.whl"))
            if proc.returncode == 0 and wheels:
                break
            errors.append(f"{' '.join(cmd[3:])}: {proc.stderr.strip()[-500:]}")
        else:
            raise RuntimeError("pip download of mediapipe failed:\n" + "\n".join(errors))
        wheel = wheels[0]
        with zipfile.ZipFile(wheel) as zf:
            try:
                data = zf.read(BLAZEFACE_MEMBER)
            except KeyError as err:
                raise RuntimeError(f"{wheel.name} has no {BLAZEFACE_MEMBER}") from err
        partial = target.with_suffix(".tflite.part")
        partial.write_bytes(data)
        os.replace(partial, target)
        meta = {"source": wheel.name, "member": BLAZEFACE_MEMBER, "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest()}
        target.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return target  # the temporary folder (and the wheel in it) is gone


# ----------------------------------------------------------------------------- BlazeFace: decoding

# face_detection_short_range_common.pbtxt
SHORT_RANGE_STRIDES = (8, 16, 16, 16)
SHORT_RANGE_INPUT = 128
SHORT_RANGE_SCALE = 128.0  # x_scale = y_scale = w_scale = h_scale
SCORE_CLIP = 100.0
NUM_KEYPOINTS = 6


def ssd_anchors(input_size: int = SHORT_RANGE_INPUT, strides=SHORT_RANGE_STRIDES, anchors_per_layer: int = 2,
                offset: float = 0.5) -> np.ndarray:
    """MediaPipe's SsdAnchorsCalculator with fixed_anchor_size: float32 [A, 4] (y_center, x_center, h, w).

    Consecutive layers with the same stride share one feature map; each layer
    adds ``anchors_per_layer`` anchors per cell (aspect ratio 1.0 plus the
    interpolated scale). All anchors are 1.0 x 1.0. Order: feature map, row,
    column, anchor (as the model's outputs).
    """
    anchors = []
    layer = 0
    while layer < len(strides):
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            last += 1
        per_cell = anchors_per_layer * (last - layer)
        size = int(np.ceil(input_size / strides[layer]))
        centres = (np.arange(size, dtype=np.float32) + offset) / size
        yc, xc = np.meshgrid(centres, centres, indexing="ij")
        grid = np.stack([yc, xc], axis=-1).reshape(-1, 1, 2)
        grid = np.broadcast_to(grid, (size * size, per_cell, 2)).reshape(-1, 2)
        anchors.append(np.concatenate([grid, np.ones_like(grid)], axis=1))
        layer = last
    return np.concatenate(anchors, axis=0).astype(np.float32)


def decode_boxes(raw: np.ndarray, anchors: np.ndarray, scale: float = SHORT_RANGE_SCALE) -> np.ndarray:
    """Raw regressors [A, >=4] (x_centre, y_centre, w, h, keypoints...) -> [A, 4] normalised
    [ymin, xmin, ymax, xmax] in the model's input frame (MediaPipe reverse_output_order)."""
    raw = np.asarray(raw, np.float32)
    ya, xa, ha, wa = anchors.T
    xc = raw[:, 0] / scale * wa + xa
    yc = raw[:, 1] / scale * ha + ya
    w = raw[:, 2] / scale * wa
    h = raw[:, 3] / scale * ha
    return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=1).astype(np.float32)


def decode_keypoints(raw: np.ndarray, anchors: np.ndarray, scale: float = SHORT_RANGE_SCALE,
                     num_keypoints: int = NUM_KEYPOINTS) -> np.ndarray:
    """[A, num_keypoints, 2] normalised (y, x)."""
    raw = np.asarray(raw, np.float32)[:, 4:4 + 2 * num_keypoints].reshape(-1, num_keypoints, 2)
    ya, xa, ha, wa = anchors.T
    x = raw[..., 0] / scale * wa[:, None] + xa[:, None]
    y = raw[..., 1] / scale * ha[:, None] + ya[:, None]
    return np.stack([y, x], axis=-1)


def sigmoid_scores(logits: np.ndarray, clip: float = SCORE_CLIP) -> np.ndarray:
    logits = np.clip(np.asarray(logits, np.float64).reshape(-1), -clip, clip)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.3, weighted: bool = True,
        max_detections: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's NonMaxSuppressionCalculator (IoU overlap), boxes sorted by score.

    ``weighted=True`` (MediaPipe's WEIGHTED algorithm, BlazeFace's default): the
    top box and every remaining box with IoU > threshold form a cluster; the
    output box is the cluster's score-weighted mean, with the top score, and
    the cluster is removed. ``weighted=False``: plain greedy NMS.
    """
    boxes, scores = _sorted(boxes, scores)
    keep_boxes, keep_scores = [], []
    remaining = np.arange(len(scores))
    while remaining.size:
        top = remaining[0]
        overlaps = iou(boxes[top], boxes[remaining])
        cluster = remaining[overlaps > iou_threshold]
        if cluster.size == 0 or cluster[0] != top:  # degenerate (zero-area) top box
            cluster = np.concatenate([[top], cluster[cluster != top]])
        if weighted:
            w = scores[cluster]
            box = (boxes[cluster] * w[:, None]).sum(axis=0) / max(float(w.sum()), 1e-12)
        else:
            box = boxes[top]
        keep_boxes.append(box)
        keep_scores.append(scores[top])
        remaining = remaining[~np.isin(remaining, cluster)]
        if max_detections is not None and len(keep_scores) >= max_detections:
            break
    if not keep_scores:
        return _empty()
    return np.asarray(keep_boxes, np.float32), np.asarray(keep_scores, np.float32)


def letterbox_params(height: int, width: int) -> tuple[float, float, float]:
    """(side, pad_top, pad_left): the image is centred (to the pixel) in a ``side`` x ``side`` square."""
    side = max(height, width)
    return float(side), float((side - height) // 2), float((side - width) // 2)


def letterbox(image: np.ndarray, size: int = SHORT_RANGE_INPUT) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Pad ``image`` to a centred square with zeros, resize to ``size`` (bilinear): uint8 [size, size, 3], params."""
    from PIL import Image

    h, w = image.shape[:2]
    side, top, left = letterbox_params(h, w)
    t, l = int(top), int(left)  # an odd difference leaves the extra row/column at the bottom/right
    square = np.zeros((int(side), int(side), 3), np.uint8)
    square[t:t + h, l:l + w] = image
    out = np.asarray(Image.fromarray(square).resize((size, size), Image.BILINEAR))
    return out, (side, top, left)


def boxes_to_letterbox(boxes: np.ndarray, params) -> np.ndarray:
    """Absolute image pixels -> normalised [0, 1] coordinates of the letterboxed square."""
    side, top, left = params
    offset = np.array([top, left, top, left], np.float32)
    return ((np.asarray(boxes, np.float32) + offset) / side).astype(np.float32)


def boxes_from_letterbox(boxes: np.ndarray, params, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Normalised letterbox coordinates -> absolute image pixels (clipped to the image if its size is given)."""
    side, top, left = params
    offset = np.array([top, left, top, left], np.float32)
    out = np.asarray(boxes, np.float32) * side - offset
    if height is not None and width is not None:
        out = np.clip(out, 0, np.array([height, width, height, width], np.float32))
    return out.astype(np.float32)


class BlazeFacePeer:
    """MediaPipe BlazeFace short-range via LiteRT, MediaPipe's decoding re-implemented (see module doc)."""

    name = "blazeface"

    def __init__(self, model_path: str | os.PathLike | None = None, min_score: float = 0.5, iou_threshold: float = 0.3,
                 nms: str = "weighted", num_threads: int | None = 1, min_face_size: int = 80):
        path = Path(model_path) if model_path else blazeface_path()
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `python -m benchmarks.face_peers --fetch`")
        if nms not in ("weighted", "plain"):
            raise ValueError(f"nms must be 'weighted' or 'plain', not {nms!r}")
        self.model_path = path
        self.min_score = float(min_score)
        self.iou_threshold = float(iou_threshold)
        self.nms = nms
        self.min_face_size = int(min_face_size)
        self.anchors = ssd_anchors()
        self.num_threads = None
        self.set_threads(1 if num_threads is None else num_threads)

    def set_threads(self, n: int) -> None:
        """Rebuild the LiteRT interpreter with ``num_threads=n``."""
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=str(self.model_path), num_threads=int(n))
        self._interpreter.allocate_tensors()
        inp = self._interpreter.get_input_details()[0]
        if tuple(inp["shape"]) != (1, SHORT_RANGE_INPUT, SHORT_RANGE_INPUT, 3) or inp["dtype"] != np.float32:
            raise RuntimeError(f"unexpected BlazeFace input {inp['shape']} {inp['dtype']}")
        outputs = {d["name"]: d["index"] for d in self._interpreter.get_output_details()}
        self._input = inp["index"]
        self._regressors = outputs["regressors"]  # [1, 896, 16]
        self._classificators = outputs["classificators"]  # [1, 896, 1]
        self.num_threads = int(n)

    def raw_outputs(self, image: np.ndarray):
        """(regressors [896, 16], logits [896], letterbox params) for one RGB image."""
        image = _check_image(image)
        square, params = letterbox(image)
        x = square.astype(np.float32)[None] / 127.5 - 1.0  # [-1, 1]
        self._interpreter.set_tensor(self._input, x)
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._regressors)[0]
        logits = self._interpreter.get_tensor(self._classificators)[0, :, 0]
        return raw, logits, params

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = np.asarray(image).shape[:2]
        raw, logits, params = self.raw_outputs(image)
        return blazeface_postprocess(raw, logits, self.anchors, params, h, w, self.min_score,
                                     self.iou_threshold, weighted=self.nms == "weighted")


def blazeface_postprocess(raw: np.ndarray, logits: np.ndarray, anchors: np.ndarray, params, height: int, width: int,
                          min_score: float = 0.5, iou_threshold: float = 0.3,
                          weighted: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Model outputs -> (boxes [N, 4] absolute [ymin, xmin, ymax, xmax], scores [N]): sigmoid with
    clipping, score threshold, box decoding, NMS, out of the letterbox."""
    scores = sigmoid_scores(logits)
    keep = scores >= min_score
    if not keep.any():
        return _empty()
    boxes = decode_boxes(np.asarray(raw)[keep], anchors[keep])
    boxes, scores = nms(boxes, scores[keep], iou_threshold, weighted=weighted)
    return _sorted(boxes_from_letterbox(boxes, params, height, width), scores)


# ----------------------------------------------------------------------------- registry

PEERS = {"mtcnn": MTCNNPeer, "haar": HaarPeer, "blazeface": BlazeFacePeer}


def available_peers(cache_dir: str | os.PathLike | None = None) -> dict[str, str | None]:
    """``{name: None}`` for peers that can run here, ``{name: "why not"}`` for the others. Never raises."""
    status: dict[str, str | None] = {}
    try:
        importlib.import_module("mtcnn")
        importlib.import_module("lz4")
        status["mtcnn"] = None
    except Exception as err:  # noqa: BLE001 - any import failure means "not available"
        status["mtcnn"] = f"mtcnn not importable ({type(err).__name__}: {err}); pip install -e .[bench]"
    try:
        import cv2

        status["haar"] = None if haar_cascade_path() else (
            f"OpenCV {cv2.__version__} ships no {HAAR_CASCADE} (5.x wheels ship none); "
            "pip install 'opencv-python-headless>=4.8,<5'")
    except Exception as err:  # noqa: BLE001
        status["haar"] = f"cv2 not importable ({type(err).__name__}: {err}); pip install -e .[bench]"
    try:
        importlib.import_module("ai_edge_litert.interpreter")
        path = blazeface_path(cache_dir)
        status["blazeface"] = None if path.is_file() else (
            f"{path} missing; run `python -m benchmarks.face_peers --fetch`")
    except Exception as err:  # noqa: BLE001
        status["blazeface"] = f"ai_edge_litert not importable ({type(err).__name__}: {err})"
    return status


def make_peer(name: str, num_threads: int | None = None, cache_dir=None, **kwargs):
    """Build a peer by name (``num_threads`` forwarded; BlazeFace looks in ``cache_dir``)."""
    if name == "blazeface":
        kwargs.setdefault("model_path", blazeface_path(cache_dir))
    return PEERS[name](num_threads=num_threads, **kwargs)


# ----------------------------------------------------------------------------- CLI


def _time_ms(peer, image, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        peer.detect(image)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def demo(threads: int = 1, repeats: int = 10, cache_dir=None) -> dict:
    from skimage import data

    image = data.astronaut()
    vga = vga_canvas(image)
    report = {}
    for name, why in available_peers(cache_dir).items():
        if why:
            print(f"{name:10s} unavailable: {why}")
            continue
        peer = make_peer(name, num_threads=threads, cache_dir=cache_dir)
        start = time.perf_counter()
        boxes, scores = peer.detect(image)
        first = 1000.0 * (time.perf_counter() - start)
        peer.detect(vga)  # warm-up at the VGA size
        ms, ms_vga = _time_ms(peer, image, repeats), _time_ms(peer, vga, repeats)
        overlap = iou(__getattr__("ASTRONAUT_FACE"), boxes) if len(boxes) else np.zeros(0)  # (read on use)
        report[name] = {"boxes": boxes.round(1).tolist(), "scores": scores.round(4).tolist(),
                        "iou_with_face": overlap.round(3).tolist(), "ms_first": round(first, 1),
                        "ms_512": round(ms, 1), "ms_vga": round(ms_vga, 1), "threads": threads}
        print(f"{name:10s} {len(boxes)} box(es) [ymin, xmin, ymax, xmax], threads={threads}")
        for b, s, o in zip(boxes, scores, overlap):
            print(f"           {np.round(b, 1).tolist()}  score {s:.4f}  IoU with face {o:.3f}")
        print(f"           {ms:.1f} ms/call on astronaut 512x512, {ms_vga:.1f} ms/call on VGA 640x480 "
              f"(median of {repeats}; first call {first:.0f} ms)")
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fetch", action="store_true", help="fetch BlazeFace's model and print available_peers()")
    parser.add_argument("--force", action="store_true", help="with --fetch: fetch again")
    parser.add_argument("--demo", action="store_true", help="run each available peer on skimage's astronaut")
    parser.add_argument("--threads", type=int, default=1, help="--demo: backend threads (and pinned cores)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    parser.add_argument("--json", metavar="PATH", help="--demo: write the report here")
    args = parser.parse_args(argv)
    if not (args.fetch or args.demo):
        parser.error("nothing to do: --fetch and/or --demo")
    report: dict = {}
    if args.fetch:
        path = fetch_blazeface(args.cache_dir, force=args.force)
        print(f"BlazeFace model: {path} ({path.stat().st_size} bytes)")
        report["available"] = available_peers(args.cache_dir)
        for name, why in report["available"].items():
            print(f"{name:10s} {'ok' if why is None else why}")
    if args.demo:
        limit_cores(args.threads)
        report["demo"] = demo(args.threads, args.repeats, args.cache_dir)
        if args.json:
            Path(args.json).write_text(json.dumps(report["demo"], indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
