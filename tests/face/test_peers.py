"""benchmarks/face_peers.py: BlazeFace's anchors, decoding, NMS and letterbox always; each peer on the
astronaut photo when its package (and, for BlazeFace, the fetched model file) is here. Nothing is downloaded."""


import numpy as np
import pytest


from benchmarks import face_peers as fp  # noqa: E402

# --------------------------------------------------------------------------- pure functions (always run)


def test_short_range_anchors_hand_checked():
    anchors = fp.ssd_anchors()  # (y_centre, x_centre, h, w)
    assert anchors.shape == (896, 4) and anchors.dtype == np.float32
    np.testing.assert_array_equal(anchors[:, 2:], 1.0)  # fixed anchor size
    # Stride 8: a 16x16 map, 2 anchors per cell, row-major, the two anchors of a cell identical.
    np.testing.assert_allclose(anchors[0], [0.5 / 16, 0.5 / 16, 1, 1])
    np.testing.assert_allclose(anchors[1], anchors[0])
    np.testing.assert_allclose(anchors[2], [0.5 / 16, 1.5 / 16, 1, 1])  # next column
    np.testing.assert_allclose(anchors[32], [1.5 / 16, 0.5 / 16, 1, 1])  # next row
    np.testing.assert_allclose(anchors[511], [15.5 / 16, 15.5 / 16, 1, 1])
    # Strides 16, 16, 16 share one 8x8 map: 6 anchors per cell.
    np.testing.assert_allclose(anchors[512:518], np.tile([0.5 / 8, 0.5 / 8, 1, 1], (6, 1)))
    np.testing.assert_allclose(anchors[518], [0.5 / 8, 1.5 / 8, 1, 1])
    np.testing.assert_allclose(anchors[895], [7.5 / 8, 7.5 / 8, 1, 1])
    assert len(np.unique(anchors[:512, :2], axis=0)) == 256 and len(np.unique(anchors[512:, :2], axis=0)) == 64


def test_decode_boxes_and_keypoints_on_a_hand_built_output():
    anchors = fp.ssd_anchors()
    raw = np.zeros((896, 16), np.float32)
    # Anchor 2 sits at (y, x) = (1/32, 3/32). Raw order is x, y, w, h, then (x, y) per keypoint.
    raw[2, :6] = [12.8, -6.4, 32.0, 64.0, 25.6, 12.8]
    boxes = fp.decode_boxes(raw, anchors)
    xc, yc, w, h = 0.1 + 3 / 32, -0.05 + 1 / 32, 0.25, 0.5
    np.testing.assert_allclose(boxes[2], [yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], atol=1e-6)
    # A zero output is a zero-size box on the anchor's centre.
    np.testing.assert_allclose(boxes[895], [7.5 / 8] * 4, atol=1e-6)
    keypoints = fp.decode_keypoints(raw, anchors)
    assert keypoints.shape == (896, 6, 2)
    np.testing.assert_allclose(keypoints[2, 0], [0.1 + 1 / 32, 0.2 + 3 / 32], atol=1e-6)  # (y, x)


def test_sigmoid_scores_clip_without_overflow():
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # exp(100) overflows float32, not float64
        scores = fp.sigmoid_scores(np.array([-1e4, -2.0, 0.0, 2.0, 1e4]))
    np.testing.assert_allclose(scores, [0.0, 0.11920292, 0.5, 0.88079708, 1.0], rtol=1e-6, atol=1e-30)
    assert 0 <= scores[0] < 1e-40
    assert scores.dtype == np.float32


