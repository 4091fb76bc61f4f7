"""Files written so that a kill at any moment leaves the old version or the new one, never half of one.

Model directories (:mod:`kdet.model_dir`), training backups
(:mod:`kdet.training.backup`), metrics and exports write through these: a
temporary name in the same folder, ``fsync``, then ``os.replace``.
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
    with open(temporary, "w") as f:
        json.dump(record, f, **dump_args)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
