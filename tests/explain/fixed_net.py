"""A fixed 16-12-3 ReLU net with biases, shared by the attack and attribution tests.

Weights are drawn once from seed 0 with hidden units centred on inputs in [0, 1]; the 8 fixed inputs (seed 10,
uniform in [0.2, 0.8]) give predictions of all three classes, with boundaries 0.007–0.42 away.
"""

import jax
import numpy as np


def net():
  rng = np.random.default_rng(0)
  w1 = rng.normal(size=(16, 12)) * 2 * np.sqrt(2 / 16)
  b1 = -0.5 * w1.sum(0) + 0.1 * rng.normal(size=12)
  w2 = rng.normal(size=(12, 3)) * np.sqrt(2 / 12)
  return [np.asarray(a, np.float32) for a in (w1, b1, w2, np.zeros(3))]


def net_apply(params, x):
  w1, b1, w2, b2 = params
  return jax.nn.relu(x.reshape(x.shape[0], -1) @ w1 + b1) @ w2 + b2


def net_inputs(shape=(8, 16)):
  """The 8 fixed inputs, reshaped to ``shape`` (e.g. ``(8, 4, 4, 1)`` images)."""
  return np.random.default_rng(10).uniform(0.2, 0.8, (8, 16)).reshape(shape).astype(np.float32)
