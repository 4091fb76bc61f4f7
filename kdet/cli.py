"""The ``kdet`` command line.

``kdet demo`` is the main job (train RetinaNet on the embedded data, evaluate,
draw); ``kdet train`` runs a recipe of the ``recipes`` package; ``kdet evaluate``,
``kdet detect`` and ``kdet export`` work on the model directory it writes.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys

from kdet.training.command import add_train_arguments, guard, positive_int, resolve_recipe, run_train


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def demo_defaults() -> dict:
    """The keyword defaults of :func:`kdet.demo.run_demo` (one source of truth)."""
    from kdet.demo import run_demo

    return {k: p.default for k, p in inspect.signature(run_demo).parameters.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's own C++ log lines (hidden by default: on a CPU-only machine they are "
                             "noise such as a CUDA cuInit error); an explicit TF_CPP_MIN_LOG_LEVEL is kept")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="train RetinaNet on the embedded synthetic shapes, print COCO metrics, draw predictions",
    )
    defaults = demo_defaults()
    demo.add_argument("--out", default=defaults["out_dir"], help="output folder (default: %(default)s)")
    for flag, key in [("--epochs", "epochs"), ("--train-images", "train_images"), ("--val-images", "val_images"),
                      ("--batch-size", "batch_size")]:
        demo.add_argument(flag, type=positive_int, default=defaults[key], help="(default: %(default)s)")
    demo.add_argument("--seed", type=int, default=defaults["seed"], help="(default: %(default)s)")

    train = sub.add_parser("train", help="train a recipe (NAME[:VARIANT] of the recipes package, or a file's "
                                         "PATH.py[:VARIANT]) into a model directory")
    train.add_argument("recipe", help="recipe name (retinanet, cascade_rcnn_fpn:voc; NAME:small: CPU-sized) or file")
    add_train_arguments(train)

    evaluate = sub.add_parser("evaluate", help="COCO metrics (face metrics for face models) of a model directory")
    evaluate.add_argument("--model-dir", required=True, help="a kdet model directory")
    evaluate.add_argument("--data", help="evaluation data, e.g. tfds:coco/2017:validation (default: the model "
                                         "directory's)")
    evaluate.add_argument("--max-images", type=positive_int, help="evaluate the first N images")
    evaluate.add_argument("--batch-size", type=positive_int, default=8, help="(default: %(default)s)")
    evaluate.add_argument("--results-json", help="also write the detections in COCO result format here")
    evaluate.add_argument("--data-dir", help="tfds data directory")
    evaluate.add_argument("--tflite", metavar="FILE", help="evaluate this .tflite file (kdet export --format tflite of "
                                                           "the model directory) with LiteRT instead of the Keras model")

    detect = sub.add_parser("detect", help="draw a model directory's detections on images into PNG files")
    detect.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files (JPEG, PNG, GIF, BMP, WebP, TIFF) or folders of them")
    detect.add_argument("--model-dir", required=True, help="a kdet model directory")
    detect.add_argument("--out", required=True, help="output folder (one IMAGE_NAME.png per image; inputs with the "
                                                     "same name get distinct outputs)")
    detect.add_argument("--score-threshold", type=_unit_interval, default=0.3,
                        help="draw detections scoring at least this, 0..1 (default: %(default)s)")
    detect.add_argument("--json", metavar="FILE",
                        help="also write the detections here: per image its path, size and each detection's box "
                             "(ymin, xmin, ymax, xmax pixels of the original image), score, category id and name")

    _add_export_arguments(sub.add_parser(
        "export", help="write a model directory as a SavedModel (TF Serving) or a TFLite file"))
    return parser


def _add_export_arguments(export) -> None:
    export.add_argument("--model-dir", required=True, help="a kdet model directory (kdet_model.json + weights)")
    export.add_argument("--format", required=True, choices=("savedmodel", "tflite"),
                        help="savedmodel: serving_default + serving_bytes signatures; tflite: builtin ops only")
    export.add_argument("--out", required=True,
                        help="SavedModel folder (a TF Serving version folder, e.g. serving/faces/1) or .tflite path")
    export.add_argument("--quantization", default="float32", choices=("float32", "float16", "int8"),
                        help="TFLite weights/activations (default: %(default)s); int8 calibrates on --data")
    export.add_argument("--input-size", type=positive_int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                        help="fixed input size (default: the model directory's)")
    export.add_argument("--data", help="int8 calibration data, e.g. embedded:faces:train or tfds:coco/2017:train "
                                       "(default: the training data of the model directory's recipe)")
    export.add_argument("--calibration-images", type=positive_int, default=64, help="(default: %(default)s)")
    export.add_argument("--max-pixels", type=positive_int,
                        help="SavedModel: serving_bytes refuses encoded images of more pixels (height x width), "
                             "read from their header before decoding (default: 40000000)")
    export.add_argument("--static-shapes", action="store_true",
                        help="TFLite: every tensor of a fixed size, as a mobile GPU delegate needs (the face "
                             "cascade's later stages then run on their whole budgets; the same detections)")
    export.add_argument("--no-nms", action="store_true",
                        help="TFLite: leave the final NMS to the host: the file returns the candidates "
                             "(boxes, scores, 0 = rejected) and the summary prints the NMS settings to run")


def _export(args) -> int:
    from kdet.serving.export import export_model_dir, format_summary

    try:
        summary = export_model_dir(args.model_dir, format=args.format, out=args.out, quantization=args.quantization,
                                   input_size=args.input_size, data=args.data,
                                   num_calibration=args.calibration_images, max_pixels=args.max_pixels,
                                   static_shapes=args.static_shapes, final_nms=not args.no_nms)
    except (FileNotFoundError, ValueError) as error:
        print(f"kdet export: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        where = f" {error.filename!r}" if error.filename else ""
        print(f"kdet export: error: cannot write or read{where}: {error.strerror or error}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


def _evaluate(args) -> int:
    from kdet.evaluation.report import format_metrics
    from kdet.inference import evaluate_model_dir

    evaluate_model_dir(args.model_dir, data=args.data, max_images=args.max_images, batch_size=args.batch_size,
                       results_json=args.results_json, data_dir=args.data_dir, tflite=args.tflite,
                       report=lambda metrics, evaluation: print(format_metrics(metrics, evaluation), flush=True))
    if args.results_json:
        print(f"kdet evaluate: detections written to {args.results_json}")
    return 0


def _detect(args) -> int:
    from kdet.files import check_output_path, write_json_atomic
    from kdet.inference import detect_files, detections_record

    if args.json:
        check_output_path(args.json, "--json", folder=False, what="the detections' json file")
    records = []
    for path, out, found in detect_files(args.model_dir, args.images, out_dir=args.out,
                                         score_threshold=args.score_threshold):
        print(f"{out}: {len(found['scores'])} detections")
        records.append(detections_record(path, found["image_size"], found))
    if args.json:
        write_json_atomic(args.json, {"model_dir": args.model_dir, "score_threshold": args.score_threshold,
                                      "images": records}, indent=1)
        print(f"detections: {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # (imports no TensorFlow)
    # before TensorFlow is first imported: 3 hides its C++ errors too (a CPU-only machine's cuInit line); kdet's
    # own errors are Python exceptions and are printed either way
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if args.verbose else "3")
    if args.command == "demo":
        from kdet.demo import run_demo

        run_demo(
            out_dir=args.out, epochs=args.epochs, train_images=args.train_images,
            val_images=args.val_images, batch_size=args.batch_size, seed=args.seed,
        )
    elif args.command == "train":
        return guard("train", lambda: run_train(resolve_recipe(args.recipe)[0], args))
    elif args.command == "evaluate":
        return guard("evaluate", lambda: _evaluate(args))
    elif args.command == "detect":
        return guard("detect", lambda: _detect(args))
    elif args.command == "export":
        return _export(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
