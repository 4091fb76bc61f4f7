"""The main job in miniature: synthetic data -> pipeline -> fit -> COCO evaluation -> PNG, via the CLI."""

import json
import os

import numpy as np
import pytest

from kdet.cli import build_parser, main


@pytest.mark.slow
def test_kdet_demo_command_writes_metrics_picture_and_weights(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "2", "--train-images", "48",
                 "--val-images", "16", "--batch-size", "8"]) == 0
    printed = capsys.readouterr().out
    assert "AP50" in printed and "AR100" in printed  # the COCO table
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary["metrics"]) >= {"AP", "AP50", "AP75", "AP60", "AP70", "AP80", "AP90", "APs", "APm", "APl",
                                       "AR100"}
    assert all(-1.0 <= v <= 1.0 for v in summary["metrics"].values())
    losses = summary["final_loss"]
    assert {"loss", "cls_loss", "box_loss"} <= set(losses) and all(np.isfinite(v) for v in losses.values())
    for name in ("predictions.png", "coco_results.json", "model.weights.h5", "kdet_model.json"):
        assert os.path.getsize(out / name) > 0
    from kdet.model_dir import read_model_info

    info = read_model_info(str(out))  # a model directory that kdet export reads
    assert info.detector == "kdet>RetinaNet" and info.input_size == (128, 128) and len(info.class_names) > 1
    from PIL import Image

    assert Image.open(out / "predictions.png").size[0] >= 256


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--epochs", "0"])
    assert "positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["nonsense"])
