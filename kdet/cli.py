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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


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


def _image_size(text: str) -> int:
    value = _positive_int(text)
    if value % 128:
        raise argparse.ArgumentTypeError(f"image sizes must be multiples of 128 (the P7 stride), got {value}")
    return value


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``kdet train`` and of a recipe file's command line."""
    from kdet.training.loop import PRECISIONS, STRATEGIES

    parser.add_argument("--data", help="training data: tfds:NAME:SPLIT, coco-json:PATH[:IMAGE_DIR] or "
                                       "embedded:shapes|faces[:SPLIT] (default: the recipe's)")
    parser.add_argument("--val-data", help="evaluation data, same forms (default: the recipe's)")
    parser.add_argument("--model-dir", help="output model directory (default: runs/RECIPE_NAME)")
    parser.add_argument("--epochs", type=_positive_int, help="Keras epochs of the recipe's steps_per_epoch "
                                                              "(default: the whole schedule)")
    parser.add_argument("--steps", type=_positive_int, help="total training steps (wins over --epochs)")
    parser.add_argument("--batch-size", type=_positive_int,
                        help="global batch; the schedule is rescaled by the linear rule (default: the recipe's)")
    parser.add_argument("--backbone", choices=("resnet50", "resnet101", "tiny"), help="(default: the recipe's)")
    parser.add_argument("--backbone-weights", help="local keras.applications ImageNet weights file (*_notop.h5)")
    parser.add_argument("--image-size", type=_image_size, nargs=2, metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--smoke", action="store_true",
                        help="a few steps on tiny inputs (tfds data is replaced by tfds.testing.mock_data)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--mixed-precision", choices=PRECISIONS, help="dtype policy (default: float32)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto",
                        help="auto: MultiWorkerMirrored with a multi-worker TF_CONFIG, Mirrored over visible GPUs, "
                             "else the default (default: %(default)s)")
    parser.add_argument("--backup-every", type=_positive_int, help="steps between backups (default: min(epoch, 500))")
    parser.add_argument("--no-eval", action="store_true", help="skip the per-epoch and final evaluation")
    parser.add_argument("--data-dir", help="tfds data directory")


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

    train = sub.add_parser("train", help="train a recipe (NAME[:VARIANT] of the recipes package, or a file's "
                                         "PATH.py[:VARIANT]) into a model directory")
    train.add_argument("recipe", help="recipe name (e.g. retinanet, cascade_rcnn_fpn:voc) or path to a recipe file")
    add_train_arguments(train)

    evaluate = sub.add_parser("evaluate", help="COCO metrics (face metrics for face models) of a model directory")
    evaluate.add_argument("--model-dir", required=True, help="a kdet model directory")
    evaluate.add_argument("--data", help="evaluation data, e.g. tfds:coco/2017:validation (default: the model "
                                         "directory's)")
    evaluate.add_argument("--max-images", type=_positive_int, help="evaluate the first N images")
    evaluate.add_argument("--batch-size", type=_positive_int, default=8, help="(default: %(default)s)")
    evaluate.add_argument("--results-json", help="also write the detections in COCO result format here")
    evaluate.add_argument("--data-dir", help="tfds data directory")

    detect = sub.add_parser("detect", help="draw a model directory's detections on images into PNG files")
    detect.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files (JPEG, PNG, GIF, BMP, WebP, TIFF) or folders of them")
    detect.add_argument("--model-dir", required=True, help="a kdet model directory")
    detect.add_argument("--out", required=True, help="output folder (one IMAGE_NAME.png per image; inputs with the "
                                                     "same name get distinct outputs)")
    detect.add_argument("--score-threshold", type=_unit_interval, default=0.3,
                        help="draw detections scoring at least this, 0..1 (default: %(default)s)")

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
    export.add_argument("--max-pixels", type=_positive_int,
                        help="SavedModel: serving_bytes refuses encoded images of more pixels (height x width), "
                             "read from their header before decoding (default: 40000000)")
    return parser


