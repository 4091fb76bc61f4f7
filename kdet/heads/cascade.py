"""One RoI box head of a (cascade) Fast R-CNN stage: 2 fc layers, a classifier and a class-agnostic regressor."""

from __future__ import annotations

import keras
import tensorflow as tf

from kdet.heads import OUTPUT_DTYPE


@keras.saving.register_keras_serializable(package="kdet")
class BoxHead(keras.layers.Layer):
    """``flatten -> fc(fc_dim) -> ReLU -> fc(fc_dim) -> ReLU`` then ``C + 1`` logits and 4 box codes.

    Cascade R-CNN (Sec. 4) gives every stage such a head with its own
    weights; the regressor is class-agnostic (one box per RoI), so a stage's
    output boxes can feed the next stage directly.

    The *integral loss* baseline of the paper (Eq. 4) puts several
    classifiers on one head, one per IoU threshold, sharing the regressor:
    ``num_classifiers > 1``.

    Args:
      num_classes: C foreground classes; logit 0 is background.
      fc_dim: width of the two hidden layers (1024).
      num_classifiers: classifiers on the shared fc7 features (1).

    Call:
      ``roi_features`` ``[B, R, S, S, F]`` ->
      ``{"class_logits": [B, R, C + 1], "box_codes": [B, R, 4], "hidden":
      [B, R, fc_dim]}``, plus
      ``"all_class_logits"``: a list of ``num_classifiers`` such logits (the
      first is ``"class_logits"``) when ``num_classifiers > 1``.
    """

    def __init__(self, *, num_classes: int, fc_dim: int = 1024, num_classifiers: int = 1, **kwargs):
        super().__init__(**kwargs)
        if num_classifiers < 1:
            raise ValueError(f"num_classifiers must be >= 1, got {num_classifiers}")
        self.num_classes = num_classes
        self.fc_dim = fc_dim
        self.num_classifiers = num_classifiers
        self.fc1 = keras.layers.Dense(fc_dim, activation="relu", name="fc1")
        self.fc2 = keras.layers.Dense(fc_dim, activation="relu", name="fc2")
        self.classifiers = [
            keras.layers.Dense(num_classes + 1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                               name="class_logits" if k == 0 else f"class_logits_{k + 1}", dtype=OUTPUT_DTYPE)
            for k in range(num_classifiers)
        ]
        self.classifier = self.classifiers[0]
        self.regressor = keras.layers.Dense(
            4, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001), name="box_codes",
            dtype=OUTPUT_DTYPE)

    def build(self, input_shape):
        """``input_shape`` ``(B, R, S, S, F)``: creates every weight (the head can be built before its first call)."""
        flat = int(input_shape[-3]) * int(input_shape[-2]) * int(input_shape[-1])
        self.fc1.build((None, None, flat))
        self.fc2.build((None, None, self.fc_dim))
        for layer in [*self.classifiers, self.regressor]:
            layer.build((None, None, self.fc_dim))
        self.built = True

    def hidden(self, roi_features):
        """The fc7 features ``[B, R, fc_dim]`` (shared by classifier and regressor)."""
        shape = tf.shape(roi_features)
        flat_dim = roi_features.shape[2] * roi_features.shape[3] * roi_features.shape[4]
        x = tf.reshape(roi_features, [shape[0], shape[1], flat_dim])
        return self.fc2(self.fc1(x))

    def probabilities(self, hidden):
        """Softmax ``[B, R, C + 1]`` on fc7 features, averaged over the classifiers."""
        probs = [tf.nn.softmax(c(hidden)) for c in self.classifiers]
        return probs[0] if len(probs) == 1 else tf.add_n(probs) / float(len(probs))

    def call(self, roi_features):
        x = self.hidden(roi_features)
        logits = [c(x) for c in self.classifiers]
        out = {"class_logits": logits[0], "box_codes": self.regressor(x), "hidden": x}
        if self.num_classifiers > 1:
            out["all_class_logits"] = logits
        return out

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "fc_dim": self.fc_dim,
                "num_classifiers": self.num_classifiers}
