"""The one image path: decode and letterbox, shared by training, evaluation, ``kdet detect``, SavedModel and TFLite.

Training and ``kdet evaluate`` on files (COCO json), ``kdet detect``, both
SavedModel signatures and int8 calibration all decode with
:func:`decode_image` (TensorFlow's decoders: JPEG, PNG including 16-bit, GIF,
BMP, WebP) and fit images into the model's input with :func:`letterbox`, so
a model computes on the same pixels whichever way an image reaches it. (kdet
used to decode training files with PIL and letterbox three ways; the
SavedModel then scored about 0.6 AP below ``kdet evaluate``.)

Files in formats TensorFlow cannot decode (TIFF and whatever else PIL reads)
are still readable from disk by :func:`read_image_file` through PIL; the
SavedModel's ``serving_bytes`` refuses them with a clear error.

Orientation: pixels are used as stored. EXIF orientation tags are ignored,
as in COCO and in TensorFlow's decoders; annotate in stored-pixel
coordinates (the COCO-json reader warns when an image's declared size
disagrees with its decoded size, the usual sign of rotated photos).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import tensorflow as tf

#: Formats decoded by TensorFlow (in-graph too), and the leading bytes that identify them.
TF_FORMATS = {"JPEG": (b"\xff\xd8\xff",), "PNG": (b"\x89PNG\r\n\x1a\n",), "GIF": (b"GIF87a", b"GIF89a"),
              "BMP": (b"BM",), "WebP": (b"RIFF",)}
TF_FORMAT_NAMES = "JPEG, PNG, GIF, BMP or WebP"
#: File endings of the images :func:`read_image_file` reads (TIFF through PIL), for picking them out of a folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


class ImageFileError(ValueError):
    """An image file that cannot be used, with a message naming it and saying why."""


def sniff_format(data: bytes) -> str | None:
    """The :data:`TF_FORMATS` name of encoded bytes by their magic number, or None."""
    for name, magics in TF_FORMATS.items():
        if any(data.startswith(m) for m in magics):
            if name == "WebP" and data[8:12] != b"WEBP":
                continue
            return name
    return None


def is_supported_image(data: tf.Tensor) -> tf.Tensor:
    """In-graph :func:`sniff_format` of one scalar string: whether TensorFlow can decode it."""
    head = tf.strings.substr(data, 0, 12)
    return tf.reduce_any(tf.stack([
        tf.strings.substr(head, 0, 3) == b"\xff\xd8\xff",
        tf.strings.substr(head, 0, 8) == b"\x89PNG\r\n\x1a\n",
        tf.strings.substr(head, 0, 4) == b"GIF8",
        tf.strings.substr(head, 0, 2) == b"BM",
        (tf.strings.substr(head, 0, 4) == b"RIFF") & (tf.strings.substr(head, 8, 4) == b"WEBP"),
    ]))


def decode_image(data: tf.Tensor) -> tf.Tensor:
    """Encoded image bytes (scalar string) -> ``uint8 [H, W, 3]`` RGB; the first frame of a GIF.

    Grey, palette, RGBA (alpha dropped), CMYK JPEG and 16-bit PNG are
    converted to 8-bit RGB. Eager or in a graph: the same kernels, the same
    pixels.
    """
    image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    return tf.ensure_shape(image, [None, None, 3])


def _decode_with_pil(path: str, data: bytes) -> np.ndarray:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale, do not clip at 255
                array = np.asarray(image, np.float64)
                top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
                grey = np.clip(np.round(array * (255.0 / top)), 0, 255).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=-1)
            return np.asarray(image.convert("RGB"), np.uint8)
    except UnidentifiedImageError:
        raise ImageFileError(f"{path!r} is not an image kdet can read ({TF_FORMAT_NAMES}, or TIFF and other "
                             f"formats PIL reads); its first bytes are {data[:8]!r}") from None
    except (OSError, ValueError, SyntaxError) as error:  # PIL's errors for damaged files
        raise ImageFileError(f"{path!r} is a damaged image file ({error})") from None


def read_image_file(path: str) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB pixels of an image file, decoded as every kdet path decodes it.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ImageFileError: ``path`` is a folder, empty, not an image, or damaged
        (truncated, corrupt); the message names the file and the reason.
    """
    path = os.fsdecode(path)
    if os.path.isdir(path):
        raise ImageFileError(f"{path!r} is a folder, not an image file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"image {path!r} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise ImageFileError(f"{path!r} is empty (0 bytes)")
    kind = sniff_format(data)
    if kind is None:
        return _decode_with_pil(path, data)
    try:
        image = decode_image(tf.constant(data)).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.ResourceExhaustedError) as error:
        reason = error.message.splitlines()[0].split("]")[-1].strip() if error.message else "cannot decode"
        raise ImageFileError(f"{path!r} starts like a {kind} file but cannot be decoded: it is truncated or "
                             f"corrupt ({reason})") from None
    if image.shape[0] * image.shape[1] == 0:
        raise ImageFileError(f"{path!r} has no pixels ({image.shape[1]}x{image.shape[0]})")
    return image


