"""The region proposal network's head (Faster R-CNN Sec. 3.1), shared across FPN levels."""

from __future__ import annotations

import keras
import tensorflow as tf

from kdet.heads import OUTPUT_DTYPE


@keras.saving.register_keras_serializable(package="kdet")
class RPNHead(keras.layers.Layer):
    """A 3x3 conv + ReLU, then sibling 1x1 convs for objectness and box codes.

    Faster R-CNN's "mini-network" slid over the feature map: ``k`` anchors per
    location get one object/not-object logit each (the excerpt's two-class
    log loss written as a sigmoid) and 4 box codes. New layers are drawn from
    N(0, 0.01) as the excerpt prescribes.

    Args:
      num_anchors: k, anchors per location.
      filters: channels of the 3x3 conv.

    Call:
      ``features``: list of ``[B, H_l, W_l, F]``.
      Returns ``{"objectness": [B, N], "box_codes": [B, N, 4]}``, levels
      concatenated in order, ``N = sum_l H_l * W_l * k``.
    """

    def __init__(self, *, num_anchors: int = 3, filters: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = num_anchors
        self.filters = filters
        init = keras.initializers.RandomNormal(stddev=0.01)
        self.conv = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer=init,
                                        name="conv")
        self.objectness = keras.layers.Conv2D(num_anchors, 1, kernel_initializer=init, name="objectness",
                                             dtype=OUTPUT_DTYPE)
        self.box = keras.layers.Conv2D(num_anchors * 4, 1, kernel_initializer=init, name="box_codes",
                                       dtype=OUTPUT_DTYPE)

    def call(self, features):
        logits, codes = [], []
        for feature in features:
            x = self.conv(feature)
            batch = tf.shape(x)[0]
            logits.append(tf.reshape(self.objectness(x), [batch, -1]))
            codes.append(tf.reshape(self.box(x), [batch, -1, 4]))
        return {"objectness": tf.concat(logits, axis=1), "box_codes": tf.concat(codes, axis=1)}

    def get_config(self):
        return {**super().get_config(), "num_anchors": self.num_anchors, "filters": self.filters}
