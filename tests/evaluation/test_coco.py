"""CocoEvaluator against APs computed by hand on a toy set."""

import json

import numpy as np
import pytest
import tensorflow as tf

from kdet.evaluation.coco import CocoEvaluator, average_precision_at_iou, format_metrics_table

IOU_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)  # 0.50, 0.55, ..., 0.95

# ---------------------------------------------------------------------------
# Toy set: 1 class, 2 images of 480x640, 3 ground-truth boxes (yxyx pixels).
# Every box is larger than 96^2 pixels, so everything is "large" for COCO.
GROUND_TRUTH = {
    1: np.array([[0, 0, 200, 200],            # A
                 [250, 400, 450, 600]], float),  # B
    2: np.array([[100, 100, 300, 300]], float),  # C
}
# (image, box, score), listed in decreasing score:
DETECTIONS = [
    (1, [0, 0, 175, 200], 0.9),      # d1: A, IoU = 175*200 / 200*200 = 0.875
    (1, [300, 0, 450, 150], 0.8),    # d2: touches nothing -> always a false positive
    (2, [100, 100, 420, 300], 0.7),  # d3: C, IoU = 200*200 / 320*200 = 0.625
    (1, [250, 400, 450, 600], 0.6),  # d4: B exactly, IoU = 1
    (1, [0, 0, 192, 200], 0.5),      # d5: A, IoU = 192*200 / 200*200 = 0.96
]
# Greedy matching in score order; d5 may only take A where d1 did not:
#   t in .50 .55 .60          : d1 T, d2 F, d3 T, d4 T, d5 F (A taken by d1)
#   t in .65 .70 .75 .80 .85  : d1 T, d2 F, d3 F, d4 T, d5 F
#   t in .90 .95              : d1 F, d2 F, d3 F, d4 T, d5 T (0.96 >= .95)
HAND_TP = {0.5: [1, 0, 1, 1, 0], 0.7: [1, 0, 0, 1, 0], 0.9: [0, 0, 0, 1, 1]}
# 101-point interpolated AP, precision p(r) = max precision at recall >= r:
#   t <= .60: precision 1, .5, .667, .75, .6 at recall 1/3, 1/3, 2/3, 1, 1
#             r in 0.00..0.33 (34 points) -> 1;  r in 0.34..1.00 (67) -> .75
#             AP = (34 + 67 * .75) / 101 = 84.25 / 101 = 0.83416
#   .65..85 : precision 1, .5, .333, .5, .4 at recall 1/3, 1/3, 1/3, 2/3, 2/3
#             34 points -> 1, r in 0.34..0.66 (33) -> .5, r > 2/3 (34) -> 0
#             AP = (34 + 33 * .5) / 101 = 50.5 / 101 = 0.5
#   .90 .95 : precision 0, 0, 0, .25, .4 at recall 0, 0, 0, 1/3, 2/3
#             r in 0.00..0.66 (67 points) -> .4;  AP = 26.8 / 101 = 0.26535
#   AP[.5:.95] = (3 * 84.25 + 5 * 50.5 + 2 * 26.8) / (10 * 101) = 0.55332
#   AR100 = (3 * 1 + 7 * 2/3) / 10 = 0.76667 (max recall per threshold)
#   AR1 (top detection per image: d1, d3) = (3 * 2/3 + 5 * 1/3 + 2 * 0) / 10 = 0.36667
HAND_AP = {0.5: 84.25 / 101, 0.7: 0.5, 0.9: 26.8 / 101}
HAND = {
    "AP": 558.85 / 1010, "AP50": 84.25 / 101, "AP60": 84.25 / 101, "AP70": 0.5,
    "AP75": 0.5, "AP80": 0.5, "AP90": 26.8 / 101, "AR100": 23 / 30, "AR10": 23 / 30,
    "AR1": 11 / 30, "APl": 558.85 / 1010, "APs": -1.0, "APm": -1.0,
}


