"""kdet.data.real_faces: the real-photo face set loads from its packages, is checked, and scores detectors."""

import hashlib

import numpy as np
import pytest

from kdet.data import real_faces as rf


def test_every_record_is_well_formed():
    names = [p.name for p in rf.REAL_FACE_PHOTOS]
    assert len(set(names)) == len(names) == 4
    assert sum(len(p.faces) for p in rf.REAL_FACE_PHOTOS) == 6
    for photo in rf.REAL_FACE_PHOTOS:
        boxes = photo.boxes
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all(), photo.name
        assert (boxes >= 0).all() and (boxes[:, 2] <= photo.height).all() and (boxes[:, 3] <= photo.width).all()
        assert len(photo.sha256) == 64 and photo.rights


def test_installed_photos_load_and_match_their_checksums():
    loaded = rf.load_real_face_photos(["astronaut", "grace_hopper"])
    assert [p.name for p, _ in loaded] == ["astronaut", "grace_hopper"]
    for photo, image in loaded:
        assert image.dtype == np.uint8 and image.shape == (photo.height, photo.width, 3)
        path = rf.real_face_photo_path(photo)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == photo.sha256


def test_a_photo_not_here_is_skipped_with_a_warning_naming_it(tmp_path):
    with pytest.warns(UserWarning, match=r"not here, skipped: bus, zidane.*--fetch"):
        loaded = rf.load_real_face_photos(cache_dir=tmp_path)  # an empty cache: the fetched two are missing
    assert [p.name for p, _ in loaded] == ["astronaut", "grace_hopper"]


def test_a_changed_file_is_refused_naming_it(tmp_path):
    bus = next(p for p in rf.REAL_FACE_PHOTOS if p.name == "bus")
    (tmp_path / "bus.jpg").write_bytes(b"not the photo")
    with pytest.raises(ValueError, match=r"bus\.jpg.*sha256.*picture changed"):
        rf.load_real_face_photos(["bus"], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown real face photo"):
        rf.load_real_face_photos(["lena"])
    assert bus.installed is False


def test_scoring_counts_found_faces_false_positives_and_ap():
    photos = [p for p in rf.REAL_FACE_PHOTOS if p.name in ("bus", "astronaut")]  # astronaut 1 face, bus 2
    astronaut, bus = photos
    shifted = astronaut.boxes + np.float32([10, 10, 10, 10])  # IoU ~0.7: found at the AFW 0.3
    detections = [
        (np.concatenate([shifted, [[0, 0, 20, 20]]]), np.array([0.9, 0.95])),  # a face, then a higher FP
        (np.concatenate([bus.boxes[:1], bus.boxes[:1], bus.boxes[1:]]), np.array([0.8, 0.7, 0.1])),
    ]
    out = rf.score_real_photos(photos, detections, min_score=0.5)
    assert out["faces"] == 3 and out["found"] == 2 and out["false_positives"] == 2  # the FP and the duplicate
    assert out["per_photo"]["bus"] == {"faces": 2, "found": 1, "false_positives": 1}
    # AP over all detections: ranked 0.95 FP, 0.9 TP, 0.8 TP, 0.7 FP, 0.1 TP -> precision 1/2, 2/3, 3/5 at
    # recall 1/3, 2/3, 1; interpolated area = (1/3)(2/3) + (1/3)(2/3) + (1/3)(3/5).
    assert out["ap"] == pytest.approx((2 / 3 + 2 / 3 + 3 / 5) / 3)
    with pytest.raises(ValueError, match="2 photos but 1"):
        rf.score_real_photos(photos, detections[:1], min_score=0.5)
