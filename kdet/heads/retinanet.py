"""RetinaNet's class and box subnets, shared across pyramid levels."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from kdet.heads import OUTPUT_DTYPE


@keras.saving.register_keras_serializable(package="kdet")
class RetinaNetHead(keras.layers.Layer):
    """Two towers of 3x3 convs + ReLU applied to every pyramid level (Lin et al. 2017, Sec. 4).

    The class subnet's last conv has bias ``-log((1 - pi) / pi)`` so that at
    initialisation every anchor predicts foreground with probability ``pi``
    (the paper's 0.01 prior), which keeps the focal loss of the ~100k
    background anchors from swamping the first iterations.

    Args:
      num_classes: C, foreground classes (no background logit).
      num_anchors: A, anchors per location.
      num_convs: convs per tower.
      filters: channels of each tower conv.
      prior_probability: pi.
      num_box_outputs: number of box regressions (1; consistent optimization
        uses 2: the second's last conv is the only unshared layer).

    Call:
      ``features``: list of ``[B, H_l, W_l, F]``.
      Returns ``{"class_logits": [B, N, C], "box_codes": [B, N, 4]}`` with
      levels concatenated in order, ``N = sum_l H_l * W_l * A`` (and
      ``"box_codes_2"`` .. when ``num_box_outputs > 1``).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        num_anchors: int = 9,
        num_convs: int = 4,
        filters: int = 256,
        prior_probability: float = 0.01,
        num_box_outputs: int = 1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.num_convs = num_convs
        self.filters = filters
        self.prior_probability = prior_probability
        self.num_box_outputs = num_box_outputs
        init = keras.initializers.RandomNormal(stddev=0.01)

        def tower(prefix):
            return [
                keras.layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer=init,
                                    name=f"{prefix}_conv{i}")
                for i in range(num_convs)
            ]

        self.class_tower = tower("class")
        self.box_tower = tower("box")
        bias = -math.log((1.0 - prior_probability) / prior_probability)
        self.class_out = keras.layers.Conv2D(
            num_anchors * num_classes, 3, padding="same", kernel_initializer=init,
            bias_initializer=keras.initializers.Constant(bias), name="class_logits", dtype=OUTPUT_DTYPE,
        )
        self.box_outs = [
            keras.layers.Conv2D(num_anchors * 4, 3, padding="same", kernel_initializer=init,
                                name="box_codes" if i == 0 else f"box_codes_{i + 1}", dtype=OUTPUT_DTYPE)
            for i in range(num_box_outputs)
        ]

    def _flatten(self, x, depth):
        return tf.reshape(x, [tf.shape(x)[0], -1, depth])

    def call(self, features):
        logits, codes = [], [[] for _ in self.box_outs]
        for feature in features:
            c = feature
            for conv in self.class_tower:
                c = conv(c)
            logits.append(self._flatten(self.class_out(c), self.num_classes))
            b = feature
            for conv in self.box_tower:
                b = conv(b)
            for out, acc in zip(self.box_outs, codes):
                acc.append(self._flatten(out(b), 4))
        outputs = {"class_logits": tf.concat(logits, axis=1)}
        for i, acc in enumerate(codes):
            outputs["box_codes" if i == 0 else f"box_codes_{i + 1}"] = tf.concat(acc, axis=1)
        return outputs

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "num_anchors": self.num_anchors,
            "num_convs": self.num_convs,
            "filters": self.filters,
            "prior_probability": self.prior_probability,
            "num_box_outputs": self.num_box_outputs,
        }
