"""stable_gamma: equal to an SVD re-derivation, and it separates converging from diverging Bort runs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bort_jax as bj

SHAPES = [(48, 24), (32, 32), (24, 48), (3, 3, 6, 12)]  # wide, square, tall (Flax fan_in × out), conv 4-D


def _params(shape, std=0.25, seed=0):
  kernel = np.random.default_rng(seed).normal(0.0, std, shape).astype(np.float32)
  return {("Conv_0" if len(shape) == 4 else "Dense_0"): {"kernel": jnp.asarray(kernel)}}


def _reference_gamma(kernel, lr, mode, alpha, gain):
  """γ* = gain / (lr (2α + 3 max|s² − α|)): s the singular values (l2-full) or the unit norms (l2-row/col)."""
  m = np.asarray(kernel, np.float64).reshape(-1, kernel.shape[-1])
  row_side = (m.shape[1] <= m.shape[0]) if mode == "l2-full" else mode == "l2-row"
  unit_norms = np.sqrt(np.sum(m * m, axis=0 if row_side else 1))  # output units are the columns of M
  a = np.mean(unit_norms) ** 2 if alpha == "adaptive" else alpha
  s2 = np.linalg.svd(m, compute_uv=False) ** 2 if mode == "l2-full" else unit_norms ** 2
  return gain / (lr * (2 * a + 3 * np.max(np.abs(s2 - a))))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["l2-full", "l2-row", "l2-col"])
@pytest.mark.parametrize("alpha", [1.0, "adaptive"])
def test_bound_equals_svd_rederivation(shape, mode, alpha):
  params = _params(shape)
  kernel = next(iter(params.values()))["kernel"]
  for kwargs, gain in [({}, 2.0), ({"momentum": 0.9}, 2.0), ({"momentum": 0.9, "nesterov": True}, 3.8 / 2.8),
                       ({"optimizer": "adamw", "momentum": 0.9}, 2.0)]:
    bound = bj.stable_gamma(params, 0.05, mode=mode, alpha=alpha, **kwargs)
    np.testing.assert_allclose(bound.gamma, _reference_gamma(kernel, 0.05, mode, alpha, gain), rtol=1e-4)
    assert list(bound.per_kernel) == list(bound.curvature) == [f"{next(iter(params))}/kernel"]


def test_rules_scale_divides_the_bound_and_the_smallest_kernel_is_the_overall_bound():
  params = {"a": {"kernel": 2.0 * jnp.eye(4)}, "b": {"kernel": jnp.eye(4)}}  # λ = 2 + 3·3 = 11 and 2
  bound = bj.stable_gamma(params, 0.1, rules=[("a/kernel", 0.5)])
  assert bound.per_kernel == pytest.approx({"a/kernel": 2 / (0.1 * 0.5 * 11), "b/kernel": 2 / (0.1 * 2)})
  assert bound.gamma == pytest.approx(2 / (0.1 * 0.5 * 11))
  assert bj.stable_gamma(params, 0.1, rules=[(".*", 0.0)]).gamma == float("inf")


def test_stacked_kernels_take_the_worst_matrix():
  stacked = jnp.stack([jnp.eye(4), 2.0 * jnp.eye(4)])
  bound = bj.stable_gamma({"blocks": {"kernel": stacked}}, 0.1, views=[("blocks/kernel", 1)])
  assert bound.curvature["blocks/kernel"] == pytest.approx(11.0)


@pytest.mark.parametrize("kwargs,error", [({"mode": "l1-full"}, "l2 modes only"), ({"optimizer": "adam"}, "optimizer"),
                                          ({"momentum": 1.0}, "momentum")])
def test_unsupported_arguments_are_refused(kwargs, error):
  with pytest.raises(ValueError, match=error):
    bj.stable_gamma({"fc": {"kernel": jnp.eye(3)}}, 0.1, **kwargs)


# (bort_sgd / bort_adamw keyword arguments, smallest γ/γ* that diverged in every measured case × margin).
# Measured by bisection (benchmarks/results/gamma_stability.md): heavy ball μ = 0.9 diverges from 1.4–1.9 γ*,
# Nesterov from 2.1–2.9 γ*, no momentum and BortA from 2.9–5.0 γ*.
OPTIMIZERS = [("sgd", {}, 6.0), ("sgd", {"momentum": 0.9}, 2.5),
              ("sgd", {"momentum": 0.9, "nesterov": True}, 4.0), ("adamw", {}, 6.0)]
STEPS = 300


def _zero_gradient_runs(params, lr, mode, gammas, optimizer, kwargs):
  """Final kernels of ``STEPS`` Bort steps with zero gradients, one per γ (vmapped)."""
  def run(gamma):
    if optimizer == "adamw":
      tx = bj.bort_adamw(lr, gamma, mode=mode, weight_decay=0.0)
    else:
      tx = bj.bort_sgd(lr, gamma, mode=mode, **kwargs)
    zeros = jax.tree.map(jnp.zeros_like, params)

    def step(_, carry):
      p, state = carry
      updates, state = tx.update(zeros, state, p)
      return optax.apply_updates(p, updates), state

    return jax.lax.fori_loop(0, STEPS, step, (params, tx.init(params)))[0]
  return jax.jit(jax.vmap(run))(gammas)


def _residual(kernel, mode):
  m = np.asarray(kernel, np.float64).reshape(-1, kernel.shape[-1])
  if mode == "l2-full":
    gram = m.T @ m if m.shape[1] <= m.shape[0] else m @ m.T
    return np.max(np.abs(gram - np.eye(len(gram))))
  return np.max(np.abs(np.sum(m * m, axis=0) - 1.0))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["l2-full", "l2-row"])
def test_bound_separates_converging_from_diverging_runs(shape, mode):
  params, lr = _params(shape), 0.1
  for optimizer, kwargs, factor in OPTIMIZERS:
    bound = bj.stable_gamma(params, lr, optimizer=optimizer, mode=mode, **kwargs).gamma
    final = _zero_gradient_runs(params, lr, mode, jnp.asarray([0.8 * bound, factor * bound]), optimizer, kwargs)
    stable, unstable = (jax.tree.leaves(jax.tree.map(lambda x, i=i: x[i], final))[0] for i in range(2))
    case = f"{optimizer} {kwargs} γ*={bound:.3g}"
    assert np.all(np.isfinite(stable)) and _residual(stable, mode) < 1e-3, case
    assert not np.all(np.isfinite(unstable)) or np.max(np.abs(unstable)) > 1e3, case


def test_describe_shows_each_kernels_stable_gamma_when_given_the_learning_rate():
  params = {"fc": {"kernel": 2.0 * jnp.eye(4), "bias": jnp.zeros(4)}}
  rows = {r[0]: r for r in bj.describe(params, learning_rate=0.1)}
  assert rows["fc/kernel"][-1] == f"{2 / (0.1 * 11):.4g}" and rows["fc/bias"][-1] == ""
  assert "stable γ ≤" in str(bj.describe(params, learning_rate=0.1))
  assert bj.describe(params, mode="l1-fullrow", learning_rate=0.1)[1][-1] == "n/a (l1 mode)"
  assert len(bj.describe(params)[0]) == 7  # no learning rate, no column
