"""Model directory -> SavedModel for TF Serving (``serving_default`` uint8 images, ``serving_bytes`` JPEG/PNG).

    python export/to_savedmodel.py --model-dir kdet_demo --out serving/shapes/1

Same as ``kdet export --format savedmodel``; see :mod:`kdet.serving`.
"""

import sys

from kdet.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", "--format", "savedmodel", *sys.argv[1:]]))
