"""LiteRT latency and quantisation accuracy of kdet's TFLite exports, with the face peers, in one run.

Models (all converted with builtin ops only, :mod:`kdet.serving.tflite`):

* ``retinanet512``: RetinaNet ResNet-50-FPN, 80 classes, 512x512 (the
  paper's detector; random weights: latency does not depend on them, and
  no weights can be downloaded here). Keras (TF graph) and LiteRT float32 /
  float16 / int8 latency.
* ``shapes``: the demo's RetinaNet trained on the embedded synthetic shapes
  (``--shapes-model-dir``, a model directory; trained with ``kdet demo``'s
  defaults when missing): COCO AP on the validation split for Keras and
  each TFLite variant, so the quantisation drop is measured on a trained
  model.
* ``face``: the joint face cascade trained by ``face_benchmark.py``
  (``--face-record``), at 640x480, as one TFLite model (``one``) and as
  three models with the NumPy host loop (``three``, :mod:`kdet.face.lite`),
  each float32 / float16 / int8: face AP50 (faces >= 20 px) on the
  validation split, and latency; Keras alongside.
* peers for reference in the same run: MTCNN (TF/Keras) and BlazeFace
  short-range (LiteRT), as in ``face_peers.py``.

int8 calibrates on training-split images (64 shapes, 32 faces): full-integer
convolutions, float post-processing (see :mod:`kdet.serving.tflite`).

Latency: one subprocess per (model, threads) setting pinned to that many
CPUs (``face_peers.limit_cores``), LiteRT ``num_threads`` (TF intra-op
threads for Keras, inter-op 1), warm-up frames, then the median over
``--frames`` frames; each setting runs ``--rounds`` times (order reversed
every other round) and the best median is kept. Frames are real images:
face test-split VGA images, shapes images letterboxed to 512.

    python -m benchmarks.tflite_latency            # full run (~25 min on 2 cores)
    python -m benchmarks.tflite_latency --quick    # a smoke run (tests use it)
"""

from __future__ import annotations

import argparse
import json
import os
import time

from benchmarks import benchmark_main, median_ms, run_worker, write_json  # noqa: E402
import numpy as np

from benchmarks import face_peers  # noqa: E402

