"""The detectors: subclasses of :class:`~kdet.detectors.base.Detector` (a ``keras.Model``), registered as ``kdet>Name``."""

from kdet.detectors.base import Detector
from kdet.detectors.cascade_rcnn import CascadeRCNN
from kdet.detectors.face_cascade import FaceCascade
from kdet.detectors.retinanet import RetinaNet
from kdet.detectors.rpn import RegionProposalNetwork

__all__ = ["CascadeRCNN", "Detector", "FaceCascade", "RegionProposalNetwork", "RetinaNet"]
