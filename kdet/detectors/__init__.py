"""The detectors: subclasses of :class:`~kdet.detectors.base.Detector` (a ``keras.Model``), registered as ``kdet>Name``.

Names are imported on first use (``kdet.detectors.RetinaNet``), so importing
one detector does not build the others' modules; the face detectors live in
:mod:`kdet.face`.
"""

import importlib

from kdet._lazy import lazy_attributes

_WHERE = {
    "Detector": "kdet.detectors.base",
    "CascadeRCNN": "kdet.detectors.cascade_rcnn",
    "RetinaNet": "kdet.detectors.retinanet",
    "RegionProposalNetwork": "kdet.detectors.rpn",
    "FaceCascade": "kdet.face.cascade",
}

__all__ = sorted(_WHERE)


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)


def register_all() -> None:
    """Imports every detector module, registering its class with Keras (``kdet>Name``) for deserialisation."""
    for module in sorted(set(_WHERE.values())):
        importlib.import_module(module)

