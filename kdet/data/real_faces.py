"""Real photographs with hand-boxed faces: the real-input check for every face detector.

The embedded face set (:mod:`kdet.data.faces`) composites small grey LFW crops
on textures; a detector that does well on it need not find a face in a
photograph. This set is four real photographs, six clearly visible faces, that
ship inside installable packages; kdet keeps only the boxes and where each
photo comes from, never the pictures themselves.

===============  =====  ======================================================
photo            faces  source (package member) and rights
===============  =====  ======================================================
``astronaut``    1      ``scikit-image`` ``skimage/data/astronaut.png``:
                        Eileen Collins, NASA portrait, public domain
``grace_hopper`` 1      ``matplotlib`` ``mpl-data/sample_data/grace_hopper.jpg``:
                        Grace Hopper, US Navy portrait, public domain
``bus``          2      ``ultralytics==8.4.190`` wheel, ``ultralytics/assets/bus.jpg``:
                        two men in sunglasses by a Madrid bus; a third person
                        is cut by the frame (face not visible, not boxed)
``zidane``       2      same wheel, ``ultralytics/assets/zidane.jpg``: two
                        football coaches, one in near-profile shouting
===============  =====  ======================================================

scikit-image and matplotlib are kdet requirements, so the two portraits are
always here. The other two are taken out of the ``ultralytics`` wheel by
:func:`fetch_real_face_photos` (``pip download --no-deps``; ultralytics itself is
never installed; the wheel's own licence is AGPL-3.0 and the photographs'
rights stay with their owners, which is why kdet stores no copy). Every file is
checked against the sha256 recorded here, so a changed upstream file is refused
rather than scored against boxes drawn on another picture.

Boxes are ``[ymin, xmin, ymax, xmax]`` pixels in the photo as stored, drawn by
eye on 2-4x enlargements: hairline (or, under a cap, the brow line above the
eyes' top) to chin, cheek to cheek without the ears. Evaluation follows the
AFW protocol the face paper uses (IoU 0.3, :data:`kdet.evaluation.face.AFW_IOU_THRESHOLD`),
which tolerates the few pixels by which two careful annotators differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from kdet.files import kdet_cache

__all__ = ["REAL_FACE_PHOTOS", "RealFacePhoto", "default_photo_cache", "fetch_real_face_photos",
           "load_real_face_photos", "real_face_photo_path", "score_real_photos"]

ULTRALYTICS_WHEEL = "ultralytics==8.4.190"


@dataclasses.dataclass(frozen=True)
class RealFacePhoto:
    """One photograph: where it is, its checksum, its faces ``[F, 4]`` yxyx pixels."""

    name: str
    package: str  # the distribution that ships it
    member: str  # path inside that distribution's files
    sha256: str
    height: int
    width: int
    faces: tuple  # ((ymin, xmin, ymax, xmax), ...)
    rights: str
    installed: bool  # True: the package is a kdet requirement; False: fetched from its wheel

    @property
    def boxes(self) -> np.ndarray:
        return np.asarray(self.faces, np.float32).reshape(-1, 4)


REAL_FACE_PHOTOS = (
    RealFacePhoto("astronaut", "scikit-image", "skimage/data/astronaut.png",
                  "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5", 512, 512,
                  ((68.0, 183.0, 174.0, 267.0),), "NASA portrait of Eileen Collins, public domain", True),
    RealFacePhoto("grace_hopper", "matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
                  "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130", 600, 512,
                  ((128.0, 184.0, 326.0, 351.0),), "US Navy portrait of Grace Hopper, public domain", True),
    RealFacePhoto("bus", "ultralytics", "ultralytics/assets/bus.jpg",
                  "c02019c4979c191eb739ddd944445ef408dad5679acab6fd520ef9d434bfbc63", 1080, 810,
                  ((420.0, 109.0, 468.0, 153.0), (424.0, 270.0, 472.0, 307.0)),
                  "street photo in the ultralytics wheel (AGPL-3.0 package); not redistributed", False),
    RealFacePhoto("zidane", "ultralytics", "ultralytics/assets/zidane.jpg",
                  "16d73869e3267a7d4ed00de8e860833bd1657c1b252e94c0c348277adc7b6edb", 720, 1280,
                  ((108.0, 920.0, 270.0, 1047.0), (262.0, 550.0, 445.0, 662.0)),
                  "press photo in the ultralytics wheel (AGPL-3.0 package); not redistributed", False),
)


def default_photo_cache() -> Path:
    """``$KDET_CACHE/real_faces`` or ``~/.cache/kdet/real_faces``: where fetched photos go."""
    return Path(kdet_cache("real_faces"))


def _installed_path(photo: RealFacePhoto) -> Path | None:
    top = photo.member.split("/", 1)[0]
    try:
        module = __import__(top)
    except ImportError:
        return None
    path = Path(module.__file__).resolve().parent.parent / photo.member
    return path if path.is_file() else None


def real_face_photo_path(photo: RealFacePhoto, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The photo's file if it is here (installed package, or fetched into ``cache_dir``), else ``None``."""
    if photo.installed:
        return _installed_path(photo)
    path = Path(cache_dir or default_photo_cache()) / Path(photo.member).name
    return path if path.is_file() else None


