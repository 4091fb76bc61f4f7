"""One RoI box head of a (cascade) Fast R-CNN stage: 2 fc layers, a classifier and a class-agnostic regressor."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="kdet")
class BoxHead(keras.layers.Layer):
    """``flatten -> fc(fc_dim) -> ReLU -> fc(fc_dim) -> ReLU`` then ``C + 1`` logits and 4 box codes.

    Cascade R-CNN (Sec. 4) gives every stage such a head with its own
    weights; the regressor is class-agnostic (one box per RoI), so a stage's
    output boxes can feed the next stage directly.

    Args:
      num_classes: C foreground classes; logit 0 is background.
      fc_dim: width of the two hidden layers (1024).

    Call:
      ``roi_features`` ``[B, R, S, S, F]`` ->
      ``{"class_logits": [B, R, C + 1], "box_codes": [B, R, 4]}``.
    """

    def __init__(self, *, num_classes: int, fc_dim: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.fc_dim = fc_dim
        self.fc1 = keras.layers.Dense(fc_dim, activation="relu", name="fc1")
        self.fc2 = keras.layers.Dense(fc_dim, activation="relu", name="fc2")
        self.classifier = keras.layers.Dense(
            num_classes + 1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01), name="class_logits")
        self.regressor = keras.layers.Dense(
            4, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001), name="box_codes")

    def hidden(self, roi_features):
        """The fc7 features ``[B, R, fc_dim]`` (shared by classifier and regressor)."""
        shape = tf.shape(roi_features)
        flat_dim = roi_features.shape[2] * roi_features.shape[3] * roi_features.shape[4]
        x = tf.reshape(roi_features, [shape[0], shape[1], flat_dim])
        return self.fc2(self.fc1(x))

    def call(self, roi_features):
        x = self.hidden(roi_features)
        return {"class_logits": self.classifier(x), "box_codes": self.regressor(x)}

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "fc_dim": self.fc_dim}
