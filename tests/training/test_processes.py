"""Training in separate processes: two multi-worker workers on 127.0.0.1, and a SIGKILL mid-epoch + resume.

Each process runs ``tests/scripts/train_worker.py`` (the tiny recipe, op
determinism, one thread) and saves its final weights to an ``.npz``.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from tests.paths import ROOT as REPOSITORY, SCRIPTS

SCRIPT = str(SCRIPTS / "train_worker.py")
ROOT = str(REPOSITORY)
TIMEOUT = 300


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(extra)
    return env


def _start(model_dir, out, *args, log, **env):
    return subprocess.Popen([sys.executable, SCRIPT, str(model_dir), str(out), *args], stdout=log,
                            stderr=subprocess.STDOUT, env=_env(**env), start_new_session=True)


def _finish(processes, logs):
    try:
        deadline = time.time() + TIMEOUT
        for p in processes:
            p.wait(timeout=max(1, deadline - time.time()))
    finally:
        for p in processes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for p, log in zip(processes, logs):
        assert p.returncode == 0, f"worker failed (exit {p.returncode}):\n{log.read_text()[-3000:]}"
        assert "DONE steps=12" in log.read_text()


def _weights(path):
    with np.load(path) as data:
        return [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Final weights of one uninterrupted single-worker run (12 steps of batch 4)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    log = folder / "log.txt"
    with open(log, "w") as f:
        process = _start(folder / "model", folder / "weights.npz", log=f)
        _finish([process], [log])
    return _weights(folder / "weights.npz")


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_end_with_identical_weights(tmp_path, uninterrupted):
    """MultiWorkerMirroredStrategy over two local processes (the custom loop), global batch 4 = 2 x 2."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    logs = [tmp_path / f"worker{i}.txt" for i in range(2)]
    files = [open(log, "w") for log in logs]
    try:
        processes = [
            _start(tmp_path / "model", tmp_path / f"worker{i}.npz", log=files[i],
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
            for i in range(2)]
        _finish(processes, logs)
    finally:
        for f in files:
            f.close()
    first, second = _weights(tmp_path / "worker0.npz"), _weights(tmp_path / "worker1.npz")
    assert len(first) == len(uninterrupted) > 10
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)  # all-reduced updates: bit-identical workers
    for a, c in zip(first, uninterrupted):  # and the same training as one worker on the same global batches
        np.testing.assert_allclose(a, c, atol=1e-5, rtol=1e-4)
    assert os.path.isfile(tmp_path / "model" / "kdet_model.json")  # written by the chief only
    assert os.path.isdir(tmp_path / "model" / "backup" / "worker1")


def test_sigkill_mid_epoch_resumes_to_the_same_weights(tmp_path, uninterrupted):
    """Killed after step 8 (last backup at step 7, mid-epoch 2 of 5-step epochs), rerun to step 12."""
    log = tmp_path / "killed.txt"
    with open(log, "w") as f:
        process = _start(tmp_path / "model", tmp_path / "never.npz", "--pause-at", "8", log=f)
        try:
            deadline = time.time() + TIMEOUT
            while "PAUSED at step 8" not in log.read_text():
                assert process.poll() is None, f"the run ended before step 8:\n{log.read_text()[-3000:]}"
                assert time.time() < deadline, "the run did not reach step 8 in time"
                time.sleep(0.5)
            os.killpg(process.pid, signal.SIGKILL)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL
    backups = sorted(os.listdir(tmp_path / "model" / "backup"))
    assert backups == ["step-000000005", "step-000000007"], backups  # epoch 1's end, then step 7 of epoch 2
    state = json.loads((tmp_path / "model" / "backup" / "step-000000007" / "state.json").read_text())
    assert state["global_step"] == 7 and state["iterations"] == 7
    resumed_log = tmp_path / "resumed.txt"
    with open(resumed_log, "w") as f:
        _finish([_start(tmp_path / "model", tmp_path / "resumed.npz", log=f)], [resumed_log])
    text = resumed_log.read_text()
    assert "resuming tiny from the backup" in text and "at step 7 of 12" in text and "start=7" in text
    for a, b in zip(_weights(tmp_path / "resumed.npz"), uninterrupted):
        np.testing.assert_array_equal(a, b)  # step-exact resume: same batches, same optimiser state
