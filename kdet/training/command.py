"""``kdet train`` and a recipe module's own command line (``python -m recipes.NAME``): one implementation.

Recipes are found by name in the ``recipes`` package (``recipes.NAME``) or
loaded from a file of one's own (``PATH.py``); :func:`run_train` runs one
with the parsed options. :mod:`kdet.cli` adds these options to its ``train``
command; nothing here imports the command line.
"""

from __future__ import annotations

import argparse
import os
import sys

from kdet.evaluation.report import format_metrics

#: ``--strategy``: auto (multi-worker with a multi-worker TF_CONFIG, mirrored over visible GPUs, else default).
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
#: ``--mixed-precision``: Keras dtype policies.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``kdet train`` and of a recipe file's command line."""
    parser.add_argument("--data", help="training data: tfds:NAME:SPLIT, coco-json:PATH[:IMAGE_DIR] or "
                                       "embedded:shapes|faces[:SPLIT] (default: the recipe's)")
    parser.add_argument("--val-data", help="evaluation data, same forms (default: the recipe's)")
    parser.add_argument("--model-dir", help="output model directory (default: runs/RECIPE_NAME)")
    parser.add_argument("--epochs", type=positive_int, help="Keras epochs of the recipe's steps_per_epoch "
                                                              "(default: the whole schedule); the learning-rate "
                                                              "schedule's warm-up and decay points are rescaled "
                                                              "to the run's length")
    parser.add_argument("--steps", type=positive_int, help="total training steps (wins over --epochs); the "
                                                             "schedule is rescaled to them as for --epochs")
    parser.add_argument("--batch-size", type=positive_int,
                        help="global batch; the schedule is rescaled by the linear rule (default: the recipe's)")
    parser.add_argument("--backbone", choices=("resnet50", "resnet101", "tiny"), help="(default: the recipe's)")
    parser.add_argument("--backbone-weights", help="'imagenet' (keras.applications' ImageNet weights: Keras "
                                                    "downloads them once into its cache, ~/.keras/models; the "
                                                    "COCO and VOC recipes' default, as in the papers), a local "
                                                    "weights file (*_notop.h5), 'shapes' (the tiny backbone pretrained by kdet on synthetic "
                                                    "shapes, once per machine, ~5 min, kept in ~/.cache/kdet) or "
                                                    "'none' (random initialisation)")
    parser.add_argument("--image-size", type=positive_int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                        help="training and evaluation size (multiples of the model's largest stride: 128 for the "
                             "FPN detectors; any size for the face cascade)")
    parser.add_argument("--smoke", action="store_true",
                        help="a few steps on tiny inputs (tfds data is replaced by tfds.testing.mock_data)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--mixed-precision", choices=PRECISIONS, help="dtype policy (default: float32)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto",
                        help="auto: MultiWorkerMirrored with a multi-worker TF_CONFIG, Mirrored over visible GPUs, "
                             "else the default (default: %(default)s)")
    parser.add_argument("--backup-every", type=positive_int, help="steps between backups (default: min(epoch, 500))")
    parser.add_argument("--no-eval", action="store_true", help="skip the per-epoch and final evaluation")
    parser.add_argument("--data-dir", help="tfds data directory")


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
    return pick_variant(recipes, variant, where=where)


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


def pick_variant(recipes, variant: str, *, where: str):
    variant = variant or next(iter(recipes))
    if variant not in recipes:
        raise ValueError(f"{where} has no variant {variant!r}; variants: {', '.join(recipes)}")
    return recipes[variant], variant


def run_train(recipe, args) -> int:
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


def train_main(recipes, argv: list[str] | None = None) -> int:
    """The command line of one recipe module (``python -m recipes.NAME [--variant V] ...``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(description="train this recipe (the options of `kdet train`)")
    parser.add_argument("--variant", choices=list(recipes), default=next(iter(recipes)),
                        help="dataset variant (default: %(default)s)")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    recipe, _ = pick_variant(recipes, args.variant, where="this recipe")
    return guard("train", lambda: run_train(recipe, args))


def guard(command: str, action) -> int:
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
