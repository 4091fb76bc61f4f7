"""Small frozen specs: the grouped settings that kdet's detectors take as keyword arguments.

A detector takes about a dozen arguments, each a name, a number or one of
these specs (detectron2 passes ``Matcher`` / ``Box2BoxTransform`` objects,
KerasHub component objects); the specs validate their own fields, so a
wrong value fails where it is written, with the spec and field named.

Every spec is plain data: ``spec.to_config()`` gives its fields as a dict
(tuples, numbers, strings, None: JSON-able) and every detector argument that
takes a spec also takes such a dict, whose entries replace those of the
detector's default spec (``anchors=dict(anchor_size=2.0)`` keeps the other
anchor settings). That is what ``get_config()`` returns and what a model
directory stores. Where one argument chooses among spec classes (the
classification loss), the dict names the class by its ``"kind"``.

The specs of kdet:

* :class:`kdet.anchors.AnchorSpec` and :class:`kdet.backbones.BackboneSpec`
  (beside their primitives);
* here: :class:`MatcherSpec`, :class:`SamplingSpec`,
  :class:`BoxRegressionSpec`, :class:`PostProcessSpec`, the classification
  losses :class:`FocalLossSpec` / :class:`APLossSpec` / :class:`AUCLossSpec`,
  :class:`ConsistentOptimizationSpec`, :class:`RetinaNetHeadSpec`;
* :mod:`kdet.rcnn_specs`, the two-stage detectors':
  :class:`~kdet.rcnn_specs.ProposalSpec`, :class:`~kdet.rcnn_specs.RoIPoolerSpec`
  and :class:`~kdet.rcnn_specs.CascadeSpec`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, Sequence, TypeVar

S = TypeVar("S", bound="Spec")


class Spec:
    """Base of the frozen specs: plain-data config, dict coercion and field checks.

    A subclass is a frozen dataclass; it states the range of its numeric
    fields in :attr:`bounds` and checks (or normalises) the rest in
    :meth:`_check`. Both run on construction.
    """

    #: Set by the classes one argument chooses among (the classification losses): the config's ``"kind"``.
    kind: ClassVar[str | None] = None
    #: field -> its range: ``">= 1"``, ``"> 0"`` or an interval such as ``"(0, 1]"`` (a None value passes).
    bounds: ClassVar[Mapping[str, str]] = {}

    def __post_init__(self):
        for field, rule in self.bounds.items():
            value = getattr(self, field)
            if value is not None and not _satisfies(value, rule):
                self._fail(field, f"must be {'in ' if rule[0] in '[(' else ''}{rule}")
        self._check()

    def _check(self) -> None:
        """The checks and normalisations beyond :attr:`bounds` (raise through :meth:`_fail`)."""

    def to_config(self) -> dict:
        """The fields as plain data (JSON-able; tuples stay tuples until written), after ``"kind"`` if set."""
        fields = dataclasses.asdict(self)
        return fields if self.kind is None else {"kind": self.kind, **fields}

    @classmethod
    def from_config(cls: type[S], config: Mapping) -> S:
        """The spec of ``config`` (missing fields take the class defaults; a ``"kind"`` must be this class's)."""
        fields = dict(config)
        kind = fields.pop("kind", cls.kind)
        if kind != cls.kind:
            raise ValueError(f"{cls.__name__} has kind {cls.kind!r}, the config says {kind!r}")
        return cls(**_known_fields(cls, fields))

    def replace(self: S, **changes) -> S:
        """A copy with ``changes`` (field names) applied and validated."""
        return dataclasses.replace(self, **_known_fields(type(self), changes))

    def _fail(self, field: str, requirement: str) -> None:
        raise ValueError(f"{type(self).__name__}.{field} {requirement}, got {getattr(self, field)!r}")

    def _tuple(self, field: str, depth: int = 1) -> tuple:
        """Stores ``field`` as a tuple of floats (``depth`` 2: a tuple of such tuples); JSON gives lists."""
        value = getattr(self, field)
        try:
            value = tuple(float(v) for v in value) if depth == 1 else tuple(tuple(float(x) for x in v) for v in value)
        except (TypeError, ValueError):
            self._fail(field, "must be a sequence of numbers" if depth == 1 else "must be a sequence of sequences")
        object.__setattr__(self, field, value)
        return value


def _known_fields(cls, values: Mapping) -> dict:
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; its fields are {names}")
    return dict(values)


def coerce(value: Any, default: S, argument: str) -> S:
    """A detector argument as a spec of ``default``'s class.

    Args:
      value: the spec itself; a dict of fields, which replace those of
        ``default``; or None (``default``).
      default: the detector's default for ``argument``.
      argument: its name, for the error messages.
    """
    cls = type(default)
    if value is None:
        return default
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        try:
            return default.replace(**value)
        except ValueError as error:
            raise ValueError(f"{argument}: {error}") from None
    raise TypeError(f"{argument} must be a {cls.__name__} or a dict of its fields, got {type(value).__name__}")


def to_config(value: Any) -> Any:
    """A constructor argument as plain data: a spec's :meth:`Spec.to_config`, a kdet detector's
    ``arguments()``, another Keras object serialised (``keras.saving.serialize_keras_object``), else ``value``."""
    if isinstance(value, Spec):
        return value.to_config()
    if callable(getattr(value, "arguments", None)):
        return value.arguments()
    if hasattr(value, "get_config"):
        import keras

        return keras.saving.serialize_keras_object(value)
    return value


def override(arguments: Mapping, changes: Mapping) -> dict:
    """``arguments`` (detector keyword arguments or a config) with ``changes`` merged in.

    A dict change of a spec (or of a spec's dict) replaces only the fields it
    names; nested argument dicts (a Cascade R-CNN's ``rpn``) merge the same
    way, recursively. A dict with another ``"kind"`` replaces the entry, and
    so does any other change. ``arguments`` is not modified.
    """
    merged = dict(arguments)
    for key, change in changes.items():
        current = merged.get(key)
        kind = current.kind if isinstance(current, Spec) else (
            current.get("kind") if isinstance(current, Mapping) else None)
        if not isinstance(change, Mapping) or change.get("kind", kind) != kind:
            merged[key] = change
        elif isinstance(current, Spec):
            merged[key] = current.replace(**{k: v for k, v in change.items() if k != "kind"})
        elif isinstance(current, Mapping):
            merged[key] = override(current, change)
        else:
            merged[key] = change
    return merged


def group_flat(config: Mapping, table: Mapping[str, tuple[str, str]]) -> dict:
    """A flat config (format versions 1-2) grouped by ``table``: ``{old_key: (argument, field)}``.

    Keys not in ``table`` are kept as they are; the grouped arguments are
    dicts of fields, which the detector merges onto its defaults.
    """
    grouped: dict = {}
    for key, value in config.items():
        if key in table:
            argument, field = table[key]
            grouped.setdefault(argument, {})[field] = value
        else:
            grouped[key] = value
    return grouped


def _satisfies(value: float, rule: str) -> bool:
    """``value`` against ``">= a"``, ``"> a"`` or an interval ``"[a, b)"`` (brackets closed, parentheses open)."""
    if rule.startswith(">="):
        return value >= float(rule[2:])
    if rule.startswith(">"):
        return value > float(rule[1:])
    low, high = (float(x) for x in rule[1:-1].split(","))
    return (low <= value if rule[0] == "[" else low < value) and (value <= high if rule[-1] == "]" else value < high)


# --------------------------------------------------------------------------- matching, sampling, boxes
@dataclasses.dataclass(frozen=True)
class MatcherSpec(Spec):
    """How anchors (or RoIs) are labelled from their IoU with the ground truth (:class:`kdet.matching.Matcher`).

    Attributes:
      thresholds: ``(negative_below, positive_from)``: IoU below the first is
        background, from the second foreground, in between ignored
        (RetinaNet 0.4 / 0.5; the RPN 0.3 / 0.7).
      allow_low_quality_matches: also make each ground truth's best anchors
        foreground (Faster R-CNN's "highest IoU" rule).
    """

    thresholds: Sequence[float] = (0.4, 0.5)
    allow_low_quality_matches: bool = False

    def _check(self):
        thresholds = self._tuple("thresholds")
        if len(thresholds) != 2 or not 0.0 <= thresholds[0] <= thresholds[1] <= 1.0:
            self._fail("thresholds", "must be (negative_below, positive_from) with 0 <= negative_below <= "
                                     "positive_from <= 1")


@dataclasses.dataclass(frozen=True)
class SamplingSpec(Spec):
    """Fixed-size balanced sampling of labelled boxes (:func:`kdet.matching.sample_balanced`).

    Attributes:
      num_samples: boxes sampled per image (the RPN's 256 anchors; a RoI
        head's 512 RoIs).
      positive_fraction: largest share of foreground in the sample (0.5;
        0.25 for RoIs), the rest filled with background.
    """

    bounds = {"num_samples": ">= 1", "positive_fraction": "(0, 1]"}
    num_samples: int = 256
    positive_fraction: float = 0.5


@dataclasses.dataclass(frozen=True)
class BoxRegressionSpec(Spec):
    """Box coding and its loss: :class:`kdet.boxes.BoxCoder` weights and a weighted smooth-L1.

    Attributes:
      weights: coder weights ``(wy, wx, wh, ww)`` (1 / the codes' stds).
      smooth_l1_beta: where smooth-L1 turns from quadratic to linear (0:
        plain L1).
      loss_weight: the box term's weight in the total loss (the RPN's
        lambda of Eq. 1 is 10).
    """

    bounds = {"smooth_l1_beta": ">= 0", "loss_weight": ">= 0"}
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)
    smooth_l1_beta: float = 1.0
    loss_weight: float = 1.0

    def _check(self):
        if len(self._tuple("weights")) != 4 or min(self.weights) <= 0:
            self._fail("weights", "must be 4 positive numbers (wy, wx, wh, ww)")


