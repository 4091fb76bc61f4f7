"""SavedModel serving for every kdet detector: one ``tf.Module``, two TF-Serving signatures.

:class:`DetectionServingModule` wraps any detector with a ``detect(images)``
method that returns kdet's output contract (:mod:`kdet.postprocess`):
:class:`~kdet.detectors.retinanet.RetinaNet` (focal, AP-loss and
consistent: one inference graph), :class:`~kdet.detectors.cascade_rcnn.CascadeRCNN`
(also the Faster R-CNN and RPN face detectors) and
:class:`~kdet.face.cascade.FaceCascade`. Signatures:

* ``serving_default(input_tensor: uint8 [B, H, W, 3])``: a batch of images of
  any one height and width (the signature accepts any rank so that a wrong
  one gets this module's error rather than a shape-mismatch one; a wrong
  dtype is refused by TensorFlow: "expected to be a uint8 tensor");
* ``serving_bytes(input_tensor: string [B])``: encoded JPEG / PNG (also GIF,
  BMP, WebP) images of any sizes, as TF Serving's REST API carries them (base64 in
  the JSON). Grey and RGBA images are converted to RGB. An image whose header
  declares more than ``max_pixels`` pixels (default
  :data:`~kdet.serving.image.DEFAULT_MAX_PIXELS`, set at export) is refused
  before it is decoded.

Both decode and letterbox every image exactly as training and ``kdet detect``
do (:mod:`kdet.serving.image`: scale to fit the model's fixed ``input_size``,
keep the aspect ratio, pad bottom and right with 0), run the detector and map
the boxes back. Outputs follow the TF Object Detection API::

    detection_boxes    float32 [B, K, 4]  yxyx normalised to the original image
    detection_scores   float32 [B, K]
    detection_classes  float32 [B, K]     label-map ids: the dataset's category ids, 0 on padding
    num_detections     float32 [B]
    detection_keypoints float32 [B, K, 5, 2] (y, x) normalised like the boxes: only a
                       detector with landmarks (MTCNN's O-Net, :mod:`kdet.face.mtcnn`)

Rows at and after ``num_detections`` are padding (zeros); detections that lie
wholly in the letterbox padding are dropped. The label map
travels with the model as the asset ``assets/label_map.pbtxt`` (TF Object
Detection API ``item { id: 3 name: "..." }`` form): its ids are the
model's ``category_ids``, the ids of the dataset it was trained on (COCO's
1..90 with gaps, a user's 3, 7, 11, ...; 1..K where the data had none), and
``detection_classes`` reports them, so a client maps them back to its own
categories directly. A zero-sized image gives
zero detections; a wrong channel count or a corrupt encoded image raises an
``InvalidArgumentError`` that says what was expected.

The detector's variables are tracked, not the Keras model object: a Keras
model's own SavedModel signature would be traced too, on unknown shapes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from typing import Sequence

import tensorflow as tf

from kdet import postprocess
from kdet.model_dir import build_for
from kdet.serving.image import (
    DEFAULT_MAX_PIXELS,
    TF_FORMAT_NAMES,
    decode_image,
    encoded_image_size,
    is_supported_image,
    letterbox,
)

#: TF Object Detection API output names, in signature order.
OUTPUT_NAMES = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
SIGNATURES = ("serving_default", "serving_bytes")
LABEL_MAP_FILE = "label_map.pbtxt"


def label_map_pbtxt(class_names: Sequence[str], category_ids: Sequence[int] | None = None) -> str:
    """The TF Object Detection API label map of ``class_names`` with ids ``category_ids`` (default 1..K)."""
    ids = range(1, len(class_names) + 1) if category_ids is None else category_ids
    items = []
    for i, name in zip(ids, class_names):
        escaped = str(name).replace("\\", "\\\\").replace('"', '\\"')
        items.append(f'item {{\n  id: {int(i)}\n  name: "{escaped}"\n}}\n')
    return "".join(items)


def parse_label_map(text: str) -> dict[int, str]:
    """``{id: name}`` of a label map written by :func:`label_map_pbtxt`."""
    import re

    pairs = re.findall(r'id:\s*(\d+)\s*name:\s*"((?:[^"\\]|\\.)*)"', text)
    return {int(i): name.replace('\\"', '"').replace("\\\\", "\\") for i, name in pairs}


def to_detection_api(detections: dict, scale: tf.Tensor, original_hw: tf.Tensor, valid: tf.Tensor,
                     category_ids: Sequence[int] | None = None) -> dict:
    """The output contract on a letterboxed canvas -> TF Object Detection API outputs.

    Args:
      detections: the contract dict (boxes in canvas pixels).
      scale: ``[B]`` (or scalar) canvas pixels per original pixel.
      original_hw: ``[B, 2]`` (or ``[2]``) original heights and widths.
      valid: ``[B]`` bool; invalid images report zero detections.
      category_ids: the id ``detection_classes`` reports for each class
        index (default: the index + 1); padding rows report 0.
    """
    batch = tf.shape(detections["scores"])[0]
    k = tf.shape(detections["scores"])[1]
    scale = tf.broadcast_to(tf.reshape(tf.cast(scale, tf.float32), [-1]), [batch])
    hw = tf.broadcast_to(tf.reshape(tf.cast(original_hw, tf.float32), [-1, 2]), [batch, 2])
    extent = tf.maximum(tf.concat([hw, hw], axis=1), 1.0)[:, None, :]
    boxes = tf.clip_by_value(detections["boxes"] / scale[:, None, None] / extent, 0.0, 1.0)
    # Boxes that lay wholly in the letterbox padding are empty once clipped: drop them and close the gaps.
    inside = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    keep = (tf.range(k)[None, :] < detections["num_detections"][:, None]) & inside & valid[:, None]
    if "keypoints" in detections:  # (y, x) points, normalised as the boxes (not clipped: a landmark may be off)
        detections = {**detections, "keypoints": detections["keypoints"] / scale[:, None, None, None]
                      / tf.maximum(hw, 1.0)[:, None, None, :]}
    kept = postprocess.keep_detections({**detections, "boxes": boxes}, keep)
    out = {
        "detection_boxes": kept["boxes"],
        "detection_scores": kept["scores"],
        "detection_classes": _category_ids(kept["classes"], category_ids),
        "num_detections": tf.cast(kept["num_detections"], tf.float32),
    }
    if "keypoints" in kept:
        out["detection_keypoints"] = kept["keypoints"]
    return out


def _category_ids(classes: tf.Tensor, category_ids: Sequence[int] | None) -> tf.Tensor:
    """Class indices (-1 on padding) -> float32 ids: ``category_ids[index]`` (default index + 1), 0 on padding."""
    if category_ids is None:
        return tf.cast(classes + 1, tf.float32)  # padding: -1 + 1 = 0
    table = tf.constant([0] + [int(i) for i in category_ids], tf.float32)
    return tf.gather(table, classes + 1)


def _serve_images(input_tensor, detect, size, category_ids):
    """serving_default: uint8 ``[B, H, W, 3]`` (rank and channels checked) -> Detection API outputs."""
    expected = "serving_default expects uint8 RGB images [batch, height, width, 3]; got shape"
    shape = tf.shape(input_tensor)
    rank_ok = tf.debugging.Assert(tf.equal(tf.size(shape), 4), [expected, shape])
    with tf.control_dependencies([rank_ok]):  # every later op depends on the checked tensor
        shape = tf.identity(shape)
        channels_ok = tf.debugging.Assert(tf.equal(shape[-1], 3), [
            expected, shape, "(channels must be 3: convert grey/RGBA to RGB, or send encoded images to "
            "serving_bytes)"])
    with tf.control_dependencies([channels_ok]):
        input_tensor = tf.ensure_shape(tf.identity(input_tensor), [None, None, None, 3])
        shape = tf.identity(shape)
    valid = shape[1] * shape[2] > 0
    safe = tf.cond(valid, lambda: input_tensor, lambda: tf.zeros([shape[0], 1, 1, 3], tf.uint8))
    canvas, scale, _ = letterbox(safe, size)
    return to_detection_api(detect(canvas), scale, shape[1:3], tf.fill([shape[0]], valid), category_ids)


def _decode_one(data, size, max_pixels: int):
    """One encoded image -> ``(letterboxed canvas, scale, decoded (h, w), non-empty)``; refuses what it cannot read."""
    first_bytes = tf.io.encode_base64(tf.strings.substr(data, 0, 8))  # any bytes, printable
    supported = tf.debugging.Assert(is_supported_image(data), [
        f"serving_bytes: an input is not an encoded {TF_FORMAT_NAMES} image; its first 8 bytes, web-safe "
        f"base64:", first_bytes])
    with tf.control_dependencies([supported]):
        declared = encoded_image_size(data)
    small = tf.debugging.Assert(declared[0] * declared[1] <= max_pixels, [
        f"serving_bytes: an image of more than {max_pixels} pixels was refused (height, width):", declared,
        "(export with a larger max_pixels, or send it smaller)"])
    with tf.control_dependencies([small]):
        image = decode_image(data)
    hw = tf.shape(image)[:2]
    valid = hw[0] * hw[1] > 0
    safe = tf.cond(valid, lambda: image, lambda: tf.zeros([1, 1, 3], tf.uint8))
    canvas, scale, _ = letterbox(safe, size)
    return canvas, scale, hw, valid


def _serve_bytes(input_tensor, detect, size, max_pixels: int, category_ids):
    """serving_bytes: string ``[B]`` of encoded images -> Detection API outputs."""
    rank_ok = tf.debugging.Assert(tf.equal(tf.rank(input_tensor), 1), [
        "serving_bytes expects a batch of encoded images, string [batch]; got shape", tf.shape(input_tensor)])
    with tf.control_dependencies([rank_ok]):
        input_tensor = tf.reshape(input_tensor, [-1])
    canvas, scale, hw, valid = tf.map_fn(
        lambda data: _decode_one(data, size, max_pixels), input_tensor,
        fn_output_signature=(tf.TensorSpec([size[0], size[1], 3], tf.float32), tf.TensorSpec([], tf.float32),
                             tf.TensorSpec([2], tf.int32), tf.TensorSpec([], tf.bool)))
    return to_detection_api(detect(canvas), scale, hw, valid, category_ids)


class DetectionServingModule(tf.Module):
    """A detector with explicit serving signatures (see the module docstring).

    Args:
      model: a kdet detector (``detect(images float32 [B, h, w, 3]) -> contract``).
      input_size: ``(height, width)`` the detector runs at; every request is
        letterboxed into it. RetinaNet and Cascade R-CNN need multiples of
        ``2 ** max_level``; FaceCascade builds its pyramid for this size.
      class_names: label names in class-index order (default: the model's
        ``class_names``).
      category_ids: the label map's id of each class, which
        ``detection_classes`` reports (default: the model's
        ``category_ids``, the dataset's).
      max_pixels: ``serving_bytes`` refuses an encoded image whose header
        declares more pixels (height x width) than this, before decoding it
        (a 12000x12000 JPEG would otherwise take about 1.8 GB).
    """

    def __init__(self, model, *, input_size: Sequence[int], class_names: Sequence[str] | None = None,
                 category_ids: Sequence[int] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 name: str | None = None):
        super().__init__(name=name)
        if int(max_pixels) < 1:
            raise ValueError(f"max_pixels must be positive, got {max_pixels!r}")
        max_pixels = int(max_pixels)
        if len(input_size) != 2 or min(int(s) for s in input_size) < 1:
            raise ValueError(f"input_size must be (height, width) positive ints, got {input_size!r}")
        self.input_size = tuple(int(s) for s in input_size)
        names = list(class_names) if class_names is not None else list(model.class_names)
        if len(names) != model.num_classes:
            raise ValueError(f"class_names has {len(names)} names but the model has {model.num_classes} classes")
        self.class_names = names
        ids = [int(i) for i in (category_ids if category_ids is not None else model.category_ids)]
        if len(ids) != len(names) or len(set(ids)) != len(ids) or min(ids) < 1:
            raise ValueError(f"category_ids must be {len(names)} distinct positive ids (0 marks padding), got {ids}")
        self.category_ids = ids
        if not model.variables:
            build_for(model, self.input_size)
        self.model_variables = list(model.variables)  # tracked: the graph reads them
        folder = tempfile.mkdtemp(prefix="kdet_label_map_")  # the Asset's source, removed with this module
        weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)  # (or at exit): no temp folder is left
        with open(os.path.join(folder, LABEL_MAP_FILE), "w") as f:
            f.write(label_map_pbtxt(names, ids))
        self.label_map = tf.saved_model.Asset(os.path.join(folder, LABEL_MAP_FILE))
        detect, size = model.detect, self.input_size  # a closure, so the Keras model itself is not tracked
        self.serving_default = tf.function(  # any rank, so that a wrong one gets this module's error
            lambda input_tensor: _serve_images(input_tensor, detect, size, ids),
            input_signature=[tf.TensorSpec(None, tf.uint8, name="input_tensor")])
        self.serving_bytes = tf.function(
            lambda input_tensor: _serve_bytes(input_tensor, detect, size, max_pixels, ids),
            input_signature=[tf.TensorSpec(None, tf.string, name="input_tensor")])

    def signatures(self) -> dict:
        return {name: getattr(self, name).get_concrete_function() for name in SIGNATURES}


def export_saved_model(model, path: str, *, input_size: Sequence[int], class_names: Sequence[str] | None = None,
                       category_ids: Sequence[int] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """Writes ``model`` as a SavedModel with the two serving signatures; returns ``path``.

    ``path`` is the version folder TF Serving loads (e.g. ``models/faces/1``).
    It is written under a temporary name beside it and renamed into place
    when complete (TF Serving never sees half a version); an existing
    SavedModel folder there is replaced, anything else is refused.
    """
    import shutil

    if os.path.exists(path) and not (os.path.isdir(path) and (
            not os.listdir(path) or os.path.isfile(os.path.join(path, "saved_model.pb")))):
        raise ValueError(f"--out {path!r} exists and is not a SavedModel folder; give a new or empty folder")
    module = DetectionServingModule(model, input_size=input_size, class_names=class_names, category_ids=category_ids,
                                    max_pixels=max_pixels)
    partial = f"{os.path.normpath(path)}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    tf.saved_model.save(module, partial, signatures=module.signatures())
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(partial, path)
    return path


def load_label_map(path: str) -> dict[int, str]:
    """``{id: name}`` from an exported SavedModel folder."""
    with open(os.path.join(path, "assets", LABEL_MAP_FILE)) as f:
        return parse_label_map(f.read())
