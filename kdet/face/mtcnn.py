"""MTCNN's P-, R- and O-Net as face-cascade branches, and its published weights in kdet.

Zhang et al.'s MTCNN is the real-face cascade most face pipelines start from.
The ``mtcnn`` package (1.0.0, MIT licence, copyright (c) 2019-2024 Iván de Paz
Centeno; kdet keeps the notice in ``docs/third_party/mtcnn_LICENSE.txt``)
ships its three networks' weights in its wheel. kdet has the three exact
architectures as branches of :class:`~kdet.face.cascade.FaceCascade`
(``architecture="mtcnn"``) and :func:`kdet.face.mtcnn_weights.from_mtcnn` copies the weights in, so
kdet's tensor test pipeline, its exports (SavedModel, TFLite) and its joint
training run MTCNN's weights. ``mtcnn`` is an optional extra (``pip install
-e .[bench]``); only :mod:`kdet.face.mtcnn_weights` reads it, never at run time.

Each branch has the contract of kdet's own (:mod:`kdet.face.nets`): raw
logits (MTCNN's softmax is the cascade's), offsets, and a feature that the
next branch concatenates. The links are the paper's cross-stage features
(P-Net's 32-d into R-Net, R-Net's into O-Net, Qin et al. Sec. 4.1): their
rows of the output layers start at zero, so a converted model gives MTCNN's
outputs exactly and joint fine-tuning can learn to use them.

Two exact rewrites of the package's networks, both in the converter:
R- and O-Net flatten a width-height transposed map (``Permute((2, 1, 3))``,
from the Caffe original); kdet flattens the map as it is and permutes the
fully-connected layer's rows instead, which saves a TRANSPOSE in every
export. The offsets' columns are reordered from MTCNN's ``(x1, y1, x2, y2)``
to kdet's yxyx, and the landmarks' from ``(x1..x5, y1..y5)`` to
``(y1, x1, ..., y5, x5)``.
"""

from __future__ import annotations

import numpy as np
import keras
import tensorflow as tf

from kdet.heads import OUTPUT_DTYPE

__all__ = ["MTCNN_LANDMARKS", "MTCNN_TEST_SETTINGS", "ONetBranch", "PNetBranch", "RNetBranch"]

#: The five landmarks of O-Net, in the order of ``detection_keypoints``.
MTCNN_LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
#: MTCNN's input normalisation: ``(pixel - 127.5) / 128``.
PIXEL_MEAN = (127.5, 127.5, 127.5)
PIXEL_SCALE = 1.0 / 128.0
#: kdet's test pipeline set up as the ``mtcnn`` package's defaults: thresholds 0.6 / 0.7 / 0.8, a pyramid
#: of factor 0.709 (~2 levels per octave) of area-resized levels from ``min_face_size`` 20, no response-map
#: pooling, NMS after every stage, later patches bilinear from the image, its final "min" NMS at 0.7.
MTCNN_TEST_SETTINGS = {"min_face_size": 20.0, "levels_per_octave": 2, "pyramid": "area",
                       "thresholds": (0.6, 0.7, 0.8), "pool_size": 1, "stage1_max_boxes": 400,
                       "stage1_nms_iou": 0.5, "stage2_max_boxes": 100, "stage2_nms_iou": 0.7,
                       "crop_source": "image", "crop_method": "bilinear", "nms_iou_threshold": 0.3,
                       "containment_threshold": 0.7}


def _conv(filters, kernel, name):
    return keras.layers.Conv2D(filters, kernel, name=name)


def _prelu(name, shared=True):
    return keras.layers.PReLU(shared_axes=[1, 2] if shared else None, name=name)


