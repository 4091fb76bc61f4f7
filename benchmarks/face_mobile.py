"""MTCNN's weights in kdet on the phone path: each TFLite form against the ``mtcnn`` package, in one run.

What a mobile user ships is a ``.tflite`` file; this measures those files as
``kdet export`` writes them (``kdet.serving.tflite.convert`` of the model's
``export_variant``), next to the Keras model and the ``mtcnn`` 1.0.0 package
(the peer), at 640x480:

* forms: ``survivors`` (the default export: later stages on the boxes that
  survive, tensors of data-dependent size), ``static`` (``kdet export
  --static-shapes``: every stage on its whole budget, 400 and 100 as the
  package's settings, rejected boxes masked; what a mobile GPU delegate
  needs) and ``static_tight`` (the same with budgets of ``--tight-budgets``),
  each ``float32`` and ``int8`` (calibrated on embedded training images);
* accuracy: the six faces of the four real photographs
  (:mod:`kdet.data.real_faces`, letterboxed to 640x480, IoU 0.3: found /
  false positives / AP) and AP50 on embedded synthetic test images (faces
  >= 20 px);
* latency: one process per setting pinned to one CPU, LiteRT with one
  thread (XNNPack, the default delegate), median over the frames (the
  real photos and the synthetic frames), best of ``--rounds``; the ratio is
  the package's time over each;
* the GPU-delegate report of every file (:mod:`kdet.serving.gpu`);
* a reference: a plain three-layer convolution stack (32/64/64 filters at
  288x384) in float32 and full-integer int8, the same runtime: whether int8
  convolution is faster on this CPU at all.

CPU flags are printed and stored with the timings.

    python -m benchmarks.face_mobile            # ~10 min on 2 cores
    python -m benchmarks.face_mobile --quick    # a smoke run (tests use it)
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks import benchmark_main, face_peers, finish, median_ms, run_worker
from benchmarks import cpu_flags

FORMS = ("survivors", "static", "static_tight")
VARIANTS = ("float32", "int8")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", default="benchmarks/results/face_mobile", help="converted files go here")
    parser.add_argument("--json", default="benchmarks/results/face_mobile.json")
    parser.add_argument("--synthetic-images", type=int, default=50, help="embedded test images for AP50")
    parser.add_argument("--frames", type=int, default=8, help="synthetic frames timed (besides the real photos)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tight-budgets", type=int, nargs=2, default=(128, 16), metavar=("X12", "X24"),
                        help="stage budgets of the static_tight form (default: %(default)s: above the survivors "
                             "MTCNN keeps on 95%% of the embedded validation images, 101 and 14)")
    parser.add_argument("--quick", action="store_true", help="small input, few frames: checks the script runs")
    parser.add_argument("--latency-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size, args.forms, args.variants, args.reference = (480, 640), FORMS, VARIANTS, True
    if args.quick:  # a smoke run: the default float32 form only, no latency, no peer, no reference stack
        args.size, args.synthetic_images, args.frames, args.rounds = (120, 160), 2, 1, 1
        args.forms, args.variants, args.reference = ("survivors",), ("float32",), False
    return args


# ----------------------------------------------------------------------------- inputs and models
def real_frames(size) -> tuple[list, list[np.ndarray]]:
    """``(photos, letterboxed uint8 frames)`` of the real photographs that are here."""
    from kdet.data.real_faces import load_real_face_photos
    from kdet.serving.image import letterbox_uint8

    photos = load_real_face_photos()
    return photos, [letterbox_uint8(image, size) for _, image in photos]


def synthetic_examples(split: str, count: int, size) -> list[dict]:
    from kdet.data.faces import face_examples

    return list(face_examples(split, num_images=count, image_size=size))


def convert_all(args) -> dict[str, str]:
    """``{"<form>_<variant>": path}``: every TFLite file, as ``kdet export`` writes it."""
    from kdet.face import from_mtcnn
    from kdet.model_dir import build_for
    from kdet.serving import tflite

    models = {"survivors": build_for(from_mtcnn(), args.size)}  # (a form's own model: only the budgets differ)
    models["static"] = models["survivors"]
    x12, x24 = args.tight_budgets
    models["static_tight"] = build_for(from_mtcnn(test={"stage1_max_boxes": x12, "stage2_max_boxes": x24}), args.size)
    calibration = [e["image"] for e in synthetic_examples("train", 32, args.size)] if "int8" in args.variants else None
    os.makedirs(args.work_dir, exist_ok=True)
    paths = {}
    for form in args.forms:
        twin = models[form].export_variant(args.size, static_shapes=form.startswith("static"))
        for variant in args.variants:
            started = time.perf_counter()
            name = f"{form}_{variant}"
            paths[name] = tflite.write(tflite.convert(twin, input_size=args.size, quantization=variant,
                                                      representative_images=calibration),
                                       os.path.join(args.work_dir, f"mtcnn_kdet_{name}.tflite"))
            print(f"converted {name} in {time.perf_counter() - started:.0f} s", flush=True)
    return paths


def conv_stack_files(args) -> dict[str, str]:
    """The reference convolution stack, float32 and full-integer int8 (TFLite's standard int8 path)."""
    import keras
    import tensorflow as tf

    from kdet.serving import tflite

    keras.utils.set_random_seed(0)
    shape = (72, 96, 3) if args.quick else (288, 384, 3)
    inputs = keras.Input(shape, batch_size=1, name="images")
    x = inputs
    for filters in (32, 64, 64):
        x = keras.layers.Conv2D(filters, 3, activation="relu")(x)
    model = keras.Model(inputs, x)
    function = tf.function(lambda images: {"features": model(images)}).get_concrete_function(
        tf.TensorSpec((1, *shape), tf.float32, name="images"))
    rng = np.random.default_rng(0)
    samples = [{"images": rng.random((1, *shape), np.float32)} for _ in range(4)]
    paths = {}
    for variant in VARIANTS:
        path = os.path.join(args.work_dir, f"conv_stack_{variant}.tflite")
        paths[variant] = tflite.write(tflite.convert_function(function, quantization=variant,
                                                              representative_inputs=samples), path)
    return paths


def detector(name: str, paths: dict, size, threads: int | None):
    """``uint8 [H, W, 3] -> (boxes [D, 4], scores [D])`` of a named setting (threads None: the runtime's default)."""
    if name == "mtcnn":
        return face_peers.make_peer("mtcnn", num_threads=threads).detect
    if name in paths:
        from kdet.serving import tflite

        run = tflite.LiteRTDetector(paths[name], num_threads=threads or 2)
    else:  # keras: the frozen graph, as face_benchmark times kdet's detectors
        from kdet.face import from_mtcnn
        from kdet.serving.freeze import frozen_detect

        frozen = frozen_detect(from_mtcnn(), size)
        run = lambda image: {k: v.numpy() for k, v in frozen(image[None]).items()}  # noqa: E731

    def detect(image):
        out = run(image)
        n = int(out["num_detections"][0])
        return out["boxes"][0, :n], out["scores"][0, :n]

    return detect


# ----------------------------------------------------------------------------- accuracy
def accuracy(args, names: list[str], paths: dict) -> dict:
    """Real-photo found / FP / AP30 and synthetic AP50 of every setting."""
    from kdet.data.real_faces import score_real_photos
    from kdet.evaluation import FaceEvaluator

    photos, frames = real_frames(args.size)
    examples = synthetic_examples("test", args.synthetic_images, args.size)
    scale = [min(args.size[0] / p.height, args.size[1] / p.width) for p, _ in photos]  # kdet.serving.image.fit_scale
    out = {}
    for name in names:
        detect = detector(name, paths, args.size, None)  # TF's thread pools are set once: keep the default
        found = []
        for frame, s in zip(frames, scale):  # letterboxed at the top left: a photo pixel p is at p * s
            boxes, scores = detect(frame)
            found.append((np.asarray(boxes) / s, scores))
        real = score_real_photos(photos, found, min_score=0.0)
        evaluator = FaceEvaluator(min_face_size=20)
        for i, example in enumerate(examples):
            evaluator.add_ground_truth(i, example["boxes"], example.get("is_crowd"))
            evaluator.add_detections(i, *detect(example["image"]))
        out[name] = {"real_found": real["found"], "real_faces": real["faces"], "real_fp": real["false_positives"],
                     "real_ap30": real["ap"], "synthetic_ap50": evaluator.evaluate()["AP50"]}
        print(f"{name:18s} real {real['found']}/{real['faces']} FP {real['false_positives']} "
              f"AP30 {100 * real['ap']:.1f}  synthetic AP50 {100 * out[name]['synthetic_ap50']:.1f}", flush=True)
    return out


# ----------------------------------------------------------------------------- latency
def latency_worker(spec: dict) -> dict:
    cpus = face_peers.limit_cores(1)
    args = parse_args(spec["argv"])
    import tensorflow as tf  # before any op runs (the frames are letterboxed by TF; the package runs TF too)

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    frames = real_frames(args.size)[1] + [e["image"] for e in synthetic_examples("test", args.frames, args.size)]
    if spec["name"].startswith("conv_stack_"):
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=spec["paths"][spec["name"]], num_threads=1)
        interpreter.allocate_tensors()
        index = interpreter.get_input_details()[0]["index"]
        shape = interpreter.get_input_details()[0]["shape"]
        sample = np.random.default_rng(0).random(shape).astype(np.float32)
        detect = lambda _: (interpreter.set_tensor(index, sample), interpreter.invoke())  # noqa: E731
    else:
        detect = detector(spec["name"], spec["paths"], args.size, None if spec["name"] == "mtcnn" else 1)
    return {"cpus": cpus, **median_ms(detect, frames, warmup=2)}


