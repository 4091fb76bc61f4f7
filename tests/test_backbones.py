"""Backbones (C2..C5), FPN levels, frozen BN and local weights loading."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.backbones import FPN, ImageNormalization, build_backbone, resnet_backbone, tiny_backbone
from kdet.heads.retinanet import RetinaNetHead
from tests.layer_contract import check_layer_contract


def test_tiny_backbone_strides():
    out = tiny_backbone()(tf.zeros([2, 64, 96, 3]))
    assert {k: tuple(v.shape[1:3]) for k, v in out.items()} == {"C2": (16, 24), "C3": (8, 12), "C4": (4, 6), "C5": (2, 3)}


def test_tiny_backbone_loads_weights_it_saved(tmp_path):
    """A tiny backbone trained inside one detector starts another (the Cascade R-CNN ablation does this)."""
    trained = tiny_backbone()
    probe = tf.random.uniform([1, 64, 64, 3], 0, 255, seed=1)
    trained(probe, training=True)  # moves the BatchNorm statistics away from their initial values
    for w in trained.trainable_weights:
        w.assign(w + 0.01)
    path = str(tmp_path / "tiny.weights.h5")
    trained.save_weights(path)
    loaded = build_backbone("tiny", weights=path, freeze_batchnorm=True)
    np.testing.assert_allclose(loaded(probe)["C5"].numpy(), trained(probe)["C5"].numpy(), atol=1e-5)
    with pytest.raises(FileNotFoundError, match="tiny backbone weights"):
        build_backbone("tiny", weights=str(tmp_path / "missing.weights.h5"))


def test_resnet50_levels_and_frozen_batchnorm():
    model = resnet_backbone(50, freeze_batchnorm=True, frozen_stages=2)
    out = model(tf.zeros([1, 64, 64, 3]))
    assert {k: v.shape[-1] for k, v in out.items()} == {"C2": 256, "C3": 512, "C4": 1024, "C5": 2048}
    assert out["C5"].shape[1:3] == (2, 2)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and not any(l.trainable for l in bns)
    assert not model.get_layer("conv1_conv").trainable and not model.get_layer("conv2_block1_1_conv").trainable
    assert model.get_layer("conv3_block1_1_conv").trainable


def test_resnet101_levels():
    """ResNet-101 differs from 50 only in conv4's 23 blocks: same level widths and strides."""
    model = resnet_backbone(101)
    out = model(tf.zeros([1, 64, 64, 3]))
    assert {k: (v.shape[1], v.shape[-1]) for k, v in out.items()} == {
        "C2": (16, 256), "C3": (8, 512), "C4": (4, 1024), "C5": (2, 2048)}
    assert model.get_layer("conv4_block23_3_conv") is not None


@pytest.fixture(scope="module")
def resnet50_weight_files(tmp_path_factory):
    """A plain keras.applications ResNet-50 (random) saved in both weight formats users have."""
    from keras.src.legacy.saving import legacy_h5_format
    import h5py

    tf.random.set_seed(0)
    reference = keras.applications.ResNet50(include_top=False, weights=None)
    folder = tmp_path_factory.mktemp("weights")
    legacy = str(folder / "resnet50_notop.h5")  # the layout of keras.applications' downloads
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    modern = str(folder / "resnet50_notop.weights.h5")
    reference.save_weights(modern)
    probe = np.random.default_rng(0).uniform(0, 255, size=(1, 64, 64, 3)).astype(np.float32)
    expected = reference(keras.applications.resnet.preprocess_input(probe.copy())).numpy()
    return legacy, modern, probe, expected


@pytest.mark.parametrize("which", [0, 1])
def test_resnet_loads_local_weights_file(resnet50_weight_files, which):
    path, probe, expected = resnet50_weight_files[which], resnet50_weight_files[2], resnet50_weight_files[3]
    model = resnet_backbone(50, weights=path)
    np.testing.assert_allclose(model(probe)["C5"].numpy(), expected, rtol=1e-4, atol=1e-4)


def test_missing_weights_file_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resnet_backbone(50, weights="/nonexistent/resnet50.h5")
    with pytest.raises(ValueError, match="valid names"):
        build_backbone("vgg16")