VARIANTS = ("float32", "float16", "int8")
FACE_SIZE = (480, 640)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", default="benchmarks/results/tflite", help="converted models are cached here")
    parser.add_argument("--shapes-model-dir", default="benchmarks/results/tflite/shapes_model")
    parser.add_argument("--face-record", default="benchmarks/results/face_benchmark/cascade_joint_from_separate_seed0",
                        help="face_benchmark.py record prefix: PREFIX.json (config) and PREFIX.weights.h5")
    parser.add_argument("--face-thresholds", type=float, nargs=3, default=None,
                        help="test thresholds of the face cascade (default: the record's)")
    parser.add_argument("--shapes-images", type=int, default=200, help="validation images for the shapes COCO AP")
    parser.add_argument("--face-images", type=int, default=100, help="validation images for the face AP")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip", nargs="*", default=[], choices=("retinanet512", "shapes", "face", "peers"))
    parser.add_argument("--parts", nargs="+", default=["accuracy", "latency"], choices=("accuracy", "latency"),
                        help="what to (re)measure; the other part is kept from an existing --json")
    parser.add_argument("--peer-cache-dir", default=str(face_peers.DEFAULT_CACHE_DIR))
    parser.add_argument("--json", default="benchmarks/results/tflite_latency.json")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and counts: checks the script runs")
    parser.add_argument("--latency-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.variants, args.face_variants = list(VARIANTS), list(VARIANTS)
    if args.quick:
        args.frames, args.warmup, args.rounds, args.threads = 2, 1, 1, [1]
        args.shapes_images, args.face_images = 8, 4
        args.variants, args.face_variants = ["float32", "int8"], ["float32"]
        # the face cascade's forms have their own tests (tests/serving/test_tflite.py, benchmarks/face_mobile.py's)
        args.skip = sorted(set(args.skip) | {"retinanet512", "peers", "face"})
    return args


# ----------------------------------------------------------------------------- models
def retinanet512(quick: bool):
    import keras

    from kdet.detectors.retinanet import RetinaNet

    keras.utils.set_random_seed(0)
    if quick:
        return RetinaNet(num_classes=3, backbone="tiny", fpn_filters=16, head=dict(num_convs=1, filters=16)), (128, 128)
    return RetinaNet(num_classes=80, backbone="resnet50"), (512, 512)


def shapes_model(args):
    """``(model, info, size)`` of the trained shapes RetinaNet (trains it with the demo when missing)."""
    from kdet.model_dir import load_model_dir

    if not os.path.isfile(os.path.join(args.shapes_model_dir, "kdet_model.json")):
        from kdet.demo import run_demo

        kwargs = dict(epochs=1, train_images=32, val_images=8) if args.quick else {}
        print(f"training the shapes model with kdet demo into {args.shapes_model_dir}", flush=True)
        run_demo(out_dir=args.shapes_model_dir, verbose=2, **kwargs)
    model, info = load_model_dir(args.shapes_model_dir)
    return model, info, tuple(info.input_size)


def face_model(args, *, use_gather: bool = False):
    from benchmarks import face_benchmark
    from kdet.face.cascade import FaceCascade

    with open(args.face_record + ".json") as f:
        config = json.load(f)["config"]
    settings = {"test_thresholds": list(args.face_thresholds)} if args.face_thresholds else {}
    config = face_benchmark.with_settings(config, settings)  # (also upgrades a config saved before the specs)
    model = FaceCascade.from_config({**config, "use_gather": use_gather})
    model.build(None)
    weights = args.face_record + ".weights.h5"
    if os.path.isfile(weights):
        model.load_weights(weights)
    elif not args.quick:  # --quick only checks that the script runs
        raise FileNotFoundError(f"{weights} is missing: run benchmarks/face_benchmark.py first (or pass "
                                f"--face-record)")
    return model


def shapes_images(split: str, count: int, size) -> tuple[list[np.ndarray], list[dict]]:
    """Letterboxed uint8 images and their ground truth (boxes scaled alike)."""
    from kdet.data.synthetic import synthetic_examples

    images, truth = [], []
    for example in synthetic_examples(split, seed=0, num_images=count):
        image = example["image"]
        scale = min(size[0] / image.shape[0], size[1] / image.shape[1])
        images.append(_letterbox(image, size))
        truth.append({**example, "boxes": np.asarray(example["boxes"], np.float32) * scale})
    return images, truth


def _letterbox(image: np.ndarray, size) -> np.ndarray:
    from kdet.serving.image import letterbox_uint8

    return letterbox_uint8(image, size)


def face_images(split: str, count: int) -> list[dict]:
    from kdet.data.faces import face_examples

    return list(face_examples(split, num_images=count))


def is_stale(path: str, source: str | None = None) -> bool:
    """A converted model to convert again: missing, or older than its ``source``.

    ``source`` is the weights file or model directory it was converted from
    (its newest file counts): retrained weights are never run from an old
    conversion.
    """
    if not os.path.isfile(path):
        return True
    if source is None or not os.path.exists(source):
        return False
    files = [os.path.join(source, f) for f in os.listdir(source)] if os.path.isdir(source) else [source]
    return os.path.getmtime(path) < max(os.path.getmtime(f) for f in files)


def convert_all(args) -> dict:
    """Converts (or reuses from ``--work-dir``) every TFLite variant; returns ``{name: path}`` and timings."""
    from kdet.serving import tflite
    from kdet.face import lite

    os.makedirs(args.work_dir, exist_ok=True)
    paths, seconds = {}, {}

    def cached(name, make, source=None):
        path = os.path.join(args.work_dir, f"{name}.tflite")
        if args.quick or is_stale(path, source):
            started = time.perf_counter()
            tflite.write(make(), path)
            seconds[name] = round(time.perf_counter() - started, 1)
            print(f"converted {name}: {os.path.getsize(path) / 1e6:.2f} MB in {seconds[name]}s", flush=True)
        paths[name] = path

    if "retinanet512" not in args.skip:
        model, size = retinanet512(args.quick)
        calibration, _ = shapes_images("train", 16, size)
        for variant in args.variants:
            cached(f"retinanet512_{variant}", lambda v=variant: tflite.convert(
                model, input_size=size, quantization=v, representative_images=calibration))
    if "shapes" not in args.skip:
        model, _, size = shapes_model(args)
        calibration, _ = shapes_images("train", 8 if args.quick else 64, size)
        for variant in args.variants:
            cached(f"shapes_{variant}", lambda v=variant: tflite.convert(
                model, input_size=size, quantization=v, representative_images=calibration), args.shapes_model_dir)
    if "face" not in args.skip:
        model = face_model(args, use_gather=True)
        face_weights = args.face_record + ".weights.h5"
        calibration = [e["image"] for e in face_images("train", 4 if args.quick else 32)]
        for variant in args.face_variants:
            cached(f"face_one_{variant}", lambda v=variant: tflite.convert(
                model, input_size=FACE_SIZE, quantization=v, representative_images=calibration), face_weights)
            stages = None
            for stage in lite.STAGES:
                path = os.path.join(args.work_dir, f"face_three_{variant}_{stage}.tflite")
                if args.quick or is_stale(path, face_weights):
                    stages = stages or lite.convert_stages(model, input_size=FACE_SIZE, quantization=variant,
                                                                representative_images=calibration)
                    tflite.write(stages[stage], path)
                paths[f"face_three_{variant}_{stage}"] = path
    return {"paths": paths, "convert_seconds": seconds}


def runner(name: str, paths: dict, args, threads: int):
    """A callable ``image [H, W, 3] uint8 -> output contract`` for a named setting."""
    from kdet.serving import tflite
    from kdet.face import lite

    if name.startswith("face_three_"):
        variant = name[len("face_three_"):]
        flatbuffers = {s: open(paths[f"face_three_{variant}_{s}"], "rb").read() for s in lite.STAGES}
        return lite.FaceCascadeLite(flatbuffers, face_model(args).get_config(), num_threads=threads)
    if name in paths:
        return tflite.LiteRTDetector(paths[name], num_threads=threads)
    import tensorflow as tf  # the Keras models, as a tf.function

    if name == "retinanet512_keras":
        model = retinanet512(args.quick)[0]
    elif name == "shapes_keras":
        model = shapes_model(args)[0]
    else:
        model = face_model(args)
    detect = tf.function(lambda x: model.detect(tf.cast(x, tf.float32)))
    return lambda image: {k: v.numpy() for k, v in detect(tf.constant(image[None])).items()}


# ----------------------------------------------------------------------------- accuracy
def accuracy(args, paths: dict) -> dict:
    """Shapes COCO AP and face AP50 (>= 20 px) for Keras and every TFLite variant (fractions)."""
    from kdet.evaluation import CocoEvaluator, FaceEvaluator

    out = {}
    if "shapes" not in args.skip:
        from kdet.data.synthetic import synthetic_info

        info = synthetic_info()
        size = shapes_model(args)[2]
        images, truth = shapes_images("validation", args.shapes_images, size)
        for variant in ["keras"] + args.variants:
            detect = runner(f"shapes_{variant}", paths, args, 2)
            evaluator = CocoEvaluator(category_ids=info.category_ids, class_names=info.class_names)
            for i, (image, gt) in enumerate(zip(images, truth)):
                evaluator.add_ground_truth(i, gt["boxes"], gt["classes"])
                det = detect(image)
                n = int(det["num_detections"][0])
                evaluator.add_detections(i, det["boxes"][0, :n], det["scores"][0, :n], det["classes"][0, :n])
            metrics = evaluator.evaluate()
            out[f"shapes_{variant}"] = {"AP": metrics["AP"], "AP50": metrics["AP50"]}
            print(f"shapes {variant:8s} COCO AP {100 * metrics['AP']:.2f}  AP50 {100 * metrics['AP50']:.2f}",
                  flush=True)
    if "face" not in args.skip:
        examples = face_images("validation", args.face_images)
        names = ["face_keras"] + [f"face_{form}_{v}" for form in ("one", "three") for v in args.face_variants]
        for name in names:
            detect = runner(name, paths, args, 2)
            evaluator = FaceEvaluator(min_face_size=20)
            for i, example in enumerate(examples):
                evaluator.add_ground_truth(i, example["boxes"], example.get("is_crowd"))
                det = detect(example["image"])
                n = int(det["num_detections"][0])
                evaluator.add_detections(i, det["boxes"][0, :n], det["scores"][0, :n])
            metrics = evaluator.evaluate()
            out[name] = {"AP50": metrics["AP50"], "num_detections": metrics.get("num_detections")}
            print(f"{name:22s} face AP50 (>= 20 px) {100 * metrics['AP50']:.2f}", flush=True)
    return out


# ----------------------------------------------------------------------------- latency
def latency_worker(spec: dict) -> dict:
    threads = int(spec["threads"])
    cpus = face_peers.limit_cores(threads)
    args = parse_args(spec["argv"])
    if spec["name"] not in ("mtcnn", "blazeface"):
        import tensorflow as tf  # before any op runs

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    if spec["name"].startswith(("retinanet512", "shapes")):
        size = retinanet512(args.quick)[1] if spec["name"].startswith("retinanet512") else shapes_model(args)[2]
        frames, _ = shapes_images("validation", args.frames, size)
    else:
        frames = [e["image"] for e in face_images("test", args.frames)]
    if spec["name"] in ("mtcnn", "blazeface"):
        detect = face_peers.make_peer(spec["name"], num_threads=threads, cache_dir=args.peer_cache_dir).detect
    else:
        detect = runner(spec["name"], spec["paths"], args, threads)
    return {"cpus": cpus, **median_ms(detect, frames, warmup=args.warmup)}


def latency(args, paths: dict, argv: list[str]) -> dict:
    names = []
    if "retinanet512" not in args.skip:
        names += ["retinanet512_keras"] + [f"retinanet512_{v}" for v in args.variants]
    if "shapes" not in args.skip and args.quick:
        names += ["shapes_int8"]
    if "face" not in args.skip:
        names += ["face_keras"] + [f"face_{form}_{v}" for form in ("one", "three") for v in args.face_variants]
    if "peers" not in args.skip:
        status = face_peers.available_peers(args.peer_cache_dir)
        names += [peer for peer in ("mtcnn", "blazeface") if status.get(peer) is None]
    settings = [(name, threads) for name in names for threads in args.threads]
    runs: dict = {}
    for round_index in range(args.rounds):
        for name, threads in settings if round_index % 2 == 0 else settings[::-1]:
            spec = {"name": name, "threads": threads, "paths": paths, "argv": argv}
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "2"}
            try:
                result = run_worker("benchmarks.tflite_latency", spec, env=env)
            except RuntimeError as error:
                print(f"{error} (x{threads} threads)", flush=True)
                continue
            runs.setdefault(name, {}).setdefault(str(threads), []).append(result["median_ms"])
            print(f"latency {name:24s} {threads} thread(s): {result['median_ms']:7.1f} ms", flush=True)
    return {name: {t: round(min(v), 2) for t, v in by_threads.items()} for name, by_threads in runs.items()}


