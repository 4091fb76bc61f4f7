"""The ``kdet`` command line.

``kdet demo`` is the main job (train RetinaNet on the embedded data, evaluate,
draw). Further subcommands (train a recipe, evaluate, detect, export) build on
the same pieces.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def demo_defaults() -> dict:
    """The keyword defaults of :func:`kdet.demo.run_demo` (one source of truth)."""
    from kdet.demo import run_demo

    return {k: p.default for k, p in inspect.signature(run_demo).parameters.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdet", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="train RetinaNet on the embedded synthetic shapes, print COCO metrics, draw predictions",
    )
    defaults = demo_defaults()
    demo.add_argument("--out", default=defaults["out_dir"], help="output folder (default: %(default)s)")
    for flag, key in [("--epochs", "epochs"), ("--train-images", "train_images"), ("--val-images", "val_images"),
                      ("--batch-size", "batch_size")]:
        demo.add_argument(flag, type=_positive_int, default=defaults[key], help="(default: %(default)s)")
    demo.add_argument("--seed", type=int, default=defaults["seed"], help="(default: %(default)s)")

    export = sub.add_parser("export", help="write a model directory as a SavedModel (TF Serving) or a TFLite file")
    export.add_argument("--model-dir", required=True, help="a kdet model directory (kdet_model.json + weights)")
    export.add_argument("--format", required=True, choices=("savedmodel", "tflite"),
                        help="savedmodel: serving_default + serving_bytes signatures; tflite: builtin ops only")
    export.add_argument("--out", required=True,
                        help="SavedModel folder (a TF Serving version folder, e.g. serving/faces/1) or .tflite path")
    export.add_argument("--quantization", default="float32", choices=("float32", "float16", "int8"),
                        help="TFLite weights/activations (default: %(default)s); int8 calibrates on --data")
    export.add_argument("--input-size", type=_positive_int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                        help="fixed input size (default: the model directory's)")
    export.add_argument("--data", help="int8 calibration data, e.g. embedded:faces:validation or tfds:coco/2017:validation "
                                       "(default: the model directory's)")
    export.add_argument("--calibration-images", type=_positive_int, default=64, help="(default: %(default)s)")
    return parser


def _export(args) -> int:
    from kdet.exporting import export_model_dir, format_summary

    try:
        summary = export_model_dir(args.model_dir, format=args.format, out=args.out, quantization=args.quantization,
                                   input_size=args.input_size, data=args.data,
                                   num_calibration=args.calibration_images)
    except (FileNotFoundError, ValueError) as error:
        print(f"kdet export: error: {error}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from kdet.demo import run_demo

        run_demo(
            out_dir=args.out, epochs=args.epochs, train_images=args.train_images,
            val_images=args.val_images, batch_size=args.batch_size, seed=args.seed,
        )
    elif args.command == "export":
        return _export(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
