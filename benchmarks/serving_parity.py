"""Does the served model score what ``kdet evaluate`` measured? COCO AP of one model directory, three ways.

The validation split of the model directory's data is written as a user's
COCO-json dataset of JPEG files (optionally enlarged, so that the letterbox
really resizes), then scored with the same pycocotools ground truth:

* ``kdet_evaluate`` -- :func:`kdet.inference.evaluate_model_dir` on
  ``coco-json:`` (the reader and pipeline of training), its
  ``--results-json`` detections;
* ``savedmodel`` -- ``kdet export --format savedmodel``, then the loaded
  SavedModel's ``serving_bytes`` on each file's bytes, as TF Serving would
  run it;
* ``kdet_detect`` -- :func:`kdet.inference.detect_files` (the ``kdet
  detect`` command) on the same files, score threshold 0.

Run (from the repository root)::

    .venv/bin/kdet demo --out kdet_demo                  # or any model directory with COCO classes
    .venv/bin/python -m benchmarks.serving_parity --model-dir kdet_demo --images 200 --upscale 2

Prints one JSON object, then a table. The data are the embedded synthetic
shapes (a proxy: what is compared is the three paths, not the model).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks import cpu_flags  # noqa: E402


def write_jpeg_split(data: str, out_dir: str, *, images: int, upscale: float, seed: int = 0) -> str:
    """Writes ``images`` examples of ``data`` as JPEG files + a COCO json (boxes scaled with the pixels)."""
    from PIL import Image

    from kdet.data.coco_json import write_coco_json
    from kdet.data.sources import open_source

    dataset, info = open_source(data, seed=seed)
    examples = []
    for example in dataset.take(images):
        ex = {k: np.asarray(v) for k, v in example.items()}
        if upscale != 1:
            h, w = ex["image"].shape[:2]
            size = (round(w * upscale), round(h * upscale))
            ex["image"] = np.asarray(Image.fromarray(ex["image"]).resize(size, Image.BILINEAR))
            ex["boxes"] = ex["boxes"] * np.array([size[1] / h, size[0] / w] * 2, np.float32)
        examples.append(ex)
    return write_coco_json(examples, info=info, out_dir=out_dir, image_format="jpg")


def coco_ap(ground_truth: str, results: list[dict]) -> dict[str, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ground_truth)
        if not results:
            return {"AP": 0.0, "AP50": 0.0}
        evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"AP": float(evaluation.stats[0]), "AP50": float(evaluation.stats[1])}


def _result_rows(image_id: int, boxes_pixels, scores, categories) -> list[dict]:
    """COCO result rows of one image's detections; ``categories``: each detection's category id."""
    rows = []
    for (y0, x0, y1, x1), score, category in zip(boxes_pixels, scores, categories):
        rows.append({"image_id": int(image_id), "category_id": int(category),
                     "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "score": float(score)})
    return rows


def served_results(saved_model: str, records: list[dict], image_dir: str) -> list[dict]:
    """The SavedModel's detections as a TF Serving client reads them: ``detection_classes`` are category ids."""
    import tensorflow as tf

    serve = tf.saved_model.load(saved_model).signatures["serving_bytes"]
    rows = []
    for record in records:
        with open(os.path.join(image_dir, record["file_name"]), "rb") as f:
            out = serve(input_tensor=tf.constant([f.read()]))
        n = int(out["num_detections"][0])
        h, w = record["height"], record["width"]
        boxes = out["detection_boxes"][0, :n].numpy() * [h, w, h, w]
        categories = out["detection_classes"][0, :n].numpy().astype(int)
        rows += _result_rows(record["id"], boxes, out["detection_scores"][0, :n].numpy(), categories)
    return rows


def detect_results(model_dir: str, records: list[dict], image_dir: str, out_dir: str) -> list[dict]:
    from kdet.inference import detect_files

    paths = [os.path.join(image_dir, r["file_name"]) for r in records]
    rows = []
    for record, (_, _, found) in zip(records, detect_files(model_dir, paths, out_dir=out_dir, score_threshold=0.0)):
        rows += _result_rows(record["id"], found["boxes"], found["scores"], found["category_ids"])
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--data", help="data string to score on (default: the model directory's)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--upscale", type=float, default=2.0, help="enlarge the images before JPEG encoding")
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args(argv)

    from kdet.serving.export import export_model_dir
    from kdet.inference import evaluate_model_dir
    from kdet.model_dir import read_model_info

    info = read_model_info(args.model_dir)
    data = args.data or info.data
    work = tempfile.mkdtemp(prefix="kdet_serving_parity_")
    started = time.time()
    ann = write_jpeg_split(data, os.path.join(work, "data"), images=args.images, upscale=args.upscale)
    with open(ann) as f:
        written = json.load(f)
    results_json = os.path.join(work, "evaluate_results.json")
    own = evaluate_model_dir(args.model_dir, data=f"coco-json:{ann}", results_json=results_json, progress=False)
    with open(results_json) as f:
        evaluated = json.load(f)
    saved = os.path.join(work, "served", "1")
    export_model_dir(args.model_dir, format="savedmodel", out=saved)
    image_dir = os.path.dirname(ann)
    rows = {"kdet_evaluate": evaluated,
            "savedmodel": served_results(saved, written["images"], image_dir),
            "kdet_detect": detect_results(args.model_dir, written["images"], image_dir, os.path.join(work, "drawn"))}
    scores = {name: coco_ap(ann, r) for name, r in rows.items()}
    report = {"model_dir": args.model_dir, "data": data, "images": len(written["images"]), "upscale": args.upscale,
              "cpu_flags": cpu_flags(), "seconds": round(time.time() - started, 1),
              "kdet_evaluate_own_metrics": {k: own[k] for k in ("AP", "AP50")}, "coco": scores,
              "detections": {name: len(r) for name, r in rows.items()},
              "difference_AP_points": {name: round(100 * (s["AP"] - scores["kdet_evaluate"]["AP"]), 2)
                                       for name, s in scores.items()}}
    print(json.dumps(report, indent=2))
    print(f"\n{'path':<15} {'AP':>6} {'AP50':>6} {'dets':>6} {'AP - evaluate':>14}")
    for name, s in scores.items():
        print(f"{name:<15} {100 * s['AP']:6.2f} {100 * s['AP50']:6.2f} {report['detections'][name]:6d} "
              f"{report['difference_AP_points'][name]:+14.2f}")
    print(f"({report['images']} JPEG images of {data} enlarged x{args.upscale}; CPU flags: {report['cpu_flags']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
