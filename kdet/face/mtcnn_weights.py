"""The converter: MTCNN's published weights (the ``mtcnn`` package) into a kdet face cascade.

:func:`from_mtcnn` builds a :class:`~kdet.face.cascade.FaceCascade` with MTCNN's
P-, R- and O-Net (:mod:`kdet.face.mtcnn`) and copies the package's weights in,
rewritten exactly: the fully-connected rows of R- and O-Net permuted for a
plain flatten, the offsets and landmarks reordered to yxyx, and the rows
of the cross-stage links zero. ``mtcnn`` (1.0.0, MIT licence, notice in
``docs/third_party/mtcnn_LICENSE.txt``) is an optional extra: only
:func:`mtcnn_weights` imports it.
"""

from __future__ import annotations

import numpy as np

from kdet.face.cascade import FaceCascade
from kdet.face.mtcnn import MTCNN_TEST_SETTINGS

__all__ = ["from_mtcnn", "mtcnn_joint_config", "mtcnn_start", "mtcnn_weights", "set_mtcnn_weights"]


def mtcnn_weights() -> dict[str, list[np.ndarray]]:
    """The ``mtcnn`` package's P-, R- and O-Net weight lists, as its networks' ``set_weights`` takes them.

    Raises ImportError with the install command when the optional extra is missing.
    """
    try:
        import importlib.resources

        import joblib
        import mtcnn  # noqa: F401  (the assets are a package resource)
    except ImportError as err:
        raise ImportError(f"MTCNN's weights come from the optional `mtcnn` package ({err}); install it with "
                          "`pip install mtcnn==1.0.0` or `pip install -e .[bench]`") from err
    root = importlib.resources.files("mtcnn.assets.weights")
    return {name: joblib.load(root / f"{name}.lz4") for name in ("pnet", "rnet", "onet")}


_YXYX = [1, 0, 3, 2]  # MTCNN's (x1, y1, x2, y2) columns in kdet's (y1, x1, y2, x2) order
_LANDMARKS_YX = [j for i in range(5) for j in (i + 5, i)]  # (x1..x5, y1..y5) -> (y1, x1, ..., y5, x5)


def _unpermute_fc(kernel: np.ndarray, map_shape) -> np.ndarray:
    """Rows of a Dense kernel after ``Permute((2, 1, 3)) + Flatten`` -> after a plain Flatten."""
    h, w, c = map_shape
    return kernel.reshape(w, h, c, -1).transpose(1, 0, 2, 3).reshape(h * w * c, -1)


def _with_links(kernel: np.ndarray, previous: int) -> np.ndarray:
    """An output layer's kernel with zero rows for the previous branch's feature (the links start at 0)."""
    return np.concatenate([kernel, np.zeros((previous, kernel.shape[1]), kernel.dtype)], axis=0)


def set_mtcnn_weights(model, weights: dict[str, list[np.ndarray]] | None = None) -> None:
    """Copies MTCNN's weights (default :func:`mtcnn_weights`) into a built ``architecture="mtcnn"`` cascade."""
    w = mtcnn_weights() if weights is None else weights
    p = w["pnet"]
    model.x12.set_weights(p[:9] + [p[11], p[12], p[9][..., _YXYX], p[10][_YXYX]])
    r = w["rnet"]
    previous = model.x12.feature_size
    model.x24.set_weights(r[:9] + [_unpermute_fc(r[9], (3, 3, 64)), r[10], r[11],
                                   _with_links(r[14], previous), r[15],
                                   _with_links(r[12][:, _YXYX], previous), r[13][_YXYX]])
    o = w["onet"]
    previous += model.x24.units
    model.x48.set_weights(o[:12] + [_unpermute_fc(o[12], (3, 3, 128)), o[13], o[14],
                                    _with_links(o[19], previous), o[20],
                                    _with_links(o[15][:, _YXYX], previous), o[16][_YXYX],
                                    _with_links(o[17][:, _LANDMARKS_YX], previous), o[18][_LANDMARKS_YX]])


def from_mtcnn(*, test=None, training=None, weights=None, **kwargs):
    """A :class:`~kdet.face.cascade.FaceCascade` running MTCNN's published weights.

    Args:
      test: changes to :data:`MTCNN_TEST_SETTINGS` (a dict), e.g.
        ``{"min_face_size": 40}``.
      training: changes to the joint loss (the offsets' statistics are fixed
        at mean 0, std 1: MTCNN's offsets are not normalised).
      weights: the three weight lists (default: read from the ``mtcnn``
        package by :func:`mtcnn_weights`).
      **kwargs: other FaceCascade arguments (``dropout``, ``train_branches``,
        ``use_gather``...).

    Returns a built model; its ``detect`` gives MTCNN's faces (same faces at
    IoU >= 0.8 on the real photos, tests/face/test_mtcnn.py) and
    ``keypoints`` ``[B, K, 5, 2]`` (y, x pixels).
    """
    config = mtcnn_joint_config({"training": training or {}})
    return mtcnn_start({**config, **kwargs, "test": {**config["test"], **(test or {})}}, weights)


def mtcnn_joint_config(config: dict) -> dict:
    """A FaceCascade config (a recipe's) turned into the joint network that starts from MTCNN.

    MTCNN's branches and test pipeline (:data:`~kdet.face.mtcnn.MTCNN_TEST_SETTINGS`
    over the config's test fields), the config's joint loss (threshold
    controls, Eq. 6's weights) with unnormalised offsets (MTCNN's are not
    normalised), its dropout.
    """
    training = dict(config.get("training") or {})
    test = dict(config.get("test") or {})
    return {**config, "architecture": "mtcnn", "x24_trunk": "li", "test": {**test, **MTCNN_TEST_SETTINGS},
            "training": {**training, "offset_mean": (0.0,) * 4, "offset_std": (1.0,) * 4}}


def mtcnn_start(config: dict, weights=None) -> FaceCascade:
    """A built ``FaceCascade(**config)`` (``architecture="mtcnn"``) holding MTCNN's weights, links at zero."""
    model = FaceCascade(**config)
    model.build()
    set_mtcnn_weights(model, weights)
    return model


def save_mtcnn_model_dir(path: str, *, input_size=(480, 640), test=None) -> str:
    """Writes MTCNN-in-kdet as a model directory for ``kdet detect / evaluate / export``; returns ``path``.

    ``input_size`` is the ``(height, width)`` the exports run at; ``test``
    as :func:`from_mtcnn`. Its data is the embedded face set's validation
    split (``kdet evaluate`` then reports the synthetic-set AP).
    """
    from kdet.model_dir import save_model_dir

    model = from_mtcnn(test=test)
    return save_model_dir(model, path, input_size=input_size, data="embedded:faces:validation",
                          recipe={"name": "mtcnn", "weights": "mtcnn 1.0.0 (P-, R-, O-Net)", "steps": 0})


def _main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kdet.face.mtcnn_weights",
                                     description="write MTCNN's published weights as a kdet model directory")
    parser.add_argument("--out", required=True, help="the model directory to write")
    parser.add_argument("--input-size", type=int, nargs=2, default=(480, 640), metavar=("HEIGHT", "WIDTH"),
                        help="the size exports run at (default: %(default)s)")
    parser.add_argument("--min-face-size", type=float, default=None, help="smallest face found (default 20 px)")
    args = parser.parse_args(argv)
    test = None if args.min_face_size is None else {"min_face_size": args.min_face_size}
    print(save_mtcnn_model_dir(args.out, input_size=tuple(args.input_size), test=test))


if __name__ == "__main__":
    _main()
