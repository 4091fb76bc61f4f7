"""The one example dict every reader produces, its metadata, and sanitising.

Every reader in :mod:`kdet.data` yields dicts of this form (one image each)::

    {
      "image":    tf.uint8   [H, W, 3]  RGB
      "boxes":    tf.float32 [N, 4]     [ymin, xmin, ymax, xmax], absolute pixels
      "classes":  tf.int32   [N]        contiguous label ids 0..num_classes-1
      "is_crowd": tf.bool    [N]
      "image_id": tf.int64   []         the COCO image id where one exists
    }

``N`` may be 0: images without objects are valid examples.

Bad boxes are handled once, here, by :func:`sanitize_example`: boxes are clipped
to the image, and boxes that are inverted (``ymax < ymin`` or ``xmax < xmin``),
have zero area, are not finite, or lie wholly outside the image are dropped.
Dropped boxes are *counted* in a :class:`DataStats` (``tf.Variable`` counters, so
the counting works inside ``tf.data`` graphs) that each reader exposes as
``info.stats``, and a warning naming the image id (and the annotation ids, where
the reader has them) is printed to stderr with ``tf.print`` (python ``logging``
cannot run inside a ``tf.data`` graph), once per image per run: a
:class:`WarnedImages` table remembers which images were reported, so later
epochs stay quiet.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Mapping

import tensorflow as tf

#: Keys of the example dict, in a fixed order.
EXAMPLE_KEYS = ("image", "boxes", "classes", "is_crowd", "image_id")

#: Prefix of every warning printed from inside a ``tf.data`` graph.
WARNING_PREFIX = "WARNING kdet.data:"


class WarnedImages:
    """The images a warning was printed for, so that each is printed once per image per run.

    A ``tf.lookup`` hash table keyed by ``"kind:image_id"``: it can be read and
    written inside ``tf.data`` maps, and it lives as long as the reader (one
    run), so the warnings of a bad image are not repeated every epoch.
    """

    def __init__(self):
        with tf.init_scope():
            self._table = tf.lookup.experimental.MutableHashTable(tf.string, tf.bool, default_value=False)

    def print_once(self, kind: str, image_id: tf.Tensor, *message) -> tf.Tensor:
        """Prints ``WARNING kdet.data: image_id ID <message>`` unless printed for this kind and image.

        Args:
            kind: what the warning is about (``"dropped"``, ``"truncated"``).
            image_id: scalar int image id.
            *message: python strings and scalar tensors (numbers or strings), joined by spaces.

        Returns:
            A scalar bool tensor, True when it printed (use it as a control dependency).
        """
        key = tf.strings.join([kind, tf.strings.as_string(image_id)], separator=":")

        def emit():
            parts = [WARNING_PREFIX, "image_id", image_id, *message]
            line = tf.strings.join([_as_text(p) for p in parts], separator=" ")
            printed = tf.print(line, output_stream=sys.stderr)  # one string tensor prints unquoted
            with tf.control_dependencies([printed]):
                inserted = self._table.insert(key, True)
            with tf.control_dependencies([inserted]):
                return tf.constant(True)

        return tf.cond(self._table.lookup(key), lambda: tf.constant(False), emit)


def _as_text(value) -> tf.Tensor | str:
    """A python string as is; a number or scalar tensor as its decimal text."""
    if isinstance(value, str):
        return value
    value = tf.convert_to_tensor(value)
    return value if value.dtype == tf.string else tf.strings.as_string(value)


class DataStats:
    """Counters of what a reader fixed or threw away, readable by the user.

    The counters are ``tf.Variable`` s so that they can be incremented from
    inside ``tf.data`` map functions. They count every pass over a dataset
    (two epochs count a bad box twice). Create readers outside a
    ``tf.distribute`` strategy scope, so that these stay plain variables.

    Attributes:
        dropped_boxes: boxes removed as inverted, zero-area, non-finite or
            wholly outside their image.
        clipped_boxes: boxes kept but clipped to the image.
        skipped_images: images skipped because they could not be decoded.
        warned: the images whose dropped boxes were reported (once per image).
    """

    _NAMES = ("dropped_boxes", "clipped_boxes", "skipped_images")

    def __init__(self):
        with tf.init_scope():
            for name in self._NAMES:
                var = tf.Variable(0, dtype=tf.int64, trainable=False, name=name)
                setattr(self, name, var)
        self.warned = WarnedImages()

    def as_dict(self) -> dict[str, int]:
        """Returns the current counts as python ints."""
        return {name: int(getattr(self, name).numpy()) for name in self._NAMES}

    def reset(self) -> None:
        """Sets every counter back to zero."""
        for name in self._NAMES:
            getattr(self, name).assign(0)

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.as_dict().items())
        return f"DataStats({counts})"


@dataclasses.dataclass(frozen=True, kw_only=True)
class DetectionInfo:
    """What a detection dataset contains, for building models and evaluating.

    Attributes:
        class_names: name of each label; the index is the label id.
        category_ids: COCO json ``category_id`` of each label (used when writing
            COCO results); ``1..num_classes`` for datasets without COCO ids.
        name: a short name of the dataset, e.g. ``"coco/2017"``.
        stats: counters of boxes dropped or clipped and images skipped while
            reading (``None`` for readers that cannot meet bad data, such as the
            synthetic set). Not part of equality.
    """

    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    name: str = ""
    stats: DataStats | None = dataclasses.field(
        default=None, compare=False, repr=False
    )

    def __post_init__(self):
        names = tuple(str(n) for n in self.class_names)
        ids = tuple(int(i) for i in self.category_ids)
        if len(names) != len(ids):
            raise ValueError(
                f"DetectionInfo: {len(names)} class_names but {len(ids)} "
                "category_ids; they must have one entry per label."
            )
        if len(set(ids)) != len(ids):
            raise ValueError(f"DetectionInfo: category_ids are not unique: {ids}")
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "category_ids", ids)

    @property
    def num_classes(self) -> int:
        """Number of labels (the background is not a label)."""
        return len(self.class_names)

    @property
    def label_of_category_id(self) -> dict[int, int]:
        """Maps a COCO json ``category_id`` to its contiguous label id."""
        return {cid: label for label, cid in enumerate(self.category_ids)}


def ensure_rgb(image: tf.Tensor) -> tf.Tensor:
    """Converts a decoded image to 3-channel RGB uint8.

    Grey (1 channel) is replicated, grey+alpha keeps the grey channel, RGBA
    drops the alpha channel (as ``PIL.Image.convert("RGB")`` does).

    Args:
        image: ``[H, W, C]`` with C in {1, 2, 3, 4}, any integer dtype
            (uint16 is rescaled to 0..255) or uint8.

    Returns:
        ``[H, W, 3]`` uint8.
    """
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        image = tf.image.convert_image_dtype(image, tf.uint8, saturate=True)
    static_channels = image.shape[-1]
    if static_channels is not None:
        if static_channels < 3:
            return tf.repeat(image[..., :1], 3, axis=-1)
        return image[..., :3]
    image = tf.cond(
        tf.shape(image)[-1] < 3,
        lambda: tf.repeat(image[..., :1], 3, axis=-1),
        lambda: image[..., :3],
    )
    image.set_shape([None, None, 3])
    return image


def sanitize_boxes(
    boxes: tf.Tensor, *, height: tf.Tensor, width: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Clips boxes to the image and marks the ones to keep.

    A box is dropped when it is inverted, not finite, or has zero area after
    clipping (this includes boxes wholly outside the image). An inverted box is
    dropped rather than reordered: its corners are not trustworthy.

    Args:
        boxes: ``[N, 4]`` float32 ``[ymin, xmin, ymax, xmax]`` pixels.
        height: scalar image height in pixels.
        width: scalar image width in pixels.

    Returns:
        ``(clipped [N, 4] float32, keep [N] bool, was_clipped [N] bool)``;
        ``was_clipped`` is True for kept boxes that the clipping changed.
    """
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    upper = tf.stack([h, w, h, w])
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    finite = tf.reduce_all(tf.math.is_finite(boxes), axis=-1)
    ordered = (ymax >= ymin) & (xmax >= xmin)
    clipped = tf.clip_by_value(boxes, 0.0, upper)
    positive = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    keep = finite & ordered & positive
    changed = tf.reduce_any(tf.not_equal(clipped, boxes), axis=-1)
    return clipped, keep, keep & changed


