"""COCO box evaluation on pycocotools.

:class:`CocoEvaluator` collects ground truth and detections image by image
(``[ymin, xmin, ymax, xmax]`` pixels of the ORIGINAL image, contiguous label
ids ``0..C-1``), converts them to COCO's ``[x, y, w, h]`` and json category ids
on the way out, and runs ``pycocotools.cocoeval.COCOeval``. Besides the twelve
standard numbers it reports AP60, AP70, AP80 and AP90, the per-threshold
columns of the Cascade R-CNN tables, read from COCOeval's precision array
exactly as pycocotools reads AP50 and AP75.

:class:`CocoEvaluationCallback` evaluates a validation set at the end of
training epochs; it runs :func:`kdet.evaluation.loop.evaluate_model`
(re-exported here), which works with any evaluator.
"""

import contextlib
import copy
import io
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from kdet.evaluation import batch as batch_lib
from kdet.evaluation.callback import EvaluationCallback
from kdet.evaluation.loop import evaluate_model

__all__ = ["CocoEvaluator", "CocoEvaluationCallback", "average_precision_at_iou",
           "evaluate_model", "format_metrics_table", "yxyx_to_xywh"]

# Order of COCOeval.stats for iouType="bbox" (pycocotools' summarize()).
_STATS_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl",
               "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# The single-threshold columns the cascade papers add to the COCO table.
_EXTRA_IOU_THRESHOLDS = {"AP60": 0.6, "AP70": 0.7, "AP80": 0.8, "AP90": 0.9}
TABLE_COLUMNS = ("AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP90",
                 "APs", "APm", "APl", "AR100")


def yxyx_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """Converts ``[ymin, xmin, ymax, xmax]`` [N, 4] to COCO ``[x, y, w, h]`` [N, 4]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([boxes[:, 1], boxes[:, 0],
                     boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], axis=-1)


@contextlib.contextmanager
def _quiet(verbose: bool):
    """Swallows pycocotools' prints unless ``verbose``."""
    if verbose:
        yield
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def _coco_from_dataset(dataset: dict) -> COCO:
    """Builds an indexed pycocotools COCO object from an in-memory dataset dict."""
    coco = COCO()
    coco.dataset = dataset
    with _quiet(False):
        coco.createIndex()
    return coco


def _load_results(gt: COCO, results: list[dict]) -> COCO:
    """``gt.loadRes(results)``, also for an empty list (where loadRes crashes)."""
    if results:
        return gt.loadRes(results)
    return _coco_from_dataset({
        "images": list(gt.dataset["images"]),
        "categories": copy.deepcopy(gt.dataset["categories"]),
        "annotations": [],
    })


def average_precision_at_iou(coco_eval: COCOeval, iou: float) -> float:
    """AP at one IoU threshold, all areas, 100 detections, as pycocotools' summarize.

    Args:
        coco_eval: a COCOeval after ``evaluate()`` and ``accumulate()``.
        iou: one of ``coco_eval.params.iouThrs`` (0.5, 0.55, ..., 0.95).

    Returns:
        Mean of the interpolated precision [R, K] over recall thresholds and
        classes, where precision > -1 (classes with ground truth); -1 if none.
    """
    params = coco_eval.params
    t = np.flatnonzero(np.isclose(params.iouThrs, iou))
    if t.size != 1:
        raise ValueError(f"IoU {iou} is not one of the evaluated thresholds {params.iouThrs}.")
    a = params.areaRngLbl.index("all")
    m = list(params.maxDets).index(100)
    precision = coco_eval.eval["precision"][t[0], :, :, a, m]
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def format_metrics_table(metrics: Mapping[str, float]) -> str:
    """Formats metrics as a two-line table, values x100 with one decimal.

    Columns: AP AP50 AP60 AP70 AP75 AP80 AP90 APs APm APl AR100. Missing or
    undefined (-1) values are shown as ``-``.
    """
    header, values = [], []
    for key in TABLE_COLUMNS:
        value = metrics.get(key)
        text = "-" if value is None or value < 0 else f"{100.0 * value:.1f}"
        width = max(len(key), len(text), 5)
        header.append(key.rjust(width))
        values.append(text.rjust(width))
    return " ".join(header) + "\n" + " ".join(values)


