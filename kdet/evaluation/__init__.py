"""Evaluation: COCO metrics on pycocotools, a model evaluation loop and a fit callback.

Boxes leave kdet here: evaluators take ``[ymin, xmin, ymax, xmax]`` pixels of the
original image and write COCO ``[x, y, w, h]`` with json category ids.
"""

from kdet.evaluation.coco import (
    CocoEvaluationCallback,
    CocoEvaluator,
    average_precision_at_iou,
    format_metrics_table,
)
from kdet.evaluation.loop import evaluate_model

__all__ = [
    "CocoEvaluationCallback",
    "CocoEvaluator",
    "average_precision_at_iou",
    "evaluate_model",
    "format_metrics_table",
]