def test_weighted_and_plain_nms():
    boxes = np.array([[1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 30, 30]], np.float32)
    scores = np.array([0.6, 0.9, 0.8, 0.7], np.float32)  # box 0 overlaps box 1 with IoU 81/119 > 0.3
    kept, kept_scores = fp.nms(boxes, scores, 0.3, weighted=True)
    np.testing.assert_allclose(kept_scores, [0.9, 0.8, 0.7])
    np.testing.assert_allclose(kept[0], (boxes[1] * 0.9 + boxes[0] * 0.6) / 1.5, rtol=1e-6)  # score-weighted mean
    np.testing.assert_allclose(kept[1:], boxes[[2, 3]])  # IoU 1/9 with the top box: kept as is
    kept, kept_scores = fp.nms(boxes, scores, 0.3, weighted=False)
    np.testing.assert_allclose(kept, boxes[[1, 2, 3]])
    empty_boxes, empty_scores = fp.nms(np.zeros((0, 4)), np.zeros(0))
    assert empty_boxes.shape == (0, 4) and empty_scores.shape == (0,)


def test_letterbox_round_trip_and_pixel_geometry():
    params = fp.letterbox_params(480, 640)
    assert params == (640.0, 80.0, 0.0)
    boxes = np.array([[100, 200, 300, 420], [0, 0, 480, 640], [10.5, 600, 20, 639]], np.float32)
    normalised = fp.boxes_to_letterbox(boxes, params)
    np.testing.assert_allclose(normalised[1], [80 / 640, 0, 560 / 640, 1])
    np.testing.assert_allclose(fp.boxes_from_letterbox(normalised, params, 480, 640), boxes, atol=1e-4)
    # Portrait image: the padding is on the left and right; clipping keeps boxes inside the image.
    params = fp.letterbox_params(640, 480)
    assert params == (640.0, 0.0, 80.0)
    np.testing.assert_allclose(fp.boxes_from_letterbox([[-0.1, 0, 1.1, 1]], params, 640, 480), [[0, 0, 640, 480]])
    # The pixels land where the mapping says: a white block in a VGA frame, found again in the 128x128 input.
    image = np.zeros((480, 640, 3), np.uint8)
    image[160:320, 320:480] = 255
    square, params = fp.letterbox(image)
    assert square.shape == (128, 128, 3) and square.dtype == np.uint8
    ys, xs = np.nonzero(square[..., 0] > 127)
    found = np.array([[ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]], np.float32) / 128
    np.testing.assert_allclose(fp.boxes_from_letterbox(found, params, 480, 640), [[160, 320, 320, 480]], atol=5.0)


def test_blazeface_postprocess_on_a_hand_built_output():
    anchors = fp.ssd_anchors()
    raw = np.zeros((896, 16), np.float32)
    logits = np.full(896, -10.0, np.float32)
    # Two overlapping detections on anchors 728 and 729 (cell (4, 4) of the 8x8 map: y = x = 4.5 / 8)
    # and one below the score threshold.
    raw[728, :4] = [0.0, 0.0, 12.8, 12.8]  # a 0.1 x 0.1 box on the anchor
    raw[729, :4] = [0.64, 0.64, 12.8, 12.8]  # shifted by 0.005
    raw[700, :4] = [0.0, 0.0, 12.8, 12.8]
    logits[[728, 729, 700]] = [3.0, 1.0, -1.0]
    params = fp.letterbox_params(480, 640)
    boxes, scores = fp.blazeface_postprocess(raw, logits, anchors, params, 480, 640, min_score=0.5)
    assert boxes.shape == (1, 4) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, [1 / (1 + np.exp(-3.0))], rtol=1e-6)
    s1, s2 = 1 / (1 + np.exp(-3.0)), 1 / (1 + np.exp(-1.0))
    centre = 4.5 / 8 + 0.005 * s2 / (s1 + s2)  # score-weighted
    expected = np.array([centre - 0.05, centre - 0.05, centre + 0.05, centre + 0.05]) * 640 - [80, 0, 80, 0]
    np.testing.assert_allclose(boxes[0], expected, atol=1e-3)
    plain, _ = fp.blazeface_postprocess(raw, logits, anchors, params, 480, 640, weighted=False)
    np.testing.assert_allclose(plain[0], np.array([0.5125, 0.5125, 0.6125, 0.6125]) * 640 - [80, 0, 80, 0], atol=1e-3)
    none, none_scores = fp.blazeface_postprocess(raw, logits, anchors, params, 480, 640, min_score=0.99)
    assert none.shape == (0, 4) and none_scores.shape == (0,)


