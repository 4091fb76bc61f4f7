"""Multilevel anchors for a feature pyramid.

Anchors of level ``l`` sit at the centres of the stride-``2**l`` grid cells,
``((i + 0.5) * 2**l, (j + 0.5) * 2**l)``. At every location there are
``num_scales * len(aspect_ratios)`` anchors, scale-major: for octave scale
``s`` and ratio ``r`` (width / height) the anchor has area
``(anchor_size * 2**l * 2**(s / num_scales))**2`` and width ``sqrt(r)`` times
its side. RetinaNet: levels 3-7, 3 scales, ratios (0.5, 1, 2), size 4
(32..512 px at 3 scales). Faster R-CNN's RPN on FPN: levels 2-6, 1 scale,
3 ratios, size 8.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import tensorflow as tf

from kdet.specs import Spec


@dataclasses.dataclass(frozen=True)
class AnchorSpec(Spec):
    """What anchors a detector places: levels, octave scales, ratios and base size.

    A :class:`kdet.specs.Spec`: ``to_config()`` is its fields, and detectors
    also take that dict. The defaults are RetinaNet's.

    Attributes:
      min_level: finest pyramid level (stride ``2**min_level``).
      max_level: coarsest pyramid level.
      num_scales: octave scales per level.
      aspect_ratios: width / height of each anchor shape.
      anchor_size: base anchor side as a multiple of the level's stride.
    """

    bounds = {"num_scales": ">= 1", "anchor_size": "> 0"}
    min_level: int = 3
    max_level: int = 7
    num_scales: int = 3
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)
    anchor_size: float = 4.0

    def _check(self):
        if self.min_level > self.max_level:
            self._fail("min_level", f"must be <= max_level {self.max_level}")
        if not self._tuple("aspect_ratios") or min(self.aspect_ratios) <= 0:
            self._fail("aspect_ratios", "must hold at least one positive ratio")

    @property
    def levels(self) -> range:
        return range(self.min_level, self.max_level + 1)

    @property
    def anchors_per_location(self) -> int:
        return self.num_scales * len(self.aspect_ratios)

    def feature_sizes(self, image_size: Sequence[int]) -> list[tuple[int, int]]:
        """``(height, width)`` of each level's feature map for an input of ``image_size``."""
        h, w = int(image_size[0]), int(image_size[1])
        return [(-(-h // 2**lvl), -(-w // 2**lvl)) for lvl in self.levels]

    def num_anchors(self, image_size: Sequence[int]) -> int:
        return sum(fh * fw for fh, fw in self.feature_sizes(image_size)) * self.anchors_per_location


def level_anchors(spec: AnchorSpec, level: int, feature_size: Sequence[int]) -> tf.Tensor:
    """Anchors of one level.

    Args:
      spec: the anchor specification.
      level: pyramid level ``l`` (stride ``2**l``).
      feature_size: ``(height, width)`` of the level's feature map.

    Returns:
      ``[height * width * A, 4]`` yxyx anchors, ordered (row, column, anchor),
      the order in which a head's ``[B, H, W, A * k]`` output flattens.
    """
    stride = float(2**level)
    sizes = []
    for scale in range(spec.num_scales):
        side = spec.anchor_size * stride * 2.0 ** (scale / spec.num_scales)
        for ratio in spec.aspect_ratios:
            sizes.append((side / ratio**0.5, side * ratio**0.5))  # (h, w)
    half = 0.5 * tf.constant(sizes, tf.float32)  # [A, 2]
    ys = (tf.range(feature_size[0], dtype=tf.float32) + 0.5) * stride
    xs = (tf.range(feature_size[1], dtype=tf.float32) + 0.5) * stride
    cy, cx = tf.meshgrid(ys, xs, indexing="ij")
    centers = tf.stack([cy, cx], axis=-1)[:, :, None, :]  # [H, W, 1, 2]
    boxes = tf.concat([centers - half, centers + half], axis=-1)  # [H, W, A, 4]
    return tf.reshape(boxes, [-1, 4])


def multilevel_anchors(spec: AnchorSpec, image_size: Sequence[int]) -> dict[int, tf.Tensor]:
    """Anchors of every level for a (padded) input of ``image_size``.

    Returns:
      ``{level: [H_l * W_l * A, 4]}`` yxyx pixels.
    """
    return {
        lvl: level_anchors(spec, lvl, fs)
        for lvl, fs in zip(spec.levels, spec.feature_sizes(image_size))
    }


def anchors_for_image(spec: AnchorSpec, image_size) -> list[tf.Tensor]:
    """Anchors of every level for an input of ``image_size`` (h, w), which may be a tensor.

    Level ``l``'s feature map is ``ceil(h / 2**l) x ceil(w / 2**l)``: what
    stride-2 "same" convolutions (and keras.applications' ResNet) produce.

    Returns:
      list of ``[N_l, 4]`` yxyx anchors; concatenated they line up with a
      head's flattened outputs.
    """
    return [
        level_anchors(spec, lvl, [(image_size[0] + 2**lvl - 1) // 2**lvl, (image_size[1] + 2**lvl - 1) // 2**lvl])
        for lvl in spec.levels
    ]


def flat_anchors(spec: AnchorSpec, image_size: Sequence[int]) -> tf.Tensor:
    """All anchors concatenated level by level: ``[N, 4]`` yxyx pixels."""
    return tf.concat(list(multilevel_anchors(spec, image_size).values()), axis=0)
