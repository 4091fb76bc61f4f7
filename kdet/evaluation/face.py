"""Face detection metrics: WIDER-style AP, FDDB-style discrete ROC, the AFW protocol.

NumPy on per-image dicts in ORIGINAL image pixels, as :mod:`kdet.evaluation.batch`
gives them; every box is a face (classes are not read). Ground truth:
``{"image_id", "boxes" [G, 4] yxyx, "is_crowd" [G] bool}``, where the optional
``is_crowd`` (or ``ignore``) marks ignore regions (crowds, WIDER's invalid
faces); detections: ``{"image_id", "boxes" [D, 4] yxyx, "scores" [D]}``.

Conventions (checked on hand-computed values in tests/evaluation/test_face.py):

- **Matching** (:func:`match_detections`), COCO style: in descending score
  (stable: of tied detections the one listed first matches first), a
  detection takes the unmatched non-ignored face of highest IoU >=
  ``iou_threshold`` (true positive); failing that it is ignored (neither TP
  nor FP) if an ignored face overlaps it by >= ``iou_threshold`` (an ignored
  face absorbs any number); otherwise it is a false positive, duplicates too.
- **Curves**: one point per distinct score (tied detections enter together).
- **AP**: all-point interpolated (VOC2010+, the WIDER toolbox's ``voc_ap``):
  the area under the precision envelope (precision made monotone from the right).
- **Discrete ROC** (FDDB): (false positives, true positives) at every
  threshold, starting at the origin; :func:`recall_at_false_positives` reads
  the recall at the lowest threshold whose FP count is <= N (the most
  detections one can keep without exceeding N false positives).
- **AFW** (the paper's Sec. 6.2): AP at IoU 0.3 (:func:`afw_average_precision`).
- **WIDER easy/medium/hard**: faces not in the setting's list are ignored, as
  the official ``gt_list`` does (:func:`wider_difficulty_ap`).
- Undefined values (no positive face at all) are ``-1``, as in pycocotools.

Differences from the official tools: WIDER's compares a detection only with its
highest-IoU face, at 1000 fixed thresholds; FDDB's uses bipartite matching on ellipses.
"""

import dataclasses
import os
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

from kdet.boxes import pairwise_iou_numpy
from kdet.evaluation import batch as batch_lib

__all__ = ["AFW_IOU_THRESHOLD", "DiscreteRoc", "FaceCurves", "FaceEvaluator", "PrecisionRecall",
           "afw_average_precision", "average_precision", "average_precision_from_curve", "discrete_roc",
           "face_curves", "format_face_metrics_table", "load_wider_difficulty_lists", "match_detections",
           "plot_face_curves", "precision_recall", "recall_at_false_positives", "wider_difficulty_ap"]

AFW_IOU_THRESHOLD = 0.3  # the AFW protocol (the paper's Sec. 6.2); 0.5 elsewhere


def _boxes(value) -> np.ndarray:
    return batch_lib.to_numpy(value).astype(np.float64).reshape(-1, 4)


def _scores(value) -> np.ndarray:
    return batch_lib.to_numpy(value).astype(np.float64).reshape(-1)