def fetch_real_face_photos(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """Take the photos that kdet does not require out of the ``ultralytics`` wheel.

    ``pip download ultralytics==8.4.190 --no-deps`` into a temporary folder,
    extract the two pictures into ``cache_dir`` (checked against their sha256)
    and delete the wheel. Photos already in the cache are kept. Returns the
    paths of every fetched photo. Needs the package registry; nothing in kdet's
    tests or default run calls it.
    """
    cache = Path(cache_dir or default_photo_cache())
    wanted = [p for p in REAL_FACE_PHOTOS if not p.installed and real_face_photo_path(p, cache) is None]
    if wanted:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix="wheel-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", ULTRALYTICS_WHEEL, "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wheels = sorted(Path(tmp).glob("ultralytics-*.whl"))
            if proc.returncode or not wheels:
                raise RuntimeError(f"pip download {ULTRALYTICS_WHEEL} failed:\n{proc.stderr.strip()[-800:]}")
            with zipfile.ZipFile(wheels[0]) as zf:
                for photo in wanted:
                    data = zf.read(photo.member)
                    _check_sha256(photo, data, wheels[0].name)
                    target = cache / Path(photo.member).name
                    target.with_suffix(".part").write_bytes(data)
                    os.replace(target.with_suffix(".part"), target)
    return [real_face_photo_path(p, cache) for p in REAL_FACE_PHOTOS if not p.installed]


def _check_sha256(photo: RealFacePhoto, data: bytes, where) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != photo.sha256:
        raise ValueError(f"{where}: {photo.member} has sha256 {digest}, not the {photo.sha256} that kdet's "
                         f"face boxes for {photo.name!r} were drawn on; the package's picture changed")


def load_real_face_photos(names=None, cache_dir: str | os.PathLike | None = None, *,
                          fetch: bool = False) -> list[tuple[RealFacePhoto, np.ndarray]]:
    """``[(photo, uint8 [H, W, 3] RGB image)]`` for the photos that are here.

    ``names``: a subset of :data:`REAL_FACE_PHOTOS`' names (default all).
    ``fetch``: first fetch the ones kdet does not require
    (:func:`fetch_real_face_photos`). A photo that is not here is skipped with
    one warning naming it and how to get it; a file whose checksum or size
    differs from the record raises ``ValueError`` naming the file.
    """
    from PIL import Image

    chosen = _chosen(names)
    if fetch and any(not p.installed for p in chosen):
        fetch_real_face_photos(cache_dir)
    out, missing = [], []
    for photo in chosen:
        path = real_face_photo_path(photo, cache_dir)
        if path is None:
            missing.append(photo.name)
            continue
        data = path.read_bytes()
        _check_sha256(photo, data, path)
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
        if image.shape[:2] != (photo.height, photo.width):
            raise ValueError(f"{path}: {image.shape[:2]} pixels, expected {(photo.height, photo.width)}")
        out.append((photo, image))
    if missing:
        warnings.warn(f"real face photos not here, skipped: {', '.join(missing)} (fetch them with "
                      f"`python -m kdet.data.real_faces --fetch`, which pip-downloads {ULTRALYTICS_WHEEL} "
                      "without installing it)", stacklevel=2)
    return out


def _chosen(names) -> list[RealFacePhoto]:
    by_name = {p.name: p for p in REAL_FACE_PHOTOS}
    if names is None:
        return list(REAL_FACE_PHOTOS)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown real face photo(s) {unknown}; known: {sorted(by_name)}")
    return [by_name[n] for n in names]


def score_real_photos(photos, detections, *, min_score: float) -> dict:
    """Found faces, false positives and AFW AP of one detector on the real photos.

    Args:
      photos: the :class:`RealFacePhoto` records (or ``(photo, image)``
        pairs, as :func:`load_real_face_photos` returns) the detector ran on.
      detections: one ``(boxes [D, 4] yxyx pixels, scores [D])`` per photo, in order.
      min_score: the detector's operating point: ``found`` and
        ``false_positives`` count the detections scoring at least this
        (a face is found by a detection of IoU >= 0.3, each face once;
        a duplicate is a false positive); ``ap`` uses every detection.

    Returns ``{"faces", "found", "false_positives", "ap", "photos",
    "per_photo": {name: {"faces", "found", "false_positives"}}}``.
    """
    from kdet.evaluation import face as face_eval

    records = [p[0] if isinstance(p, tuple) else p for p in photos]
    if len(records) != len(detections):
        raise ValueError(f"{len(records)} photos but {len(detections)} detection results")
    per_photo, ground_truth, found_all = {}, [], []
    for i, (photo, (boxes, scores)) in enumerate(zip(records, detections)):
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        kept = scores >= min_score
        is_tp, _ = face_eval.match_detections(photo.boxes, boxes[kept], scores[kept],
                                              iou_threshold=face_eval.AFW_IOU_THRESHOLD)
        per_photo[photo.name] = {"faces": len(photo.faces), "found": int(is_tp.sum()),
                                 "false_positives": int((~is_tp).sum())}
        ground_truth.append({"image_id": i, "boxes": photo.boxes})
        found_all.append({"image_id": i, "boxes": boxes, "scores": scores})
    totals = {key: sum(v[key] for v in per_photo.values()) for key in ("faces", "found", "false_positives")}
    ap = face_eval.afw_average_precision(ground_truth, found_all) if records else -1.0
    return {**totals, "ap": float(ap), "photos": len(records), "per_photo": per_photo}


def _main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kdet.data.real_faces", description=__doc__.split("\n")[0])
    parser.add_argument("--fetch", action="store_true", help=f"fetch the photos in the {ULTRALYTICS_WHEEL} wheel")
    parser.add_argument("--cache-dir", default=None, help="where fetched photos go (default %(default)s: "
                        "$KDET_CACHE/real_faces or ~/.cache/kdet/real_faces)")
    args = parser.parse_args(argv)
    if args.fetch:
        fetch_real_face_photos(args.cache_dir)
    for photo in REAL_FACE_PHOTOS:
        path = real_face_photo_path(photo, args.cache_dir)
        print(f"{photo.name:13s} {len(photo.faces)} face(s)  {path or 'not here'}")


if __name__ == "__main__":
    _main()