class CocoEvaluator:
    """Accumulates ground truth and detections and computes COCO box metrics.

    Two ways to get ground truth: add it image by image (``add_ground_truth``
    or ``update_from_batch``), or read a COCO annotation json with
    :meth:`from_annotation_file` (then only detections are added and the
    images evaluated are those for which detections were added, possibly
    empty).

    Example:
        evaluator = CocoEvaluator(category_ids=info.category_ids)
        for images, targets in eval_dataset:
            evaluator.update_from_batch(targets, model.predict_on_batch(images))
        print(format_metrics_table(evaluator.evaluate()))
    """

    def __init__(self, *, category_ids: Sequence[int], class_names: Sequence[str] | None = None):
        """Creates an evaluator.

        Args:
            category_ids: label id -> COCO json category id (``category_ids[label]``).
            class_names: label id -> name; defaults to ``str(category_id)``.
        """
        self.category_ids = tuple(int(c) for c in category_ids)
        if not self.category_ids or len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"category_ids must be non-empty and unique, got {category_ids}.")
        if class_names is None:
            class_names = [str(c) for c in self.category_ids]
        if len(class_names) != len(self.category_ids):
            raise ValueError(f"{len(class_names)} class_names for {len(self.category_ids)} category_ids.")
        self.class_names = tuple(class_names)
        self._file_ground_truth: COCO | None = None
        self.last_coco_eval: COCOeval | None = None
        self.reset()

    @classmethod
    def from_annotation_file(cls, path: str | os.PathLike, *,
                             category_ids: Sequence[int] | None = None,
                             class_names: Sequence[str] | None = None) -> "CocoEvaluator":
        """Creates an evaluator whose ground truth is a COCO annotation json.

        Args:
            path: COCO instances json (images, annotations, categories).
            category_ids: label id -> category id; default: the file's
                category ids in increasing order (the usual contiguous map).
            class_names: default: the file's category names.
        """
        with _quiet(False):
            gt = COCO(os.fspath(path))
        names = {c["id"]: c["name"] for c in gt.dataset.get("categories", [])}
        if category_ids is None:
            category_ids = sorted(names)
        missing = [c for c in category_ids if c not in names]
        if missing:
            raise ValueError(f"category ids {missing} are not in {path}.")
        if class_names is None:
            class_names = [names[c] for c in category_ids]
        evaluator = cls(category_ids=category_ids, class_names=class_names)
        evaluator._file_ground_truth = gt
        return evaluator

    @property
    def num_images(self) -> int:
        """Number of images added so far (with ground truth or detections)."""
        return len(self._images) if self._file_ground_truth is None else len(self._seen)

    def reset(self) -> None:
        """Forgets everything added (a file's ground truth is kept)."""
        self._images: dict[int, dict] = {}
        self._annotations: list[dict] = []
        self._seen: set[int] = set()
        self._det_chunks: list[tuple[np.ndarray, ...]] = []

    def _category(self, classes: np.ndarray) -> np.ndarray:
        classes = np.asarray(classes, dtype=np.int64).reshape(-1)
        bad = (classes < 0) | (classes >= len(self.category_ids))
        if np.any(bad):
            raise ValueError(f"label ids {np.unique(classes[bad]).tolist()} outside "
                             f"0..{len(self.category_ids) - 1}.")
        return np.asarray(self.category_ids, dtype=np.int64)[classes]

    def add_ground_truth(self, image_id: int, boxes, classes, is_crowd=None,
                         height: int | None = None, width: int | None = None) -> None:
        """Adds the ground truth of one image (call it with N=0 for empty images).

        Args:
            image_id: unique image id (adding one twice is an error).
            boxes: float [N, 4] yxyx, original image pixels.
            classes: int [N] label ids 0..C-1.
            is_crowd: bool [N]; crowd boxes are ignored regions (COCO rules).
            height, width: original image size (stored in the images entry).
        """
        if self._file_ground_truth is not None:
            raise RuntimeError("this evaluator reads its ground truth from an annotation file.")
        image_id = int(image_id)
        if image_id in self._images:
            raise ValueError(f"ground truth for image_id {image_id} was already added "
                             "(is the evaluation dataset repeated?).")
        xywh = yxyx_to_xywh(boxes)
        category = self._category(classes)
        crowd = np.zeros(len(category), bool) if is_crowd is None else np.asarray(is_crowd, bool).reshape(-1)
        if not len(xywh) == len(category) == len(crowd):
            raise ValueError(f"{len(xywh)} boxes, {len(category)} classes, {len(crowd)} is_crowd.")
        image = {"id": image_id}
        if height is not None and width is not None:
            image.update(height=int(height), width=int(width))
        self._images[image_id] = image
        for box, cat, crowd_flag in zip(xywh, category, crowd):
            self._annotations.append({
                "id": len(self._annotations) + 1,  # COCO ids start at 1 (0 is falsy in places).
                "image_id": image_id,
                "category_id": int(cat),
                "bbox": [float(v) for v in box],
                "area": float(box[2] * box[3]),
                "iscrowd": int(crowd_flag),
            })

    def add_detections(self, image_id: int, boxes, scores, classes) -> None:
        """Adds the detections of one image (N may be 0: the image was seen).

        Args:
            image_id: the image's id.
            boxes: float [N, 4] yxyx, original image pixels.
            scores: float [N].
            classes: int [N] label ids 0..C-1.
        """
        xywh = yxyx_to_xywh(boxes)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        category = self._category(classes)
        if not len(xywh) == len(scores) == len(category):
            raise ValueError(f"{len(xywh)} boxes, {len(scores)} scores, {len(category)} classes.")
        self._seen.add(int(image_id))
        ids = np.full(len(scores), int(image_id), dtype=np.int64)
        self._det_chunks.append((ids, xywh, scores, category))

    def update_from_batch(self, targets: Mapping, detections: Mapping) -> None:
        """Adds ground truth and detections of a padded batch.

        Args:
            targets: the eval pipeline's targets dict (see kdet.data.pipeline).
            detections: the detector output contract; boxes are in the model
                input's pixels and are mapped back with ``1 / scale``.
        """
        if self._file_ground_truth is None:
            for gt in batch_lib.unbatch_ground_truth(targets):
                self.add_ground_truth(gt["image_id"], gt["boxes"], gt["classes"],
                                      is_crowd=gt["is_crowd"], height=gt["height"], width=gt["width"])
        for det in batch_lib.unbatch_detections(targets, detections):
            self.add_detections(det["image_id"], det["boxes"], det["scores"], det["classes"])

    def coco_results(self) -> list[dict]:
        """Detections in COCO result format: ``{image_id, category_id, bbox, score}``."""
        results = []
        for ids, xywh, scores, category in self._det_chunks:
            for i, box, score, cat in zip(ids.tolist(), xywh.tolist(), scores.tolist(), category.tolist()):
                results.append({"image_id": i, "category_id": cat, "bbox": box, "score": score})
        return results

    def ground_truth_dataset(self) -> dict:
        """Ground truth as a COCO dataset dict (images, annotations, categories)."""
        if self._file_ground_truth is not None:
            return self._file_ground_truth.dataset
        return {
            "images": list(self._images.values()),
            "annotations": list(self._annotations),
            "categories": [{"id": c, "name": n} for c, n in zip(self.category_ids, self.class_names)],
        }

    def write_results_json(self, path: str | os.PathLike) -> str:
        """Writes :meth:`coco_results` to ``path`` (parents created); returns the path."""
        path = os.fspath(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.coco_results(), f)
        return path

    def _ground_truth_and_image_ids(self) -> tuple[COCO, list[int]]:
        if self._file_ground_truth is not None:
            gt, image_ids = self._file_ground_truth, sorted(self._seen)
            unknown = sorted(set(image_ids) - set(gt.getImgIds()))
            hint = "not in the annotation file"
        else:
            gt, image_ids = _coco_from_dataset(self.ground_truth_dataset()), sorted(self._images)
            unknown = sorted(self._seen - set(image_ids))
            hint = "without ground truth: call add_ground_truth (with N=0 for empty images)"
        if not image_ids:
            raise ValueError("nothing to evaluate: add ground truth and detections first "
                             "(update_from_batch, or add_ground_truth and add_detections).")
        if unknown:
            raise ValueError(f"detections for image ids {unknown[:10]} {hint}.")
        return gt, image_ids

    def evaluate(self, *, verbose: bool = False) -> dict[str, float]:
        """Runs COCOeval on everything added.

        Args:
            verbose: let pycocotools print its progress and summary.

        Returns:
            Dict with AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs,
            ARm, ARl, AP60, AP70, AP80, AP90, floats in [0, 1]; -1 where
            undefined (no ground truth in that area range), as pycocotools.
            No detections at all give 0. The COCOeval object is kept as
            ``last_coco_eval`` (per-class precision is in its ``eval``).
        """
        gt, image_ids = self._ground_truth_and_image_ids()
        with _quiet(verbose):
            dt = _load_results(gt, self.coco_results())
            coco_eval = COCOeval(gt, dt, iouType="bbox")
            coco_eval.params.imgIds = image_ids
            coco_eval.params.catIds = list(self.category_ids)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        self.last_coco_eval = coco_eval
        metrics = {key: float(value) for key, value in zip(_STATS_KEYS, coco_eval.stats)}
        for key, iou in _EXTRA_IOU_THRESHOLDS.items():
            metrics[key] = average_precision_at_iou(coco_eval, iou)
        return metrics



