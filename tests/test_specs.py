"""The frozen specs (kdet.specs, kdet.rcnn_specs, kdet.face.specs, AnchorSpec, BackboneSpec) and the detectors'
grouped arguments: validation naming the field, plain-data round trips, dicts merged onto a detector's defaults, the classification
loss's kinds, the face R-CNN's training variants, and a backbone given as a user-built keras.Model."""

import dataclasses
import inspect
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet import specs
from kdet.anchors import AnchorSpec
from kdet.backbones import BackboneSpec, tiny_backbone
from kdet.detectors import CascadeRCNN, RegionProposalNetwork, RetinaNet
from kdet.face.rcnn import face_rcnn_config
from kdet.face.specs import FaceTestSpec, FaceTrainingSpec
from kdet.model_dir import load_model_dir, save_model_dir
from kdet.rcnn_specs import CascadeSpec, ProposalSpec, RoIPoolerSpec
from kdet.specs import (
    APLossSpec,
    AUCLossSpec,
    BoxRegressionSpec,
    ConsistentOptimizationSpec,
    FocalLossSpec,
    MatcherSpec,
    PostProcessSpec,
    RetinaNetHeadSpec,
    SamplingSpec,
)

#: One non-default instance of every spec.
EXAMPLES = [
    AnchorSpec(min_level=2, max_level=5, num_scales=2, aspect_ratios=(1.0, 2.0), anchor_size=3.0),
    BackboneSpec(name="tiny", weights="backbone.weights.h5", freeze_batchnorm=False),
    MatcherSpec(thresholds=(0.3, 0.6), allow_low_quality_matches=True),
    SamplingSpec(num_samples=64, positive_fraction=0.25),
    BoxRegressionSpec(weights=(10.0, 10.0, 5.0, 5.0), smooth_l1_beta=0.0, loss_weight=2.0),
    PostProcessSpec(pre_nms_top_k=None, score_threshold=0.0, nms_iou_threshold=0.6, max_detections=7),
    FocalLossSpec(alpha=0.5, gamma=1.0),
    APLossSpec(delta=0.5, interpolate=False, rank_across_replicas=True),
    AUCLossSpec(delta=0.25),
    ConsistentOptimizationSpec(cls_terms=3, reg_terms=2, thresholds=((0.5, 0.6), (0.6, 0.7)), alpha=0.5,
                               test_regressions=1),
    RetinaNetHeadSpec(num_convs=0, filters=8, prior_probability=0.3),
    ProposalSpec(pre_nms_top_k_train=10, pre_nms_top_k_test=5, max_proposals_train=8, max_proposals_test=4,
                 nms_iou_threshold=0.5, min_size=2.0),
    RoIPoolerSpec(output_size=5, sampling_ratio=1, canonical_size=56.0),
    CascadeSpec(ious=(0.5,), box_weights=((10, 10, 5, 5),), loss_weights=(1.0,), integral_ious=(0.5, 0.7),
                test_iterations=3),
    FaceTrainingSpec(thresholds=(0.2, 0.01), loss_weights=(1.0, 0.5, 0.5), box_loss_weight=2.0, smooth_l1_beta=0.5,
                     offset_mean=(0.1, 0.0, 0.0, 0.0), offset_std=(0.1, 0.1, 0.2, 0.2)),
    FaceTestSpec(min_face_size=40.0, levels_per_octave=3, pyramid="area", thresholds=(0.1, 0.2, 0.9), pool_size=1,
                 stage1_max_boxes=100, stage2_max_boxes=20, stage1_nms_iou=0.7, stage2_nms_iou=0.5,
                 crop_source="image", crop_method="nearest", nms_iou_threshold=0.4, max_detections=10),
]


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda s: type(s).__name__)
def test_specs_are_frozen_plain_data_that_round_trip_through_json(spec):
    config = spec.to_config()
    restored = type(spec).from_config(json.loads(json.dumps(config)))  # tuples come back as lists
    assert restored == spec and hash(restored) == hash(spec)
    assert restored.to_config() == config
    assert ("kind" in config) == (spec.kind is not None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.__setattr__(dataclasses.fields(spec)[0].name, None)
    assert inspect.getdoc(type(spec)).count(":") > 1 and "Attributes:" in inspect.getdoc(type(spec))


@pytest.mark.parametrize("build, match", [
    (lambda: AnchorSpec(min_level=5, max_level=3), "AnchorSpec.min_level"),
    (lambda: AnchorSpec(aspect_ratios=()), "AnchorSpec.aspect_ratios"),
    (lambda: BackboneSpec(name="vgg16"), "BackboneSpec.name must be one of"),
    (lambda: MatcherSpec(thresholds=(0.7, 0.3)), "MatcherSpec.thresholds"),
    (lambda: MatcherSpec(thresholds=(0.5,)), "MatcherSpec.thresholds"),
    (lambda: SamplingSpec(positive_fraction=0.0), "SamplingSpec.positive_fraction"),
    (lambda: BoxRegressionSpec(weights=(1.0, 1.0, 1.0)), "BoxRegressionSpec.weights"),
    (lambda: BoxRegressionSpec(weights="abcd"), "BoxRegressionSpec.weights"),
    (lambda: PostProcessSpec(max_detections=0), "PostProcessSpec.max_detections"),
    (lambda: PostProcessSpec(nms_iou_threshold=0.0), "PostProcessSpec.nms_iou_threshold"),
    (lambda: FocalLossSpec(gamma=-1.0), "FocalLossSpec.gamma"),
    (lambda: APLossSpec(delta=0.0), "APLossSpec.delta"),
    (lambda: RetinaNetHeadSpec(prior_probability=1.0), "RetinaNetHeadSpec.prior_probability"),
    (lambda: FaceTrainingSpec(thresholds=(0.1,)), "FaceTrainingSpec.thresholds"),
    (lambda: FaceTrainingSpec(offset_std=(0.1, 0.1, 0.0, 0.1)), "FaceTrainingSpec.offset_std"),
    (lambda: FaceTestSpec(pyramid="gaussian"), "FaceTestSpec.pyramid must be one of"),
    (lambda: FaceTestSpec(stage1_max_boxes=0), "FaceTestSpec.stage1_max_boxes"),
    (lambda: FaceTestSpec(min_face_size=0.0), "FaceTestSpec.min_face_size"),
    (lambda: ProposalSpec(max_proposals_test=0), "ProposalSpec.max_proposals_test"),
    (lambda: RoIPoolerSpec(canonical_size=0.0), "RoIPoolerSpec.canonical_size"),
    (lambda: CascadeSpec(ious=(0.5,)), "one entry per stage"),
    (lambda: CascadeSpec(box_weights=((1, 1, 1),) * 3), "CascadeSpec.box_weights"),
    (lambda: CascadeSpec(test_stages=4), "CascadeSpec.test_stages must be in 1..3"),
    (lambda: CascadeSpec(integral_ious=(0.5, 0.6)), "CascadeSpec.integral_ious"),
    (lambda: specs.coerce(dict(anchor_sizes=2.0), AnchorSpec(), "anchors"),
     r"anchors: AnchorSpec has no field\(s\) \['anchor_sizes'\]"),
    (lambda: specs.coerce(dict(max_level=1), AnchorSpec(), "anchors"), "anchors: AnchorSpec.min_level"),
    (lambda: FocalLossSpec.from_config({"kind": "ap"}), "kind"),
])
def test_every_spec_names_the_field_it_refuses(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_coerce_takes_a_spec_a_dict_of_changes_or_none():
    default = MatcherSpec(thresholds=(0.3, 0.7), allow_low_quality_matches=True)
    assert specs.coerce(None, default, "matcher") is default
    given = MatcherSpec()
    assert specs.coerce(given, default, "matcher") is given
    assert specs.coerce(dict(allow_low_quality_matches=False), default, "matcher") == MatcherSpec((0.3, 0.7), False)
    with pytest.raises(TypeError, match="matcher must be a MatcherSpec or a dict"):
        specs.coerce((0.3, 0.7), default, "matcher")


def test_the_classification_loss_is_a_kind_a_spec_or_a_dict_with_its_kind():
    loss = specs.classification_loss
    assert loss(None) == FocalLossSpec() and loss("ap") == APLossSpec() and loss("auc") == AUCLossSpec()
    assert loss(dict(gamma=1.0)) == FocalLossSpec(gamma=1.0)  # no kind: the default's
    assert loss(dict(kind="ap", delta=0.5)) == APLossSpec(delta=0.5)
    assert loss(APLossSpec(delta=0.5).to_config()) == APLossSpec(delta=0.5)
    assert loss(dict(delta=0.5), default=APLossSpec(interpolate=False)) == APLossSpec(delta=0.5, interpolate=False)
    with pytest.raises(ValueError, match="classification_loss must be one of \\('focal', 'ap', 'auc'\\), got 'hinge'"):
        loss("hinge")
    with pytest.raises(ValueError, match="classification_loss: FocalLossSpec has no field"):
        loss(dict(delta=0.5))
    with pytest.raises(TypeError, match="classification_loss"):
        loss(0.25)


def test_override_changes_only_the_named_fields_of_specs_and_nested_arguments():
    base = dict(num_classes=1, anchors=AnchorSpec(anchor_size=2.0), rpn=dict(proposals=ProposalSpec()),
                classification_loss=FocalLossSpec(alpha=0.5))
    merged = specs.override(base, dict(anchors=dict(num_scales=2), rpn=dict(proposals=dict(max_proposals_test=9)),
                                       classification_loss=dict(gamma=1.0), num_classes=2))
    assert merged["anchors"] == AnchorSpec(anchor_size=2.0, num_scales=2) and merged["num_classes"] == 2
    assert merged["rpn"]["proposals"] == ProposalSpec(max_proposals_test=9)
    assert merged["classification_loss"] == FocalLossSpec(alpha=0.5, gamma=1.0)
    assert specs.override(base, dict(classification_loss=dict(kind="ap")))["classification_loss"] == {"kind": "ap"}
    assert base["anchors"] == AnchorSpec(anchor_size=2.0)  # not modified
    config = {"anchors": AnchorSpec().to_config()}  # a get_config(): the specs as dicts
    assert specs.override(config, dict(anchors=dict(anchor_size=8.0)))["anchors"] == AnchorSpec(
        anchor_size=8.0).to_config()


@pytest.mark.parametrize("cls", [RetinaNet, RegionProposalNetwork, CascadeRCNN])
def test_each_detector_takes_a_dozen_keyword_only_arguments(cls):
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    own = [p for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in own)
    assert len(own) <= 12, [p.name for p in own]
    assert all(p.name in inspect.getdoc(cls) for p in own), "the class docstring documents every argument"


def test_a_dict_changes_the_detectors_own_defaults():
    rpn = RegionProposalNetwork(backbone="tiny", fpn_filters=8, head_filters=8,
                                matcher=dict(allow_low_quality_matches=False), proposals=dict(max_proposals_test=9))
    assert rpn.matcher_spec == MatcherSpec(thresholds=(0.3, 0.7), allow_low_quality_matches=False)
    assert rpn.proposal_spec == ProposalSpec(max_proposals_test=9)
    assert rpn.get_config()["backbone"] == BackboneSpec(name="tiny").to_config()
    cascade_config = CascadeRCNN.training_variant(face_rcnn_config(), stage_losses=False)
    assert cascade_config["stages"] == CascadeSpec(ious=(0.5,), box_weights=((10, 10, 5, 5),), loss_weights=(0.0,))
    fast_rcnn = CascadeRCNN.training_variant(face_rcnn_config(), rpn_loss=False, proposals="targets")
    assert (fast_rcnn["rpn_loss_weight"], fast_rcnn["training_proposals"]) == (0.0, "targets")
    three = CascadeRCNN.training_variant({"stages": CascadeSpec().to_config()}, stage_losses=False)
    assert three["stages"]["loss_weights"] == (0.0, 0.0, 0.0)


# ----------------------------------------------------------------------------- a user's keras.Model as backbone
def _user_backbone():
    """A backbone of the user's own: the tiny architecture at other widths, which no name builds."""
    return tiny_backbone(widths=(8, 16, 24, 32))


def test_a_user_backbone_is_stored_serialised_and_rebuilt(tmp_path):
    keras.utils.set_random_seed(5)
    kwargs = dict(num_classes=2, backbone=_user_backbone(), fpn_filters=8, head=dict(num_convs=1, filters=8),
                  postprocess=dict(score_threshold=0.0, max_detections=10))
    model = RetinaNet(**kwargs)
    assert model.backbone is kwargs["backbone"]
    config = model.get_config()
    assert config["backbone"] == specs.to_config(kwargs["backbone"])
    assert config["backbone"]["class_name"] == "Functional"
    clone = RetinaNet.from_config(json.loads(json.dumps(config)))
    assert json.loads(json.dumps(clone.get_config())) == json.loads(json.dumps(config))
    images = tf.random.uniform([1, 64, 64, 3], 0, 255, seed=1)
    model.detect(images)
    clone.detect(images)
    assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]
    path = save_model_dir(model, str(tmp_path / "m"), input_size=(64, 64))
    loaded, _ = load_model_dir(path)
    expected, found = model.detect(images), loaded.detect(images)
    for key in ("boxes", "scores", "classes", "num_detections"):
        np.testing.assert_allclose(found[key].numpy(), expected[key].numpy(), atol=1e-5)
    rpn = RegionProposalNetwork(backbone=_user_backbone(), fpn_filters=8, head_filters=8)
    assert RegionProposalNetwork.from_config(rpn.get_config()).get_config() == rpn.get_config()


def test_a_user_backbone_that_breaks_the_contract_is_refused_with_a_reason():
    images = keras.Input((None, None, 3))
    flat = keras.Model(images, keras.layers.Conv2D(4, 3, strides=8, padding="same")(images), name="flat")
    with pytest.raises(ValueError, match="backbone model 'flat' must return a dict with \\['C3', 'C4', 'C5'\\]"):
        RetinaNet(num_classes=1, backbone=flat)
    x = keras.layers.Conv2D(4, 3, strides=4, padding="same")(images)
    same_stride = keras.Model(images, {"C2": x, "C3": x, "C4": x, "C5": x}, name="same_stride")
    with pytest.raises(ValueError, match="'same_stride': C3 must be \\[B, H / 8, W / 8, C\\] \\(8x8 for a 64x64"):
        RetinaNet(num_classes=1, backbone=same_stride)
    one_channel = keras.Input((None, None, 1))
    gray = keras.Model(one_channel, {"C3": keras.layers.Conv2D(4, 3, strides=8, padding="same")(one_channel)},
                       name="gray")
    with pytest.raises(ValueError, match="backbone model 'gray' does not take \\[B, H, W, 3\\] images"):
        RetinaNet(num_classes=1, backbone=gray)
    with pytest.raises(TypeError, match="backbone must be a BackboneSpec or a dict"):
        RetinaNet(num_classes=1, backbone=50)