def test_fpn_contract_retinanet_levels():
    feats = {f"C{l}": np.random.rand(2, 64 // 2**l, 96 // 2**l, 8).astype(np.float32) for l in range(2, 6)}
    out = check_layer_contract(FPN, dict(min_level=3, max_level=7, filters=16, extra="conv"), feats)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "P3": (2, 8, 12, 16), "P4": (2, 4, 6, 16), "P5": (2, 2, 3, 16), "P6": (2, 1, 2, 16), "P7": (2, 1, 1, 16)}


def test_fpn_two_stage_levels():
    feats = {f"C{l}": np.random.rand(1, 128 // 2**l, 128 // 2**l, 8).astype(np.float32) for l in range(2, 6)}
    out = check_layer_contract(FPN, dict(min_level=2, max_level=6, filters=8, extra="maxpool"), feats)
    assert [v.shape[1] for v in out.values()] == [32, 16, 8, 4, 2]


def test_retinanet_head_contract_and_prior():
    feats = [np.random.rand(2, s, s, 8).astype(np.float32) for s in (8, 4, 2)]
    out = check_layer_contract(RetinaNetHead, dict(num_classes=5, num_anchors=9, num_convs=2, filters=8), feats)
    n = 9 * (64 + 16 + 4)
    assert out["class_logits"].shape == (2, n, 5) and out["box_codes"].shape == (2, n, 4)
    # Prior probability 0.01 at initialisation (weights ~N(0, 0.01), so logits ~ bias).
    np.testing.assert_allclose(tf.sigmoid(out["class_logits"]).numpy().mean(), 0.01, rtol=0.05)


def test_image_normalization_modes():
    x = tf.constant([[[[255.0, 0.0, 127.5]]]])
    np.testing.assert_allclose(ImageNormalization(mode="unit")(x).numpy(), [[[[1.0, -1.0, 0.0]]]])
    np.testing.assert_allclose(ImageNormalization(mode="caffe")(x).numpy(), [[[[127.5 - 103.939, -116.779, 255 - 123.68]]]], rtol=1e-5)


def test_upsample2x_like_matches_nearest_resize_and_crops():
    from kdet.backbones import upsample2x_like

    x = tf.reshape(tf.range(2 * 3 * 2, dtype=tf.float32), [1, 2, 3, 2])
    np.testing.assert_array_equal(
        upsample2x_like(x, tf.zeros([1, 4, 6, 1])).numpy(),
        tf.image.resize(x, [4, 6], method="nearest").numpy(),
    )
    odd = upsample2x_like(x, tf.zeros([1, 3, 5, 1])).numpy()
    assert odd.shape == (1, 3, 5, 2)
    np.testing.assert_array_equal(odd[0, :, :, 0], [[0, 0, 2, 2, 4], [0, 0, 2, 2, 4], [6, 6, 8, 8, 10]])


def test_fused_batchnorm_matches_keras_batchnorm_in_training():
    from kdet.backbones import FusedBatchNormalization

    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, size=(2, 5, 7, 4)).astype(np.float32))
    ref, fused = keras.layers.BatchNormalization(momentum=0.9), FusedBatchNormalization(momentum=0.9)
    ref.build(x.shape)
    fused.build(x.shape)
    gamma = np.linspace(0.5, 2.0, 4).astype(np.float32)
    for layer in (ref, fused):
        layer.gamma.assign(gamma)
        layer.beta.assign(-gamma)
    outs, grads = [], []
    for layer in (ref, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * tf.range(4, dtype=tf.float32))
        outs.append(y.numpy())
        grads.append([g.numpy() for g in tape.gradient(loss, [x, layer.gamma, layer.beta])])
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-4)
    for g_fused, g_ref in zip(grads[1], grads[0]):
        np.testing.assert_allclose(g_fused, g_ref, atol=1e-3)
    np.testing.assert_allclose(fused.moving_mean.numpy(), ref.moving_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(fused.moving_variance.numpy(), ref.moving_variance.numpy(), rtol=1e-5)
    # Inference and frozen layers take the parent's path.
    np.testing.assert_allclose(fused(x, training=False).numpy(), ref(x, training=False).numpy(), atol=1e-5)
    assert fused.get_config() == {**ref.get_config(), "name": fused.name}


def test_imagenet_weights_come_from_the_keras_cache_and_offline_the_error_says_where(
        resnet50_weight_files, tmp_path, monkeypatch):
    """``weights="imagenet"``: Keras' cache first (no network here: a download attempt fails the test)."""
    import os
    import shutil

    legacy, _, probe, expected = resnet50_weight_files
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    attempts = []

    def offline(*args, **kwargs):
        attempts.append(args)
        raise OSError("no network in the tests")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    name = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    folder = str(tmp_path / "keras" / "models")
    with pytest.raises(FileNotFoundError) as error:
        resnet_backbone(50, weights="imagenet")
    for part in (name, folder, "storage.googleapis.com/tensorflow/keras-applications/resnet/" + name, "KERAS_HOME"):
        assert part in str(error.value), (part, str(error.value))
    assert len(attempts) == 1  # Keras' own get_file was asked, once
    os.makedirs(folder)
    shutil.copy(legacy, os.path.join(folder, name))  # what a download (or the user, by hand) leaves there
    model = resnet_backbone(50, weights="imagenet")
    np.testing.assert_allclose(model(probe)["C5"].numpy(), expected, rtol=1e-4, atol=1e-4)
    assert len(attempts) == 1  # the cached file was used
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_backbone("tiny", weights="imagenet")