def iou(a, b):
    """IoU of two yxyx boxes (independent of pycocotools)."""
    h = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    w = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = h * w
    area = lambda x: (x[2] - x[0]) * (x[3] - x[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def greedy_true_positives(threshold):
    """TP flag per detection (score order): best free gt with IoU >= threshold."""
    taken = {image: set() for image in GROUND_TRUTH}
    flags = []
    for image, box, _ in DETECTIONS:
        ious = [(iou(box, g), j) for j, g in enumerate(GROUND_TRUTH[image]) if j not in taken[image]]
        best = max(ious, default=(0.0, None))
        hit = best[0] >= threshold
        if hit:
            taken[image].add(best[1])
        flags.append(int(hit))
    return flags


def interpolated_ap(tp_flags, num_gt):
    """COCO's 101-point AP: mean over r in {0, .01, .., 1} of max precision at recall >= r."""
    tp = np.cumsum(tp_flags)
    precision = tp / np.arange(1, len(tp_flags) + 1)
    recall = tp / num_gt
    points = [max((p for p, r in zip(precision, recall) if r >= level), default=0.0)
              for level in np.linspace(0, 1, 101)]
    return float(np.mean(points))


def toy_evaluator(detections=DETECTIONS, ground_truth=GROUND_TRUTH):
    evaluator = CocoEvaluator(category_ids=[1], class_names=["thing"])
    for image, boxes in ground_truth.items():
        evaluator.add_ground_truth(image, boxes, np.zeros(len(boxes), int), height=480, width=640)
    for image, box, score in detections:
        evaluator.add_detections(image, np.array([box], float), [score], [0])
    return evaluator


def test_hand_arithmetic_is_consistent():
    assert iou(DETECTIONS[0][1], GROUND_TRUTH[1][0]) == pytest.approx(0.875)
    assert iou(DETECTIONS[2][1], GROUND_TRUTH[2][0]) == pytest.approx(0.625)
    assert iou(DETECTIONS[4][1], GROUND_TRUTH[1][0]) == pytest.approx(0.96)
    for threshold, flags in HAND_TP.items():
        assert greedy_true_positives(threshold) == flags
        assert interpolated_ap(flags, 3) == pytest.approx(HAND_AP[threshold])
    mean_ap = np.mean([interpolated_ap(greedy_true_positives(t), 3) for t in IOU_THRESHOLDS])
    assert mean_ap == pytest.approx(HAND["AP"])


def test_toy_set_matches_hand_computed_values():
    metrics = toy_evaluator().evaluate()
    for key, value in HAND.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key


def test_extra_thresholds_read_precision_like_summarize():
    evaluator = toy_evaluator()
    evaluator.evaluate()
    coco_eval = evaluator.last_coco_eval
    assert average_precision_at_iou(coco_eval, 0.5) == coco_eval.stats[1]
    assert average_precision_at_iou(coco_eval, 0.75) == coco_eval.stats[2]
    with pytest.raises(ValueError, match="not one of"):
        average_precision_at_iou(coco_eval, 0.52)


def test_perfect_detections_score_one():
    perfect = [(image, box, 0.9) for image, boxes in GROUND_TRUTH.items() for box in boxes]
    metrics = toy_evaluator(perfect).evaluate()
    for key in ("AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP90", "APl", "AR10", "AR100"):
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["AR1"] == pytest.approx(2 / 3)  # one detection per image finds 2 of 3


def test_no_detections_give_zero_not_a_crash():
    metrics = toy_evaluator(detections=[]).evaluate()
    assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0 and metrics["AP90"] == 0.0
    assert metrics["AR100"] == 0.0


def test_image_without_ground_truth_counts_false_positives():
    # A top-scoring detection on an empty image 3, then perfect detections:
    # TP flags 0,1,1,1 -> precision 0, .5, .67, .75 -> interpolated .75 at all 101 points.
    ground_truth = {**GROUND_TRUTH, 3: np.zeros((0, 4))}
    detections = [(3, [10, 10, 50, 50], 0.99)]
    detections += [(image, box, 0.9) for image, boxes in GROUND_TRUTH.items() for box in boxes]
    metrics = toy_evaluator(detections, ground_truth).evaluate()
    assert metrics["AP"] == pytest.approx(0.75)
    assert metrics["AR100"] == pytest.approx(1.0)


def test_crowd_ground_truth_is_ignored():
    evaluator = CocoEvaluator(category_ids=[1])
    evaluator.add_ground_truth(1, np.array([[0, 0, 100, 100], [200, 200, 400, 400]], float),
                               [0, 0], is_crowd=[False, True])
    # Highest score lies inside the crowd region: ignored, neither TP nor FP.
    evaluator.add_detections(1, np.array([[220, 220, 380, 380], [0, 0, 100, 100]], float),
                             [0.95, 0.9], [0, 0])
    metrics = evaluator.evaluate()
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["AR100"] == pytest.approx(1.0)  # the crowd box is not a positive to recall


def test_nothing_added_is_a_clear_error():
    with pytest.raises(ValueError, match="nothing to evaluate"):
        CocoEvaluator(category_ids=[1]).evaluate()


def test_detections_for_unknown_image_and_duplicate_ground_truth_are_errors():
    evaluator = toy_evaluator()
    with pytest.raises(ValueError, match="already added"):
        evaluator.add_ground_truth(1, np.zeros((0, 4)), [])
    evaluator.add_detections(42, np.array([[0, 0, 5, 5]], float), [0.5], [0])
    with pytest.raises(ValueError, match=r"\[42\] without ground truth"):
        evaluator.evaluate()


def test_non_contiguous_category_ids_round_trip(tmp_path):
    evaluator = CocoEvaluator(category_ids=[1, 3, 90], class_names=["a", "b", "c"])
    boxes = np.array([[0, 0, 50, 60], [100, 100, 200, 300], [10, 20, 50, 80]], float)
    evaluator.add_ground_truth(7, boxes, [0, 1, 2])
    evaluator.add_detections(7, boxes, [0.9, 0.8, 0.7], [0, 1, 2])
    assert evaluator.evaluate()["AP"] == pytest.approx(1.0)
    results = json.loads(open(evaluator.write_results_json(tmp_path / "r" / "res.json")).read())
    assert [r["category_id"] for r in results] == [1, 3, 90]
    assert results[2]["bbox"] == [20.0, 10.0, 60.0, 40.0]  # yxyx [10,20,50,80] -> xywh
    assert results[2]["image_id"] == 7 and results[2]["score"] == pytest.approx(0.7)
    categories = evaluator.ground_truth_dataset()["categories"]
    assert categories == [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}, {"id": 90, "name": "c"}]
    with pytest.raises(ValueError, match="outside"):
        evaluator.add_detections(7, boxes[:1], [0.5], [3])

    swapped = CocoEvaluator(category_ids=[1, 3, 90])
    swapped.add_ground_truth(7, boxes, [0, 1, 2])
    swapped.add_detections(7, boxes, [0.9, 0.8, 0.7], [1, 2, 0])
    assert swapped.evaluate()["AP"] == 0.0


def _batch(as_tensor):
    """Two images, resized by 0.5 (original 64x96 -> 32x48), M=3, K=3."""
    targets = {
        "boxes": np.array([[[4, 4, 20, 20], [0, 0, 0, 0], [0, 0, 0, 0]],
                           [[2, 10, 12, 30], [16, 0, 30, 40], [0, 0, 0, 0]]], np.float32),
        "classes": np.array([[1, -1, -1], [0, 1, -1]], np.int32),
        "is_crowd": np.zeros((2, 3), bool),
        "image_id": np.array([11, 12], np.int64),
        "scale": np.array([0.5, 0.5], np.float32),
        "image_shape": np.array([[32, 48], [32, 48]], np.int32),
        "original_shape": np.array([[64, 96], [64, 96]], np.int32),
    }
    detections = {
        # Image 11: one hit, one box beyond the image (clipped), one padding row
        # that LOOKS like a detection but lies past num_detections.
        "boxes": np.array([[[4, 4, 20, 20], [-5, -5, 40, 60], [4, 4, 20, 20]],
                           [[2, 10, 12, 30], [16, 0, 30, 40], [0, 0, 0, 0]]], np.float32),
        "scores": np.array([[0.9, 0.1, 0.8], [0.9, 0.8, 0.0]], np.float32),
        "classes": np.array([[1, 0, 1], [0, 1, -1]], np.int32),
        "num_detections": np.array([2, 3], np.int32),
    }
    if as_tensor:
        targets = {k: tf.constant(v) for k, v in targets.items()}
        detections = {k: tf.constant(v) for k, v in detections.items()}
    return targets, detections


@pytest.mark.parametrize("as_tensor", [False, True])
def test_update_from_batch_rescales_and_drops_padding(as_tensor):
    evaluator = CocoEvaluator(category_ids=[5, 6])
    evaluator.update_from_batch(*_batch(as_tensor))
    gt = evaluator.ground_truth_dataset()
    assert gt["images"] == [{"id": 11, "height": 64, "width": 96}, {"id": 12, "height": 64, "width": 96}]
    assert [a["bbox"] for a in gt["annotations"]] == [[8, 8, 32, 32], [20, 4, 40, 20], [0, 32, 80, 28]]
    assert [a["category_id"] for a in gt["annotations"]] == [6, 5, 6]
    assert [a["area"] for a in gt["annotations"]] == [32 * 32, 40 * 20, 80 * 28]
    results = evaluator.coco_results()
    assert len(results) == 4  # 2 of image 11 (num_detections), 2 of image 12 (class -1 dropped)
    assert results[0]["bbox"] == [8, 8, 32, 32] and results[0]["category_id"] == 6
    assert results[1]["bbox"] == [0, 0, 96, 64]  # [-10,-10,80,120] clipped to 64x96
    metrics = evaluator.evaluate()
    assert metrics["AP"] == pytest.approx(1.0)


def test_from_annotation_file(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({
        "images": [{"id": 5, "height": 100, "width": 100}, {"id": 7, "height": 100, "width": 100}],
        "categories": [{"id": 4, "name": "dog"}, {"id": 2, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 2, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 4, "bbox": [0, 0, 50, 20], "area": 1000, "iscrowd": 0},
        ],
    }))
    evaluator = CocoEvaluator.from_annotation_file(path)
    assert evaluator.category_ids == (2, 4) and evaluator.class_names == ("cat", "dog")
    with pytest.raises(RuntimeError, match="annotation file"):
        evaluator.add_ground_truth(5, np.zeros((0, 4)), [])

    evaluator.add_detections(5, np.array([[10, 10, 50, 50]], float), [0.9], [0])  # cat
    assert evaluator.evaluate()["AP"] == pytest.approx(1.0)  # only image 5 was seen
    evaluator.add_detections(7, np.zeros((0, 4)), [], [])  # image 7 seen, its dog missed
    assert evaluator.evaluate()["AR100"] == pytest.approx(0.5)  # mean over cat (1) and dog (0)
    evaluator.reset()
    assert evaluator.num_images == 0
    evaluator.add_detections(99, np.zeros((0, 4)), [], [])
    with pytest.raises(ValueError, match="not in the annotation file"):
        evaluator.evaluate()


def test_format_metrics_table():
    table = format_metrics_table({"AP": 0.55332, "AP50": 0.834, "APs": -1.0, "AR100": 1.0})
    header, values = table.splitlines()
    assert header.split() == ["AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP90",
                              "APs", "APm", "APl", "AR100"]
    assert values.split() == ["55.3", "83.4", "-", "-", "-", "-", "-", "-", "-", "-", "100.0"]


def test_real_pipeline_targets_map_back_to_original_pixels():
    from kdet.data.pipeline import make_pipeline

    originals = {3: (64, 96, np.array([[8, 16, 40, 60]], np.float32)),
                 4: (100, 50, np.array([[10, 5, 90, 45], [0, 0, 20, 20]], np.float32))}

    def gen():
        for image_id, (h, w, boxes) in originals.items():
            yield {"image": np.zeros((h, w, 3), np.uint8), "boxes": boxes,
                   "classes": np.zeros(len(boxes), np.int32), "is_crowd": np.zeros(len(boxes), bool),
                   "image_id": np.int64(image_id)}

    spec = {"image": tf.TensorSpec([None, None, 3], tf.uint8), "boxes": tf.TensorSpec([None, 4], tf.float32),
            "classes": tf.TensorSpec([None], tf.int32), "is_crowd": tf.TensorSpec([None], tf.bool),
            "image_id": tf.TensorSpec([], tf.int64)}
    examples = tf.data.Dataset.from_generator(gen, output_signature=spec)
    _, targets = next(iter(make_pipeline(examples, image_size=(128, 128), batch_size=2,
                                         training=False, max_boxes=4)))
    oracle = {"boxes": targets["boxes"], "scores": tf.cast(targets["classes"] >= 0, tf.float32),
              "classes": targets["classes"], "num_detections": tf.reduce_sum(
                  tf.cast(targets["classes"] >= 0, tf.int32), axis=1)}
    evaluator = CocoEvaluator(category_ids=[1])
    evaluator.update_from_batch(targets, oracle)
    for image in evaluator.ground_truth_dataset()["images"]:
        assert (image["height"], image["width"]) == originals[image["id"]][:2]
    for annotation in evaluator.ground_truth_dataset()["annotations"]:
        y0, x0, y1, x1 = originals[annotation["image_id"]][2][0]
        if annotation["image_id"] == 3:  # the single box of image 3, back in original pixels
            assert annotation["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=1e-3)
    assert evaluator.evaluate()["AP"] == pytest.approx(1.0)