def match_detections(gt_boxes, det_boxes, det_scores, *, iou_threshold: float,
                     ignore=None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching of one image's detections to its faces.

    The module docstring gives the rule; ties in IoU go to the lower face index.

    Args:
        gt_boxes: float [G, 4] yxyx faces.
        det_boxes, det_scores: float [D, 4] yxyx detections and their [D] scores.
        iou_threshold: minimum IoU of a match (inclusive).
        ignore: bool [G], faces that are ignore regions; default none.

    Returns:
        ``(is_tp, is_ignored)``, bool [D] each, input order; neither = false positive.
    """
    gt, det, scores = _boxes(gt_boxes), _boxes(det_boxes), _scores(det_scores)
    ignore = np.zeros(len(gt), bool) if ignore is None else np.asarray(ignore, bool).reshape(-1)
    if len(scores) != len(det) or len(ignore) != len(gt):
        raise ValueError(f"{len(det)} boxes, {len(scores)} scores; {len(gt)} faces, {len(ignore)} ignore.")
    iou = pairwise_iou_numpy(det, gt)  # [D, G]
    hits = iou >= iou_threshold
    iou = np.where(hits, iou, -1.0)
    is_tp, is_ignored = np.zeros(len(det), bool), np.zeros(len(det), bool)
    free = ~ignore  # faces still available for a true positive
    for d in np.argsort(-scores, kind="stable"):
        if not hits[d].any():
            continue  # the common case: a false positive far from every face.
        candidates = np.where(free, iou[d], -1.0)
        if candidates.max() >= 0.0:
            free[np.argmax(candidates)] = False
            is_tp[d] = True
        else:
            is_ignored[d] = np.any(hits[d] & ignore)
    return is_tp, is_ignored


def _ignore_mask(gt: Mapping, min_face_size: float | None, keep: Mapping | None) -> np.ndarray:
    """Ignored faces of one image: crowd/invalid, smaller than ``min_face_size``, or not in ``keep``."""
    boxes = _boxes(gt["boxes"])
    flag = gt.get("ignore", gt.get("is_crowd"))
    ignore = np.zeros(len(boxes), bool) if flag is None else batch_lib.to_numpy(flag).astype(bool).reshape(-1)
    if min_face_size is not None:  # a face's size is its shorter side
        ignore |= np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) < min_face_size
    if keep is not None:
        if gt["image_id"] not in keep:
            raise ValueError(f"image_id {gt['image_id']!r} is not in the difficulty list (see image_id_fn).")
        index = np.asarray(keep[gt["image_id"]], np.int64).reshape(-1)
        if np.any((index < 0) | (index >= len(boxes))):
            raise ValueError(f"image {gt['image_id']}: face indices {index.tolist()} outside 0..{len(boxes) - 1}.")
        ignore |= ~np.isin(np.arange(len(boxes)), index)
    return ignore


def _detections_by_image(ground_truth: Sequence[Mapping], detections: Sequence[Mapping]) -> dict:
    """image_id -> (boxes [D, 4], scores [D]); several dicts of one image are concatenated."""
    grouped = {gt["image_id"]: ([np.zeros((0, 4))], [np.zeros(0)]) for gt in ground_truth}
    if len(grouped) != len(ground_truth):
        raise ValueError("ground truth lists an image_id twice.")
    for det in detections:
        if det["image_id"] not in grouped:
            raise ValueError(f"detections for image_id {det['image_id']!r}, which has no ground truth "
                             "(give images without faces an empty ground truth).")
        grouped[det["image_id"]][0].append(_boxes(det["boxes"]))
        grouped[det["image_id"]][1].append(_scores(det["scores"]))
    return {i: (np.concatenate(boxes), np.concatenate(scores)) for i, (boxes, scores) in grouped.items()}


def _match_images(ground_truth, detections, *, iou_threshold, min_face_size=None, keep=None):
    """Matches every image -> (scores [N], is_tp [N]) of non-ignored detections, num_positives."""
    grouped = _detections_by_image(ground_truth, detections)
    scores, tps, num_positives = [np.zeros(0)], [np.zeros(0, bool)], 0
    for gt in ground_truth:
        ignore = _ignore_mask(gt, min_face_size, keep)
        det_boxes, det_scores = grouped[gt["image_id"]]
        is_tp, is_ignored = match_detections(gt["boxes"], det_boxes, det_scores,
                                             iou_threshold=iou_threshold, ignore=ignore)
        scores.append(det_scores[~is_ignored])
        tps.append(is_tp[~is_ignored])
        num_positives += int(np.sum(~ignore))
    return np.concatenate(scores), np.concatenate(tps), num_positives


@dataclasses.dataclass(frozen=True)
class PrecisionRecall:
    """Precision-recall curve, one point per distinct score, scores descending.

    Attributes:
        thresholds: float [T], the distinct detection scores.
        precision: float [T], TP / (TP + FP) of detections scoring >= threshold.
        recall: float [T], TP / num_positives (0 without positives).
        num_positives: number of non-ignored faces.
    """
    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    num_positives: int


@dataclasses.dataclass(frozen=True)
class DiscreteRoc:
    """FDDB discrete ROC: counts at every threshold, starting at the origin.

    Attributes:
        thresholds: float [T + 1], ``inf`` then the distinct scores, descending.
        false_positives: int [T + 1], cumulative.
        true_positives: int [T + 1], cumulative.
        num_positives: number of non-ignored faces.
    """
    thresholds: np.ndarray
    false_positives: np.ndarray
    true_positives: np.ndarray
    num_positives: int

    @property
    def true_positive_rate(self) -> np.ndarray:
        """float [T + 1], true positives / num_positives (0 without positives)."""
        return self.true_positives / max(self.num_positives, 1)


@dataclasses.dataclass(frozen=True)
class FaceCurves:
    """Both curves of one detector at one IoU (one matching)."""
    precision_recall: PrecisionRecall
    roc: DiscreteRoc


def face_curves(ground_truth: Sequence[Mapping], detections: Sequence[Mapping], *,
                iou_threshold: float = 0.5, min_face_size: float | None = None,
                keep: Mapping[Hashable, Sequence[int]] | None = None) -> FaceCurves:
    """Precision-recall and discrete ROC over a set of images (one :class:`FaceCurves`).

    Args:
        ground_truth: one dict per image (see the module docstring); images
            without faces need an entry with ``boxes`` [0, 4].
        detections: dicts with ``image_id``, ``boxes`` [D, 4], ``scores`` [D].
        iou_threshold: minimum IoU of a match (0.5: WIDER, FDDB; 0.3: AFW).
        min_face_size: faces whose shorter side is below it are ignored.
        keep: image_id -> indices of the faces that count (a WIDER difficulty
            list); the others are ignored. Every image must be listed.
    """
    scores, is_tp, num_positives = _match_images(ground_truth, detections, iou_threshold=iou_threshold,
                                                 min_face_size=min_face_size, keep=keep)
    order = np.argsort(-scores, kind="stable")
    scores, is_tp = scores[order], is_tp[order]
    last = np.r_[scores[1:] != scores[:-1], True][:len(scores)]  # last row of each distinct score
    tp, fp = np.cumsum(is_tp)[last], np.cumsum(~is_tp)[last]
    pr = PrecisionRecall(thresholds=scores[last], precision=tp / np.maximum(tp + fp, 1),
                         recall=tp / max(num_positives, 1), num_positives=num_positives)
    roc = DiscreteRoc(thresholds=np.r_[np.inf, scores[last]], false_positives=np.r_[0, fp],
                      true_positives=np.r_[0, tp], num_positives=num_positives)
    return FaceCurves(precision_recall=pr, roc=roc)


def precision_recall(ground_truth, detections, **kwargs) -> PrecisionRecall:
    """The precision-recall curve; arguments as :func:`face_curves`."""
    return face_curves(ground_truth, detections, **kwargs).precision_recall


def discrete_roc(ground_truth, detections, **kwargs) -> DiscreteRoc:
    """The FDDB discrete ROC (use IoU 0.5, the default); arguments as :func:`face_curves`."""
    return face_curves(ground_truth, detections, **kwargs).roc


def _interpolated(curve: PrecisionRecall) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision envelope), both [T + 2], with recall 0 and 1 added: VOC2010's curve."""
    precision = np.r_[0.0, curve.precision, 0.0]
    return np.r_[0.0, curve.recall, 1.0], np.maximum.accumulate(precision[::-1])[::-1]


def average_precision_from_curve(curve: PrecisionRecall) -> float:
    """All-point interpolated AP (VOC2010+, WIDER ``voc_ap``); -1 without positives, 0 without detections."""
    if curve.num_positives == 0:
        return -1.0
    recall, precision = _interpolated(curve)
    step = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[step + 1] - recall[step]) * precision[step + 1]))