@dataclasses.dataclass(frozen=True)
class PostProcessSpec(Spec):
    """Inference: candidate selection, class-aware NMS and the fixed number K of detections.

    Attributes:
      pre_nms_top_k: candidates kept before NMS (RetinaNet: per pyramid
        level; Cascade R-CNN: (RoI, class) pairs of an image); None: 10 x
        ``max_detections``.
      score_threshold: candidates scoring below are dropped.
      nms_iou_threshold: class-aware NMS IoU.
      max_detections: K of the output contract.
    """

    bounds = {"pre_nms_top_k": ">= 1", "score_threshold": "[0, 1]", "nms_iou_threshold": "(0, 1]",
              "max_detections": ">= 1"}
    pre_nms_top_k: int | None = 1000
    score_threshold: float = 0.05
    nms_iou_threshold: float = 0.5
    max_detections: int = 100

    @property
    def candidates(self) -> int:
        """``pre_nms_top_k``, or 10 x ``max_detections`` when it is None."""
        return self.pre_nms_top_k or 10 * self.max_detections


# --------------------------------------------------------------------------- RetinaNet
@dataclasses.dataclass(frozen=True)
class FocalLossSpec(Spec):
    """RetinaNet's sigmoid focal loss (Lin et al. 2017), normalised by the positive anchors.

    Attributes:
      alpha: weight of the foreground term (0.25).
      gamma: focusing exponent (2).
    """

    kind = "focal"
    bounds = {"alpha": "[0, 1]", "gamma": ">= 0"}
    alpha: float = 0.25
    gamma: float = 2.0


