"""How the face detectors are trained (Qin et al., Sec. 4.2, 5.2, 6.6): the one copy of each procedure.

``kdet train face_cascade`` / ``face_rcnn`` (:mod:`kdet.face.recipe`) and
``benchmarks/face_benchmark.py`` call these functions, so the recipe trains
the procedure whose numbers the benchmark reports.

Cascade (on mined 48x48 samples, :mod:`kdet.face.mining`), as
:func:`train_cascade` composes it from a :class:`CascadeTraining`:

1. :func:`prepare_cascade`: sliding-window samples of the training images
   (offsets normalised by their statistics), then, optionally, hard samples
   mined by a greedily trained x12 (:func:`bootstrap_samples`: the windows of
   the training images that x12 passes, classical cascade bootstrapping).
2. :func:`train_cascade_separate`: the greedy baseline: x12 alone, then
   x12-x24 on x12's survivors with x12 frozen, then x12-x24-x48 likewise.
   When the hard samples train the later branches only, x12's step is the
   bootstrapping x12 itself (trained once, not again).
3. :func:`train_cascade_joint`: the joint network (Eq. 6), initialised from
   the separately trained weights as the paper does "to make it converge
   easily" (or from scratch).

RPN + Fast R-CNN (on whole images with ground truth):

* :func:`train_rcnn_joint` -- the paper's two steps: train the RPN, then
  fine-tune the joint network (shared convolutions, both losses) with the
  proposals of that RPN on the training images.
* :func:`train_rcnn_alternating` -- Faster R-CNN's four-step alternating
  training, the paper's "separate" baseline.

The functions take the model configuration (keyword arguments) rather than
a model, because each step builds a model with different training switches
(for the R-CNN, :meth:`CascadeRCNN.training_variant`: which losses train, where
the RoIs come from) and copies the previous step's weights into it. Optimisers come from a
factory so every step starts fresh. Each returns ``(final_model, steps)``
with ``steps[name] = {"model": ..., "history": ...}`` for every step.
``callbacks`` (optional) are Keras callbacks passed to every ``fit``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterable, Mapping

import keras
import numpy as np
import tensorflow as tf

from kdet.detectors.cascade_rcnn import CascadeRCNN
from kdet.face.cascade import FaceCascade
from kdet.face.mining import (
    FaceSamples,
    mine_face_samples,
    mine_hard_samples,
    offset_statistics,
    samples_dataset,
)
from kdet.face.mtcnn_weights import mtcnn_joint_config, mtcnn_start
from kdet.face.stages import BRANCHES, window_scorer
from kdet.specs import override
from kdet.training.phases import arrays_phase, fit_phase

OptimizerFactory = Callable[[], keras.optimizers.Optimizer]


def default_optimizer(learning_rate: float = 1e-3) -> OptimizerFactory:
    """Adam at ``learning_rate`` (the paper used SGD 1e-3 with momentum over far more iterations)."""
    return lambda: keras.optimizers.Adam(learning_rate)


def _fit(model, data, *, epochs: int, optimizer: OptimizerFactory, verbose, callbacks=None, **kwargs):
    """One training phase (read back instead when a resumed run finished it before: kdet.training.phases)."""
    model.compile(optimizer=optimizer())
    return fit_phase(model, data, lambda: model.fit(data, epochs=epochs, verbose=verbose, shuffle=False,
                                                    callbacks=list(callbacks or []), **kwargs).history)  # shuffled


def _copy_weights(model, source):
    for m in (model, source):
        if not m.built:
            m.build(None)
    model.set_weights(source.get_weights())
    return model


# ------------------------------------------------------------------ cascade
def _greedy(config: Mapping, branches, samples_of: Callable[[str], FaceSamples], *, epochs: int,
            batch_size: int, optimizer: OptimizerFactory, seed: int, verbose, callbacks,
            trained: Mapping[str, dict] | None = None):
    """Trains ``branches`` in turn, each with the earlier ones frozen; steps in ``trained`` are reused as they are."""
    model, steps = None, {}
    for branch in branches:
        if trained and branch in trained:
            model = trained[branch]["model"]
            steps[branch] = dict(trained[branch], reused=True)
            continue
        keras.utils.set_random_seed(seed)
        step = FaceCascade(**{**config, "train_branches": (branch,)})
        if model is not None:
            _copy_weights(step, model)
        data = samples_dataset(samples_of(branch), batch_size=batch_size, seed=seed)
        steps[branch] = {"model": step, "history": _fit(step, data, epochs=epochs, optimizer=optimizer,
                                                         verbose=verbose, callbacks=callbacks)}
        model = step
    return model, steps


def train_cascade_separate(config: Mapping, samples: FaceSamples, *, epochs: int, batch_size: int = 128,
                           optimizer: OptimizerFactory | None = None, seed: int = 0, verbose=2,
                           branch_samples: Mapping[str, FaceSamples] | None = None, callbacks=None,
                           trained: Mapping[str, dict] | None = None):
    """Greedy training: each branch in turn, earlier ones frozen.

    ``branch_samples`` optionally gives a branch's step its own samples
    (e.g. ``{"x24": merged, "x48": merged}`` with ``merged`` from
    :func:`bootstrap_samples`); the others train on ``samples``.
    ``trained`` (e.g. :func:`bootstrap_samples`' ``{"x12": step}``, trained
    on ``samples`` with this seed) gives steps that are reused instead of
    trained again (their entry in the returned steps has ``reused=True``).
    """
    branch_samples = dict(branch_samples or {})
    unknown = set(branch_samples) - set(BRANCHES)
    if unknown:
        raise ValueError(f"branch_samples keys must be branches x12 / x24 / x48, got {sorted(unknown)}")
    return _greedy(config, BRANCHES, lambda branch: branch_samples.get(branch, samples), epochs=epochs,
                   batch_size=batch_size, optimizer=optimizer or default_optimizer(), seed=seed, verbose=verbose,
                   callbacks=callbacks, trained=trained)


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
                      seed: int = 0, verbose=2, progress: bool | str = False, callbacks=None,
                      scorer_model: FaceCascade | None = None, **mining):
    """Hard samples mined by a greedily trained first stage, merged with ``samples``.

    Trains x12 alone on ``samples`` (``depth=2``: then x12-x24 on x12's
    survivors, as :func:`train_cascade_separate`), slides its windows over
    the training images ``examples`` (the images ``samples`` came from) and
    keeps those it passes at the model's threshold control(s)
    (:func:`kdet.face.mining.mine_hard_samples` with
    :func:`~kdet.face.stages.window_scorer`).

    Args:
      config: :class:`FaceCascade` keyword arguments (``training``'s ``thresholds`` set the
        pass thresholds).
      samples: the sliding-window samples (:func:`~kdet.face.mining.mine_face_samples`).
      examples: example dicts (``image [H, W, 3]``, ``boxes [N, 4]``,
        optional ``is_crowd``).
      epochs: per trained branch.
      depth: 1 (mine with x12) or 2 (x12 then x12-x24).
      scorer_model: a trained cascade whose first ``depth`` branches mine
        (MTCNN's, for ``start="mtcnn"``); None trains them here.
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
    if scorer_model is not None:  # a trained first stage is given (MTCNN's P-Net): nothing to train
        model, steps = scorer_model, {}
    else:
        model, steps = _greedy(config, BRANCHES[:depth], lambda branch: samples, epochs=epochs,
                               batch_size=batch_size, optimizer=optimizer or default_optimizer(), seed=seed,
                               verbose=verbose, callbacks=callbacks)
    thresholds = model.training_spec.thresholds
    scorer = window_scorer(model, depth=depth, thresholds=thresholds)
    hard = arrays_phase("hard-samples", lambda: mine_hard_samples(
        examples, scorer, threshold=thresholds[depth - 1], seed=seed, progress=progress, **mining), FaceSamples)
    return samples.concatenate(hard), steps


# ------------------------------------------------------------ the whole cascade procedure
START = ("separate", "scratch", "none", "mtcnn")
HARD_SAMPLES = ("all", "later_only")


@dataclasses.dataclass(frozen=True)
class CascadeTraining:
    """How the face cascade is trained: what :func:`train_cascade` runs, end to end.

    The defaults are the face benchmark's procedure (``cascade_joint_from_separate``).

    Args:
      epochs: E, epochs of each greedy branch and of bootstrapping's x12.
      joint_epochs: epochs of the joint network (None: E).
      start: the joint network's start: ``"separate"`` (the greedy branches'
        weights, the paper's procedure), ``"scratch"``, ``"none"`` (no
        joint step: the greedy cascade is the result), or ``"mtcnn"``
        (MTCNN's published weights, :mod:`kdet.face.mtcnn_weights`, with the
        cross-stage links at zero: no greedy step, its P-Net bootstraps).
      batch_size: samples per step.
      min_face_size: smallest face mined, pixels (the pyramid starts there).
      positive_fraction, max_positives_per_face, negatives_per_image: the
        sliding-window samples (:func:`kdet.face.mining.mine_face_samples`).
      stride, levels_per_octave, positive_iou, negative_iou: the windows and
        their labels (Sec. 4.2: stride 8, 5 levels an octave, 0.8 / 0.5).
      bootstrap_depth: mine hard samples with x12 (1) or x12-x24 (2); None: none.
      bootstrap_negatives, bootstrap_positives: hard non-faces per image and
        faces per face (before flipping).
      hard_samples: ``"all"``: every branch, x12 included, trains on them;
        ``"later_only"``: x12 trains on the sliding windows only (its greedy
        step is the bootstrapping x12) and x12's own joint loss skips them.
    """

    epochs: int = 2
    joint_epochs: int | None = None
    start: str = "separate"
    batch_size: int = 128
    min_face_size: float = 20.0
    positive_fraction: float = 0.05
    max_positives_per_face: int = 4
    negatives_per_image: int = 80
    stride: int = 8
    levels_per_octave: int = 5
    positive_iou: float = 0.8
    negative_iou: float = 0.5
    bootstrap_depth: int | None = 1
    bootstrap_negatives: int = 64
    bootstrap_positives: int = 2
    hard_samples: str = "all"

    def __post_init__(self):
        if self.start not in START:
            raise ValueError(f"start must be one of {START}, got {self.start!r}")
        if self.hard_samples not in HARD_SAMPLES:
            raise ValueError(f"hard_samples must be one of {HARD_SAMPLES}, got {self.hard_samples!r}")
        if self.bootstrap_depth not in (None, 1, 2):
            raise ValueError(f"bootstrap_depth must be None, 1 or 2, got {self.bootstrap_depth!r}")
        if self.joint_epochs is None:  # resolved here: equal procedures compare equal
            object.__setattr__(self, "joint_epochs", self.epochs)
        if min(self.epochs, self.joint_epochs, self.batch_size) < 1:
            raise ValueError(f"epochs, joint_epochs and batch_size must be >= 1, got {self}")

    def windows(self) -> dict:
        """The window and label settings every mining step shares."""
        return dict(min_face_size=self.min_face_size, stride=self.stride, levels_per_octave=self.levels_per_octave,
                    positive_iou=self.positive_iou, negative_iou=self.negative_iou)


@dataclasses.dataclass
class CascadeSamples:
    """What :func:`prepare_cascade` mined: the training samples and the config they normalise.

    ``samples`` holds the ``sliding`` sliding-window samples first, then the
    hard ones; ``config`` has their ``offset_mean`` / ``offset_std`` (in ``training``);
    ``trained`` the bootstrapping steps (``{"x12": {"model", "history"}}``),
    trained with ``seed``; ``seconds`` the mining and bootstrapping time.
    """

    samples: FaceSamples
    sliding: int
    config: dict
    trained: dict
    seed: int
    seconds: float

    def later_only(self) -> np.ndarray:
        """``[N]`` bool: the hard samples."""
        return np.arange(len(self.samples)) >= self.sliding


def prepare_cascade(config: Mapping, examples: list, training: CascadeTraining, *, seed: int = 0,
                    progress: bool | str = False, optimizer: OptimizerFactory | None = None, verbose=2,
                    callbacks=None) -> CascadeSamples:
    """Step 1 of :func:`train_cascade`: sliding-window samples, offset statistics, optional hard samples.

    Args:
      config: :class:`FaceCascade` keyword arguments (the offsets are set here).
      examples: example dicts (``image [H, W, 3]`` uint8, ``boxes [N, 4]``, optional ``is_crowd``).
      training: the procedure.
      seed: the negative sampling's and bootstrapping x12's seed.
    """
    started = time.perf_counter()
    t = training
    samples = arrays_phase("samples", lambda: mine_face_samples(
        examples, seed=seed, progress=progress, positive_fraction=t.positive_fraction,
        max_positives_per_face=t.max_positives_per_face, negatives_per_image=t.negatives_per_image,
        **t.windows()), FaceSamples)
    start = mtcnn_start(mtcnn_joint_config(config)) if t.start == "mtcnn" else None
    config = start.get_config() if start is not None else override(
        config, {"training": dict(zip(("offset_mean", "offset_std"), offset_statistics(samples)))})
    if verbose:
        print(f"face cascade: {len(samples)} samples ({int((samples.labels == 1).sum())} faces) mined from "
              f"{len(examples)} images", flush=True)
    sliding, trained = len(samples), {}
    if t.bootstrap_depth:
        samples, trained = bootstrap_samples(
            config, samples, examples, epochs=t.epochs, depth=t.bootstrap_depth, batch_size=t.batch_size,
            optimizer=optimizer, seed=seed, verbose=verbose, progress=progress, callbacks=callbacks,
            negatives_per_image=t.bootstrap_negatives, positives_per_face=t.bootstrap_positives, scorer_model=start,
            **t.windows())
        if verbose:
            hard = samples.labels[sliding:]
            print(f"face cascade: {len(hard)} hard samples ({int((hard == 1).sum())} faces) added by "
                  f"bootstrapping", flush=True)
    return CascadeSamples(samples, sliding, config, trained, seed, round(time.perf_counter() - started, 1))


def train_cascade(prepared: CascadeSamples, training: CascadeTraining, *, seed: int = 0,
                  optimizer: OptimizerFactory | None = None, verbose=2, callbacks=None,
                  separate: FaceCascade | None = None):
    """Steps 2 and 3: the greedy branches, then the joint network, on ``prepared``'s samples.

    ``separate``: greedy weights already trained by this procedure with
    ``seed`` (step 2 is then skipped). Returns ``(model, steps)``; the greedy
    steps are ``"x12"``, ``"x24"``, ``"x48"`` (``"reused": True`` on the
    bootstrapping x12), the joint one ``"joint"``.
    """
    t, samples, config = training, prepared.samples, prepared.config
    common = dict(batch_size=t.batch_size, optimizer=optimizer or default_optimizer(), seed=seed, verbose=verbose,
                  callbacks=callbacks)
    later = t.hard_samples == "later_only" and prepared.sliding < len(samples)
    steps: dict = {}
    if t.start == "mtcnn":
        model, joint = train_cascade_joint(config, samples, epochs=t.joint_epochs, init_from=mtcnn_start(config),
                                           **common)
        return model, joint
    if t.start != "scratch" and separate is None:
        if later:  # x12 on the sliding windows: the bootstrapping x12, if it was trained with this seed
            sliding = samples.take(np.arange(prepared.sliding))
            reuse = {k: v for k, v in prepared.trained.items() if k == "x12"} if prepared.seed == seed else None
            separate, steps = train_cascade_separate(config, sliding, epochs=t.epochs, trained=reuse,
                                                     branch_samples={"x24": samples, "x48": samples}, **common)
        else:
            separate, steps = train_cascade_separate(config, samples, epochs=t.epochs, **common)
    if t.start == "none":
        return separate, steps
    model, joint = train_cascade_joint(config, samples, epochs=t.joint_epochs,
                                       init_from=separate if t.start == "separate" else None,
                                       later_only=prepared.later_only() if later else None, **common)
    return model, {**steps, **joint}


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


#: The :meth:`CascadeRCNN.training_variant` of each kind of step: the RPN alone; the RoI head alone (Fast R-CNN) on
#: an earlier RPN's proposals; both losses (shared convolutions) on an earlier RPN's proposals.
RPN_STEP = dict(stage_losses=False)
FAST_RCNN_STEP = dict(rpn_loss=False, proposals="targets")
JOINT_STEP = dict(proposals="targets")


def _rcnn_step(config, variant: Mapping, images, targets, *, epochs, batch_size, optimizer, seed, verbose,
               source=None, frozen=(), proposals=None, callbacks=None):
    """Trains ``CascadeRCNN.training_variant(config, **variant)`` from ``source``'s weights, ``frozen`` layers fixed."""
    keras.utils.set_random_seed(seed)
    model = CascadeRCNN(**CascadeRCNN.training_variant(config, **variant))
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
        :func:`kdet.face.rcnn.face_rcnn_config`).
      images: ``[N, H, W, 3]`` float32 0..255, one size.
      targets: padded ``boxes [N, M, 4]``, ``classes [N, M]`` (-1 padding),
        optional ``is_crowd``.
    """
    optimizer = optimizer or default_optimizer()
    common = dict(batch_size=batch_size, optimizer=optimizer, seed=seed, verbose=verbose, callbacks=callbacks)
    rpn_model, s1 = _rcnn_step(config, RPN_STEP, images, targets, epochs=rpn_epochs, **common)
    proposals = rpn_proposals(rpn_model, images)
    joint, s2 = _rcnn_step(config, JOINT_STEP, images, targets, epochs=joint_epochs, source=rpn_model,
                           proposals=proposals, **common)
    return joint, {"rpn": s1, "joint": s2}


def train_rcnn_alternating(config: Mapping, images: np.ndarray, targets: Mapping[str, np.ndarray], *,
                           rpn_epochs: int, rcnn_epochs: int, batch_size: int = 4,
                           optimizer: OptimizerFactory | None = None, seed: int = 0, verbose=2,
                           callbacks=None):
    """Faster R-CNN's four-step alternating training (the separate baseline)."""
    optimizer = optimizer or default_optimizer()
    common = dict(batch_size=batch_size, optimizer=optimizer, seed=seed, verbose=verbose, callbacks=callbacks)
    shared = ("rpn.backbone", "rpn.fpn")
    rpn1, s1 = _rcnn_step(config, RPN_STEP, images, targets, epochs=rpn_epochs, **common)
    rcnn2, s2 = _rcnn_step(config, FAST_RCNN_STEP, images, targets, epochs=rcnn_epochs,
                           proposals=rpn_proposals(rpn1, images), **common)
    rpn3, s3 = _rcnn_step(config, RPN_STEP, images, targets, epochs=rpn_epochs, source=rcnn2, frozen=shared, **common)
    final, s4 = _rcnn_step(config, FAST_RCNN_STEP, images, targets, epochs=rcnn_epochs, source=rpn3,
                           frozen=shared + ("rpn.head",), proposals=rpn_proposals(rpn3, images), **common)
    return final, {"rpn1": s1, "rcnn2": s2, "rpn3": s3, "rcnn4": s4}