def average_precision(ground_truth, detections, **kwargs) -> float:
    """AP over a set of images; arguments as :func:`face_curves` (IoU 0.5 by default)."""
    return average_precision_from_curve(precision_recall(ground_truth, detections, **kwargs))


def afw_average_precision(ground_truth, detections, **kwargs) -> float:
    """AFW protocol: AP at IoU 0.3 (the paper's Sec. 6.2); other arguments as :func:`face_curves`."""
    return average_precision(ground_truth, detections, iou_threshold=AFW_IOU_THRESHOLD, **kwargs)


def recall_at_false_positives(roc: DiscreteRoc, num_false_positives: int) -> float:
    """Recall at the lowest threshold with at most ``num_false_positives`` FPs; -1 without positives."""
    if roc.num_positives == 0:
        return -1.0
    index = np.searchsorted(roc.false_positives, num_false_positives, side="right") - 1
    return float(roc.true_positive_rate[index])  # index >= 0: the ROC starts at (0, 0).


def wider_difficulty_ap(ground_truth, detections,
                        keep: Mapping[str, Mapping[Hashable, Sequence[int]]], *,
                        iou_threshold: float = 0.5, min_face_size: float | None = None) -> dict[str, float]:
    """WIDER FACE easy/medium/hard AP: per setting, faces outside its list are ignored.

    Read the lists with :func:`load_wider_difficulty_lists`. Their indices follow the
    official ``wider_face_val.mat`` boxes: keep every face in that order (invalid ones ``is_crowd``).

    Args:
        keep: setting name -> image_id -> indices of the faces of that setting.
        Others: as :func:`face_curves`.

    Returns:
        Setting name -> AP, a fraction (-1 if the setting has no face).
    """
    return {name: average_precision(ground_truth, detections, iou_threshold=iou_threshold,
                                    min_face_size=min_face_size, keep=lists)
            for name, lists in keep.items()}


