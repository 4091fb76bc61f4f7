"""Shared pytest set-up: quiet TensorFlow, deterministic seeds, no network, longest modules first.

The suite runs on two pytest-xdist workers, one module per worker at a time
(``-n 2 --dist loadfile`` in pyproject.toml). Modules are handed out in
collection order, so the few long ones go first: otherwise the last worker
would start a three-minute module while the other sits idle.
"""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# As many xdist workers as cores: one TensorFlow thread per pool (intra- and inter-op) in each worker, and in
# the subprocesses they start, instead of pools as wide as the machine competing for its cores (8-9% less wall
# time on tests/detectors and tests/serving/test_savedmodel.py, 2 workers on 2 cores). Set before TF starts.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) >= (os.cpu_count() or 1):
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed_everything():
    import keras

    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield


#: Modules that take a minute or more on the 2-core CI machine, longest first (paths under tests/).
LONG_MODULES = ("test_benchmarks_smoke.py", "training/test_distribute.py", "serving/test_tflite.py",
                "training/test_recipe_smoke.py", "face/test_rcnn.py", "detectors/test_cascade_rcnn.py",
                "test_bad_input_corpus.py", "training/test_processes.py", "serving/test_savedmodel.py",
                "test_image_path.py", "detectors/test_detector_contract.py", "training/test_backup.py")
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = Path(item.path).resolve().relative_to(TESTS).as_posix()
        return LONG_MODULES.index(name) if name in LONG_MODULES else len(LONG_MODULES)

    items.sort(key=rank)  # stable: the order inside each module, and of the other modules, is kept
