"""Pointing game on oracle / uniform maps, grid construction, deletion / insertion AUC on a toy model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bort_jax.explain import metrics


def _toy_dataset():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(10), 3)
  images = rng.uniform(size=(30, 4, 5, 1)).astype(np.float32)
  return images, labels


@pytest.mark.parametrize("grid_size", [2, 3])
def test_make_grids_tiles_distinct_classes_reproducibly(grid_size):
  images, labels = _toy_dataset()
  grids, cell_labels = metrics.make_grids(images, labels, grid_size, num_grids=7, seed=3)
  assert grids.shape == (7, 4 * grid_size, 5 * grid_size, 1)
  assert all(len(set(row)) == grid_size**2 for row in cell_labels)
  for g in range(7):
    for cell, label in enumerate(cell_labels[g]):
      i, j = divmod(cell, grid_size)
      tile = grids[g, 4 * i:4 * i + 4, 5 * j:5 * j + 5]
      matches = [k for k in np.flatnonzero(labels == label) if np.array_equal(images[k], tile)]
      assert len(matches) == 1
  again, again_labels = metrics.make_grids(images, labels, grid_size, num_grids=7, seed=3)
  np.testing.assert_array_equal(again, grids)
  np.testing.assert_array_equal(again_labels, cell_labels)


@pytest.mark.parametrize("grid_size", [2, 3])
def test_pointing_game_oracle_is_one_and_uniform_is_one_over_n(grid_size):
  n, size = 2 * grid_size**2, 6 * grid_size
  cells = jnp.arange(n) % grid_size**2
  block = np.arange(size) // 6                                   # grid row (or column) of each pixel
  cell_of_pixel = block[:, None] * grid_size + block[None, :]
  oracle = (cell_of_pixel[None] == np.asarray(cells)[:, None, None]).astype(np.float32)
  noise = np.random.default_rng(1).normal(size=(n, size, size, 3)).astype(np.float32)
  oracle_nhwc = oracle[..., None] * np.abs(noise) - (1 - oracle[..., None]) * np.abs(noise)  # negatives ignored
  np.testing.assert_allclose(metrics.pointing_game_score(jnp.asarray(oracle), grid_size, cells), 1.0)
  np.testing.assert_allclose(metrics.pointing_game_score(jnp.asarray(oracle_nhwc), grid_size, cells), 1.0,
                             rtol=1e-6)
  uniform = jnp.ones((n, size, size))
  np.testing.assert_allclose(metrics.pointing_game_score(uniform, grid_size, cells), 1 / grid_size**2, rtol=1e-6)
  np.testing.assert_allclose(metrics.pointing_game_score(-uniform, grid_size, cells), 0.0)


def test_pointing_game_matches_numpy_on_random_maps():
  maps = np.random.default_rng(2).normal(size=(5, 12, 12)).astype(np.float32)
  cells = np.array([0, 3, 1, 2, 3])
  positive = np.maximum(maps, 0)
  expected = [positive[k, 6 * (c // 2):6 * (c // 2) + 6, 6 * (c % 2):6 * (c % 2) + 6].sum() / positive[k].sum()
              for k, c in enumerate(cells)]
  np.testing.assert_allclose(metrics.pointing_game_score(jnp.asarray(maps), 2, jnp.asarray(cells)), expected,
                             rtol=1e-5)


def _weighted_sum_model(weights):
  # logit 0 = Σ_p w_p x_p on a single-channel image; logit 1 = 0.
  def apply_fn(params, x):
    logit = jnp.sum(x[..., 0] * params, axis=(1, 2))
    return jnp.stack([logit, jnp.zeros_like(logit)], -1)
  return apply_fn, jnp.asarray(weights, jnp.float32)


def test_deletion_and_insertion_auc_on_a_weighted_sum():
  # Pixels weigh 4, 3, 2, 1 and the oracle attribution orders them that way: deleting one per step gives the
  # curve 10, 6, 3, 1, 0 (AUC 3.75); inserting gives 0, 4, 7, 9, 10 (AUC 6.25). The reversed order swaps them.
  apply_fn, params = _weighted_sum_model([[4.0, 3.0], [2.0, 1.0]])
  x, target = jnp.ones((1, 2, 2, 1)), jnp.zeros(1, jnp.int32)
  curve = functools.partial(metrics.perturbation_curve, apply_fn, params, x, target=target, steps=4, score="logit")
  oracle = params[None]
  np.testing.assert_allclose(curve(oracle, mode="deletion")[0], [10, 6, 3, 1, 0])
  np.testing.assert_allclose(curve(oracle, mode="insertion")[0], [0, 4, 7, 9, 10])
  np.testing.assert_allclose(metrics.curve_auc(curve(oracle, mode="deletion")), [3.75])
  np.testing.assert_allclose(metrics.curve_auc(curve(oracle, mode="insertion")), [6.25])
  np.testing.assert_allclose(metrics.curve_auc(curve(-oracle, mode="deletion")), [6.25])


def test_softmax_curve_starts_at_model_probability_and_ends_at_baseline():
  apply_fn, params = _weighted_sum_model(np.arange(16.0).reshape(4, 4) / 16)
  x = jnp.asarray(np.random.default_rng(3).uniform(size=(3, 4, 4, 1)), jnp.float32)
  target = jnp.array([0, 1, 0])
  attribution = jnp.asarray(np.random.default_rng(4).normal(size=(3, 4, 4)), jnp.float32)
  deletion = jax.jit(functools.partial(metrics.perturbation_curve, apply_fn, steps=8))(params, x, attribution,
                                                                                        target)
  probs = jax.nn.softmax(apply_fn(params, x))[jnp.arange(3), target]
  np.testing.assert_allclose(deletion[:, 0], probs, rtol=1e-6)
  np.testing.assert_allclose(deletion[:, -1], 0.5, rtol=1e-6)


def test_invalid_options_raise():
  apply_fn, params = _weighted_sum_model(np.ones((2, 2)))
  x, target = jnp.ones((1, 2, 2, 1)), jnp.zeros(1, jnp.int32)
  with pytest.raises(ValueError, match="mode must be one of"):
    metrics.perturbation_curve(apply_fn, params, x, x, target, mode="blur")
  with pytest.raises(ValueError, match="grid_size must divide"):
    metrics.pointing_game_score(jnp.ones((1, 5, 5)), 2, jnp.zeros(1, jnp.int32))
  with pytest.raises(ValueError, match="grid_size must be >= 2"):
    metrics.make_grids(np.zeros((4, 2, 2, 1)), np.arange(4), 3, num_grids=1)
