"""Face metrics (kdet.evaluation.face) against curves computed by hand."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import io as scipy_io

from kdet.evaluation import face

# ---------------------------------------------------------------------------
# Toy set, boxes yxyx in pixels. Faces:
#   image 1: A [0,0,10,10], B [20,20,30,30], C [40,40,50,50] (crowd: ignored)
#   image 2: D [0,0,20,20], E [0,40,4,44] (a 4x4 face)
#   image 3: no face
GROUND_TRUTH = [
    {"image_id": 1, "boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float),
     "is_crowd": np.array([False, False, True])},
    {"image_id": 2, "boxes": np.array([[0, 0, 20, 20], [0, 40, 4, 44]], float)},
    {"image_id": 3, "boxes": np.zeros((0, 4))},
]
# Detections (name: box, score -> fate at IoU 0.5):
#   d1 [0,0,10,10]   .9  A, IoU 1                        -> TP
#   d2 [0,0,10,9]    .8  A again (IoU .9), A is taken     -> FP (duplicate)
#   d3 [40,40,50,50] .7  only C, an ignored face          -> ignored
#   d4 [20,20,30,24] .6  B, IoU 40/100 = .4 < .5          -> FP (TP at AFW's .3)
#   d5 [0,0,20,20]   .8  D, IoU 1 (tied with d2)          -> TP
#   d6 [0,40,4,44]   .5  E, IoU 1                         -> TP
#   d7 [0,0,10,10]   .6  image 3 has no face (tied w. d4) -> FP
DETECTIONS = [
    {"image_id": 1, "boxes": np.array([[0, 0, 10, 10], [0, 0, 10, 9], [40, 40, 50, 50], [20, 20, 30, 24]], float),
     "scores": np.array([0.9, 0.8, 0.7, 0.6])},
    {"image_id": 2, "boxes": np.array([[0, 0, 20, 20], [0, 40, 4, 44]], float), "scores": np.array([0.8, 0.5])},
    {"image_id": 3, "boxes": np.array([[0, 0, 10, 10]], float), "scores": np.array([0.6])},
]
# IoU 0.5: 4 positives (A, B, D, E). Cumulative counts per distinct score:
#   score  .9  .8  .6  .5        (d3, ignored, is on no curve)
#   TP      1   2   2   3
#   FP      0   1   3   3
#   prec    1  2/3 2/5 1/2      recall .25 .5 .5 .75
# envelope 1 2/3 1/2 1/2  ->  AP = .25 * 1 + .25 * 2/3 + .25 * 1/2 = 13/24
AP50 = 13 / 24
# IoU 0.3 (AFW): d4 becomes a TP on B, the rest is unchanged:
#   TP 1 2 3 4, FP 0 1 2 2 -> precision 1 2/3 3/5 2/3, recall .25 .5 .75 1
#   envelope 1 2/3 2/3 2/3 -> AP = .25 * 1 + .75 * 2/3 = 3/4
AP30 = 3 / 4


def test_match_detections_rules():
    gt = np.array([[0, 0, 10, 10], [0, 5, 10, 15], [30, 30, 40, 40]], float)  # P, Q, R (R ignored)
    det = np.array([
        [0, 0, 10, 10],    # .9: P (IoU 1; Q 50/150)                                  -> TP on P
        [0, 2, 10, 12],    # .8: P taken (IoU .667); Q IoU 70/130 = .54 is free        -> TP on Q
        [0, 1, 10, 11],    # .7: P (IoU 90/110 = .82) is taken, Q only 60/140 = .43    -> FP
        [30, 30, 40, 40],  # .6: R (ignored)                                          -> ignored
        [30, 30, 40, 39],  # .6: R again: an ignored face absorbs any number          -> ignored
        [60, 60, 70, 70],  # .5: nothing                                              -> FP
    ], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.6, 0.5])
    is_tp, is_ignored = face.match_detections(gt, det, scores, iou_threshold=0.5,
                                              ignore=np.array([False, False, True]))
    np.testing.assert_array_equal(is_tp, [1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(is_ignored, [0, 0, 0, 1, 1, 0])
    # The order of the input does not matter, only the scores.
    perm = np.array([5, 3, 1, 0, 4, 2])
    tp2, ig2 = face.match_detections(gt, det[perm], scores[perm], iou_threshold=0.5,
                                     ignore=np.array([False, False, True]))
    np.testing.assert_array_equal(tp2, is_tp[perm])
    np.testing.assert_array_equal(ig2, is_ignored[perm])


def test_match_prefers_a_free_face_over_an_ignored_one_and_ties_go_to_the_first_listed():
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 8]], float)  # F (counts), G (ignored), G inside F
    # [0,0,10,8.5]: IoU with G = 80/85 = .94, with F = 85/100 = .85 -> F: a face that counts comes first.
    is_tp, _ = face.match_detections(gt, [[0, 0, 10, 8.5]], [1.0], iou_threshold=0.5, ignore=[False, True])
    assert is_tp.tolist() == [True]
    # Tied scores on one face: the first listed wins even with the lower IoU (stable order).
    is_tp, is_ignored = face.match_detections(gt[:1], [[0, 0, 10, 9], [0, 0, 10, 10]], [0.5, 0.5],
                                              iou_threshold=0.5)
    assert is_tp.tolist() == [True, False] and is_ignored.tolist() == [False, False]


def test_precision_recall_and_ap_by_hand():
    pr = face.precision_recall(GROUND_TRUTH, DETECTIONS)
    np.testing.assert_allclose(pr.thresholds, [0.9, 0.8, 0.6, 0.5])
    np.testing.assert_allclose(pr.precision, [1, 2 / 3, 2 / 5, 1 / 2])
    np.testing.assert_allclose(pr.recall, [0.25, 0.5, 0.5, 0.75])
    assert pr.num_positives == 4
    assert face.average_precision(GROUND_TRUTH, DETECTIONS) == pytest.approx(AP50)


def test_ties_enter_together_whatever_their_order():
    # Swap the tied d2 (FP) and d5 (TP) in the listing: nothing changes.
    reordered = [DETECTIONS[2], DETECTIONS[1], DETECTIONS[0]]
    assert face.average_precision(GROUND_TRUTH, reordered) == pytest.approx(AP50)


def test_discrete_roc_and_recall_at_false_positives():
    roc = face.discrete_roc(GROUND_TRUTH, DETECTIONS)
    # The origin, then the table above.
    np.testing.assert_array_equal(roc.false_positives, [0, 0, 1, 3, 3])
    np.testing.assert_array_equal(roc.true_positives, [0, 1, 2, 2, 3])
    np.testing.assert_allclose(roc.true_positive_rate, [0, 0.25, 0.5, 0.5, 0.75])
    assert roc.thresholds[0] == np.inf
    # Lowest threshold with FP <= N: N=0 -> .9 (1 TP); 1, 2 -> .8 (2 TP); 3, 100 -> .5 (3 TP).
    expected = {0: 0.25, 1: 0.5, 2: 0.5, 3: 0.75, 100: 0.75}
    for n, recall in expected.items():
        assert face.recall_at_false_positives(roc, n) == pytest.approx(recall), n


def test_afw_iou_03_accepts_a_box_that_iou_05_rejects():
    is_tp, _ = face.match_detections([[20, 20, 30, 30]], [[20, 20, 30, 24]], [1.0], iou_threshold=0.5)
    assert not is_tp[0]  # IoU .4
    assert face.afw_average_precision(GROUND_TRUTH, DETECTIONS) == pytest.approx(AP30)
    assert face.AFW_IOU_THRESHOLD == 0.3


def test_min_face_size_makes_small_faces_ignore_regions():
    # E is 4x4 < 5: ignored, and d6 on it too. 3 positives; TP 1 2 2, FP 0 1 3 at .9 .8 .6:
    # precision 1 2/3 2/5, recall 1/3 2/3 2/3 -> AP = 1/3 + 1/3 * 2/3 = 5/9.
    pr = face.precision_recall(GROUND_TRUTH, DETECTIONS, min_face_size=5)
    assert pr.num_positives == 3
    np.testing.assert_allclose(pr.recall, [1 / 3, 2 / 3, 2 / 3])
    assert face.average_precision(GROUND_TRUTH, DETECTIONS, min_face_size=5) == pytest.approx(5 / 9)
    # A 4x4 face is not below 4.
    assert face.precision_recall(GROUND_TRUTH, DETECTIONS, min_face_size=4).num_positives == 4


DIFFICULTY = {
    "easy": {1: [0], 2: [0], 3: []},        # A, D
    "medium": {1: [0, 1], 2: [0], 3: []},   # A, B, D (same as min_face_size=5)
    "hard": {1: [0, 1, 2], 2: [0, 1], 3: []},  # everything (C stays a crowd)
}


def test_wider_difficulty_lists():
    # easy: 2 positives; B and E ignored. d4 (IoU .4 with B) is still a FP, d6 (on E) ignored.
    #   TP 1 2 2, FP 0 1 3 -> precision 1 2/3 2/5, recall .5 1 1 -> AP = .5 + .5 * 2/3 = 5/6.
    ap = face.wider_difficulty_ap(GROUND_TRUTH, DETECTIONS, DIFFICULTY)
    assert ap == pytest.approx({"easy": 5 / 6, "medium": 5 / 9, "hard": AP50})
    with pytest.raises(ValueError, match="not in the difficulty list"):
        face.wider_difficulty_ap(GROUND_TRUTH, DETECTIONS, {"easy": {1: [0], 2: [0]}})
    with pytest.raises(ValueError, match="outside"):
        face.wider_difficulty_ap(GROUND_TRUTH, DETECTIONS, {"easy": {1: [3], 2: [0], 3: []}})


def test_no_detections_and_no_faces():
    # No detections: AP 0, the ROC is only the origin, recall 0.
    assert face.average_precision(GROUND_TRUTH, []) == 0.0
    roc = face.discrete_roc(GROUND_TRUTH, [])
    assert roc.false_positives.tolist() == [0] and face.recall_at_false_positives(roc, 10) == 0.0
    # No (non-ignored) face at all: AP and recall are undefined, -1.
    no_faces = [{"image_id": 3, "boxes": np.zeros((0, 4))}]
    only_fp = [DETECTIONS[2]]
    assert face.average_precision(no_faces, only_fp) == -1.0
    assert face.recall_at_false_positives(face.discrete_roc(no_faces, only_fp), 10) == -1.0
    with pytest.raises(ValueError, match="no ground truth"):
        face.average_precision(no_faces, [DETECTIONS[0]])


def _batch(images, ground_truth, detections, *, as_tensor):
    """Pads a list of images into targets (scale .5) and the detector output contract (K = 5)."""
    targets = {"boxes": np.zeros((len(images), 3, 4), np.float32), "classes": -np.ones((len(images), 3), np.int32),
               "is_crowd": np.zeros((len(images), 3), bool), "image_id": np.array(images, np.int64),
               "scale": np.full(len(images), 0.5, np.float32),
               "original_shape": np.full((len(images), 2), 64, np.int32)}
    out = {"boxes": np.zeros((len(images), 5, 4), np.float32), "scores": np.zeros((len(images), 5), np.float32),
           "classes": np.zeros((len(images), 5), np.int32), "num_detections": np.zeros(len(images), np.int32)}
    for b, image in enumerate(images):
        gt, det = ground_truth[image - 1], detections[image - 1]
        g, d = len(gt["boxes"]), len(det["scores"])
        targets["boxes"][b, :g] = gt["boxes"] * 0.5
        targets["classes"][b, :g] = 0
        targets["is_crowd"][b, :g] = gt.get("is_crowd", False)
        out["boxes"][b, :d] = det["boxes"] * 0.5
        out["boxes"][b, d:] = 7.0  # junk in the padding must be dropped
        out["scores"][b, :d], out["scores"][b, d:] = det["scores"], 0.99
        out["num_detections"][b] = d
    convert = (lambda x: {k: tf.constant(v) for k, v in x.items()}) if as_tensor else (lambda x: x)
    return convert(targets), convert(out)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_evaluator_on_padded_batches_equals_the_list_api(as_tensor):
    evaluator = face.FaceEvaluator(false_positive_counts=(0, 1, 3), difficulty_lists=DIFFICULTY)
    evaluator.update_from_batch(*_batch([1, 2], GROUND_TRUTH, DETECTIONS, as_tensor=as_tensor))
    evaluator.update_from_batch(*_batch([3], GROUND_TRUTH, DETECTIONS, as_tensor=as_tensor))
    metrics = evaluator.evaluate()
    assert metrics == pytest.approx({
        "AP50": AP50, "AP30_afw": AP30, "AP50_easy": 5 / 6, "AP50_medium": 5 / 9, "AP50_hard": AP50,
        "recall_at_0fp": 0.25, "recall_at_1fp": 0.5, "recall_at_3fp": 0.75,
        "num_faces": 4, "num_detections": 7})
    np.testing.assert_allclose(evaluator.last_curves.roc.true_positives, [0, 1, 2, 2, 3])
    table = face.format_face_metrics_table(metrics)
    assert table.splitlines()[0].split()[:2] == ["AP50", "AP30_afw"]
    assert table.splitlines()[1].split() == ["54.2", "75.0", "83.3", "55.6", "54.2", "25.0", "50.0", "75.0",
                                             "4", "7"]
    sized = face.FaceEvaluator(min_face_size=5)
    sized.update_from_batch(*_batch([1, 2, 3], GROUND_TRUTH, DETECTIONS, as_tensor=as_tensor))
    assert sized.evaluate()["AP50"] == pytest.approx(5 / 9)
    evaluator.reset()
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluator.evaluate()


def _write_difficulty_mat(path, events):
    """Writes a wider_*_val.mat like the official one: per-event cells of names and 1-based indices."""
    def cell(items):
        array = np.empty((len(items), 1), object)
        for i, item in enumerate(items):
            array[i, 0] = item
        return array
    scipy_io.savemat(path, {
        "event_list": cell([event for event, _ in events]),
        "file_list": cell([cell([name for name, _ in images]) for _, images in events]),
        "gt_list": cell([cell([np.array(index, float).reshape(-1, 1) if index else np.zeros((0, 0))
                               for _, index in images]) for _, images in events])})


def test_load_wider_difficulty_lists(tmp_path):
    folder = tmp_path / "eval_tools" / "ground_truth"
    folder.mkdir(parents=True)
    names = [("0--Parade", ["0_Parade_marchingband_1_1", "0_Parade_marchingband_1_2"]),
             ("1--Handshaking", ["1_Handshaking_3"])]
    _write_difficulty_mat(folder / "wider_face_val.mat", [(e, [(n, []) for n in images]) for e, images in names])
    for setting, indices in (("easy", ([1], [1], [])), ("medium", ([1, 2], [1], [])),
                             ("hard", ([1, 2, 3], [1, 2], []))):  # MATLAB's 1-based indices
        events = [(names[0][0], list(zip(names[0][1], indices[:2]))), (names[1][0], [(names[1][1][0], indices[2])])]
        _write_difficulty_mat(folder / f"wider_{setting}_val.mat", events)
    # Without names in a setting's file, the loader takes them from wider_face_val.mat.
    gt_only = scipy_io.loadmat(folder / "wider_hard_val.mat")
    scipy_io.savemat(folder / "wider_hard_val.mat", {"gt_list": gt_only["gt_list"]})
    lists = face.load_wider_difficulty_lists(tmp_path / "eval_tools", image_id_fn=lambda name: int(name[-1]))
    assert {k: {i: v.tolist() for i, v in d.items()} for k, d in lists.items()} == DIFFICULTY
    by_name = face.load_wider_difficulty_lists(folder)
    assert by_name["hard"]["0--Parade/0_Parade_marchingband_1_2"].tolist() == [0, 1]
    ap = face.wider_difficulty_ap(GROUND_TRUTH, DETECTIONS, lists)
    assert ap == pytest.approx({"easy": 5 / 6, "medium": 5 / 9, "hard": AP50})


def test_plot_face_curves_writes_a_png(tmp_path):
    curves = {"toy": face.face_curves(GROUND_TRUTH, DETECTIONS),
              "toy, AFW IoU": face.face_curves(GROUND_TRUTH, DETECTIONS, iou_threshold=0.3),
              "nothing": face.face_curves(GROUND_TRUTH, [])}
    path = face.plot_face_curves(curves, tmp_path / "plots" / "faces.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
