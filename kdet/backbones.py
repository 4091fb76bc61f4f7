"""Backbones returning ``{"C2".."C5"}`` and the FPN layer returning ``{"P<l>"}``.

Every backbone takes raw RGB pixels in ``[0, 255]`` (``[B, H, W, 3]`` float)
and normalises them itself, so detectors, evaluation and export all feed the
same thing. ``C<l>`` has stride ``2**l``.

A detector's ``backbone`` argument is a name of :data:`BACKBONES`, a
:class:`BackboneSpec` (name, weights file, BatchNorm policy) or a
``keras.Model`` built by the user that keeps that contract
(:func:`check_backbone`); :func:`detector_backbone` resolves it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Mapping

import keras
import tensorflow as tf

from kdet.specs import Spec, coerce

# Last block of each stage in keras.applications' ResNet v1 graphs.
_RESNET_STAGE_OUTPUTS = {
    50: ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    101: ("conv2_block3_out", "conv3_block4_out", "conv4_block23_out", "conv5_block3_out"),
}
_RESNET_BUILDERS = {50: keras.applications.ResNet50, 101: keras.applications.ResNet101}


@keras.saving.register_keras_serializable(package="kdet")
class ImageNormalization(keras.layers.Layer):
    """Maps RGB ``[0, 255]`` pixels to what a backbone was trained on.

    Args:
      mode: ``"caffe"`` (keras.applications ResNet: RGB -> BGR, subtract the
        ImageNet BGR means, no scaling) or ``"unit"`` (``x / 127.5 - 1``).
    """

    _CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

    def __init__(self, *, mode: str = "caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "unit"):
            raise ValueError(f"ImageNormalization mode must be 'caffe' or 'unit', got {mode!r}")
        self.mode = mode

    def call(self, images):
        images = tf.cast(images, self.compute_dtype)
        if self.mode == "unit":
            return images / 127.5 - 1.0
        return images[..., ::-1] - tf.constant(self._CAFFE_BGR_MEAN, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="kdet")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``BatchNormalization`` that trains through TensorFlow's single fused kernel.

    Keras 3 trains BatchNormalization as separate moments / normalise ops and
    their gradients, slower on a ResNet-50 step than the fused
    ``FusedBatchNormV3`` kernel TF Model Garden uses (measured by
    ``benchmarks/retinanet_speed.py``, docs/benchmarks.md). Same variables, same config, same
    moving-statistics update (Keras keeps the *biased* batch variance, the
    fused op returns the Bessel-corrected one, so it is scaled back by
    ``(n - 1) / n``). Inference, frozen layers, masks, renorm, synchronized
    BN and anything but rank-4 channels-last input use the parent's path.
    """

    def _can_fuse(self, inputs, training, mask) -> bool:
        return bool(
            training and self.trainable and mask is None and not self.renorm and not self.synchronized
            and self.scale and self.center and len(inputs.shape) == 4 and self.axis in (-1, 3)
            and inputs.dtype in (tf.float32, tf.float16, tf.bfloat16)
        )

    def call(self, inputs, training=None, mask=None):
        if not self._can_fuse(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32),
            epsilon=self.epsilon, data_format="NHWC", is_training=True,
        )[:3]
        n = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), tf.float32)
        variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return outputs


def _with_fused_batchnorm(model: keras.Model) -> keras.Model:
    """Clones a functional model with every BatchNormalization made fused (same names and weights)."""

    def clone(layer):
        if type(layer) is keras.layers.BatchNormalization:
            return FusedBatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    fused = keras.models.clone_model(model, clone_function=clone)
    for layer in fused.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return fused


def _freeze(model: keras.Model, *, freeze_batchnorm: bool, frozen_prefixes: tuple[str, ...]) -> None:
    for layer in model.layers:
        if freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization):
            # A non-trainable BatchNormalization runs in inference mode in Keras 3:
            # its statistics stay fixed (the "frozen BN" of Detectron).
            layer.trainable = False
        if frozen_prefixes and layer.name.startswith(frozen_prefixes):
            layer.trainable = False