def test_available_peers_never_raises_and_says_why(tmp_path):
    status = fp.available_peers(cache_dir=tmp_path)
    assert set(status) == {"mtcnn", "haar", "blazeface"}
    assert all(why is None or isinstance(why, str) for why in status.values())
    assert "--fetch" in status["blazeface"] or "ai_edge_litert" in status["blazeface"]


def test_fetch_blazeface_keeps_a_cached_file(tmp_path):
    cached = tmp_path / fp.BLAZEFACE_FILE
    cached.write_bytes(b"cached")
    assert fp.fetch_blazeface(tmp_path) == cached and cached.read_bytes() == b"cached"  # no download


# --------------------------------------------------------------------------- the peers (skip when absent)


@pytest.fixture(scope="module")
def astronaut():
    data = pytest.importorskip("skimage.data", reason="scikit-image is needed for the astronaut photo")
    return data.astronaut()


def _skip_unless_available(name):
    """Skips (with the reason) when the peer's package is missing or broken, or its model file absent."""
    why = fp.available_peers()[name]
    if why:
        pytest.skip(f"{name} unavailable: {why}")


def _peer(name):
    _skip_unless_available(name)
    return fp.make_peer(name)


def _check_finds_the_face(peer, image):
    boxes, scores = peer.detect(image)
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    assert boxes.shape == (len(scores), 4) and len(scores) >= 1
    assert np.all(np.diff(scores) <= 0)
    assert fp.iou(fp.ASTRONAUT_FACE, boxes[:1])[0] > 0.4, (boxes, scores)
    # The same face on a VGA frame (shifted 64 px right, by the canvas).
    boxes_vga, _ = peer.detect(fp.vga_canvas(image))
    assert fp.iou(fp.ASTRONAUT_FACE + np.float32([0, 64, 0, 64]), boxes_vga[:1])[0] > 0.4, boxes_vga
    blank_boxes, blank_scores = peer.detect(np.zeros((480, 640, 3), np.uint8))
    assert blank_boxes.shape == (0, 4) and blank_scores.shape == (0,)
    with pytest.raises(ValueError):
        peer.detect(image.astype(np.float32))


def test_mtcnn_finds_the_astronaut(astronaut):
    peer = _peer("mtcnn")
    assert peer.min_face_size == 20
    _check_finds_the_face(peer, astronaut)


def test_mtcnn_threads_are_fixed_once_tensorflow_ran():
    _skip_unless_available("mtcnn")
    import tensorflow as tf

    tf.constant(1.0) + 1.0  # TF is initialised in this process now
    peer = fp.MTCNNPeer.__new__(fp.MTCNNPeer)
    n = tf.config.threading.get_intra_op_parallelism_threads() + 3
    with pytest.raises(RuntimeError, match="own process"):
        peer.set_threads(n)


def test_haar_finds_the_astronaut(astronaut):
    peer = _peer("haar")
    peer.set_threads(1)
    _check_finds_the_face(peer, astronaut)


def test_blazeface_finds_the_astronaut(astronaut):
    peer = _peer("blazeface")  # skips when LiteRT is missing or the model was not fetched
    _check_finds_the_face(peer, astronaut)
    # Its landmarks land on the face: both eyes inside the face box, the right eye left of the left eye.
    raw, logits, params = peer.raw_outputs(astronaut)
    best = int(np.argmax(logits))
    keypoints = fp.decode_keypoints(raw[best:best + 1], peer.anchors[best:best + 1])[0] * params[0]
    (ry, rx), (ly, lx) = keypoints[0], keypoints[1]
    y0, x0, y1, x1 = fp.ASTRONAUT_FACE
    assert y0 < ry < y1 and y0 < ly < y1 and x0 < rx < lx < x1, keypoints
    peer.set_threads(2)
    boxes, _ = peer.detect(astronaut)
    assert fp.iou(fp.ASTRONAUT_FACE, boxes[:1])[0] > 0.4
