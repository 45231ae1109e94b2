"""Every correction mode against jax.grad of its penalty and against a NumPy re-derivation in torch orientation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bort_jax as bj

# (fan_in, out) views: wide (out < fan_in), tall (out > fan_in), square, a 3x3x4 -> 8 conv, an attention q proj.
SHAPES = [(6, 2), (2, 6), (5, 5), (36, 8), (16, 24)]
ALPHAS = [0.7, "adaptive"]


def numpy_reference(w: np.ndarray, alpha, mode: str) -> np.ndarray:
  """Δ_W in the paper's orientation W (out, fan_in), written from the formulas (float64)."""
  out, fan_in = w.shape
  tall = out > fan_in
  side = {"l2-row": "row", "l1-fullrow": "row", "l1-row": "row",
          "l2-col": "col", "l1-fullcol": "col", "l1-col": "col"}.get(mode, "col" if tall else "row")
  if isinstance(alpha, str):
    norms = np.linalg.norm(w, axis=1 if side == "row" else 0)
    alpha = norms.mean() ** 2
  rows, cols = w @ w.T, w.T @ w
  if mode == "l2-full":
    return w @ w.T @ w - alpha * w
  if mode == "l2-row":
    return (np.diag(rows) * np.eye(out)) @ w - alpha * w
  if mode == "l2-col":
    return w @ (np.diag(cols) * np.eye(fan_in)) - alpha * w
  if mode == "l1-fullrow" or (mode == "l1-full" and side == "row"):
    return np.sign(rows - alpha * np.eye(out)) @ w
  if mode == "l1-fullcol" or mode == "l1-full":
    return w @ np.sign(cols - alpha * np.eye(fan_in))
  if mode == "l1-row":
    return (np.sign(rows - alpha * np.eye(out)) * np.eye(out)) @ w
  assert mode == "l1-col"
  return w @ (np.sign(cols - alpha * np.eye(fan_in)) * np.eye(fan_in))


def random_view(shape, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), shape) / np.sqrt(shape[0])


@pytest.mark.parametrize("mode", bj.MODES)
def test_correction_is_gradient_of_penalty(mode):
  for shape in SHAPES:
    for alpha in ALPHAS:
      m = random_view(shape)
      delta = bj.bort_correction(m, alpha, mode)
      grad = jax.grad(lambda x: bj.bort_penalty(x, alpha, mode))(m)
      np.testing.assert_allclose(delta, grad, rtol=1e-5, atol=1e-5, err_msg=f"{shape} {alpha}")


@pytest.mark.parametrize("mode", bj.MODES)
def test_correction_matches_numpy_reference(mode):
  for shape in SHAPES:
    for alpha in ALPHAS:
      m = random_view(shape, seed=1)
      expected = numpy_reference(np.asarray(m, np.float64).T, alpha, mode).T
      np.testing.assert_allclose(bj.bort_correction(m, alpha, mode), expected, rtol=1e-4, atol=1e-5,
                                 err_msg=f"{shape} {alpha}")


@pytest.mark.parametrize("mode", ["l2-full", "l1-full", "l2-row", "l1-col"])
def test_bfloat16_params_keep_dtype_and_compute_in_float32(mode):
  m32 = random_view((36, 8), seed=2)
  m16 = m32.astype(jnp.bfloat16)
  delta = bj.bort_correction(m16, 1.0, mode)
  assert delta.dtype == jnp.bfloat16
  # Same math in float32 on the bf16-rounded weights, rounded once at the end.
  expected = bj.bort_correction(m16.astype(jnp.float32), 1.0, mode).astype(jnp.bfloat16)
  np.testing.assert_array_equal(np.asarray(delta, np.float32), np.asarray(expected, np.float32))


def test_batched_views_equal_per_matrix():
  stack = jax.random.normal(jax.random.PRNGKey(3), (3, 12, 5))
  batched = bj.bort_correction(stack, "adaptive", "l2-full")
  for i in range(3):
    np.testing.assert_allclose(batched[i], bj.bort_correction(stack[i], "adaptive", "l2-full"), rtol=1e-6, atol=1e-6)


def test_full_l2_has_the_same_gradient_on_both_sides():
  # ¼‖WWᵀ−αI‖² and ¼‖WᵀW−αI‖² differ by a constant, so the cheaper side gives the same Δ.
  m = random_view((4, 9), seed=4)
  w = np.asarray(m, np.float64).T
  np.testing.assert_allclose(bj.bort_correction(m, 1.0, "l2-full"), (w @ (w.T @ w) - w).T, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bj.bort_correction(m, 1.0, "l2-full"), ((w @ w.T) @ w - w).T, rtol=1e-5, atol=1e-6)


def test_adaptive_alpha_is_stop_gradient_and_jit_safe():
  m = random_view((10, 4), seed=5)
  f = jax.jit(lambda x: bj.bort_correction(x, "adaptive", "l2-full"))
  np.testing.assert_allclose(f(m), bj.bort_correction(m, "ada", "l2-full"), rtol=1e-5, atol=1e-6)
  # No host sync: the computation lowers with no callback or transfer.
  with jax.transfer_guard("disallow"):
    f(m).block_until_ready()


@pytest.mark.parametrize("bad_mode", ["l3-full", "default", "row", ""])
def test_unknown_mode_is_rejected(bad_mode):
  with pytest.raises(ValueError, match="mode must be one of"):
    bj.bort_correction(jnp.ones((3, 2)), 1.0, bad_mode)


@pytest.mark.parametrize("bad_alpha", ["auto", None, [1.0], -1.0, 0.0, True])
def test_bad_alpha_is_rejected(bad_alpha):
  with pytest.raises(ValueError, match="alpha must be a positive number or one of"):
    bj.bort_correction(jnp.ones((3, 2)), bad_alpha, "l2-full")


def test_grouped_and_per_kernel_corrections_agree():
  k = jax.random.split(jax.random.PRNGKey(7), 3)
  params = {f"l{i}": {"kernel": jax.random.normal(k[i], (9, 4)) / 3} for i in range(3)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  results = []
  for group in (True, False):
    tx = bj.add_bort_correction(1.0, "adaptive", group_same_shape=group)
    results.append(tx.update(zeros, tx.init(params), params)[0])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), *results)