#: ``weights=IMAGENET``: keras.applications' ImageNet weights through Keras' own download and cache.
IMAGENET = "imagenet"
_IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
#: depth -> keras.applications' no-top ImageNet weights file and its MD5 (keras.applications.resnet's).
_IMAGENET_FILES = {50: ("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "4d473c1dd8becc155b73f8504c6f6626"),
                   101: ("resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5", "88cf7a10940856eca736dc7b7e228a21")}


def keras_cache_folder() -> str:
    """Where Keras keeps downloaded weights: ``$KERAS_HOME/models``, by default ``~/.keras/models``."""
    return os.path.join(os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras"), "models")


def imagenet_weights(depth: int) -> str:
    """The local file of keras.applications' ImageNet weights (no top) of ResNet-``depth``.

    The copy in :func:`keras_cache_folder` if there is one (put there by an
    earlier download or by hand), else downloaded into it by
    ``keras.utils.get_file`` (checked against Keras' MD5). Offline, the error
    names the file, where to get it and the folder to put it in.
    """
    if depth not in _IMAGENET_FILES:
        raise ValueError(f"ImageNet weights exist for ResNet depths {sorted(_IMAGENET_FILES)}, got {depth}")
    name, md5 = _IMAGENET_FILES[depth]
    folder = keras_cache_folder()
    if os.path.isfile(os.path.join(folder, name)):
        return os.path.join(folder, name)
    try:
        return keras.utils.get_file(name, _IMAGENET_URL + name, cache_subdir="models", file_hash=md5)
    except Exception as error:  # no network, a proxy, a half download: what to do by hand
        raise FileNotFoundError(
            f"ResNet-{depth} ImageNet weights: {name} is not in the Keras cache {folder} and could not be "
            f"downloaded ({type(error).__name__}: {error}). Fetch {_IMAGENET_URL + name} on a machine with "
            f"network access and put it in {folder} (or set KERAS_HOME), or pass the file's path") from None


def resnet_backbone(
    depth: int = 50,
    *,
    weights: str | None = None,
    freeze_batchnorm: bool = True,
    frozen_stages: int = 0,
) -> keras.Model:
    """ResNet-50/101 v1 from ``keras.applications`` returning ``C2..C5``.

    Args:
      depth: 50 or 101.
      weights: ``None`` (random init), ``"imagenet"`` (keras.applications'
        ImageNet weights, :func:`imagenet_weights`: from the Keras cache, or
        downloaded by Keras on this explicit request) or the path of a local
        ImageNet weights file (``*.h5`` / ``*.weights.h5`` without the top).
      freeze_batchnorm: keep BatchNormalization statistics and affine
        parameters fixed (the usual policy with small per-GPU batches).
      frozen_stages: freeze the stem (1) and also stages 2.. up to this number
        (2 freezes stem + conv2_x, Detectron's ``FREEZE_AT=2``).

    Returns:
      A functional model: ``[B, H, W, 3]`` RGB 0..255 -> ``{"C2": [B, H/4,
      W/4, 256], "C3": .../8 x 512, "C4": .../16 x 1024, "C5": .../32 x 2048}``.
    """
    if depth not in _RESNET_BUILDERS:
        raise ValueError(f"ResNet depth must be one of {sorted(_RESNET_BUILDERS)}, got {depth}")
    if weights == IMAGENET:
        weights = imagenet_weights(depth)
    if weights is not None and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"ResNet-{depth} weights file {weights!r} does not exist; pass a local keras.applications "
            "'..._notop.h5' file, 'imagenet' (Keras' download and cache) or None"
        )
    images = keras.Input(shape=(None, None, 3), name="images")
    x = ImageNormalization(mode="caffe", name="normalize")(images)
    net = _RESNET_BUILDERS[depth](include_top=False, weights=None, input_tensor=x)
    if weights is not None:
        net.load_weights(weights)
    net = _with_fused_batchnorm(net)
    prefixes = ("conv1",) + tuple(f"conv{s}_" for s in range(2, frozen_stages + 1)) if frozen_stages > 0 else ()
    _freeze(net, freeze_batchnorm=freeze_batchnorm, frozen_prefixes=prefixes)
    outputs = {
        f"C{level}": net.get_layer(name).output
        for level, name in zip(range(2, 6), _RESNET_STAGE_OUTPUTS[depth])
    }
    return keras.Model(net.input, outputs, name=f"resnet{depth}")


def _conv_bn(x, filters: int, stride: int, name: str):
    x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = FusedBatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def tiny_backbone(*, widths: tuple[int, ...] = (24, 48, 96, 160), freeze_batchnorm: bool = False) -> keras.Model:
    """A small residual CNN that trains in minutes on a CPU (demo and tests).

    Args:
      widths: channels of C2..C5.
      freeze_batchnorm: as for :func:`resnet_backbone`.

    Returns:
      A functional model ``[B, H, W, 3]`` -> ``{"C2".."C5"}`` with strides 4..32.
    """
    images = keras.Input(shape=(None, None, 3), name="images")
    x = ImageNormalization(mode="unit", name="normalize")(images)
    x = _conv_bn(x, widths[0] // 2, 2, "stem")
    outputs = {}
    for level, filters in zip(range(2, 6), widths):
        x = _conv_bn(x, filters, 2, f"c{level}_down")
        y = _conv_bn(x, filters, 1, f"c{level}_a")
        y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"c{level}_b_conv")(y)
        y = FusedBatchNormalization(name=f"c{level}_b_bn")(y)
        x = keras.layers.ReLU(name=f"c{level}_out")(keras.layers.Add(name=f"c{level}_add")([x, y]))
        outputs[f"C{level}"] = x
    model = keras.Model(images, outputs, name="tiny")
    _freeze(model, freeze_batchnorm=freeze_batchnorm, frozen_prefixes=())
    return model


BACKBONES = ("resnet50", "resnet101", "tiny")


@dataclasses.dataclass(frozen=True)
class BackboneSpec(Spec):
    """A backbone of :data:`BACKBONES`, built by :func:`build_backbone`.

    Attributes:
      name: ``"resnet50"``, ``"resnet101"`` or ``"tiny"``.
      weights: local weights file (ImageNet ``*_notop.h5`` for ResNets, a
        saved tiny backbone), ``"imagenet"`` (ResNets: Keras' download and
        cache, :func:`imagenet_weights`) or None (random initialisation).
      freeze_batchnorm: keep BatchNorm statistics and affine parameters fixed.
    """

    name: str = "resnet50"
    weights: str | None = None
    freeze_batchnorm: bool = True

    def _check(self):
        if self.name not in BACKBONES:
            self._fail("name", f"must be one of {BACKBONES}")

    def build(self) -> keras.Model:
        return build_backbone(self.name, weights=self.weights, freeze_batchnorm=self.freeze_batchnorm)


def build_backbone(name: str, *, weights: str | None = None, freeze_batchnorm: bool = True) -> keras.Model:
    """Builds one of :data:`BACKBONES` by name (the name is what configs store)."""
    if name == "resnet50":
        return resnet_backbone(50, weights=weights, freeze_batchnorm=freeze_batchnorm)
    if name == "resnet101":
        return resnet_backbone(101, weights=weights, freeze_batchnorm=freeze_batchnorm)
    if name == "tiny":
        model = tiny_backbone(freeze_batchnorm=freeze_batchnorm)
        if weights == IMAGENET:
            raise ValueError("the tiny backbone has no ImageNet weights: use resnet50 / resnet101 for "
                             "weights='imagenet', or give the tiny one a file it saved")
        if weights is not None:
            # Weights of a tiny backbone trained earlier (``detector.backbone.save_weights(path)``).
            if not os.path.isfile(weights):
                raise FileNotFoundError(f"tiny backbone weights file not found: {weights!r}")
            model.load_weights(weights)
        return model
    raise ValueError(f"unknown backbone {name!r}; valid names are {BACKBONES}")


def check_backbone(model: keras.Model, *, min_level: int = 2, size: int = 64) -> None:
    """Raises ValueError unless ``model`` keeps the backbone contract from ``C<min_level>`` up.

    The contract: ``[B, H, W, 3]`` RGB pixels in 0..255 (float) -> a dict
    with ``"C<l>": [B, ceil(H / 2**l), ceil(W / 2**l), C_l]`` for ``l =
    min_level..5`` (other entries are ignored). Checked by calling it on one
    blank ``size`` x ``size`` image.
    """
    try:
        found = model(tf.zeros([1, size, size, 3]), training=False)
    except Exception as error:  # noqa: BLE001 -- whatever a user model raises, the contract is broken
        raise ValueError(f"backbone model {model.name!r} does not take [B, H, W, 3] images: "
                         f"{type(error).__name__}: {str(error)[:300]}") from None
    levels = [f"C{level}" for level in range(min_level, 6)]
    if not isinstance(found, Mapping) or not set(levels) <= set(found):
        keys = sorted(found) if isinstance(found, Mapping) else type(found).__name__
        raise ValueError(f"backbone model {model.name!r} must return a dict with {levels} (C<l> of stride 2**l), "
                         f"got {keys}")
    for level, key in zip(range(min_level, 6), levels):
        shape, side = tuple(found[key].shape), -(-size // 2**level)
        if len(shape) != 4 or shape[1:3] != (side, side):
            raise ValueError(f"backbone model {model.name!r}: {key} must be [B, H / {2**level}, W / {2**level}, C] "
                             f"({side}x{side} for a {size}x{size} image), got {shape}")


def detector_backbone(value: Any, *, default: BackboneSpec, min_level: int) -> tuple[keras.Model, Any]:
    """A detector's ``backbone`` argument -> ``(model, config entry)``.

    Args:
      value: a name of :data:`BACKBONES`; a :class:`BackboneSpec` or a dict
        of its fields (merged onto ``default``); a ``keras.Model`` keeping
        the contract of :func:`check_backbone`; or such a model serialised
        by ``keras.saving.serialize_keras_object`` (a dict with
        ``"class_name"``, what ``get_config`` stores for it).
      default: the detector's default spec.
      min_level: the finest level the detector's FPN reads.

    Returns:
      The backbone, and its config entry: the spec's fields, or the
      serialised model (its architecture; the weights travel with the
      detector's).
    """
    if isinstance(value, Mapping) and "class_name" in value:
        config = copy.deepcopy(dict(value))
        model = keras.saving.deserialize_keras_object(copy.deepcopy(config))  # (it consumes the dicts it reads)
        if not isinstance(model, keras.Model):
            raise ValueError(f"backbone: the serialised object is a {type(model).__name__}, not a keras.Model")
        check_backbone(model, min_level=min_level)
        return model, config
    if isinstance(value, keras.Model):
        check_backbone(value, min_level=min_level)
        return value, keras.saving.serialize_keras_object(value)
    spec = BackboneSpec(name=value) if isinstance(value, str) else coerce(value, default, "backbone")
    return spec.build(), spec.to_config()


def upsample2x_like(x: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """Nearest-neighbour 2x upsampling of ``x`` cropped to ``like``'s height and width.

    Written as broadcast + reshape + slice rather than ``tf.image.resize``:
    the gradient of ``ResizeNearestNeighbor`` has no XLA kernel, and FPN
    levels are always ``ceil(h / 2)`` of the level below, so 2x then crop is
    exact.

    Args:
      x: ``[B, h, w, C]``.
      like: ``[B, H, W, C']`` with ``H <= 2h`` and ``W <= 2w``.

    Returns:
      ``[B, H, W, C]``.
    """
    shape = tf.shape(x)
    b, h, w, c = shape[0], shape[1], shape[2], shape[3]
    # reshape, not x[:, :, None, :, None, :]: a 6-D StridedSlice is no TFLite builtin
    up = tf.broadcast_to(tf.reshape(x, [b, h, 1, w, 1, c]), [b, h, 2, w, 2, c])
    up = tf.reshape(up, [b, 2 * h, 2 * w, c])
    target = tf.shape(like)
    return up[:, : target[1], : target[2], :]


@keras.saving.register_keras_serializable(package="kdet")
class FPN(keras.layers.Layer):
    """Feature pyramid network (Lin et al. 2017) over ``C2..C5``.

    Levels up to 5 come from the top-down pathway (1x1 lateral, nearest
    upsampling, add, 3x3 smoothing). Levels above 5 come either from 3x3
    stride-2 convs on C5 then ReLU'd P6 (``extra="conv"``, RetinaNet's P6/P7)
    or from stride-2 max pooling of P5 (``extra="maxpool"``, Faster R-CNN's
    P6).

    Args:
      min_level: finest output level (2 or 3).
      max_level: coarsest output level (>= 5).
      filters: channels of every output.
      extra: ``"conv"`` or ``"maxpool"`` for levels above 5.

    Call:
      ``{"C2".."C5"}`` -> ``{"P<min_level>".."P<max_level>"}``, each
      ``[B, H / 2**l, W / 2**l, filters]``.
    """

    def __init__(self, *, min_level: int = 3, max_level: int = 7, filters: int = 256, extra: str = "conv", **kwargs):
        super().__init__(**kwargs)
        if not 2 <= min_level <= 5 or max_level < 5:
            raise ValueError(f"FPN needs 2 <= min_level <= 5 <= max_level, got {min_level}..{max_level}")
        if extra not in ("conv", "maxpool"):
            raise ValueError(f"FPN extra must be 'conv' or 'maxpool', got {extra!r}")
        self.min_level, self.max_level, self.filters, self.extra = min_level, max_level, filters, extra
        levels = range(min_level, 6)
        self.laterals = [keras.layers.Conv2D(filters, 1, name=f"lateral_c{lvl}") for lvl in levels]
        self.smooths = [keras.layers.Conv2D(filters, 3, padding="same", name=f"output_p{lvl}") for lvl in levels]
        self.extras = [
            keras.layers.Conv2D(filters, 3, strides=2, padding="same", name=f"output_p{lvl}")
            if extra == "conv"
            else keras.layers.MaxPooling2D(1, strides=2, name=f"output_p{lvl}")
            for lvl in range(6, max_level + 1)
        ]

    def call(self, features):
        levels = list(range(self.min_level, 6))
        top = None
        outputs = {}
        for lvl, lateral, smooth in reversed(list(zip(levels, self.laterals, self.smooths))):
            x = lateral(features[f"C{lvl}"])
            if top is not None:
                x = x + upsample2x_like(top, x)
            top = x
            outputs[f"P{lvl}"] = smooth(x)
        x = features["C5"] if self.extra == "conv" else outputs["P5"]
        for i, (lvl, layer) in enumerate(zip(range(6, self.max_level + 1), self.extras)):
            x = layer(tf.nn.relu(x) if (self.extra == "conv" and i > 0) else x)
            outputs[f"P{lvl}"] = x
        return {f"P{lvl}": outputs[f"P{lvl}"] for lvl in range(self.min_level, self.max_level + 1)}

    def get_config(self):
        return {
            **super().get_config(),
            "min_level": self.min_level,
            "max_level": self.max_level,
            "filters": self.filters,
            "extra": self.extra,
        }
