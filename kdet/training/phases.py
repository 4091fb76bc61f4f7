"""Resuming a training procedure of several phases after a kill: each finished phase is kept on disk.

The face recipes do not train by one ``fit``: their procedures
(:mod:`kdet.face.procedures`) mine samples, train branch after branch and
then the joint network, each phase a ``fit`` or a mining pass. While
:func:`recorded` is active (``kdet train`` wraps a recipe's own ``train`` in
it, with ``MODEL_DIR/backup/phases``), every :func:`phase` call is numbered
in call order; when one finishes, its result (a model's weights and
history, or mined arrays) is written into ``NNN-kind/`` through a temporary
folder and a rename, so a folder is either whole or absent. A rerun of the
same run reads the finished phases back instead of running them again and
goes on from the first missing one: a kill loses at most the phase it
interrupted.

The procedures are deterministic given their seeds, inputs and the weights
read back, so the k-th phase of the rerun is the k-th of the killed run.
What could change that (the recipe, its data, seed, epochs, steps, batch)
is the run's fingerprint, stored with the phases: a rerun with another
fingerprint is refused, naming what differs.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import os
import shutil
from typing import Any, Callable, Iterator, Mapping, TypeVar

import numpy as np

T = TypeVar("T")
FINGERPRINT = "fingerprint.json"
_ACTIVE: contextvars.ContextVar[PhaseLog | None] = contextvars.ContextVar("kdet_phase_log", default=None)


class PhaseLog:
    """The finished phases of one run in ``folder`` (see the module docstring).

    Raises ``ValueError`` when ``folder`` holds another run's phases.
    """

    def __init__(self, folder: str, fingerprint: Mapping[str, Any], *, verbose: bool = True):
        self.folder, self.verbose, self.count, self.reused = folder, verbose, 0, 0
        self.steps_read_back = 0  # training steps of the fits read back (what they trained in the killed run)
        os.makedirs(folder, exist_ok=True)
        fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))  # plain, comparable data
        path = os.path.join(folder, FINGERPRINT)
        if os.path.isfile(path):
            with open(path) as f:
                stored = json.load(f)
            if stored != fingerprint:
                changed = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
                raise ValueError(f"{folder} holds the finished phases of a run with other settings "
                                 f"({', '.join(changed)} differ): rerun with the same settings to resume it, or "
                                 "train into another --model-dir")
        else:
            _write_json(path, fingerprint)

    def run(self, kind: str, compute: Callable[[], T], save: Callable[[T, str], None],
            load: Callable[[str], T]) -> T:
        """``compute()``, or its result read back when this phase finished in an earlier run."""
        self.count += 1
        name = f"{self.count:03d}-{kind}"
        path = os.path.join(self.folder, name)
        if os.path.isdir(path):
            self.reused += 1
            if self.verbose:
                print(f"kdet train: phase {name} finished before the run stopped: read back, not run again",
                      flush=True)
            return load(path)
        result = compute()
        partial = os.path.join(self.folder, f".partial-{name}")
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        save(result, partial)
        os.replace(partial, path)  # whole or absent
        return result


@contextlib.contextmanager
def recorded(folder: str, fingerprint: Mapping[str, Any], *, verbose: bool = True,
             enabled: bool = True) -> Iterator[PhaseLog | None]:
    """Within it, :func:`phase` calls are kept in (and read back from) ``folder`` (``enabled=False``: not)."""
    if not enabled:
        yield None
        return
    log = PhaseLog(folder, fingerprint, verbose=verbose)
    token = _ACTIVE.set(log)
    try:
        yield log
    finally:
        _ACTIVE.reset(token)


def phase(kind: str, compute: Callable[[], T], *, save: Callable[[T, str], None], load: Callable[[str], T]) -> T:
    """One phase: ``compute()`` when no :func:`recorded` is active, else kept and resumed as described there."""
    log = _ACTIVE.get()
    return compute() if log is None else log.run(kind, compute, save, load)


def fit_phase(model, data, fit: Callable[[], dict]) -> dict:
    """``fit()`` (training ``model`` on ``data``, returning its history) as a phase.

    Kept: the weights ``model`` ended with, the history and the steps
    trained. Read back: the weights into ``model`` (built first on one batch
    of ``data``), the history; the steps add to the log's
    ``steps_read_back``. The optimiser's state is not kept: each of the
    procedures' phases starts a fresh one.
    """
    def save(history, path):
        model.save_weights(os.path.join(path, "model.weights.h5"))
        _write_json(os.path.join(path, "history.json"),
                    {k: [float(v) for v in values] for k, values in history.items()})
        _write_json(os.path.join(path, "steps.json"), int(model.optimizer.iterations.numpy()))

    def load(path):
        if not model.built:
            model(next(iter(data))[0], training=False)
        model.load_weights(os.path.join(path, "model.weights.h5"))
        with open(os.path.join(path, "steps.json")) as f:
            _ACTIVE.get().steps_read_back += int(json.load(f))
        with open(os.path.join(path, "history.json")) as f:
            return json.load(f)

    return phase("fit", fit, save=save, load=load)


def arrays_phase(kind: str, compute: Callable[[], T], cls: type) -> T:
    """``compute()`` returning a dataclass ``cls`` of NumPy arrays (mined samples) as a phase."""
    def save(value, path):
        np.savez(os.path.join(path, "arrays.npz"), **dataclasses.asdict(value))

    def load(path):
        with np.load(os.path.join(path, "arrays.npz")) as arrays:
            return cls(**{field.name: arrays[field.name] for field in dataclasses.fields(cls)})

    return phase(kind, compute, save=save, load=load)


def _write_json(path: str, value) -> None:
    partial = f"{path}.partial-{os.getpid()}"
    with open(partial, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
