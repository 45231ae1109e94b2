"""Reduced-precision matmuls (TPU bf16 / GPU TF32 inputs at default precision), emulated on CPU.

CPU XLA ignores ``precision=``, so the emulation replaces ``jax.lax.dot_general`` (which bort_jax calls for
every Gram and product) by one that rounds both operands to bf16 / TF32 unless the call asks for HIGHEST —
what an accelerator does at default precision.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bort_jax as bj

HIGHEST = jax.lax.Precision.HIGHEST
EXACT_DOT = jax.lax.dot_general


def round_to(x, fmt):
  """Round-to-nearest to bfloat16 (8 mantissa bits) or TF32 (10 bits), back in float32."""
  if fmt == "bf16":
    return x.astype(jnp.bfloat16).astype(jnp.float32)
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  bits = (bits + jnp.uint32(0x1000)) & jnp.uint32(0xFFFFE000)  # keep 10 of float32's 23 mantissa bits
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


@pytest.fixture(params=["bf16", "tf32"])
def accelerator_matmuls(request, monkeypatch):
  fmt = request.param

  def dot_general(lhs, rhs, dimension_numbers, precision=None, **kwargs):
    exact = precision == HIGHEST or (isinstance(precision, tuple) and all(p == HIGHEST for p in precision))
    if not exact:
      lhs, rhs = round_to(lhs, fmt), round_to(rhs, fmt)
    return EXACT_DOT(lhs, rhs, dimension_numbers, precision=HIGHEST, **kwargs)

  monkeypatch.setattr(jax.lax, "dot_general", dot_general)
  return fmt


def near_orthonormal(shape=(512, 256), noise=0.003, seed=0):
  q = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(seed), shape))[0]
  return q + noise * jax.random.normal(jax.random.PRNGKey(seed + 1), shape)


def bort_descent(kernel, steps, **kwargs):
  """``steps`` of W ← W − 0.3 Δ(W) through add_bort_correction; returns the final kernel."""
  params = {"fc": {"kernel": kernel}}
  tx = optax.chain(bj.add_bort_correction(1.0, 1.0, **kwargs), optax.sgd(0.3))

  def body(_, carry):
    p, s = carry
    u, s = tx.update(jax.tree.map(jnp.zeros_like, p), s, p)
    return optax.apply_updates(p, u), s

  return jax.jit(lambda p: jax.lax.fori_loop(0, steps, body, (p, tx.init(p)))[0])(params)["fc"]["kernel"]


def offdiag_gap(kernel):
  g = np.asarray(kernel, np.float64).T @ np.asarray(kernel, np.float64)
  return float(np.sqrt(np.sum((g - np.diag(np.diag(g))) ** 2) / (g.shape[0] * (g.shape[0] - 1))))


def test_highest_gram_reaches_orthogonality_where_reduced_precision_stalls(accelerator_matmuls):
  start = near_orthonormal()
  protected = bort_descent(start, 200)  # default precision="highest"
  reduced = bort_descent(start, 200, precision="default")
  assert offdiag_gap(start) > 1e-3
  assert offdiag_gap(protected) <= 1e-5  # measured 5e-9 (bf16 and TF32)
  assert offdiag_gap(reduced) >= 5e-6  # measured 9.5e-5 (bf16), 1.2e-5 (TF32): the rounding floor


def test_correction_error_near_the_constraint(accelerator_matmuls):
  """Relative error of Δ at off-diagonal gap ≈ 1e-3 against float64, protected vs unprotected form."""
  m = near_orthonormal(noise=0.0006)
  x = np.asarray(m, np.float64)
  exact = x @ (x.T @ x - np.eye(x.shape[1]))
  error = lambda d: float(np.linalg.norm(np.asarray(d, np.float64) - exact) / np.linalg.norm(exact))
  protected = error(bj.bort_correction(m, 1.0))
  rounded = lambda a: round_to(a, accelerator_matmuls)
  unprotected = error(rounded(m) @ rounded(rounded(m).T @ rounded(m)) - m)  # WWᵀW − αW, all at default
  assert protected <= 5e-3  # bf16 rounding of the second product's operands only
  assert unprotected >= 10 * protected


def test_newton_schulz_and_gap_stay_exact(accelerator_matmuls):
  params = {"fc": {"kernel": near_orthonormal(noise=0.01)}}
  tx = bj.orthogonalize(1.0, steps=30)
  landed = optax.apply_updates(params, tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)[0])
  assert offdiag_gap(landed["fc"]["kernel"]) <= 1e-6
  gap = bj.orthogonality_gap(landed, alpha=1.0)["fc/kernel"].offdiag
  np.testing.assert_allclose(float(gap), offdiag_gap(landed["fc"]["kernel"]), rtol=1e-2, atol=1e-8)


@pytest.mark.parametrize("precision, expected", [("highest", True), ("default", False)])
def test_lowered_gram_asks_for_highest_precision(precision, expected):
  params = {"fc": {"kernel": jnp.ones((8, 4))}}
  tx = bj.add_bort_correction(0.1, precision=precision)
  text = jax.jit(lambda p: tx.update(p, tx.init(p), p)[0]).lower(params).as_text()
  assert ("precision = [HIGHEST, HIGHEST]" in text) == expected


def test_bad_precision_is_rejected():
  with pytest.raises(ValueError, match="precision must be one of"):
    bj.add_bort_correction(0.1, precision="fp8")
