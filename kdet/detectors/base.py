"""``Detector``: the one base of every kdet detector.

It owns what every detector shares, so that generic code (the command line,
serving, TFLite conversion, the training loop) asks the model instead of
guessing from class names, config keys or metric keys:

* the output contract and its input guard: :meth:`Detector.detect` casts
  the images to float32, zeroes non-finite pixels and clips the rest to
  0..255 before the network, and afterwards gives an image with a NaN or inf
  pixel no detections and drops degenerate boxes
  (:func:`kdet.postprocess.suppress_non_finite`); ``predict_step`` is
  ``detect``. Subclasses implement :meth:`Detector.detect_clean` only.
* labels: :attr:`class_names` and the dataset's :attr:`category_ids` (COCO
  category ids, possibly non-contiguous) that the label indices stand for.
* :attr:`evaluation`: ``"coco"`` (COCO AP) or ``"face"`` (face AP, AFW AP30,
  discrete ROC), which metrics ``kdet evaluate`` and ``kdet train`` compute.
* :meth:`export_variant`: the same detector with the TFLite-builtin twins of
  its ops (``export_switches``), weights copied.
* the config: constructor keyword arguments as plain data (specs as their
  dicts, :mod:`kdet.specs`), returned by ``get_config`` chained to Keras'
  (``name``, ``trainable``, ``dtype``), and ``from_config(config) ==
  cls(**config)``; :meth:`Detector.upgrade_config` reads the flat configs
  of model directories written before the grouped arguments.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import keras
import tensorflow as tf

from kdet import postprocess, specs

EVALUATIONS = ("coco", "face")


class Detector(keras.Model):
    """Base of the kdet detectors (see the module docstring).

    Args:
      class_names: label names in label-index order (default ``class_1`` ...
        ``class_K``, or the subclass's :attr:`default_class_names`).
      category_ids: the dataset's id of each label (default ``1..K``).
      evaluation: ``"coco"`` or ``"face"`` (default: the subclass's
        :attr:`default_evaluation`).
      **kwargs: ``keras.Model`` arguments (``name``, ``trainable``, ``dtype``).
    """

    default_evaluation: ClassVar[str] = "coco"
    default_class_names: ClassVar[tuple[str, ...] | None] = None
    #: Config changes that give the builtins-only twin of :meth:`export_variant`.
    export_switches: ClassVar[Mapping[str, Any]] = {}
    #: Config changes that make every tensor's shape static (where the twin's are not already).
    static_shape_switches: ClassVar[Mapping[str, Any]] = {}
    #: Input sizes (training, evaluation) must be multiples of this: the largest feature stride (P7's 128
    #: for the FPN detectors; 1 for a detector that takes any size, such as the face cascade's pyramid).
    input_stride: ClassVar[int] = 128
    #: Flat config key of model directory formats 1-2 -> ``(argument, field)`` of the grouped arguments.
    flat_config_keys: ClassVar[Mapping[str, tuple[str, str]]] = {}

    def __init__(self, *, class_names: Sequence[str] | None = None, category_ids: Sequence[int] | None = None,
                 evaluation: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if evaluation is not None and evaluation not in EVALUATIONS:
            raise ValueError(f"evaluation must be one of {EVALUATIONS}, got {evaluation!r}")
        self._labels = {"class_names": None if class_names is None else tuple(str(n) for n in class_names),
                        "category_ids": None if category_ids is None else tuple(int(i) for i in category_ids),
                        "evaluation": evaluation}
        self._config: dict = {}

    # ---------------------------------------------------------------- what generic code asks
    @property
    def num_classes(self) -> int:
        """Foreground classes (label indices ``0..num_classes-1``)."""
        return int(self._config.get("num_classes", 1))

    @property
    def class_names(self) -> tuple[str, ...]:
        names = self._labels["class_names"] or self.default_class_names
        return tuple(names) if names else tuple(f"class_{i + 1}" for i in range(self.num_classes))

    @property
    def category_ids(self) -> tuple[int, ...]:
        return self._labels["category_ids"] or tuple(range(1, self.num_classes + 1))

    @property
    def evaluation(self) -> str:
        return self._labels["evaluation"] or self.default_evaluation

    def set_labels(self, class_names: Sequence[str], category_ids: Sequence[int] | None = None) -> None:
        """Names the labels (and the dataset's ids for them); both are then part of the config."""
        self._check_labels(class_names, category_ids)
        self._labels["class_names"] = tuple(str(n) for n in class_names)  # (Keras' tracked dict: item by item)
        self._labels["category_ids"] = None if category_ids is None else tuple(int(i) for i in category_ids)

    def _check_labels(self, class_names, category_ids) -> None:
        for what, values in (("class_names", class_names), ("category_ids", category_ids)):
            if values is not None and len(values) != self.num_classes:
                raise ValueError(f"{what} has {len(values)} entries but the {type(self).__name__} has "
                                 f"{self.num_classes} classes")

    # ---------------------------------------------------------------- inference
    def detect(self, images: tf.Tensor, **options) -> dict[str, tf.Tensor]:
        """Images ``[B, H, W, 3]`` (raw RGB 0..255, any real dtype) -> the output contract.

        ``options`` are the subclass's test-time overrides (see its
        :meth:`detect_clean`). Non-finite pixels are zeroed and other values
        clipped to 0..255 before the network; an image with a NaN or inf pixel
        reports no detections; no degenerate box is returned.
        """
        images = tf.cast(images, tf.float32)
        found = self.detect_clean(postprocess.zero_non_finite(images), **options)
        return postprocess.suppress_non_finite(images, found)

    def detect_clean(self, images: tf.Tensor, **options) -> dict[str, tf.Tensor]:
        """The detector proper, on finite float32 images in 0..255 -> the output contract."""
        raise NotImplementedError

    def detect_candidates(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """:meth:`detect` without the final NMS, for a host (or a mobile GPU's CPU side) that runs it.

        Returns ``{"boxes": [B, N, 4], "scores": [B, N]}`` (yxyx pixels,
        score 0 on rejected candidates, in no particular order; plus the
        detector's extra outputs) with a fixed ``N``; the host then runs
        :meth:`final_nms_settings`. An image with a NaN or inf pixel has
        all scores 0.
        """
        images = tf.cast(images, tf.float32)
        found = self.candidates_clean(postprocess.zero_non_finite(images))
        finite = tf.reduce_all(tf.math.is_finite(images), axis=[1, 2, 3])
        found["scores"] = tf.where(finite[:, None], found["scores"], 0.0)
        return found

    def candidates_clean(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """:meth:`detect_candidates` on finite images; a detector that offers it overrides this."""
        raise ValueError(f"{type(self).__name__} has no export without the final NMS yet (the face cascade has)")

    def final_nms_settings(self) -> dict:
        """What the host runs on :meth:`detect_candidates` to get :meth:`detect`'s detections."""
        raise ValueError(f"{type(self).__name__} has no export without the final NMS yet (the face cascade has)")

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.detect(x)

    # ---------------------------------------------------------------- export
    def export_variant(self, input_size: Sequence[int], *, static_shapes: bool = False) -> Detector:
        """This detector with the TFLite-builtin twins of its ops and the same weights (itself if it has none).

        Both are built by a detection on a blank ``input_size`` image; the twin
        computes the same detections to float rounding. ``static_shapes``
        also applies :attr:`static_shape_switches` (every tensor of a fixed
        size, as a mobile GPU delegate needs; the same detections).
        """
        from kdet.model_dir import build_for

        config = self.get_config()
        switches = {**self.export_switches, **(self.static_shape_switches if static_shapes else {})}
        if not switches or all(config.get(k) == v for k, v in switches.items()):
            return self
        twin = build_for(type(self).from_config({**config, **switches}), input_size)
        build_for(self, input_size)
        twin.set_weights(self.get_weights())
        return twin

    # ---------------------------------------------------------------- config
    def _set_arguments(self, **arguments) -> None:
        """Keeps the constructor's own arguments (resolved specs, models, values) as plain data for ``get_config``."""
        self._config = {key: specs.to_config(value) for key, value in arguments.items()}

    def arguments(self) -> dict:
        """The constructor's own keyword arguments as plain data: ``get_config()`` without Keras' entries and labels."""
        return dict(self._config)

    @classmethod
    def upgrade_config(cls, config: Mapping) -> dict:
        """A config of model directory format 1 or 2 (flat keyword arguments) as this class's arguments.

        Groups the flat keys of :attr:`flat_config_keys` into the spec
        arguments (dicts of fields, merged onto the defaults); other keys stay.
        """
        return specs.group_flat(config, cls.flat_config_keys)

    def get_config(self) -> dict:
        labels = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self._labels.items() if v is not None}
        return {**super().get_config(), **labels, **self._config}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
