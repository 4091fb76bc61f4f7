"""What builtins-only TFLite costs two-stage detectors: the face RPN + Fast R-CNN and Cascade R-CNN R50-FPN.

No public two-stage detector exports to builtins-only TFLite (tensorflow/models#10069); kdet's do
(RoIAlign through gathers, proposals by NMS V5 padded to fixed budgets: tests/serving/
test_two_stage_tflite.py checks Keras parity). This measures, in one run:

* ``face_rcnn``: kdet's face RPN + Fast R-CNN (:func:`kdet.face.rcnn.face_rcnn`) at 640x480;
* ``cascade_rcnn``: Cascade R-CNN, ResNet-50-FPN, 3 stages, 80 classes, at 512x512;

each as the frozen TF graph (what ``kdet detect`` runs), LiteRT float32 and LiteRT int8 (calibrated
on embedded images), one process per setting pinned to one core, one thread, median over the
frames; the GPU-delegate report of each file (:mod:`kdet.serving.gpu`); CPU flags. Weights are
random (seeded): with fixed proposal budgets the work does not depend on them, so the latency is
the trained model's; accuracy is not measured here.

    python -m benchmarks.two_stage_tflite           # ~10 min on 2 cores
    python -m benchmarks.two_stage_tflite --quick   # tiny sizes: checks the script runs
"""

from __future__ import annotations

import argparse
import os
import time

from benchmarks import benchmark_main, face_peers, finish, median_ms, run_worker
from benchmarks import cpu_flags

MODELS = ("face_rcnn", "cascade_rcnn")
FORMS = ("keras", "float32", "int8")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", default="benchmarks/results/two_stage")
    parser.add_argument("--json", default="benchmarks/results/two_stage_tflite.json")
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--latency-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = {"face_rcnn": (480, 640), "cascade_rcnn": (512, 512)}
    if args.quick:
        args.sizes, args.frames = {"face_rcnn": (128, 160), "cascade_rcnn": (128, 128)}, 2
    return args


def build(name: str, args):
    """The seeded model (the same weights in every process)."""
    import keras

    from kdet.detectors.cascade_rcnn import CascadeRCNN
    from kdet.face.rcnn import face_rcnn
    from kdet.model_dir import build_for

    keras.utils.set_random_seed(0)
    if name == "face_rcnn":
        model = face_rcnn()
    elif args.quick:  # small heads: a smoke run
        model = CascadeRCNN(num_classes=3, rpn=dict(backbone=dict(name="tiny"), fpn_filters=16, head_filters=16),
                            fc_dim=32)
    else:  # the paper's detector: default budgets (1,000 proposals, 1,024-wide box heads), 3 stages
        model = CascadeRCNN(num_classes=80, rpn=dict(backbone=dict(name="resnet50", weights=None)))
    return build_for(model, args.sizes[name])


def frames(name: str, args, count: int):
    """Embedded images at the model's size: faces for the face detector, shapes for Cascade R-CNN."""
    from kdet.data.faces import face_examples
    from kdet.data.synthetic import synthetic_examples
    from kdet.serving.image import letterbox_uint8

    size = args.sizes[name]
    if name == "face_rcnn":
        return [e["image"] for e in face_examples("test", num_images=count, image_size=size)]
    return [letterbox_uint8(e["image"], size) for e in synthetic_examples("validation", seed=0, num_images=count)]


def convert_all(args) -> dict[str, str]:
    from kdet.serving import tflite

    os.makedirs(args.work_dir, exist_ok=True)
    paths = {}
    for name in MODELS:
        model = build(name, args)
        twin = model.export_variant(args.sizes[name])
        for variant in FORMS[1:]:
            started = time.perf_counter()
            calibration = frames(name, args, 4 if args.quick else 16) if variant == "int8" else None
            path = os.path.join(args.work_dir, f"{name}_{variant}.tflite")
            tflite.write(tflite.convert(twin, input_size=args.sizes[name], quantization=variant,
                                        representative_images=calibration), path)
            paths[f"{name}_{variant}"] = path
            print(f"converted {name} {variant} in {time.perf_counter() - started:.0f} s "
                  f"({os.path.getsize(path) / 1e6:.1f} MB)", flush=True)
    return paths


def latency_worker(spec: dict) -> dict:
    cpus = face_peers.limit_cores(1)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    args = parse_args(spec["argv"])
    name, form = spec["name"].rsplit("_", 1)
    images = frames(name, args, args.frames)
    if form == "keras":
        from kdet.serving.freeze import frozen_detect

        run = frozen_detect(build(name, args), args.sizes[name])
        detect = lambda image: run(image[None])  # noqa: E731
    else:
        from kdet.serving import tflite

        detect = tflite.LiteRTDetector(spec["paths"][spec["name"]], num_threads=1)
    return {"cpus": cpus, **median_ms(detect, images, warmup=1)}


def format_table(result: dict) -> str:
    lines = [f"CPU flags: {result['cpu_flags']}; 1 pinned core, 1 thread; random weights (the work is the trained "
             "model's: fixed budgets)",
             "| detector | input | Keras ms | TFLite float32 ms | TFLite int8 ms | float32 vs Keras | "
             "GPU ops (float32) | GPU MACs | MACs |", "|---|---|---|---|---|---|---|---|---|"]
    for name in MODELS:
        ms = [result["latency_ms"].get(f"{name}_{form}") for form in FORMS]
        gpu = result["gpu"].get(f"{name}_float32", {})
        cells = [f"{v:.0f}" if v else "–" for v in ms] + [f"{ms[0] / ms[1]:.2f}x" if all(ms[:2]) else "–"]
        cells += [f"{100 * gpu['gpu_ops'] / gpu['ops']:.0f}%", f"{100 * gpu['gpu_macs'] / max(gpu['macs'], 1):.0f}%",
                  f"{gpu['macs'] / 1e9:.2f} G"] if gpu else ["–"] * 3
        h, w = result["sizes"][name]
        lines.append(f"| {name} | {h}x{w} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args, argv: list[str]) -> dict:
    """The parent: convert, time every setting in its worker, report; prints the table, writes ``--json``."""
    from kdet.serving.gpu import gpu_report

    started = time.time()
    paths = convert_all(args)
    latency = {}
    for name in MODELS:
        for form in FORMS:
            setting = f"{name}_{form}"
            env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
            latency[setting] = round(run_worker("benchmarks.two_stage_tflite", {"name": setting, "paths": paths,
                                                                               "argv": argv}, env=env)["median_ms"], 1)
            print(f"latency {setting:22s} {latency[setting]:8.1f} ms", flush=True)
    gpu = {name: {k: v for k, v in gpu_report(open(path, "rb").read()).items() if k != "rejected"}
           for name, path in paths.items()}
    result = {"cpu_flags": cpu_flags(), "quick": args.quick, "sizes": {k: list(v) for k, v in args.sizes.items()},
              "latency_ms": latency, "gpu": gpu, "megabytes": {k: round(os.path.getsize(p) / 1e6, 1)
                                                               for k, p in paths.items()},
              "seconds": round(time.time() - started, 1)}
    return finish(result, format_table(result), None if args.quick else args.json)


main = benchmark_main(parse_args, latency_worker, run)

if __name__ == "__main__":
    main()
