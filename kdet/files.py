"""kdet's own files, read and written safely.

Writes leave either the old version or the new one, never half of one:
model directories (:mod:`kdet.model_dir`), training backups
(:mod:`kdet.training.backup`), metrics and exports go through a temporary
name in the same folder, ``fsync``, then ``os.replace``. JSON objects are
read by :func:`read_json_object`, whose errors name the file and what is
wrong with it.
"""

from __future__ import annotations

import hashlib
import json
import os


def file_sha256(path: str, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: str) -> None:
    """Flushes a file or folder to disk (best effort on file systems that refuse folders)."""
    flags = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if os.path.isdir(path) else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str, record: dict, **dump_args) -> None:
    """Writes ``record`` to ``path`` through a temporary file and a rename (never half a file)."""
    temporary = f"{path}.partial-{os.getpid()}"
    try:
        with open(temporary, "w") as f:
            json.dump(record, f, **dump_args)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def read_json_object(path: str, *, kind: str) -> dict:
    """The JSON object in ``path``; a ``ValueError`` naming the file when it is not UTF-8, not JSON or not an object.

    Args:
      path: the file.
      kind: what the file should be, for the messages (``"COCO json"``).
    """
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a folder, not a {kind} file")
    try:
        with open(path, "rb") as f:
            record = json.loads(f.read().decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); {kind} is UTF-8") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: malformed {kind}: {error.msg} at line {error.lineno}, column {error.colno} "
                         f"(damaged or cut short?)") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: malformed {kind}: expected an object, got {type(record).__name__}")
    return record


def check_output_path(path: str, flag: str, *, folder: bool, what: str = "") -> None:
    """Refuses, before any work, an output path that cannot be written, with a message naming ``flag``.

    Refused: a folder where a file is wanted or a file where a folder is
    wanted, a path under an existing file, and an existing folder that is not
    writable. ``what`` says what the path is for (``"the .tflite file"``).
    """
    want = what or ("a folder" if folder else "a file path")
    if os.path.exists(path) and os.path.isdir(path) != folder:
        raise ValueError(f"{flag} {path!r} is a {'file' if folder else 'folder'}; give {want}")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent != os.path.abspath(path) and not os.path.isdir(parent):
        raise ValueError(f"{flag} {path!r} cannot be written: {parent!r} is a file, so no folder can be made there")
    if os.path.isdir(parent) and not os.access(parent, os.W_OK):
        raise ValueError(f"{flag} {path!r} cannot be written: the folder {parent!r} is not writable")


def kdet_cache(name: str) -> str:
    """``$KDET_CACHE/name`` or ``~/.cache/kdet/name``: where kdet keeps what it fetched or computed once."""
    root = os.environ.get("KDET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kdet")
    return os.path.join(root, name)
