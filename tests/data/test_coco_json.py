"""COCO-json reader/writer cases beyond tests/data/test_readers.py."""

import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from kdet.data import DetectionInfo, load_coco_json, make_pipeline, write_coco_json


def _jpeg_bytes(shape=(24, 32, 3)):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, shape, np.uint8)).save(
        buffer, format="JPEG"
    )
    return buffer.getvalue()


def _write_json(path, images, annotations=(), categories=({"id": 1, "name": "a"},)):
    data = {"images": images, "categories": list(categories)}
    if annotations is not None:  # None: no "annotations" key at all (a COCO image_info file)
        data["annotations"] = list(annotations)
    path.write_text(json.dumps(data))
    return str(path)


def test_truncated_jpeg_is_skipped_counted_and_named(tmp_path, caplog):
    (tmp_path / "good.jpg").write_bytes(_jpeg_bytes())
    (tmp_path / "cut.jpg").write_bytes(_jpeg_bytes()[:300])
    path = _write_json(tmp_path / "ann.json", [
        {"id": 1, "file_name": "cut.jpg"}, {"id": 2, "file_name": "good.jpg"}])
    dataset, info = load_coco_json(path, str(tmp_path))
    with caplog.at_level(logging.WARNING):
        ids = [int(e["image_id"]) for e in dataset]
        ids_again = [int(e["image_id"]) for e in dataset]
    assert ids == ids_again == [2]
    assert info.stats.as_dict()["skipped_images"] == 2  # counted on every pass
    assert "cut.jpg" in caplog.text and "good.jpg" not in caplog.text


def test_dropped_boxes_are_warned_once_per_image_per_run_naming_their_annotation_ids(tmp_path, capfd):
    (tmp_path / "a.jpg").write_bytes(_jpeg_bytes())  # 24 x 32
    (tmp_path / "b.jpg").write_bytes(_jpeg_bytes())
    ann = [{"id": 501, "image_id": 1, "category_id": 1, "bbox": [2, 2, 0, 5]},  # zero width
           {"id": 502, "image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8]},
           {"id": 503, "image_id": 1, "category_id": 1, "bbox": [40, 30, 5, 5]},  # outside the image
           {"image_id": 2, "category_id": 1, "bbox": [1, 1, -3, 4]}]  # no id: its index names it
    path = _write_json(tmp_path / "ann.json", [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
                       ann)
    dataset, info = load_coco_json(path, str(tmp_path))
    for _ in range(3):  # three epochs
        kept = [e["boxes"].shape[0] for e in dataset]
    assert kept == [1, 0]
    assert info.stats.as_dict()["dropped_boxes"] == 3 * 3  # the counters count every pass
    lines = [line for line in capfd.readouterr().err.splitlines() if "dropped" in line]
    assert len(lines) == 2, lines  # once per image, not once per epoch
    first = next(line for line in lines if "image_id 1 " in line)
    assert "dropped 2" in first and "annotation ids 501, 503" in first
    assert "annotation ids 3" in next(line for line in lines if "image_id 2 " in line)
    # A new reader is a new run: it warns again.
    list(load_coco_json(path, str(tmp_path))[0])
    assert sum("dropped" in line for line in capfd.readouterr().err.splitlines()) == 2


def test_image_info_file_without_annotations_gives_empty_examples(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_jpeg_bytes((10, 12, 3)))
    path = _write_json(tmp_path / "info.json", [{"id": 9, "file_name": "a.jpg"}], annotations=None)
    with pytest.raises(ValueError, match="info.json: missing top-level field 'annotations'"):
        load_coco_json(path, str(tmp_path))  # read for training or evaluation: most likely a misspelled key
    dataset, info = load_coco_json(path, str(tmp_path), allow_missing_annotations=True)
    (example,) = list(dataset)
    assert example["image"].shape == (10, 12, 3)
    assert example["boxes"].shape == (0, 4) and example["classes"].shape == (0,)
    assert info.class_names == ("a",)


@pytest.mark.parametrize(
    "text,match",
    [
        ("[1, 2]", "expected an object"),
        ('{"images": [], "categories": [{"id": 1}]}', "categories\\[0\\].*'name'"),
        ('{"images": [{"id": 1}], "categories": []}', "images\\[0\\].*'file_name'"),
        ('{"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "a"}],'
         ' "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}]}',
         "annotations\\[0\\].*'bbox'"),
        ('{"images": [{"id": "1", "file_name": "a.jpg"}], "categories": []}', "'id'"),
    ],
)
def test_malformed_fields_raise_value_errors_naming_file_and_field(tmp_path, text, match):
    (tmp_path / "a.jpg").write_bytes(_jpeg_bytes())
    path = tmp_path / "odd.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        load_coco_json(str(path), str(tmp_path))
    assert "odd.json" in str(err.value)


def test_writer_maps_labels_to_category_ids_and_reader_inverts_it(tmp_path):
    info = DetectionInfo(class_names=("x", "y", "z"), category_ids=(3, 7, 42))
    example = {
        "image": np.zeros([20, 30, 3], np.uint8),
        "boxes": np.array([[1, 2, 11, 22], [0, 0, 5, 5]], np.float32),
        "classes": np.array([2, 0], np.int32),
        "is_crowd": np.array([False, True]),
        "image_id": np.int64(17),
    }
    path = write_coco_json([example], info=info, out_dir=str(tmp_path / "out"))
    data = json.loads(open(path).read())
    assert data["images"] == [{"id": 17, "file_name": "000000000017.png",
                               "height": 20, "width": 30}]
    anns = data["annotations"]
    assert [a["category_id"] for a in anns] == [42, 3]
    assert anns[0]["bbox"] == [2.0, 1.0, 20.0, 10.0] and anns[0]["area"] == 200.0
    assert [a["iscrowd"] for a in anns] == [0, 1]
    dataset, back = load_coco_json(path, str(tmp_path / "out"))
    assert back.category_ids == info.category_ids
    (read,) = list(dataset)
    np.testing.assert_allclose(read["boxes"], example["boxes"])
    assert read["classes"].numpy().tolist() == [2, 0]
    assert read["is_crowd"].numpy().tolist() == [False, True]


def test_reader_feeds_the_pipeline_with_mixed_sizes(tmp_path):
    for i, shape in enumerate([(40, 60, 3), (90, 30, 3), (64, 64, 3)]):
        Image.fromarray(np.full(shape, 50 * i, np.uint8)).save(tmp_path / f"{i}.png")
    images = [{"id": i + 1, "file_name": f"{i}.png"} for i in range(3)]
    annotations = [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 30, 90]}]
    path = _write_json(tmp_path / "ann.json", images, annotations)
    dataset, _ = load_coco_json(path, str(tmp_path))
    (batch,) = list(make_pipeline(dataset, image_size=(128, 128), batch_size=3,
                                  training=False, max_boxes=2))
    _, targets = batch
    assert targets["original_shape"].numpy().tolist() == [[40, 60], [90, 30], [64, 64]]
    np.testing.assert_allclose(targets["scale"], [128 / 60, 128 / 90, 2.0], rtol=1e-6)
    np.testing.assert_allclose(targets["boxes"][1, 0], [0, 0, 128, 128 / 3], rtol=1e-5)
