"""The three branches of the jointly trained face cascade (Qin et al., Sec. 4.1, Fig. 1).

Each branch is one Keras layer returning raw tensors: a feature, two
face/non-face logits and four box offsets (Eq. 2-5, normalised). The later
branches take the earlier branches' features as a second input, which is what
makes the cascade one network: ``x12-x24`` concatenates its 128-d ``24fc``
with ``x12``'s 16-d feature ("12-24fc", 144-d), and ``x12-x24-x48``
concatenates its 256-d ``48fc`` with that (400-d). The paper fixes only
x12's ``1x16x1x1`` last feature and the fc widths; the x12 and x24 trunks
follow the 12- and 24-nets of Li et al.'s CNN cascade, which the paper
builds on, and the x48 trunk MTCNN's leaner O-net (see :class:`Face48Net`).

:class:`ThresholdControl` is the paper's threshold-control layer: a mask of
the samples whose previous-branch face probability passed a threshold, with
no gradient of its own.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kdet.heads import OUTPUT_DTYPE


def _outputs(prefix: str, dropout: float) -> tuple[keras.layers.Layer, ...]:
    return (
        keras.layers.Dropout(dropout, name=f"{prefix}_dropout"),
        keras.layers.Dense(2, name=f"{prefix}_logits", dtype=OUTPUT_DTYPE),
        keras.layers.Dense(4, name=f"{prefix}_offsets", dtype=OUTPUT_DTYPE),
    )


@keras.saving.register_keras_serializable(package="kdet")
class Face12Net(keras.layers.Layer):
    """Branch x12: a fully convolutional proposal net with stride 2 and a 12x12 window.

    ``conv3x3(16) -> maxpool3x3/2 -> conv4x4(16)`` (the "1x16x1x1" feature
    on a 12x12 input), then 1x1 convs for the logits and offsets. On an image
    of any size it slides the 12x12 window with stride 2: output cell ``(i,
    j)`` sees input rows ``[2i, 2i + 12)`` and columns ``[2j, 2j + 12)``.

    Args:
      filters: channels of both convs (16 in the paper).
      dropout: dropout rate before the output layers (training only).

    Call:
      ``images``: ``[B, H, W, 3]`` float, preprocessed (H, W >= 12).
      Returns ``{"feature": [B, h, w, 16], "logits": [B, h, w, 2],
      "offsets": [B, h, w, 4]}`` with ``h = (H - 5) // 2 - 2``.
    """

    def __init__(self, *, filters: int = 16, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.dropout = dropout
        self.conv1 = keras.layers.Conv2D(filters, 3, activation="relu", name="conv1")
        self.pool = keras.layers.MaxPooling2D(3, strides=2, name="pool1")
        self.conv2 = keras.layers.Conv2D(filters, 4, activation="relu", name="conv2")
        self.drop = keras.layers.Dropout(dropout, name="dropout")
        self.logits = keras.layers.Conv2D(2, 1, name="logits", dtype=OUTPUT_DTYPE)
        self.offsets = keras.layers.Conv2D(4, 1, name="offsets", dtype=OUTPUT_DTYPE)

    def build(self, input_shape):
        channels = input_shape[-1]
        self.conv1.build((None, None, None, channels))
        self.pool.build((None, None, None, self.filters))
        self.conv2.build((None, None, None, self.filters))
        self.logits.build((None, None, None, self.filters))
        self.offsets.build((None, None, None, self.filters))
        self.built = True

    @property
    def feature_size(self) -> int:
        """Channels of the feature the next branch concatenates."""
        return self.filters

    @property
    def input_extent(self) -> int:
        """Input rows one output reads: 11 of the 12-pixel window (see :func:`trunk_extent`)."""
        return trunk_extent(((self.filters, 3, (3, 2)), (self.filters, 4, None)), 12)

    def trunk(self, images):
        """The ``[B, h, w, filters]`` feature alone (the test pipeline applies the outputs itself)."""
        return self.conv2(self.pool(self.conv1(images)))

    def call(self, images, training=False):
        feature = self.trunk(images)
        x = self.drop(feature, training=training)
        return {"feature": feature, "logits": self.logits(x), "offsets": self.offsets(x)}

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "dropout": self.dropout}


def trunk_output_size(trunk, size: int) -> int:
    """Output side of a conv trunk on a ``size`` input (< 1: the input is too small).

    ``trunk`` is ``(filters, kernel, pool)`` per valid conv (``pool`` a
    ``(size, stride)`` valid max pooling or None), as :class:`_PatchNet`'s.
    """
    for _, kernel, pool in trunk:
        size = size - kernel + 1
        if pool:
            size = (size - pool[0]) // pool[1] + 1
    return size


def trunk_extent(trunk, size: int) -> int:
    """The top-left rows of a ``size`` input that a conv trunk's outputs read (``trunk`` as above)."""
    out = trunk_output_size(trunk, size)
    if out < 1:
        raise ValueError(f"a {size}-pixel input is too small for trunk {trunk}")
    size = out
    for _, kernel, pool in reversed(trunk):  # rows of each input that the last output rows read
        if pool:
            size = (size - 1) * pool[1] + pool[0]
        size = size + kernel - 1
    return size