def fit_scale(height: tf.Tensor, width: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """``min(out_h / height, out_w / width)`` as float32: the largest scale that fits the image in ``size``."""
    return tf.minimum(int(size[0]) / tf.cast(height, tf.float32), int(size[1]) / tf.cast(width, tf.float32))


def letterbox(images: tf.Tensor, size: Sequence[int]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Scales images to fit ``size`` keeping the aspect ratio, pads bottom and right with 0.

    The resized size is ``round(side * scale)`` clipped to ``[1, size]``;
    resizing is bilinear without anti-aliasing (as in training).

    Args:
      images: ``[H, W, 3]`` or ``[B, H, W, 3]`` (one size for the batch), any
        real dtype, 0..255; H, W > 0.
      size: ``(height, width)`` python ints of the output.

    Returns:
      ``(canvas float32 [(B,) height, width, 3] (static shape), scale float32 [],
      resized_hw int32 [2])``: a pixel ``p`` of ``images`` lies at ``p * scale``
      on the canvas, and ``resized_hw`` is the image's extent there.
    """
    height, width = int(size[0]), int(size[1])
    hw = tf.shape(images)[-3:-1]
    scale = fit_scale(hw[0], hw[1], (height, width))
    resized_hw = tf.clip_by_value(tf.cast(tf.round(tf.cast(hw, tf.float32) * scale), tf.int32), 1, [height, width])
    resized = tf.image.resize(tf.cast(images, tf.float32), resized_hw, method="bilinear")
    canvas = tf.image.pad_to_bounding_box(resized, 0, 0, height, width)
    return tf.ensure_shape(canvas, [*canvas.shape[:-3], height, width, 3]), scale, resized_hw


#: Default largest decoded image (height x width) the SavedModel's ``serving_bytes`` accepts.
DEFAULT_MAX_PIXELS = 40_000_000


def _uint(data: tf.Tensor, start: int, length: int, *, little_endian: bool) -> tf.Tensor:
    """An unsigned integer of ``length`` bytes at ``start`` of a scalar string, as int64 (0 past the end)."""
    raw = tf.io.decode_raw(tf.strings.substr(data, start, length), tf.uint8)
    padded = tf.cast(tf.pad(raw, [[0, length - tf.shape(raw)[0]]]), tf.int64)
    weights = tf.constant([256 ** i for i in range(length)] if little_endian
                          else [256 ** (length - 1 - i) for i in range(length)], tf.int64)
    return tf.reduce_sum(padded * weights)


def _webp_size(data: tf.Tensor) -> tf.Tensor:
    chunk = tf.strings.substr(data, 12, 4)
    vp8x = tf.stack([_uint(data, 27, 3, little_endian=True) + 1, _uint(data, 24, 3, little_endian=True) + 1])
    lossless_bits = _uint(data, 21, 4, little_endian=True)
    vp8l = tf.stack([(lossless_bits // 16384) % 16384 + 1, lossless_bits % 16384 + 1])
    vp8 = tf.stack([_uint(data, 28, 2, little_endian=True) % 16384, _uint(data, 26, 2, little_endian=True) % 16384])
    return tf.where(chunk == b"VP8X", vp8x, tf.where(chunk == b"VP8L", vp8l, vp8))


def encoded_image_size(data: tf.Tensor) -> tf.Tensor:
    """``int64 [2]`` (height, width) read from the header of encoded image bytes, without decoding the pixels.

    For JPEG, PNG, GIF, BMP and WebP (the :data:`TF_FORMATS`); ``[0, 0]`` for
    anything else. Used to refuse huge images before they are decoded.
    """
    head = tf.strings.substr(data, 0, 4)
    jpeg = tf.cond(tf.strings.substr(head, 0, 3) == b"\xff\xd8\xff",
                   lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64),
                   lambda: tf.zeros([2], tf.int64))
    png = tf.stack([_uint(data, 20, 4, little_endian=False), _uint(data, 16, 4, little_endian=False)])
    gif = tf.stack([_uint(data, 8, 2, little_endian=True), _uint(data, 6, 2, little_endian=True)])
    bmp_height = _uint(data, 22, 4, little_endian=True)
    bmp_height = tf.where(bmp_height >= 2 ** 31, 2 ** 32 - bmp_height, bmp_height)  # top-down BMPs: negative
    bmp = tf.stack([bmp_height, _uint(data, 18, 4, little_endian=True)])
    webp = _webp_size(data)
    candidates = [(tf.strings.substr(head, 0, 3) == b"\xff\xd8\xff", jpeg), (head == b"\x89PNG", png),
                  (tf.strings.substr(head, 0, 3) == b"GIF", gif), (tf.strings.substr(head, 0, 2) == b"BM", bmp),
                  (head == b"RIFF", webp)]
    size = tf.zeros([2], tf.int64)
    for matches, value in reversed(candidates):
        size = tf.where(matches, value, size)
    return size


def letterbox_uint8(image, size: Sequence[int]) -> np.ndarray:
    """:func:`letterbox` of one ``[H, W, 3]`` image, rounded back to ``uint8 [height, width, 3]``.

    The input of a TFLite model (``images`` uint8) or of int8 calibration.
    """
    canvas, _, _ = letterbox(tf.convert_to_tensor(image), size)
    return np.clip(np.round(canvas.numpy()), 0, 255).astype(np.uint8)