def _mat_image_lists(folder: str, setting: str, image_id_fn: Callable[[str], Hashable]) -> dict:
    """image_id -> 0-based face indices from ``wider_{setting}_val.mat`` (cells: per event, per image)."""
    from scipy import io as scipy_io

    mat = scipy_io.loadmat(os.path.join(folder, f"wider_{setting}_val.mat"))
    if "file_list" not in mat:  # names only in the main file: take them from there
        mat = {**scipy_io.loadmat(os.path.join(folder, "wider_face_val.mat")), "gt_list": mat["gt_list"]}
    text = lambda cell: str(np.asarray(cell).reshape(-1)[0])  # noqa: E731
    return {image_id_fn(f"{text(event)}/{text(name)}"): np.asarray(index, np.int64).reshape(-1) - 1  # from 1
            for event, files, indices in zip(mat["event_list"][:, 0], mat["file_list"][:, 0], mat["gt_list"][:, 0])
            for name, index in zip(files[:, 0], indices[:, 0])}


def load_wider_difficulty_lists(eval_tools_dir: str | os.PathLike, *,
                                image_id_fn: Callable[[str], Hashable] = str) -> dict[str, dict]:
    """Reads the official WIDER FACE easy/medium/hard validation lists (tfds does not ship them).

    The WIDER FACE site's ``eval_tools.zip`` holds ``ground_truth/wider_{easy,medium,hard}_val.mat``:
    ``event_list``, ``file_list`` (per event, image names without ``.jpg``) and
    ``gt_list`` (per event, per image, the 1-based indices of the setting's faces).

    Example:
        lists = load_wider_difficulty_lists("eval_tools", image_id_fn=name_to_id.__getitem__)
        evaluator = FaceEvaluator(difficulty_lists=lists)  # adds AP50_easy, _medium, _hard

    Args:
        eval_tools_dir: the unzipped ``eval_tools`` folder, or its ``ground_truth``.
        image_id_fn: ``"0--Parade/0_Parade_marchingband_1_465"`` (event/name, tfds's
            ``image/filename`` without ``.jpg``) -> your ground truth's ``image_id``.

    Returns:
        ``{setting: {image_id: int64 [k] 0-based face indices}}``, the ``keep`` of :func:`wider_difficulty_ap`.
    """
    folder = os.fspath(eval_tools_dir)
    if os.path.isdir(os.path.join(folder, "ground_truth")):
        folder = os.path.join(folder, "ground_truth")
    return {setting: _mat_image_lists(folder, setting, image_id_fn) for setting in ("easy", "medium", "hard")}