class _PatchNet(keras.layers.Layer):
    """A conv trunk + fc on fixed-size patches, concatenated with an earlier branch's feature.

    ``trunk`` is ``(filters, kernel, pool)`` per conv (valid padding, ReLU),
    ``pool`` a ``(size, stride)`` max pooling after it or None.
    """

    patch_size = 0
    trunk: tuple = ()

    def __init__(self, *, units: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dropout = dropout
        self.convs, self.pools = [], []
        for i, (filters, kernel, pool) in enumerate(self.trunk):
            self.convs.append(keras.layers.Conv2D(filters, kernel, activation="relu", name=f"conv{i + 1}"))
            self.pools.append(keras.layers.MaxPooling2D(pool[0], strides=pool[1], name=f"pool{i + 1}")
                              if pool else None)
        self.flatten = keras.layers.Flatten(name="flatten")
        self.fc = keras.layers.Dense(units, activation="relu", name="fc")
        self.drop, self.logits, self.offsets = _outputs("out", dropout)

    def build(self, input_shape):
        patch_shape, previous_shape = input_shape
        channels = patch_shape[-1]
        for conv, (filters, _, _) in zip(self.convs, self.trunk):
            conv.build((None, None, None, channels))
            channels = filters
        size = trunk_output_size(self.trunk, self.patch_size)
        self.fc.build((None, size * size * channels))
        joined = self.units + previous_shape[-1]
        self.logits.build((None, joined))
        self.offsets.build((None, joined))
        self.built = True

    @property
    def input_extent(self) -> int:
        """Rows (and columns) of a patch that the outputs depend on, from the top left.

        Valid convolutions and pooling that drops an incomplete last window
        can leave the last rows of a patch unread: x12-x24-x48 reads 41 of
        its 48 (``46 -> pool -> 22`` uses 45 rows of conv1's 46, and so
        on), Li's x12-x24 trunk 23 of its 24. :meth:`call` slices larger
        patches to this; cropping only these samples saves the rest.
        """
        return trunk_extent(self.trunk, self.patch_size)

    def call(self, inputs, training=False):
        patches, previous = inputs
        extent = self.input_extent
        if patches.shape[1] is not None and patches.shape[1] > extent:  # the same outputs, less work
            patches = patches[:, :extent, :extent]
        x = patches
        for conv, pool in zip(self.convs, self.pools):
            x = conv(x)
            x = pool(x) if pool is not None else x
        feature = tf.concat([self.fc(self.flatten(x)), tf.cast(previous, x.dtype)], axis=-1)
        x = self.drop(feature, training=training)
        return {"feature": feature, "logits": self.logits(x), "offsets": self.offsets(x)}

    def get_config(self):
        return {**super().get_config(), "units": self.units, "dropout": self.dropout}


#: x12-x24's conv trunks before its 128-d fc (the paper fixes only the fc): "li" is Li et al.'s 24-net,
#: ``conv5x5(64) -> maxpool3x3/2`` (~1.9M multiply-adds a patch); "rnet" MTCNN's R-net trunk,
#: ``conv3x3(28) -> pool3/2 -> conv3x3(48) -> pool3/2 -> conv2x2(64)`` (~1.5M with a 576-d instead
#: of a 5184-d fc input); "li32" Li's trunk with 32 filters. Their times are in docs/benchmarks.md. The
#: face benchmark trains "li": with either of the others joint training no longer beat separate training
#: at one seed.
X24_TRUNKS = {"li": ((64, 5, (3, 2)),), "li32": ((32, 5, (3, 2)),),
              "rnet": ((28, 3, (3, 2)), (48, 3, (3, 2)), (64, 2, None))}


@keras.saving.register_keras_serializable(package="kdet")
class Face24Net(_PatchNet):
    """Branch x12-x24: a conv trunk (:data:`X24_TRUNKS`) -> fc(128) on 24x24 patches.

    ``trunk="li"`` (default): ``conv5x5(64) -> maxpool3x3/2``, Li et al.'s
    24-net, about 1.9M multiply-adds per patch; ``"rnet"``: MTCNN's R-net
    trunk, and ``"li32"``: Li's with 32 filters, both cheaper per patch
    (x12-x24 runs on every x12 survivor).

    Call:
      ``(patches [N, 24, 24, 3], feature12 [N, 16])``.
      Returns ``{"feature": [N, 128 + 16] ("12-24fc"), "logits": [N, 2],
      "offsets": [N, 4]}``.
    """

    patch_size = 24

    def __init__(self, *, units: int = 128, dropout: float = 0.0, trunk: str = "li", **kwargs):
        if trunk not in X24_TRUNKS:
            raise ValueError(f"trunk must be one of {tuple(X24_TRUNKS)}, got {trunk!r}")
        self.trunk_name = trunk
        self.trunk = X24_TRUNKS[trunk]
        super().__init__(units=units, dropout=dropout, **kwargs)

    def get_config(self):
        return {**super().get_config(), "trunk": self.trunk_name}


@keras.saving.register_keras_serializable(package="kdet")
class Face48Net(_PatchNet):
    """Branch x12-x24-x48: four 3x3/2x2 convs -> fc(256) on 48x48 patches.

    ``conv3x3(32) -> pool3/2 -> conv3x3(64) -> pool3/2 -> conv3x3(64) ->
    pool2/2 -> conv2x2(128) -> fc(256)``: the shape of MTCNN's O-net trunk,
    about 13M multiply-adds per patch, a third of Li et al.'s
    ``conv5x5(64) x 2`` 48-net at the same receptive field (the paper fixes
    only the 256-d fc). The later stages run on every x12 survivor, so this
    is where the frame rate is decided.

    Call:
      ``(patches [N, 48, 48, 3], feature24 [N, 144])``.
      Returns ``{"feature": [N, 256 + 144], "logits": [N, 2], "offsets": [N, 4]}``.
    """

    patch_size = 48
    trunk = ((32, 3, (3, 2)), (64, 3, (3, 2)), (64, 3, (2, 2)), (128, 2, None))

    def __init__(self, *, units: int = 256, dropout: float = 0.0, **kwargs):
        super().__init__(units=units, dropout=dropout, **kwargs)


@keras.saving.register_keras_serializable(package="kdet")
class ThresholdControl(keras.layers.Layer):
    """The threshold-control layer: which samples feed the next branch's loss.

    A sample passes when it passed every earlier control and the previous
    branch gives it a face probability of at least ``threshold`` (0.1 after
    x12, 0.003 after x12-x24 in the paper). The mask is a constant to
    back-propagation: the loss of a later branch reaches the earlier
    branches only through the features it concatenates, and only from the
    samples that pass.

    Call:
      ``logits``: ``[N, 2]`` the previous branch's face/non-face logits.
      ``previous``: optional ``[N]`` float mask of an earlier control.
      Returns ``[N]`` float32 mask in {0, 1}.
    """

    def __init__(self, *, threshold: float, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold

    def call(self, logits, previous=None):
        face = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)[:, 1]
        mask = tf.cast(face >= self.threshold, tf.float32)
        if previous is not None:
            mask *= tf.cast(previous, tf.float32)
        return tf.stop_gradient(mask)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}
