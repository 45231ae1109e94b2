"""Projections land kernels on the constraint set; diagnostics measure the gap."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bort_jax as bj


def project(tx, params, updates=None):
  updates = jax.tree.map(jnp.zeros_like, params) if updates is None else updates
  return optax.apply_updates(params, tx.update(updates, tx.init(params), params)[0])


@pytest.mark.parametrize("shape", [(20, 6), (6, 20), (3, 3, 4, 8)])
def test_orthogonalize_svd_and_newton_schulz_agree_with_the_numpy_polar_factor(shape):
  kernel = jax.random.normal(jax.random.PRNGKey(0), shape)
  m = np.asarray(kernel, np.float64).reshape(-1, shape[-1])
  u, _, vt = np.linalg.svd(m, full_matrices=False)
  expected = (np.sqrt(2.0) * u @ vt).reshape(shape)
  for method in ("svd", "newton_schulz"):
    out = project(bj.orthogonalize(2.0, method=method, steps=30), {"l": {"kernel": kernel}})["l"]["kernel"]
    np.testing.assert_allclose(out, expected, atol=2e-4, err_msg=method)


def test_orthogonalize_gives_orthonormal_rows_or_columns_on_the_feasible_side():
  wide = project(bj.orthogonalize(method="svd"), {"l": {"kernel": jax.random.normal(jax.random.PRNGKey(1), (30, 5))}})
  tall = project(bj.orthogonalize(method="svd"), {"l": {"kernel": jax.random.normal(jax.random.PRNGKey(2), (5, 30))}})
  mw, mt = wide["l"]["kernel"], tall["l"]["kernel"]
  np.testing.assert_allclose(mw.T @ mw, np.eye(5), atol=1e-5)  # WWᵀ = I: rows (output units) orthonormal
  np.testing.assert_allclose(mt @ mt.T, np.eye(5), atol=1e-5)  # tall: WᵀW = I instead
  gaps = bj.orthogonality_gap({"w": {"kernel": mw}, "t": {"kernel": mt}})
  assert max(float(v) for g in gaps.values() for v in g) < 1e-5


def test_projection_applies_to_params_plus_updates_and_skips_biases():
  params = {"l": {"kernel": jnp.eye(4, 3) * 3.0, "bias": jnp.full((3,), 9.0)}}
  updates = {"l": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}}
  out = project(bj.project_row_norms(1.5), params, updates)
  norms = np.linalg.norm(np.asarray(out["l"]["kernel"]), axis=0)  # output units are columns in Flax layout
  np.testing.assert_allclose(norms, 1.5, rtol=1e-6)
  np.testing.assert_array_equal(out["l"]["bias"], 10.0)
  small = {"l": {"kernel": jnp.full((4, 3), 0.1)}}
  np.testing.assert_allclose(project(bj.project_row_norms(1.5), small)["l"]["kernel"], small["l"]["kernel"])


def test_gap_matches_a_numpy_computation():
  m = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (12, 4)), np.float64)
  gram = m.T @ m
  alpha = np.mean(np.diag(gram))
  off = gram / alpha - np.diag(np.diag(gram)) / alpha
  norms = np.sqrt(np.diag(gram))
  stats = bj.orthogonality_gap({"fc": {"kernel": jnp.asarray(m, jnp.float32), "bias": jnp.zeros(4)}})
  assert set(stats) == {"fc/kernel"}
  np.testing.assert_allclose(stats["fc/kernel"].offdiag, np.sqrt(np.sum(off ** 2) / 12), rtol=1e-5)
  np.testing.assert_allclose(stats["fc/kernel"].diag, np.sqrt(np.mean((np.diag(gram) / alpha - 1) ** 2)), rtol=1e-4)
  np.testing.assert_allclose(stats["fc/kernel"].norm_spread, norms.std() / norms.mean(), rtol=1e-4)
  line = bj.gap_summary(jax.jit(bj.orthogonality_gap)({"fc": {"kernel": jnp.asarray(m, jnp.float32)}}))
  assert line.startswith("orthogonality gap over 1 layers: offdiag mean") and "(fc/kernel)" in line


def test_bort_training_closes_the_gap():
  params = {"fc": {"kernel": jax.random.normal(jax.random.PRNGKey(4), (50, 8)) / 7}}
  before = bj.orthogonality_gap(params, alpha=1.0)["fc/kernel"]
  tx = bj.bort_sgd(0.1, 1.0)

  def step(_, carry):
    p, s = carry
    updates, s = tx.update(jax.tree.map(jnp.zeros_like, p), s, p)
    return optax.apply_updates(p, updates), s

  params, _ = jax.jit(lambda p: jax.lax.fori_loop(0, 300, step, (p, tx.init(p))))(params)
  after = bj.orthogonality_gap(params, alpha=1.0)["fc/kernel"]
  assert float(after.offdiag) < 1e-3 < float(before.offdiag)
  assert float(after.diag) < 1e-3


def test_bad_projection_and_gap_arguments():
  with pytest.raises(ValueError, match=r"method must be one of \('newton_schulz', 'svd'\)"):
    bj.orthogonalize(method="qr")
  with pytest.raises(ValueError, match="max_norm must be a positive number"):
    bj.project_row_norms(0.0)
  with pytest.raises(ValueError, match=r"side must be one of \('auto', 'row', 'col'\)"):
    bj.matrix_gap(jnp.ones((3, 2)), side="left")
