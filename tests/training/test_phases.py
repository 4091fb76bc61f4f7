"""kdet.training.phases: a procedure of several phases, killed in one, resumes after the last finished one.

The face recipe's own resume (killed, rerun, the uninterrupted weights) is tested with the face
benchmark's cascade in tests/test_benchmarks_smoke.py.
"""

import dataclasses
import os

import numpy as np
import pytest

from kdet.training import phases


class Killed(BaseException):
    """What a kill looks like to the procedure: it stops inside a phase."""


@dataclasses.dataclass
class Arrays:
    a: np.ndarray
    b: np.ndarray


def _procedure(calls: list, kill_at: str | None = None):
    """Three phases; ``kill_at`` raises inside that phase, as a kill would stop it."""
    def step(name, value):
        def compute():
            calls.append(name)
            if name == kill_at:
                raise Killed(name)
            return Arrays(a=np.full(3, value), b=np.arange(value))
        return phases.arrays_phase(name, compute, Arrays)

    first = step("mine", 1)
    second = step("bootstrap", int(first.a[0]) + 1)
    return step("train", int(second.a[0]) + 1)


def test_a_killed_procedure_resumes_after_its_last_finished_phase(tmp_path, capsys):
    folder = str(tmp_path / "phases")
    calls = []
    with pytest.raises(Killed), phases.recorded(folder, {"seed": 0}):
        _procedure(calls, kill_at="bootstrap")
    assert calls == ["mine", "bootstrap"]
    assert sorted(os.listdir(folder)) == ["001-mine", phases.FINGERPRINT]  # the interrupted phase left nothing
    os.makedirs(os.path.join(folder, ".partial-002-bootstrap"))  # as a kill while saving leaves it

    calls.clear()
    with phases.recorded(folder, {"seed": 0}) as log:
        result = _procedure(calls)
    assert calls == ["bootstrap", "train"] and log.reused == 1  # "mine" was read back
    assert "phase 001-mine finished before the run stopped" in capsys.readouterr().out
    np.testing.assert_array_equal(result.a, np.full(3, 3))
    np.testing.assert_array_equal(result.b, np.arange(3))

    calls.clear()  # without a log every phase runs
    assert _procedure(calls).a[0] == 3 and calls == ["mine", "bootstrap", "train"]


def test_phases_of_another_run_are_refused_naming_what_differs(tmp_path):
    folder = str(tmp_path / "phases")
    with phases.recorded(folder, {"seed": 0, "epochs": 2}):
        _procedure([])
    with pytest.raises(ValueError, match=r"\(epochs differ\).*another --model-dir"):
        with phases.recorded(folder, {"seed": 0, "epochs": 3}):
            pass


def test_a_fit_phase_reads_back_the_weights_it_ended_with(tmp_path):
    import keras
    import tensorflow as tf

    def model():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.layers.Dense(2)])
        m.compile(optimizer="sgd", loss="mse")
        return m

    data = tf.data.Dataset.from_tensor_slices((np.ones((8, 3), np.float32), np.zeros((8, 2), np.float32))).batch(4)
    folder = str(tmp_path / "phases")
    trained = model()
    with phases.recorded(folder, {}):
        history = phases.fit_phase(trained, data, lambda: trained.fit(data, epochs=2, verbose=0).history)
    fresh = model()  # not built: built on one batch, then the weights read back
    with phases.recorded(folder, {}) as log:
        again = phases.fit_phase(fresh, data, lambda: pytest.fail("a finished fit ran again"))
    assert log.steps_read_back == 4  # 2 epochs of 2 batches
    assert again == {k: [float(v) for v in values] for k, values in history.items()}
    for a, b in zip(trained.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