# ----------------------------------------------------------------------------- report
def format_table(result: dict) -> str:
    lat, acc, threads = result["latency_ms"], result["accuracy"], result["threads"]
    lines = ["| model | form | " + " | ".join(f"ms x{t}" for t in threads) + " | accuracy | MB |",
             "|---|---|" + "---|" * len(threads) + "---|---|"]

    def row(name, model, form, metric=None):
        cells = [f"{lat[name][str(t)]:.1f}" if name in lat and str(t) in lat[name] else "–" for t in threads]
        accuracy_text = "–"
        if metric and name in acc:
            key, label = metric
            accuracy_text = f"{label} {100 * acc[name][key]:.1f}"
        size = result["sizes_mb"].get(name)
        lines.append(f"| {model} | {form} | " + " | ".join(cells) + f" | {accuracy_text} | "
                     f"{'–' if size is None else f'{size:.2f}'} |")

    for variant in ("keras",) + VARIANTS:
        row(f"retinanet512_{variant}", "RetinaNet R50-FPN 512x512", variant)
    for variant in ("keras",) + VARIANTS:
        row(f"shapes_{variant}", "RetinaNet tiny, shapes 128x128", variant, ("AP", "COCO AP"))
    row("face_keras", "face cascade 640x480", "keras", ("AP50", "AP50"))
    for form in ("one", "three"):
        for variant in VARIANTS:
            row(f"face_{form}_{variant}", "face cascade 640x480", f"{form} model{'s' if form == 'three' else ''} "
                f"{variant}", ("AP50", "AP50"))
    for peer in ("mtcnn", "blazeface"):
        row(peer, {"mtcnn": "MTCNN (peer)", "blazeface": "BlazeFace short-range (peer)"}[peer], "as shipped")
    return "\n".join(lines)