@dataclasses.dataclass(frozen=True)
class _RankingLossSpec(Spec):
    """What the AP- and AUC-loss share: every anchor-class pair of the batch ranked together.

    Attributes:
      delta: half width of the piecewise step function (Eq. 21; 1).
      rank_across_replicas: under a distribution strategy, rank the scores
        of all replicas together (an all-gather: N replicas of B images then
        equal one device with N * B images) instead of per replica.
    """

    bounds = {"delta": "> 0"}
    delta: float = 1.0
    rank_across_replicas: bool = False


@dataclasses.dataclass(frozen=True)
class APLossSpec(_RankingLossSpec):
    """AP-Loss (Chen et al.): the ranking task trained by the error-driven update (:func:`kdet.losses.ap_loss`).

    Attributes:
      delta, rank_across_replicas: see :class:`AUCLossSpec`.
      interpolate: interpolated AP (the paper's choice, Table 1).
    """

    kind = "ap"
    interpolate: bool = True


@dataclasses.dataclass(frozen=True)
class AUCLossSpec(_RankingLossSpec):
    """AP-Loss's Eq. 7 variant, the AUC-loss (:func:`kdet.losses.auc_loss`).

    Attributes:
      delta: half width of the piecewise step function (Eq. 21; 1).
      rank_across_replicas: under a distribution strategy, rank the scores
        of all replicas together (an all-gather: N replicas of B images then
        equal one device with N * B images) instead of per replica.
    """

    kind = "auc"


