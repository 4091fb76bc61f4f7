"""The detectors (``keras.Model`` subclasses, registered with Keras under ``kdet>Name``)."""

from kdet.detectors.cascade_rcnn import CascadeRCNN
from kdet.detectors.face_cascade import FaceCascade
from kdet.detectors.retinanet import RetinaNet

__all__ = ["CascadeRCNN", "FaceCascade", "RetinaNet"]
