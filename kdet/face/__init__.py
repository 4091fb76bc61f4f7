"""Face detection (Qin et al., "Joint Training of Cascaded CNN for Face Detection", CVPR 2016).

* :mod:`kdet.face.nets` -- the 12 / 24 / 48 networks and the threshold-control layer;
* :mod:`kdet.face.cascade` -- :class:`FaceCascade`, the three networks as one jointly trained model;
* :mod:`kdet.face.mtcnn` -- MTCNN's P-, R- and O-Net as the cascade's branches;
  :mod:`kdet.face.mtcnn_weights` -- :func:`from_mtcnn`, MTCNN's published weights in a FaceCascade;
* :mod:`kdet.face.pyramid`, :mod:`kdet.face.resize` -- image pyramids, windows, crops (and their
  TFLite-builtin twins);
* :mod:`kdet.face.stages` -- the test pipeline stage by stage (the only copy: ``detect``, the TFLite
  host loop, mining and the profilers call it);
* :mod:`kdet.face.mining` -- training samples: sliding windows and bootstrapped hard samples;
* :mod:`kdet.face.procedures` -- the training procedures (cascade: separate, joint, bootstrapped;
  RPN + Fast R-CNN: joint, alternating), called by the recipes and the face benchmark alike;
* :mod:`kdet.face.recipe` -- the face recipes' ``train(recipe, run)`` adapters;
* :mod:`kdet.face.rcnn` -- the RPN + Fast R-CNN face detector preset (:func:`face_rcnn`);
* :mod:`kdet.face.lite` -- the cascade as three TFLite models and a NumPy host loop.

Names are imported on first use.
"""

from kdet._lazy import lazy_attributes

_WHERE = {
    "FaceCascade": "kdet.face.cascade",
    "face_rcnn": "kdet.face.rcnn",
    "face_rcnn_config": "kdet.face.rcnn",
    "CascadeTraining": "kdet.face.procedures",
    "prepare_cascade": "kdet.face.procedures",
    "train_cascade": "kdet.face.procedures",
    "FaceCascadeLite": "kdet.face.lite",
    "from_mtcnn": "kdet.face.mtcnn_weights",
}

__all__ = sorted(_WHERE)


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