#: ``kind`` -> spec class of RetinaNet's ``classification_loss``.
CLASSIFICATION_LOSSES: dict[str, type[Spec]] = {s.kind: s for s in (FocalLossSpec, APLossSpec, AUCLossSpec)}
ClassificationLoss = FocalLossSpec | APLossSpec | AUCLossSpec


def classification_loss(value: Any, default: ClassificationLoss = FocalLossSpec()) -> ClassificationLoss:
    """RetinaNet's ``classification_loss`` argument as its spec.

    Args:
      value: a spec; a kind (``"focal"``, ``"ap"``, ``"auc"``: that loss with
        its defaults); a dict with an optional ``"kind"`` (default:
        ``default``'s) and fields; or None (``default``).
    """
    if value is None:
        return default
    if isinstance(value, tuple(CLASSIFICATION_LOSSES.values())):
        return value
    fields = {"kind": value} if isinstance(value, str) else dict(value) if isinstance(value, Mapping) else None
    if fields is None:
        raise TypeError(f"classification_loss must be one of {tuple(CLASSIFICATION_LOSSES)}, a loss spec or a "
                        f"dict, got {type(value).__name__}")
    kind = fields.pop("kind", default.kind)
    if kind not in CLASSIFICATION_LOSSES:
        raise ValueError(f"classification_loss must be one of {tuple(CLASSIFICATION_LOSSES)}, got {kind!r}")
    base = default if kind == default.kind else CLASSIFICATION_LOSSES[kind]()
    return coerce(fields, base, "classification_loss")


@dataclasses.dataclass(frozen=True)
class ConsistentOptimizationSpec(Spec):
    """Consistent optimization (Kong et al., Fig. 4(d)): terms on the regressed anchors.

    The anchors decoded by the box branch (gradient stopped) are matched
    again and add Eq. 1's classification terms and Eq. 2's regression terms.
    ``cls_terms = reg_terms = 1`` is the plain RetinaNet.

    Attributes:
      cls_terms: #cls of Table 3 (1 = off, 2 = Eq. 1, 3 = a third term on
        twice-regressed anchors).
      reg_terms: #reg of Table 3 (1 = off, 2 = Eq. 2: a second box output
        whose last conv alone is not shared).
      thresholds: ``(negative_below, positive_from)`` of the refined terms
        2, 3, ... (Table 3: 0.5 / 0.6 and 0.6 / 0.7).
      alpha: weight of the refined classification terms (Eq. 1).
      test_regressions: regressions applied at inference (None: #reg; 1 on
        #reg = 2 is Table 3's "2*").
    """

    bounds = {"reg_terms": ">= 1", "alpha": ">= 0"}
    cls_terms: int = 1
    reg_terms: int = 1
    thresholds: Sequence[Sequence[float]] = ((0.5, 0.6), (0.6, 0.7))
    alpha: float = 1.0
    test_regressions: int | None = None

    def _check(self):
        if not 1 <= self.cls_terms <= self.reg_terms + 1:
            self._fail("cls_terms", f"must be in 1..reg_terms + 1 = {self.reg_terms + 1} (term k classifies "
                                    f"anchors regressed k - 1 times)")
        if len(self._tuple("thresholds", depth=2)) < self.num_terms - 1 or any(len(t) != 2 for t in self.thresholds):
            self._fail("thresholds", f"needs {self.num_terms - 1} (negative_below, positive_from) pairs for "
                                     f"cls_terms={self.cls_terms}, reg_terms={self.reg_terms}")
        if self.test_regressions is not None and not 1 <= self.test_regressions <= self.reg_terms:
            self._fail("test_regressions", f"must be in 1..reg_terms = {self.reg_terms} or None")

    @property
    def num_terms(self) -> int:
        """Terms on anchors regressed 0, 1, ... times: ``max(cls_terms, reg_terms)``."""
        return max(self.cls_terms, self.reg_terms)


@dataclasses.dataclass(frozen=True)
class RetinaNetHeadSpec(Spec):
    """RetinaNet's class and box towers (:class:`kdet.heads.retinanet.RetinaNetHead`).

    Attributes:
      num_convs: 3x3 convs per tower (4).
      filters: channels of each tower conv (256).
      prior_probability: foreground probability of every anchor at
        initialisation (0.01).
    """

    bounds = {"num_convs": ">= 0", "filters": ">= 1", "prior_probability": "(0, 1)"}
    num_convs: int = 4
    filters: int = 256
    prior_probability: float = 0.01