@keras.saving.register_keras_serializable(package="kdet")
class PNetBranch(keras.layers.Layer):
    """MTCNN's P-Net as branch x12: fully convolutional, a 12x12 window at stride 2.

    ``conv3x3(10) -> PReLU -> maxpool2/2 (same) -> conv3x3(16) -> PReLU ->
    conv3x3(32) -> PReLU`` (the 32-d feature), 1x1 convs for the logits and
    offsets. Output cell ``(i, j)`` sees input rows ``[2i, 2i + 12)``.

    Call:
      ``images``: ``[B, H, W, 3]`` preprocessed (H, W >= 12).
      Returns ``{"feature": [B, h, w, 32], "logits": [B, h, w, 2], "offsets": [B, h, w, 4]}``.
    """

    feature_size = 32
    input_extent = 12

    def __init__(self, *, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.dropout = dropout
        self.layers_ = [_conv(10, 3, "conv1"), _prelu("prelu1"),
                        keras.layers.MaxPooling2D(2, strides=2, padding="same", name="pool1"),
                        _conv(16, 3, "conv2"), _prelu("prelu2"), _conv(32, 3, "conv3"), _prelu("prelu3")]
        self.drop = keras.layers.Dropout(dropout, name="dropout")
        self.logits = keras.layers.Conv2D(2, 1, name="logits", dtype=OUTPUT_DTYPE)
        self.offsets = keras.layers.Conv2D(4, 1, name="offsets", dtype=OUTPUT_DTYPE)

    def build(self, input_shape):
        shape = (None, 12, 12, input_shape[-1])
        for layer in self.layers_:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.logits.build(shape)
        self.offsets.build(shape)
        self.built = True

    def trunk(self, images):
        """The ``[B, h, w, 32]`` feature alone."""
        x = images
        for layer in self.layers_:
            x = layer(x)
        return x

    def call(self, images, training=False):
        feature = self.trunk(images)
        x = self.drop(feature, training=training)
        return {"feature": feature, "logits": self.logits(x), "offsets": self.offsets(x)}

    def get_config(self):
        return {**super().get_config(), "dropout": self.dropout}


class _MTCNNPatchNet(keras.layers.Layer):
    """R- or O-Net: conv trunk with PReLU, fc + PReLU, joined with the previous branch's feature."""

    patch_size = 0
    trunk_spec: tuple = ()  # (filters, kernel, pool (size, stride, padding) or None)
    units = 0
    keypoints = False

    def __init__(self, *, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.dropout = dropout
        self.layers_ = []
        for i, (filters, kernel, pool) in enumerate(self.trunk_spec):
            self.layers_ += [_conv(filters, kernel, f"conv{i + 1}"), _prelu(f"prelu{i + 1}")]
            if pool:
                self.layers_.append(keras.layers.MaxPooling2D(pool[0], strides=pool[1], padding=pool[2],
                                                              name=f"pool{i + 1}"))
        self.flatten = keras.layers.Flatten(name="flatten")
        self.fc = keras.layers.Dense(self.units, name="fc")
        self.fc_prelu = _prelu("fc_prelu", shared=False)
        self.drop = keras.layers.Dropout(dropout, name="dropout")
        self.logits = keras.layers.Dense(2, name="logits", dtype=OUTPUT_DTYPE)
        self.offsets = keras.layers.Dense(4, name="offsets", dtype=OUTPUT_DTYPE)
        self.landmarks = keras.layers.Dense(10, name="landmarks", dtype=OUTPUT_DTYPE) if self.keypoints else None
        if self.landmarks is not None:  # kdet's face data have no landmarks: fine-tuning keeps the published layer
            self.landmarks.trainable = False

    @property
    def input_extent(self) -> int:
        return self.patch_size

    def build(self, input_shape):
        patch_shape, previous_shape = input_shape
        shape = (None, self.patch_size, self.patch_size, patch_shape[-1])
        for layer in self.layers_:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.fc.build((None, int(np.prod(shape[1:]))))
        self.fc_prelu.build((None, self.units))
        joined = (None, self.units + previous_shape[-1])
        for layer in (self.logits, self.offsets, self.landmarks):
            if layer is not None:
                layer.build(joined)
        self.built = True

    def call(self, inputs, training=False):
        x, previous = inputs
        for layer in self.layers_:
            x = layer(x)
        feature = tf.concat([self.fc_prelu(self.fc(self.flatten(x))), tf.cast(previous, x.dtype)], axis=-1)
        x = self.drop(feature, training=training)
        out = {"feature": feature, "logits": self.logits(x), "offsets": self.offsets(x)}
        if self.landmarks is not None:
            out["landmarks"] = self.landmarks(x)
        return out

    def get_config(self):
        return {**super().get_config(), "dropout": self.dropout}


@keras.saving.register_keras_serializable(package="kdet")
class RNetBranch(_MTCNNPatchNet):
    """MTCNN's R-Net as branch x12-x24, on 24x24 patches.

    ``conv3x3(28) -> pool3/2 (same) -> conv3x3(48) -> pool3/2 -> conv2x2(64) ->
    fc(128)``, PReLU after each. Call: ``(patches [N, 24, 24, 3], feature12 [N, 32])``;
    returns ``{"feature": [N, 160], "logits": [N, 2], "offsets": [N, 4]}``.
    """

    patch_size = 24
    trunk_spec = ((28, 3, (3, 2, "same")), (48, 3, (3, 2, "valid")), (64, 2, None))
    units = 128


@keras.saving.register_keras_serializable(package="kdet")
class ONetBranch(_MTCNNPatchNet):
    """MTCNN's O-Net as branch x12-x24-x48, on 48x48 patches, with five landmarks.

    ``conv3x3(32) -> pool3/2 (same) -> conv3x3(64) -> pool3/2 -> conv3x3(64) ->
    pool2/2 (same) -> conv2x2(128) -> fc(256)``, PReLU after each. Call:
    ``(patches [N, 48, 48, 3], feature24 [N, 160])``; returns ``{"feature":
    [N, 416], "logits": [N, 2], "offsets": [N, 4], "landmarks": [N, 10]}``,
    the landmarks ``(y, x)`` pairs in :data:`MTCNN_LANDMARKS` order, each a
    fraction of the patch's box from its top-left corner.
    """

    patch_size = 48
    trunk_spec = ((32, 3, (3, 2, "same")), (64, 3, (3, 2, "valid")), (64, 3, (2, 2, "same")), (128, 2, None))
    units = 256
    keypoints = True
