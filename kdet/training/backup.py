"""Training backups: weights, optimiser state and global step as one atomic unit.

::

    BACKUP_DIR/
      step-000000007/        the newest complete backup
        model.weights.h5     ``model.save_weights`` (the layers and the optimiser's state)
        state.json           {"format": 1, "global_step": 7, "iterations": 7, "sha256": "..."}
      step-000000005/        the one before (kept in case the newest is damaged)

A backup is written into a temporary folder (``.partial-step-...``) and
renamed into place when both files are on disk, so a kill at any moment
leaves either the previous backups or the new one, never a mix of the two
(Keras' ``BackupAndRestore`` writes its weights and its metadata as separate
files, and kdet once wrote a third; a kill between those writes made a
resumed run train some batches twice).

:func:`restore_backup` checks each backup before it is trusted: the weights
file's SHA-256 must match ``state.json`` and the restored optimiser's
iteration counter must equal the one recorded with the step. A damaged
newest backup is reported and the previous one used; when none can be
used, training stops with an error naming the folder instead of silently
starting again from scratch.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass

from kdet.files import file_sha256, fsync_path, write_json_atomic

FORMAT = 1
PREFIX = "step-"
PARTIAL_PREFIX = ".partial-"
WEIGHTS = "model.weights.h5"
STATE = "state.json"
KEEP = 2
# Files of the backups written by kdet before FORMAT 1 (Keras' BackupAndRestore layout).
LEGACY_WEIGHTS = "latest.weights.h5"
LEGACY_METADATA = "training_metadata.json"


class BackupError(ValueError):
    """No backup in a folder that has some can be restored (each one damaged or inconsistent)."""


@dataclass(frozen=True)
class Backup:
    """One complete backup folder and what its ``state.json`` says."""

    path: str
    step: int
    iterations: int
    sha256: str


def _step_of(name: str) -> int | None:
    if not name.startswith(PREFIX):
        return None
    try:
        return int(name[len(PREFIX):])
    except ValueError:
        return None


def list_backups(backup_dir: str) -> list[Backup]:
    """The complete backups in ``backup_dir``, newest first (a folder whose ``state.json`` is unreadable is skipped)."""
    if not os.path.isdir(backup_dir):
        return []
    found = []
    for name in os.listdir(backup_dir):
        step = _step_of(name)
        path = os.path.join(backup_dir, name)
        if step is None or not os.path.isdir(path):
            continue
        try:
            with open(os.path.join(path, STATE)) as f:
                state = json.load(f)
            backup = Backup(path=path, step=int(state["global_step"]), iterations=int(state["iterations"]),
                            sha256=str(state["sha256"]))
        except (OSError, ValueError, KeyError, TypeError):
            print(f"kdet train: warning: ignoring the backup {path}: its {STATE} is missing or unreadable",
                  file=sys.stderr)
            continue
        if backup.step != step:
            print(f"kdet train: warning: ignoring the backup {path}: its {STATE} says step {backup.step}",
                  file=sys.stderr)
            continue
        found.append(backup)
    return sorted(found, key=lambda b: b.step, reverse=True)


def backup_position(backup_dir: str) -> int:
    """Global steps done according to the newest backup in ``backup_dir`` (0 without one; nothing is verified)."""
    backups = list_backups(backup_dir)
    if backups:
        return backups[0].step
    for name in (LEGACY_METADATA, LEGACY_METADATA + ".bkp"):
        try:
            with open(os.path.join(backup_dir, name)) as f:
                return int(json.load(f)["global_step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return 0


def write_backup(model, backup_dir: str, step: int, *, keep: int = KEEP) -> str:
    """Writes ``model``'s weights and optimiser state at global ``step``; returns the backup folder.

    The folder appears under its final name only once complete; older
    backups beyond the newest ``keep`` are removed afterwards.
    """
    final = os.path.join(backup_dir, f"{PREFIX}{int(step):09d}")
    if os.path.isdir(final):
        return final  # this step is backed up already (an epoch end right after a periodic backup)
    os.makedirs(backup_dir, exist_ok=True)
    partial = os.path.join(backup_dir, f"{PARTIAL_PREFIX}{PREFIX}{int(step):09d}-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    weights = os.path.join(partial, WEIGHTS)
    model.save_weights(weights)
    fsync_path(weights)
    state = {"format": FORMAT, "global_step": int(step), "iterations": int(model.optimizer.iterations.numpy()),
             "sha256": file_sha256(weights)}
    write_json_atomic(os.path.join(partial, STATE), state)
    os.rename(partial, final)
    fsync_path(backup_dir)
    _prune(backup_dir, keep)
    return final


def _prune(backup_dir: str, keep: int) -> None:
    for backup in list_backups(backup_dir)[keep:]:
        shutil.rmtree(backup.path, ignore_errors=True)
    for name in os.listdir(backup_dir):
        if name.startswith(PARTIAL_PREFIX) and not name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(os.path.join(backup_dir, name), ignore_errors=True)  # left by a killed run
    for name in (LEGACY_WEIGHTS, LEGACY_WEIGHTS + ".bkp", LEGACY_METADATA, LEGACY_METADATA + ".bkp"):
        if os.path.exists(os.path.join(backup_dir, name)):
            os.remove(os.path.join(backup_dir, name))  # superseded by a complete backup of this format


def _iterations(model) -> int:
    return int(model.optimizer.iterations.numpy())


def restore_backup(model, backup_dir: str) -> int:
    """Loads the newest usable backup of ``backup_dir`` into ``model`` (built and compiled); returns its step.

    Returns 0 (``model`` untouched) when the folder has no backup. A backup
    whose weights do not match their hash, do not load, or whose optimiser
    counter differs from the one recorded with its step is reported on
    stderr and the next older one tried.

    Raises:
      BackupError: there are backups but none of them can be used.
    """
    backups = list_backups(backup_dir)
    if not backups:
        return _restore_legacy(model, backup_dir)
    problems = []
    for backup in backups:
        problem = _check_and_load(model, backup)
        if problem is None:
            if problems:
                print(f"kdet train: warning: resuming from the older backup {backup.path} (step {backup.step})",
                      file=sys.stderr)
            return backup.step
        problems.append(f"{backup.path}: {problem}")
        print(f"kdet train: warning: cannot use the backup {problems[-1]}", file=sys.stderr)
    raise BackupError(f"no usable backup in {backup_dir} ({'; '.join(problems)}); move the folder away to train "
                      f"from scratch")


def _check_and_load(model, backup: Backup) -> str | None:
    weights = os.path.join(backup.path, WEIGHTS)
    try:
        digest = file_sha256(weights)
    except OSError as error:
        return f"cannot read {WEIGHTS} ({error.strerror or error})"
    if digest != backup.sha256:
        return f"{WEIGHTS} does not match the SHA-256 recorded in {STATE} (damaged file)"
    try:
        model.load_weights(weights)
    except Exception as error:  # noqa: BLE001 -- h5py/Keras raise many kinds; each means "not these weights"
        return f"{WEIGHTS} does not load into this model ({type(error).__name__}: {error})"
    if _iterations(model) != backup.iterations:
        return (f"the restored optimiser is at iteration {_iterations(model)}, but {STATE} recorded "
                f"{backup.iterations} for step {backup.step}")
    return None


def _restore_legacy(model, backup_dir: str) -> int:
    """Restores a backup written by kdet before :data:`FORMAT` 1 (0 when there is none).

    Its step is read from the restored optimiser's iteration counter, which
    was written with the weights; the separate metadata files could be
    older (the race this format removes).
    """
    for name in (LEGACY_WEIGHTS, LEGACY_WEIGHTS + ".bkp"):
        path = os.path.join(backup_dir, name)
        if not os.path.isfile(path):
            continue
        try:
            model.load_weights(path)
        except Exception as error:  # noqa: BLE001
            print(f"kdet train: warning: cannot use the backup {path} ({type(error).__name__}: {error})",
                  file=sys.stderr)
            continue
        step, recorded = _iterations(model), backup_position(backup_dir)
        if recorded != step:
            print(f"kdet train: warning: {os.path.join(backup_dir, LEGACY_METADATA)} says step {recorded} but the "
                  f"weights in {path} are at step {step}; resuming at step {step}", file=sys.stderr)
        return step
    if backup_position(backup_dir):
        raise BackupError(f"{backup_dir} has backup metadata but no weights file that loads; move the folder "
                          f"away to train from scratch")
    return 0
