"""Shared pytest set-up: quiet TensorFlow, deterministic seeds, no network, longest modules first.

The suite runs on two pytest-xdist workers, one module per worker at a time
(``-n 2 --dist loadfile`` in pyproject.toml). Modules are handed out in
collection order, so the few long ones go first: otherwise the last worker
would start a three-minute module while the other sits idle.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed_everything():
    import keras

    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield


#: Modules that take a minute or more on the 2-core CI machine, longest first.
LONG_MODULES = ("test_benchmarks_smoke.py", "test_distributed.py", "test_tflite.py", "test_recipe_smoke.py",
                "test_face_rcnn.py", "test_cascade_rcnn.py", "test_bad_input_corpus.py", "test_training_processes.py",
                "test_serving.py", "test_image_path.py", "test_detector_contract.py", "test_training_backup.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return LONG_MODULES.index(name) if name in LONG_MODULES else len(LONG_MODULES)

    items.sort(key=rank)  # stable: the order inside each module, and of the other modules, is kept