def _export(args) -> int:
    from kdet.exporting import export_model_dir, format_summary

    try:
        summary = export_model_dir(args.model_dir, format=args.format, out=args.out, quantization=args.quantization,
                                   input_size=args.input_size, data=args.data,
                                   num_calibration=args.calibration_images, max_pixels=args.max_pixels)
    except (FileNotFoundError, ValueError) as error:
        print(f"kdet export: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        where = f" {error.filename!r}" if error.filename else ""
        print(f"kdet export: error: cannot write or read{where}: {error.strerror or error}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


#: Modules of the ``recipes`` package that are not recipes (besides private ``_name`` ones).
NOT_RECIPES = ("common",)


def known_recipes() -> list[str]:
    """The recipe names of the ``recipes`` package (its modules but ``common`` and ``_private`` ones).

    Empty when the package cannot be imported (not a source checkout, or not
    installed with ``pip install -e .``).
    """
    import importlib
    import pkgutil

    try:
        package = importlib.import_module("recipes")
    except ImportError:
        return []
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                  if not m.name.startswith("_") and m.name not in NOT_RECIPES)


def resolve_recipe(spec: str):
    """``(Recipe, variant name)`` for ``NAME[:VARIANT]`` or ``PATH.py[:VARIANT]``.

    A name is a module of the ``recipes`` package (``recipes.NAME``); a path
    ending in ``.py`` is a recipe file of one's own, loaded from that file (it
    may import from the ``recipes`` package).
    """
    target, variant = spec.rsplit(":", 1) if ":" in spec and not spec.endswith(".py") else (spec, "")
    if target.endswith(".py"):
        module, where = _recipe_file(target), target
    else:
        module, where = _recipe_module(target), f"recipe {target!r}"
    recipes = getattr(module, "RECIPES", None)
    if not recipes:
        raise ValueError(f"{where} defines no RECIPES dict")
    return _pick_variant(recipes, variant, where=where)


def _recipe_module(name: str):
    """``recipes.NAME``, imported; an unknown name's error lists the known recipes."""
    import importlib

    known = known_recipes()
    if name not in known:
        hint = "" if name.isidentifier() else " (a recipe name is a module name; a recipe file's path ends in .py)"
        raise ValueError(f"recipe {name!r} not found{hint}; known recipes: {_listed(known)}")
    return importlib.import_module(f"recipes.{name}")


def _listed(known: list[str]) -> str:
    if known:
        return ", ".join(known)
    return "none (the recipes package cannot be imported: run `pip install -e .` in a kdet checkout)"


def _recipe_file(path: str):
    """The module of the recipe file at ``path`` (one's own recipe, loaded from the file)."""
    import importlib.util
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"recipe file {path!r} not found (known recipe names: {_listed(known_recipes())})")
    module_spec = importlib.util.spec_from_file_location(f"kdet_recipe_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _pick_variant(recipes, variant: str, *, where: str):
    variant = variant or next(iter(recipes))
    if variant not in recipes:
        raise ValueError(f"{where} has no variant {variant!r}; variants: {', '.join(recipes)}")
    return recipes[variant], variant


def _run_train(recipe, args) -> int:
    import contextlib

    from kdet.training import train

    model_dir = args.model_dir or os.path.join("runs", recipe.name + ("_smoke" if args.smoke else ""))
    mock = contextlib.nullcontext()
    if args.smoke and any(s.startswith("tfds:") for s in (args.data or recipe.train_data,
                                                           args.val_data or recipe.val_data)):
        import tensorflow_datasets as tfds

        mock = tfds.testing.mock_data(num_examples=8)  # a smoke run never reads real tfds data
    with mock:
        result = train(recipe, model_dir=model_dir, data=args.data, val_data=args.val_data, epochs=args.epochs,
                       steps=args.steps, batch_size=args.batch_size, backbone=args.backbone,
                       backbone_weights=args.backbone_weights,
                       image_size=tuple(args.image_size) if args.image_size else None, smoke=args.smoke,
                       seed=args.seed, mixed_precision=args.mixed_precision, strategy=args.strategy,
                       backup_every=args.backup_every, evaluate=not args.no_eval, data_dir=args.data_dir)
    if result.metrics:
        print(format_metrics(result.metrics, result.model.evaluation))
    print(f"kdet train: {recipe.name}: {result.steps} steps (from step {result.start_step}) in {result.seconds:.0f}s; "
          f"model directory {model_dir}")
    return 0


def format_metrics(metrics, evaluation: str) -> str:
    """The metrics table of a model whose ``evaluation`` is ``"face"`` or ``"coco"``."""
    if evaluation == "face":
        from kdet.evaluation.face import format_face_metrics_table

        return format_face_metrics_table(metrics)
    from kdet.evaluation.coco import format_metrics_table

    return format_metrics_table(metrics)


def train_main(recipes, argv: list[str] | None = None) -> int:
    """The command line of one recipe module (``python -m recipes.NAME [--variant V] ...``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(description="train this recipe (the options of `kdet train`)")
    parser.add_argument("--variant", choices=list(recipes), default=next(iter(recipes)),
                        help="dataset variant (default: %(default)s)")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    recipe, _ = _pick_variant(recipes, args.variant, where="this recipe")
    return _guard("train", lambda: _run_train(recipe, args))


def _guard(command: str, action) -> int:
    """Runs ``action``; a bad argument or missing file prints ``kdet COMMAND: error: ...`` and returns 2."""
    try:
        return action()
    except (FileNotFoundError, ValueError) as error:
        print(f"kdet {command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # unwritable folders, full disks: name the path, no traceback
        where = f" {error.filename!r}" if error.filename else ""
        print(f"kdet {command}: error: cannot write or read{where}: {error.strerror or error}", file=sys.stderr)
        return 2


def _evaluate(args) -> int:
    from kdet.inference import evaluate_model_dir

    evaluate_model_dir(args.model_dir, data=args.data, max_images=args.max_images, batch_size=args.batch_size,
                       results_json=args.results_json, data_dir=args.data_dir,
                       report=lambda metrics, evaluation: print(format_metrics(metrics, evaluation), flush=True))
    if args.results_json:
        print(f"kdet evaluate: detections written to {args.results_json}")
    return 0


def _detect(args) -> int:
    from kdet.inference import detect_files

    for _, out, found in detect_files(args.model_dir, args.images, out_dir=args.out,
                                      score_threshold=args.score_threshold):
        print(f"{out}: {len(found['scores'])} detections")
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
    elif args.command == "train":
        return _guard("train", lambda: _run_train(resolve_recipe(args.recipe)[0], args))
    elif args.command == "evaluate":
        return _guard("evaluate", lambda: _evaluate(args))
    elif args.command == "detect":
        return _guard("detect", lambda: _detect(args))
    elif args.command == "export":
        return _export(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
