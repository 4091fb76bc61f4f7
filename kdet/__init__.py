"""kdet: object detection papers as one TensorFlow 2.20 / Keras 3 library.

Inside the package every box is ``[ymin, xmin, ymax, xmax]`` float32 in absolute
pixels of the image the tensor belongs to. Conversions to other formats happen
only in :mod:`kdet.data` (on the way in) and :mod:`kdet.evaluation` / export
(on the way out).
"""

__version__ = "0.1.0"
