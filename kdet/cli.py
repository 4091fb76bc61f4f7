"""The ``kdet`` command line.

``kdet demo`` is the main job (train RetinaNet on the embedded data, evaluate,
draw). Further subcommands (train a recipe, evaluate, detect, export) build on
the same pieces.
"""

from __future__ import annotations

import argparse
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdet", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="train RetinaNet on the embedded synthetic shapes, print COCO metrics, draw predictions",
    )
    demo.add_argument("--out", default="kdet_demo", help="output folder (default: %(default)s)")
    demo.add_argument("--epochs", type=_positive_int, default=18, help="training epochs (default: %(default)s)")
    demo.add_argument("--train-images", type=_positive_int, default=2000, help="(default: %(default)s)")
    demo.add_argument("--val-images", type=_positive_int, default=200, help="(default: %(default)s)")
    demo.add_argument("--batch-size", type=_positive_int, default=8, help="(default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command == "demo":
        from kdet.demo import run_demo

        run_demo(
            out_dir=args.out, epochs=args.epochs, train_images=args.train_images,
            val_images=args.val_images, batch_size=args.batch_size, seed=args.seed,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
