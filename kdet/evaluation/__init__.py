"""Evaluation: COCO metrics on pycocotools, face metrics, a model evaluation loop and a fit callback.

Boxes leave kdet here: evaluators take ``[ymin, xmin, ymax, xmax]`` pixels of the
original image and write COCO ``[x, y, w, h]`` with json category ids. The face
metrics (WIDER AP, FDDB discrete ROC, AFW) are NumPy in :mod:`kdet.evaluation.face`.
"""

from kdet.evaluation.coco import (
    CocoEvaluationCallback,
    CocoEvaluator,
    average_precision_at_iou,
    format_metrics_table,
)
from kdet.evaluation.face import (
    FaceEvaluator,
    format_face_metrics_table,
    load_wider_difficulty_lists,
    plot_face_curves,
)
from kdet.evaluation.loop import evaluate_model

__all__ = [
    "CocoEvaluationCallback",
    "CocoEvaluator",
    "FaceEvaluator",
    "average_precision_at_iou",
    "evaluate_model",
    "format_face_metrics_table",
    "format_metrics_table",
    "load_wider_difficulty_lists",
    "plot_face_curves",
]