def latency(args, names: list[str], paths: dict, argv: list[str]) -> dict:
    runs: dict = {}
    for round_index in range(args.rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
            result = run_worker("benchmarks.face_mobile", {"name": name, "paths": paths, "argv": argv}, env=env)
            runs.setdefault(name, []).append(result["median_ms"])
            print(f"latency {name:18s} {runs[name][-1]:7.1f} ms", flush=True)
    return {name: round(min(values), 2) for name, values in runs.items()}


# ----------------------------------------------------------------------------- report
def format_table(result: dict) -> str:
    lat, acc, gpu = result["latency_ms"], result["accuracy"], result["gpu"]
    peer = lat.get("mtcnn")
    lines = [f"CPU flags: {result['cpu_flags']}; 1 pinned core, 1 thread; input {result['size'][0]}x"
             f"{result['size'][1]}; REAL = the real photos here (all four: 6 faces), letterboxed; synthetic = embedded "
             "test images (AP50, faces >= 20 px)",
             "| setting | REAL found | REAL FP | REAL AP30 | synthetic AP50 | ms | vs mtcnn package | "
             "GPU ops | GPU MACs | Q/DQ ops |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in result["settings"]:
        a, g = acc.get(name, {}), gpu.get(name)
        ms = lat.get(name)
        cells = [f"{a['real_found']} of {a['real_faces']}" if a else "–", str(a.get("real_fp", "–")),
                 f"{100 * a['real_ap30']:.1f}" if a else "–", f"{100 * a['synthetic_ap50']:.1f}" if a else "–",
                 f"{ms:.1f}" if ms else "–", f"{peer / ms:.1f}x" if ms and peer else "–",
                 f"{100 * g['gpu_ops'] / g['ops']:.0f}%" if g else "–",
                 f"{100 * g['gpu_macs'] / max(g['macs'], 1):.0f}%" if g else "–",
                 str(g["quantize_ops"]) if g else "–"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    conv = [lat.get(f"conv_stack_{v}") for v in VARIANTS]
    if all(conv):
        lines.append(f"reference conv stack (32/64/64 filters, 288x384): float32 {conv[0]:.1f} ms, int8 {conv[1]:.1f} ms "
                     f"(int8 {'faster' if conv[1] < conv[0] else 'slower'} on this CPU)")
    return "\n".join(lines)


def file_reports(paths: dict[str, str]) -> dict:
    """Per TFLite file: :func:`kdet.serving.gpu.gpu_report`'s counts and its QUANTIZE + DEQUANTIZE operators."""
    from kdet.serving.gpu import gpu_report
    from kdet.serving.tflite import ops_used

    out = {}
    for name, path in paths.items():
        flatbuffer = open(path, "rb").read()
        ops = ops_used(flatbuffer)
        report = {key: value for key, value in gpu_report(flatbuffer).items() if key != "rejected"}
        out[name] = {**report, "quantize_ops": ops.get("QUANTIZE", 0) + ops.get("DEQUANTIZE", 0)}
    return out


def run(args, argv: list[str]) -> dict:
    """The parent: convert, report, measure accuracy and latency; prints the table, writes ``--json``."""
    started = time.time()
    paths = convert_all(args)
    conv = {f"conv_stack_{v}": p for v, p in conv_stack_files(args).items()} if args.reference else {}
    settings = ["keras", *paths] + ([] if args.quick else ["mtcnn"])  # a smoke run: kdet's own settings only
    timed = [] if args.quick else settings + list(conv)
    result = {"cpu_flags": cpu_flags(), "size": list(args.size), "quick": args.quick, "settings": settings,
              "gpu": file_reports(paths), "accuracy": accuracy(args, settings, paths),
              "latency_ms": latency(args, timed, {**paths, **conv}, argv),
              "loadavg_after_latency": [round(v, 2) for v in os.getloadavg()]}
    result["seconds"] = round(time.time() - started, 1)
    return finish(result, format_table(result), None if args.quick else args.json)


main = benchmark_main(parse_args, latency_worker, run)


if __name__ == "__main__":
    main()