def sanitize_example(
    example: Mapping[str, tf.Tensor], *, stats: DataStats | None = None
) -> dict[str, tf.Tensor]:
    """Brings one example dict to the contract: RGB uint8, clean boxes, dtypes.

    Runs inside ``tf.data`` maps. Dropped boxes take their ``classes`` and
    ``is_crowd`` entries with them; they are added to ``stats.dropped_boxes``
    and a warning naming the image id, and the dropped boxes' annotation ids
    when the example has ``annotation_ids``, is printed to stderr once per
    image per ``stats`` (that is, per run: not again in later epochs).

    Args:
        example: dict with the keys of :data:`EXAMPLE_KEYS`; ``boxes`` in
            pixels, any numeric dtypes, image with 1 to 4 channels; optionally
            ``annotation_ids`` ``[N]`` int (used in the warning, not returned).
        stats: counters to increment and the record of warned images; None
            only warns (with a record of its own, for this call or trace).

    Returns:
        The example dict with the contract's dtypes and shapes.
    """
    image = ensure_rgb(example["image"])
    shape = tf.shape(image)
    boxes, keep, was_clipped = sanitize_boxes(
        example["boxes"], height=shape[0], width=shape[1]
    )
    image_id = tf.cast(tf.reshape(example["image_id"], []), tf.int64)
    num_dropped = tf.reduce_sum(tf.cast(~keep, tf.int64))
    warned = stats.warned if stats is not None else WarnedImages()
    warn = tf.cond(
        num_dropped > 0,
        lambda: _print_dropped(warned, num_dropped, image_id, example.get("annotation_ids"), keep),
        lambda: tf.constant(False),
    )
    updates = []
    if stats is not None:
        updates = [
            stats.dropped_boxes.assign_add(num_dropped),
            stats.clipped_boxes.assign_add(
                tf.reduce_sum(tf.cast(was_clipped, tf.int64))
            ),
        ]
    with tf.control_dependencies([warn, *updates]):
        boxes = tf.identity(tf.boolean_mask(boxes, keep))
    classes = tf.cast(tf.reshape(example["classes"], [-1]), tf.int32)
    is_crowd = tf.cast(tf.reshape(example["is_crowd"], [-1]), tf.bool)
    return {
        "image": image,
        "boxes": boxes,
        "classes": tf.boolean_mask(classes, keep),
        "is_crowd": tf.boolean_mask(is_crowd, keep),
        "image_id": image_id,
    }


def _print_dropped(warned: WarnedImages, num_dropped, image_id, annotation_ids, keep) -> tf.Tensor:
    """Prints the dropped-boxes warning once per image; returns True when it printed."""
    message = [": dropped", num_dropped, "zero-area, inverted, non-finite or out-of-image boxes"]
    if annotation_ids is not None:
        dropped_ids = tf.boolean_mask(tf.reshape(tf.cast(annotation_ids, tf.int64), [-1]), ~keep)
        ids = tf.strings.reduce_join(tf.strings.as_string(dropped_ids), separator=", ")
        message += [tf.strings.join(["(annotation ids ", ids, ")"])]
    return warned.print_once("dropped", image_id, *message)