class CocoEvaluationCallback(EvaluationCallback):
    """:class:`~kdet.evaluation.callback.EvaluationCallback` with a :class:`CocoEvaluator` built for you.

    Example:
        model.fit(train, epochs=12, callbacks=[
            CocoEvaluationCallback(val, category_ids=info.category_ids),
            keras.callbacks.ModelCheckpoint("best.weights.h5", monitor="val_AP",
                                            mode="max", save_best_only=True,
                                            save_weights_only=True)])

    Args:
        dataset: finite eval pipeline of ``(images, targets)`` batches.
        category_ids: label id -> COCO category id.
        class_names: label id -> name.
        annotation_file: evaluate against this COCO json instead of the
            targets' ground truth (see CocoEvaluator.from_annotation_file).
        **kwargs: ``every_n_epochs``, ``prefix``, ``results_json``, ``steps``,
            ``verbose`` of :class:`~kdet.evaluation.callback.EvaluationCallback`.
    """

    def __init__(self, dataset, *, category_ids: Sequence[int], class_names: Sequence[str] | None = None,
                 annotation_file: str | None = None, **kwargs):
        if annotation_file is not None:
            evaluator = CocoEvaluator.from_annotation_file(annotation_file, category_ids=category_ids,
                                                           class_names=class_names)
        else:
            evaluator = CocoEvaluator(category_ids=category_ids, class_names=class_names)
        super().__init__(dataset, evaluator, **kwargs)

    def report(self, epoch: int, metrics: dict[str, float]) -> str:
        return f"COCO evaluation after epoch {epoch + 1}:\n{format_metrics_table(metrics)}"