def format_face_metrics_table(metrics: Mapping[str, float]) -> str:
    """Two-line table of :meth:`FaceEvaluator.evaluate`'s metrics: fractions x100, counts as integers."""
    recall_keys = sorted((k for k in metrics if k.startswith("recall_at_")), key=lambda k: int(k[10:-2]))
    keys = [k for k in ("AP50", "AP30_afw", "AP50_easy", "AP50_medium", "AP50_hard") if k in metrics]
    header, values = [], []
    for key in keys + recall_keys + ["num_faces", "num_detections"]:
        value = metrics.get(key)
        text = ("-" if value is None or value < 0 else
                str(int(value)) if key.startswith("num_") else f"{100.0 * value:.1f}")
        width = max(len(key), len(text), 5)
        header.append(key.rjust(width))
        values.append(text.rjust(width))
    return " ".join(header) + "\n" + " ".join(values)


class FaceEvaluator:
    """WIDER AP, AFW AP and FDDB recall at N false positives; used like ``CocoEvaluator``.

    Example:
        evaluator = FaceEvaluator(min_face_size=20)  # faces < 20 px are ignore regions
        print(format_face_metrics_table(evaluate_model(model, eval_dataset, evaluator)))
        plot_face_curves({"ours": evaluator.last_curves}, "face_curves.png")
    """

    def __init__(self, *, false_positive_counts: Sequence[int] = (10, 50, 100, 1000),
                 min_face_size: float | None = None,
                 difficulty_lists: Mapping[str, Mapping[Hashable, Sequence[int]]] | None = None):
        """Creates an evaluator.

        Args:
            false_positive_counts: N of ``recall_at_{N}fp`` (FDDB: 1000 on 2845 images).
            min_face_size: ignore faces whose shorter side is below it (e.g. 20: MTCNN's minimum).
            difficulty_lists: WIDER lists (:func:`load_wider_difficulty_lists`): adds ``AP50_{setting}``.
        """
        self.false_positive_counts = tuple(int(n) for n in false_positive_counts)
        self.min_face_size = min_face_size
        self.difficulty_lists = difficulty_lists
        self.last_curves: FaceCurves | None = None
        self.reset()

    def reset(self) -> None:
        """Forgets everything added."""
        self._ground_truth: dict[Hashable, dict] = {}
        self._detections: list[dict] = []

    def add_ground_truth(self, image_id: Hashable, boxes, is_crowd=None) -> None:
        """Adds one image's faces: ``boxes`` [G, 4] yxyx original pixels, ``is_crowd`` [G] ignore regions."""
        if image_id in self._ground_truth:
            raise ValueError(f"ground truth for image_id {image_id!r} was already added.")
        boxes = _boxes(boxes)
        crowd = np.zeros(len(boxes), bool) if is_crowd is None else np.asarray(is_crowd, bool).reshape(-1)
        self._ground_truth[image_id] = {"image_id": image_id, "boxes": boxes, "is_crowd": crowd}

    def add_detections(self, image_id: Hashable, boxes, scores) -> None:
        """Adds one image's detections: ``boxes`` [D, 4] yxyx original pixels, ``scores`` [D]."""
        self._detections.append({"image_id": image_id, "boxes": _boxes(boxes), "scores": _scores(scores)})

    def update_from_batch(self, targets: Mapping, detections: Mapping) -> None:
        """Adds a padded batch: the pipeline's targets and the detector output contract."""
        for gt in batch_lib.unbatch_ground_truth(targets):
            self.add_ground_truth(gt["image_id"], gt["boxes"], gt["is_crowd"])
        for det in batch_lib.unbatch_detections(targets, detections):
            self.add_detections(det["image_id"], det["boxes"], det["scores"])

    def evaluate(self) -> dict[str, float]:
        """Computes the metrics; the IoU-0.5 curves are kept as ``last_curves``.

        Returns:
            ``AP50``, ``AP30_afw``, ``AP50_{easy,medium,hard}`` (with difficulty lists),
            ``recall_at_{N}fp``: fractions, -1 without positive faces; ``num_faces``
            (non-ignored) and ``num_detections``.
        """
        if not self._ground_truth:
            raise ValueError("nothing to evaluate: add ground truth first (update_from_batch).")
        ground_truth = list(self._ground_truth.values())
        curves = face_curves(ground_truth, self._detections, min_face_size=self.min_face_size)
        size = {"min_face_size": self.min_face_size}
        metrics = {"AP50": average_precision_from_curve(curves.precision_recall),
                   "AP30_afw": afw_average_precision(ground_truth, self._detections, **size)}
        for name, ap in wider_difficulty_ap(ground_truth, self._detections, self.difficulty_lists or {},
                                            **size).items():
            metrics[f"AP50_{name}"] = ap
        for n in self.false_positive_counts:
            metrics[f"recall_at_{n}fp"] = recall_at_false_positives(curves.roc, n)
        metrics["num_faces"] = curves.roc.num_positives
        metrics["num_detections"] = sum(len(det["scores"]) for det in self._detections)
        self.last_curves = curves
        return metrics


