"""How the paper trains its face detectors, jointly and separately (Qin et al., Sec. 4.2, 5.2, 6.6).

Cascade (on mined 48x48 samples, :mod:`kdet.data.face_mining`):

* :func:`train_cascade_separate` -- the greedy baseline: x12 alone, then
  x12-x24 on x12's survivors with x12 frozen, then x12-x24-x48 likewise.
* :func:`train_cascade_joint` -- the joint network (Eq. 6), from scratch or
  initialised from separately trained weights (the paper does the latter
  "to make it converge easily").
* :func:`bootstrap_samples` -- an optional step before either: trains x12
  (and x12-x24) greedily on the sliding-window samples, mines the windows of
  the training images that pass it (hard samples), and returns them merged
  with the sliding-window samples, so that many more samples of every batch
  reach the later branches' losses (classical cascade bootstrapping).

RPN + Fast R-CNN (on whole images with ground truth):

* :func:`train_rcnn_joint` -- the paper's two steps: train the RPN, then
  fine-tune the joint network (shared convolutions, both losses) with the
  proposals of that RPN on the training images.
* :func:`train_rcnn_alternating` -- Faster R-CNN's four-step alternating
  training, the paper's "separate" baseline: RPN; Fast R-CNN from scratch on
  those proposals; RPN head re-trained on the Fast R-CNN's frozen
  convolutions; RoI head fine-tuned on the new proposals.

All take the model configuration (keyword arguments) rather than a model,
because each step builds a model with different training switches and
copies the previous step's weights into it. Optimisers come from a factory
so every step starts fresh. Each function returns ``(final_model, steps)``
with ``steps[name] = {"model": ..., "history": ...}`` for every step.
``callbacks`` (optional) are Keras callbacks passed to every ``fit`` of the
procedure (TensorBoard, TerminateOnNaN, a learning-rate schedule by epoch).
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import keras
import numpy as np
import tensorflow as tf

from kdet.data.face_mining import FaceSamples, cascade_window_scorer, mine_hard_samples, samples_dataset
from kdet.detectors.cascade_rcnn import CascadeRCNN
from kdet.detectors.face_cascade import FaceCascade

OptimizerFactory = Callable[[], keras.optimizers.Optimizer]


def default_optimizer(learning_rate: float = 1e-3) -> OptimizerFactory:
    """Adam at ``learning_rate`` (the paper used SGD 1e-3 with momentum over far more iterations)."""
    return lambda: keras.optimizers.Adam(learning_rate)


def _fit(model, data, *, epochs: int, optimizer: OptimizerFactory, verbose, callbacks=None, **kwargs):
    model.compile(optimizer=optimizer())
    return model.fit(data, epochs=epochs, verbose=verbose, shuffle=False, callbacks=list(callbacks or []),
                     **kwargs).history  # data is shuffled


def _copy_weights(model, source):
    for m in (model, source):
        if not m.built:
            m.build(None)
    model.set_weights(source.get_weights())
    return model


# ------------------------------------------------------------------ cascade
def train_cascade_separate(config: Mapping, samples: FaceSamples, *, epochs: int, batch_size: int = 128,
                           optimizer: OptimizerFactory | None = None, seed: int = 0, verbose=2,
                           branch_samples: Mapping[str, FaceSamples] | None = None, callbacks=None):
    """Greedy training: each branch in turn, earlier ones frozen.

    ``branch_samples`` optionally gives a branch's step its own samples
    (e.g. ``{"x24": merged, "x48": merged}`` with ``merged`` from
    :func:`bootstrap_samples`, whose hard samples were mined by this very x12
    when it trains on ``samples`` with the same seed: the classical
    bootstrapped cascade); the others train on ``samples``.
    """
    optimizer = optimizer or default_optimizer()
    branch_samples = dict(branch_samples or {})
    unknown = set(branch_samples) - {"x12", "x24", "x48"}
    if unknown:
        raise ValueError(f"branch_samples keys must be branches x12 / x24 / x48, got {sorted(unknown)}")
    model, steps = None, {}
    for branch in ("x12", "x24", "x48"):
        keras.utils.set_random_seed(seed)
        step = FaceCascade(**{**config, "train_branches": (branch,)})
        if model is not None:
            _copy_weights(step, model)
        data = samples_dataset(branch_samples.get(branch, samples), batch_size=batch_size, seed=seed)
        steps[branch] = {"model": step, "history": _fit(step, data, epochs=epochs, optimizer=optimizer,
                                                         verbose=verbose, callbacks=callbacks)}
        model = step
    return model, steps


def _later_only_dataset(samples: FaceSamples, later_only: np.ndarray, *, batch_size: int, seed: int):
    later_only = np.asarray(later_only, bool)
    if later_only.shape != (len(samples),):
        raise ValueError(f"later_only must be [{len(samples)}] bool, got shape {later_only.shape}")
    y = {"labels": samples.labels, "offsets": samples.offsets, "later_only": later_only}
    return (tf.data.Dataset.from_tensor_slices((samples.patches, y))
            .shuffle(len(samples), seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))


def train_cascade_joint(config: Mapping, samples: FaceSamples, *, epochs: int, batch_size: int = 128,
                        optimizer: OptimizerFactory | None = None, init_from: FaceCascade | None = None,
                        seed: int = 0, verbose=2, later_only: np.ndarray | None = None, callbacks=None):
    """Joint training of all three branches (Eq. 6).

    ``later_only``: optional ``[N]`` bool over ``samples``, the samples whose
    loss counts at x12-x24 and x12-x24-x48 only (e.g. the hard samples of
    :func:`bootstrap_samples`: ``np.arange(len(merged)) >= len(samples)``):
    x12's own loss skips them, they reach the later branches through its
    threshold control as any sample does. Without it x12 learns to reject
    the hard non-faces, and with them faces.
    """
    optimizer = optimizer or default_optimizer()
    keras.utils.set_random_seed(seed)
    model = FaceCascade(**{**config, "train_branches": ("x12", "x24", "x48")})
    if init_from is not None:
        _copy_weights(model, init_from)
    data = (samples_dataset(samples, batch_size=batch_size, seed=seed) if later_only is None else
            _later_only_dataset(samples, later_only, batch_size=batch_size, seed=seed))
    history = _fit(model, data, epochs=epochs, optimizer=optimizer, verbose=verbose, callbacks=callbacks)
    return model, {"joint": {"model": model, "history": history}}


def bootstrap_samples(config: Mapping, samples: FaceSamples, examples: Iterable[Mapping], *, epochs: int,
                      depth: int = 1, batch_size: int = 128, optimizer: OptimizerFactory | None = None,
                      seed: int = 0, verbose=2, progress: bool = False, callbacks=None, **mining):
    """Hard samples mined by a greedily trained first stage, merged with ``samples``.

    Trains x12 alone on ``samples`` (``depth=2``: then x12-x24 on x12's
    survivors, as :func:`train_cascade_separate`), slides its windows over
    the training images ``examples`` (the images ``samples`` came from) and
    keeps those it passes at the model's threshold control(s)
    (:func:`kdet.data.face_mining.mine_hard_samples` with
    :func:`~kdet.data.face_mining.cascade_window_scorer`).

    Args:
      config: :class:`FaceCascade` keyword arguments (``thresholds`` set the
        pass thresholds).
      samples: the sliding-window samples (:func:`~kdet.data.face_mining.mine_face_samples`).
      examples: example dicts (``image [H, W, 3]``, ``boxes [N, 4]``,
        optional ``is_crowd``).
      epochs: per trained branch.
      depth: 1 (mine with x12) or 2 (x12 then x12-x24).
      **mining: forwarded to ``mine_hard_samples`` / ``mine_hard_image``
        (``min_face_size``, ``negatives_per_image``, ``positives_per_face``, ...).

    Returns:
      ``(merged, steps)``: ``merged`` is ``samples`` followed by the hard
      samples (``merged.take(np.arange(len(samples), len(merged)))``);
      ``steps`` the mining model's training steps (``"x12"``, ``"x24"``),
      each ``{"model", "history"}``.
    """
    if depth not in (1, 2):
        raise ValueError(f"depth must be 1 or 2, got {depth}")
    optimizer = optimizer or default_optimizer()
    model, steps = None, {}
    for branch in ("x12", "x24")[:depth]:
        keras.utils.set_random_seed(seed)
        step = FaceCascade(**{**config, "train_branches": (branch,)})
        if model is not None:
            _copy_weights(step, model)
        data = samples_dataset(samples, batch_size=batch_size, seed=seed)
        steps[branch] = {"model": step, "history": _fit(step, data, epochs=epochs, optimizer=optimizer,
                                                         verbose=verbose, callbacks=callbacks)}
        model = step
    thresholds = tuple(model.get_config()["thresholds"])
    scorer = cascade_window_scorer(model, depth=depth, thresholds=thresholds)
    hard = mine_hard_samples(examples, scorer, threshold=thresholds[depth - 1], seed=seed, progress=progress,
                             **mining)
    return samples.concatenate(hard), steps


# --------------------------------------------------------------- RPN + Fast R-CNN
def rpn_proposals(model: CascadeRCNN, images: np.ndarray, *, batch_size: int = 8) -> np.ndarray:
    """The RPN's training-budget proposals for ``images [N, H, W, 3]`` (inference mode).

    Returns ``[N, P, 4]`` float32, zero rows where an image has fewer.
    """
    @tf.function
    def propose(x):
        found = model.rpn.proposals(x, model(x, training=False)["rpn"], training=True)
        return tf.where((found["levels"] >= 0)[..., None], found["boxes"], 0.0)

    return np.concatenate([propose(tf.constant(images[i:i + batch_size], tf.float32)).numpy()
                           for i in range(0, len(images), batch_size)])


def _rcnn_step(config, images, targets, *, epochs, batch_size, optimizer, seed, verbose, source=None,
               frozen=(), proposals=None, callbacks=None, **switches):
    keras.utils.set_random_seed(seed)
    model = CascadeRCNN(**{**config, **switches})
    if source is not None:
        _copy_weights(model, source)
    for path in frozen:
        layer = model
        for name in path.split("."):
            layer = getattr(layer, name)
        layer.trainable = False
    y = dict(targets) if proposals is None else {**targets, "proposals": proposals}
    data = tf.data.Dataset.from_tensor_slices((images, y)).shuffle(len(images), seed=seed).batch(
        batch_size, drop_remainder=True).prefetch(2)
    return model, {"model": model, "history": _fit(model, data, epochs=epochs, optimizer=optimizer, verbose=verbose,
                                                   callbacks=callbacks)}


def train_rcnn_joint(config: Mapping, images: np.ndarray, targets: Mapping[str, np.ndarray], *, rpn_epochs: int,
                     joint_epochs: int, batch_size: int = 4, optimizer: OptimizerFactory | None = None,
                     seed: int = 0, verbose=2, callbacks=None):
    """The two-step joint training (Sec. 5.2).

    Args:
      config: :class:`CascadeRCNN` keyword arguments (e.g.
        :func:`kdet.detectors.face_rcnn.face_rcnn_config`).
      images: ``[N, H, W, 3]`` float32 0..255, one size.
      targets: padded ``boxes [N, M, 4]``, ``classes [N, M]`` (-1 padding),
        optional ``is_crowd``.
    """
    optimizer = optimizer or default_optimizer()
    common = dict(batch_size=batch_size, optimizer=optimizer, seed=seed, verbose=verbose, callbacks=callbacks)
    rpn_model, s1 = _rcnn_step(config, images, targets, epochs=rpn_epochs, stage_loss_weights=(0.0,), **common)
    proposals = rpn_proposals(rpn_model, images)
    joint, s2 = _rcnn_step(config, images, targets, epochs=joint_epochs, source=rpn_model, proposals=proposals,
                           training_proposals="targets", **common)
    return joint, {"rpn": s1, "joint": s2}


def train_rcnn_alternating(config: Mapping, images: np.ndarray, targets: Mapping[str, np.ndarray], *,
                           rpn_epochs: int, rcnn_epochs: int, batch_size: int = 4,
                           optimizer: OptimizerFactory | None = None, seed: int = 0, verbose=2,
                           callbacks=None):
    """Faster R-CNN's four-step alternating training (the separate baseline)."""
    optimizer = optimizer or default_optimizer()
    common = dict(batch_size=batch_size, optimizer=optimizer, seed=seed, verbose=verbose, callbacks=callbacks)
    shared = ("rpn.backbone", "rpn.fpn")
    rpn1, s1 = _rcnn_step(config, images, targets, epochs=rpn_epochs, stage_loss_weights=(0.0,), **common)
    rcnn2, s2 = _rcnn_step(config, images, targets, epochs=rcnn_epochs, proposals=rpn_proposals(rpn1, images),
                           rpn_loss_weight=0.0, training_proposals="targets", **common)
    rpn3, s3 = _rcnn_step(config, images, targets, epochs=rpn_epochs, source=rcnn2, frozen=shared,
                          stage_loss_weights=(0.0,), **common)
    final, s4 = _rcnn_step(config, images, targets, epochs=rcnn_epochs, source=rpn3,
                           frozen=shared + ("rpn.head",), proposals=rpn_proposals(rpn3, images),
                           rpn_loss_weight=0.0, training_proposals="targets", **common)
    return final, {"rpn1": s1, "rcnn2": s2, "rpn3": s3, "rcnn4": s4}
