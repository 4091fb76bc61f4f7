"""kdet: object detection papers as one TensorFlow 2.20 / Keras 3 library.

The public API (imported on first use, so ``import kdet`` and ``kdet --help``
stay fast)::

    import kdet

    model = kdet.RetinaNet(num_classes=3, backbone="tiny")          # or CascadeRCNN, FaceCascade, ...
    model = kdet.RetinaNet(num_classes=3, classification_loss=kdet.APLossSpec(delta=0.5),
                           anchors=dict(anchor_size=2.0))          # grouped arguments: specs or dicts
    result = kdet.train(kdet.resolve_recipe("retinanet")[0], model_dir="runs/retinanet", smoke=True)
    model, info = kdet.load_model("runs/retinanet_smoke")          # a model directory
    found = kdet.detect_image(model, image_uint8_hwc, info.input_size)
    metrics = kdet.evaluate("runs/retinanet_smoke", data="embedded:shapes:validation")
    kdet.export("runs/retinanet_smoke", format="savedmodel", out="serving/shapes/1")

Inside the package every box is ``[ymin, xmin, ymax, xmax]`` float32 in absolute
pixels of the image the tensor belongs to. Conversions to other formats happen
only in :mod:`kdet.data` (on the way in) and :mod:`kdet.evaluation` / export
(on the way out).
"""

from kdet._lazy import lazy_attributes

__version__ = "0.1.0"

#: public name -> "module" or "module:attribute" (imported on first use)
_PUBLIC = {
    # detectors (keras.Model subclasses of kdet.detectors.base.Detector)
    "Detector": "kdet.detectors.base",
    "RetinaNet": "kdet.detectors.retinanet",
    "CascadeRCNN": "kdet.detectors.cascade_rcnn",
    "RegionProposalNetwork": "kdet.detectors.rpn",
    "FaceCascade": "kdet.face.cascade",
    "face_rcnn": "kdet.face.rcnn",
    # the detectors' grouped arguments (frozen specs; a dict of fields works as well)
    "AnchorSpec": "kdet.anchors",
    "BackboneSpec": "kdet.backbones",
    **{name: "kdet.specs" for name in ("MatcherSpec", "SamplingSpec", "BoxRegressionSpec", "PostProcessSpec",
                                       "FocalLossSpec", "APLossSpec", "AUCLossSpec", "ConsistentOptimizationSpec",
                                       "RetinaNetHeadSpec")},
    **{name: "kdet.rcnn_specs" for name in ("ProposalSpec", "RoIPoolerSpec", "CascadeSpec")},
    # model directories
    "load_model": "kdet.model_dir:load_model_dir",
    "save_model": "kdet.model_dir:save_model_dir",
    # training
    "Recipe": "kdet.training.recipe",
    "StepSchedule": "kdet.training.recipe",
    "train": "kdet.training.loop",
    "resolve_recipe": "kdet.training.command",
    # inference, evaluation, export
    "detect_image": "kdet.inference",
    "evaluate": "kdet.inference:evaluate_model_dir",
    "export": "kdet.serving.export:export_model_dir",
    "export_saved_model": "kdet.serving.savedmodel",
    "convert_tflite": "kdet.serving.tflite:convert",
}

__all__ = ["__version__", *sorted(_PUBLIC)]

__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)
