"""The metrics table a person reads, for either kind of evaluation."""

from __future__ import annotations

from typing import Mapping


def format_metrics(metrics: Mapping[str, float], evaluation: str) -> str:
    """The metrics table of a model whose ``evaluation`` is ``"face"`` or ``"coco"``."""
    if evaluation == "face":
        from kdet.evaluation.face import format_face_metrics_table

        return format_face_metrics_table(metrics)
    from kdet.evaluation.coco import format_metrics_table

    return format_metrics_table(metrics)
