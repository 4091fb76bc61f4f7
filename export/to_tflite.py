"""Model directory -> builtins-only TFLite (float32, float16 or int8) for LiteRT and phones.

    python export/to_tflite.py --model-dir kdet_demo --quantization int8 --out shapes_int8.tflite

Same as ``kdet export --format tflite``; see :mod:`kdet.serving.tflite`.
"""

import sys

from kdet.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", "--format", "tflite", *sys.argv[1:]]))
