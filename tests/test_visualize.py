"""Drawing detections and writing a detection grid."""

import numpy as np
import pytest
from PIL import Image

from kdet.visualize import class_color, draw_detections, draw_ground_truth, save_detection_grid


def black(h=120, w=160, dtype=np.uint8):
    return np.zeros((h, w, 3), dtype)


def test_draw_detections_marks_box_edges_only():
    image = black()
    out = draw_detections(image, [[60, 40, 110, 140]], [2], [0.87], class_names=["a", "b", "c"])
    assert out.shape == (120, 160, 3) and out.dtype == np.uint8
    assert not image.any()  # input untouched
    assert tuple(out[110, 90]) == class_color(2)  # bottom edge
    assert tuple(out[85, 40]) == class_color(2)   # left edge
    assert tuple(out[85, 140]) == class_color(2)  # right edge
    assert not out[85, 90].any()  # interior untouched
    assert out[50:60, 40:80].any()  # label "c 0.87" above the box


def test_padding_and_low_scores_are_not_drawn():
    boxes = [[10, 10, 50, 50], [60, 60, 100, 100]]
    out = draw_detections(black(), boxes, [-1, 0], [0.9, 0.2], score_threshold=0.3)
    assert not out.any()
    out = draw_detections(black(), boxes, [-1, 0], None)  # ground-truth style: no scores
    assert out[60:101, 60:101].any() and not out[10:51, 10:51].any()


def test_max_overlap_draws_one_label_per_object_the_best_one():
    boxes = [[10, 10, 60, 60], [12, 12, 62, 62], [80, 80, 110, 150]]  # two labels on one object, and another
    crowded = draw_detections(black(), boxes, [0, 1, 1], [0.9, 0.6, 0.5])
    one = draw_detections(black(), boxes, [0, 1, 1], [0.9, 0.6, 0.5], max_overlap=0.5)
    assert tuple(crowded[62, 30]) == class_color(1) and not one[62, 30].any()  # the 0.6 box is gone ...
    assert tuple(one[60, 30]) == class_color(0)  # ... the 0.9 one stays
    assert tuple(one[110, 120]) == class_color(1)  # the separate object keeps its box
    kept = draw_detections(black(), boxes[:2], [0, 1], [0.9, 0.6], max_overlap=0.95)
    assert tuple(kept[62, 30]) == class_color(1)  # IoU 0.85 < 0.95: both drawn


def test_classes_get_different_colours_and_float_grey_input_works():
    assert class_color(0) != class_color(1)
    assert class_color(0, color_seed=1) != class_color(0)
    out = draw_detections(np.full((40, 50), 0.0, np.float32), [[5, 5, 30, 40]], [1], [1.0])
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8 and out.any()


def test_ground_truth_is_dashed():
    out = draw_ground_truth(black(), [[20, 20, 100, 140]], [0])
    edge = out[20, 20:141].any(axis=-1)
    assert 0.3 < edge.mean() < 0.8  # dashes: part of the top edge is lit, part is not
    assert tuple(out[20, 20]) == (255, 255, 255)


def test_save_detection_grid_writes_a_readable_png(tmp_path):
    images = np.zeros((3, 32, 48, 3), np.float32)  # pipeline-style float images
    detections = {
        "boxes": np.array([[[4, 4, 20, 20], [0, 0, 0, 0]]] * 3, np.float32),
        "scores": np.array([[0.9, 0.0]] * 3, np.float32),
        "classes": np.array([[0, -1]] * 3, np.int32),
        "num_detections": np.array([1, 1, 0], np.int32),
    }
    ground_truth = {"boxes": np.array([[[2, 2, 24, 30]]] * 3, np.float32),
                    "classes": np.array([[1]] * 3, np.int32)}
    path = save_detection_grid(images, detections, tmp_path / "out" / "grid.png",
                               class_names=["cat", "dog"], ground_truth=ground_truth, cols=2)
    grid = np.asarray(Image.open(path))
    factor = 8  # ceil(256 / 32): the short side reaches 256 pixels
    gap = 4
    assert grid.shape == (2 * 32 * factor + 3 * gap, 2 * 48 * factor + 3 * gap, 3)
    first = grid[gap:gap + 32 * factor, gap:gap + 48 * factor]
    assert tuple(first[20 * factor, 10 * factor]) == class_color(0)  # detection bottom edge
    third = grid[2 * gap + 32 * factor:, gap:gap + 48 * factor]
    assert not np.any(np.all(third == class_color(0), axis=-1))  # num_detections = 0
    assert np.any(np.all(third == (255, 255, 255), axis=-1))  # but the ground truth is drawn


def test_save_detection_grid_accepts_lists_and_fixed_upscale(tmp_path):
    images = [np.zeros((10, 10, 3), np.uint8), np.zeros((12, 8, 3), np.uint8)]
    detections = [{"boxes": np.array([[1, 1, 8, 8]]), "scores": np.array([0.5]), "classes": np.array([0])},
                  {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "classes": np.zeros(0, int)}]
    path = save_detection_grid(images, detections, tmp_path / "g.png", class_names=None, upscale=2)
    assert Image.open(path).size == (2 * 10 * 2 + 3 * 4, 12 * 2 + 2 * 4)
    with pytest.raises(ValueError, match="no images"):
        save_detection_grid([], [], tmp_path / "e.png", class_names=None)
