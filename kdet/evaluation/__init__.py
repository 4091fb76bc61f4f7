"""Evaluation: COCO metrics on pycocotools, face metrics, a model evaluation loop and a fit callback.

Boxes leave kdet here: evaluators take ``[ymin, xmin, ymax, xmax]`` pixels of the
original image and write COCO ``[x, y, w, h]`` with json category ids. The face
metrics (WIDER AP, FDDB discrete ROC, AFW) are NumPy in :mod:`kdet.evaluation.face`.
"""

from kdet._lazy import lazy_attributes

_WHERE = {
    "CocoEvaluationCallback": "kdet.evaluation.coco",
    "CocoEvaluator": "kdet.evaluation.coco",
    "average_precision_at_iou": "kdet.evaluation.coco",
    "format_metrics_table": "kdet.evaluation.coco",
    "FaceEvaluator": "kdet.evaluation.face",
    "format_face_metrics_table": "kdet.evaluation.face",
    "load_wider_difficulty_lists": "kdet.evaluation.face",
    "plot_face_curves": "kdet.evaluation.face",
    "evaluate_model": "kdet.evaluation.loop",
    "format_metrics": "kdet.evaluation.report",
}

__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
