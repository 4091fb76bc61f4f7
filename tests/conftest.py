"""Shared pytest set-up: quiet TensorFlow, deterministic seeds, no network."""

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
