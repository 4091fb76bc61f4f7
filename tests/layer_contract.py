"""A reusable layer-contract check: config round trip, symbolic and eager call."""

import keras
import numpy as np
import tensorflow as tf


def check_layer_contract(cls, kwargs, inputs):
    """Builds ``cls(**kwargs)``, checks get_config/from_config and eager == symbolic shapes.

    Args:
      cls: a Keras layer class with keyword-only constructor arguments.
      kwargs: the constructor arguments.
      inputs: a nested structure of numpy arrays to call the layer on.

    Returns:
      The eager outputs.
    """
    layer = cls(**kwargs)
    config = layer.get_config()
    for key, value in kwargs.items():
        assert config[key] == value, f"get_config()[{key!r}] = {config[key]!r}, constructor got {value!r}"
    clone = cls.from_config(config)
    assert {k: clone.get_config()[k] for k in kwargs} == kwargs

    eager = layer(tf.nest.map_structure(tf.constant, inputs))
    symbolic_inputs = tf.nest.map_structure(lambda a: keras.Input(shape=a.shape[1:], batch_size=a.shape[0]), inputs)
    symbolic = cls(**kwargs)(symbolic_inputs)
    for e, s in zip(tf.nest.flatten(eager), tf.nest.flatten(symbolic)):
        assert tuple(e.shape) == tuple(s.shape), f"eager {e.shape} != symbolic {s.shape}"
        assert np.all(np.isfinite(np.asarray(e)))
    return eager