def plot_face_curves(curves: Mapping[str, FaceCurves], path: str | os.PathLike, *,
                     max_false_positives: int | None = None) -> str:
    """Draws the precision-recall curves and the discrete ROCs of several detectors side by side.

    The precision drawn is the interpolated one, whose area is the AP.

    Args:
        curves: detector name -> its :class:`FaceCurves` (``FaceEvaluator.last_curves``).
        path: PNG (or any matplotlib format) to write; parents are created.
        max_false_positives: right end of the ROC axis, and the N of the
            legend's recall at N FP; default: the largest FP count.

    Returns:
        ``path`` as a string.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state.

    fig = Figure(figsize=(11, 4.4), layout="constrained")
    pr_ax, roc_ax = fig.subplots(1, 2)
    limit = max_false_positives or max([int(c.roc.false_positives[-1]) for c in curves.values()] + [1])
    for name, curve in curves.items():
        pr, roc = curve.precision_recall, curve.roc
        ap = average_precision_from_curve(pr)
        recall, precision = (x[:-1] for x in _interpolated(pr))  # area = AP; ends at the last recall
        first = np.r_[True, recall[1:] != recall[:-1]]  # one step per recall
        pr_ax.step(recall[first], precision[first], where="pre", lw=1.8, label=f"{name} (AP {100 * ap:.1f})")
        fp = np.r_[roc.false_positives, max(limit, roc.false_positives[-1])]  # flat after the last detection
        roc_ax.step(fp, np.r_[roc.true_positive_rate, roc.true_positive_rate[-1]], where="post", lw=1.8,
                    label=f"{name} ({100 * recall_at_false_positives(roc, limit):.1f} at {limit} FP)")
    pr_ax.set(xlabel="recall", ylabel="precision (interpolated)", xlim=(0, 1), ylim=(0, 1.02),
              title="Precision-recall")
    roc_ax.set(xlabel="false positives", ylabel="true positive rate", xlim=(0, limit), ylim=(0, 1.02),
               title="Discrete ROC (FDDB)")
    for ax, corner in ((pr_ax, "lower left"), (roc_ax, "lower right")):
        ax.grid(alpha=0.3)
        ax.legend(loc=corner, fontsize="small")
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    return os.fspath(path)