def run(args, argv: list[str]) -> dict:
    """The parent: convert, measure accuracy and latency; prints the table, writes ``--json``."""
    started = time.time()
    converted = convert_all(args)
    paths = converted["paths"]
    sizes = {name: round(os.path.getsize(path) / 1e6, 3) for name, path in paths.items()}
    for variant in VARIANTS:  # the three face models together
        parts = [sizes.pop(k) for k in list(sizes) if k.startswith(f"face_three_{variant}_")]
        if parts:
            sizes[f"face_three_{variant}"] = round(sum(parts), 3)
    previous = {}
    if not args.quick and os.path.isfile(args.json) and set(args.parts) != {"accuracy", "latency"}:
        with open(args.json) as f:
            previous = json.load(f)
    result = {**previous, "threads": args.threads, "sizes_mb": sizes, "quick": args.quick,
              "convert_seconds": {**previous.get("convert_seconds", {}), **converted["convert_seconds"]}}
    if "accuracy" in args.parts:
        result["accuracy"] = accuracy(args, paths)
    if "latency" in args.parts:
        result["latency_ms"] = latency(args, paths, argv)
        result["loadavg_after_latency"] = [round(v, 2) for v in os.getloadavg()]
    result.setdefault("accuracy", {})
    result.setdefault("latency_ms", {})
    result[f"seconds_{'_'.join(args.parts)}"] = round(time.time() - started, 1)
    print("\n" + format_table(result))
    write_json(result, None if args.quick else args.json)
    print(json.dumps({k: v for k, v in result.items() if k != "convert_seconds"}))
    return result


main = benchmark_main(parse_args, latency_worker, run)

if __name__ == "__main__":
    main()
