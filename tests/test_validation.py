"""Argument validation: concrete Python/NumPy/JAX values are checked, traced ones accepted; tree mismatches named."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bort_jax as bj
from bort_jax._src import validation


def tree():
  return {"fc": {"kernel": jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)) / 3, jnp.float32),
                 "bias": jnp.zeros(3)}}


def accepts_traced(check, value):
  """Runs ``check`` on ``value`` traced (as under jit or inject_hyperparams); it must not raise."""
  jax.make_jaxpr(check)(value)


@pytest.mark.parametrize("value", [0, 1.5, np.float32(2), np.int64(3), jnp.asarray(1.0), jnp.asarray(2, jnp.bfloat16)])
def test_is_number_accepts_real_scalars(value):
  assert validation.is_number(value)


@pytest.mark.parametrize("value", [True, np.bool_(False), jnp.asarray(True), "1", None, 1j, [1.0], np.ones(2)])
def test_is_number_refuses_bools_strings_and_arrays(value):
  assert not validation.is_number(value)


@pytest.mark.parametrize("value", [-1, np.float32(-1), jnp.asarray(-1.0), float("nan"), True, "big", lambda c: 0.1])
def test_check_nonnegative_refuses_negative_nan_bool_and_non_numbers(value):
  with pytest.raises(ValueError, match=r"^gamma must be a non-negative number, got .*\.$"):
    validation.check_nonnegative("gamma", value)


def test_check_nonnegative_accepts_zero_schedules_when_allowed_and_traced_values():
  schedule = optax.linear_schedule(0.0, 1.0, 10)
  assert validation.check_nonnegative("learning_rate", 0) == 0
  assert validation.check_nonnegative("learning_rate", schedule, allow_schedule=True) is schedule
  with pytest.raises(ValueError, match="learning_rate must be a non-negative number or an optax schedule, got -1"):
    validation.check_nonnegative("learning_rate", -1, allow_schedule=True)
  accepts_traced(lambda x: validation.check_nonnegative("gamma", x), -1.0)


def test_check_in_range_bounds():
  assert validation.check_in_range("momentum", np.float32(0.99), 0, 1) == np.float32(0.99)
  for value in (1.0, 1.5, -0.1, jnp.asarray(1.0)):
    with pytest.raises(ValueError, match=re.escape("momentum must be a number in [0, 1), got")):
      validation.check_in_range("momentum", value, 0, 1)
  assert validation.check_in_range("dampening", 1.0, 0, 1, include_high=True) == 1.0
  with pytest.raises(ValueError, match=re.escape("dampening must be a number in [0, 1], got 1.5.")):
    validation.check_in_range("dampening", 1.5, 0, 1, include_high=True)
  accepts_traced(lambda x: validation.check_in_range("b1", x, 0, 1), 1.5)


@pytest.mark.parametrize("value", [np.float32(-1), jnp.asarray(0.0), 0, True, "auto", [1.0], None])
def test_check_alpha_refuses(value):
  with pytest.raises(ValueError, match=r"alpha must be a positive number or one of \('adaptive', 'ada'\), got"):
    validation.check_alpha(value)


def test_check_alpha_accepts_positive_adaptive_and_traced():
  for value in (1.0, np.float32(0.5), jnp.asarray(2.0), "adaptive", "ada"):
    assert validation.check_alpha(value) is value
  accepts_traced(validation.check_alpha, -1.0)


@pytest.mark.parametrize("value", [0, -2, np.int32(0), jnp.asarray(0), 2.0, np.float32(2), True, "2"])
def test_check_positive_int_refuses(value):
  with pytest.raises(ValueError, match="every_k must be a positive integer, got"):
    validation.check_positive_int("every_k", value)


def test_check_positive_int_accepts_ints_and_traced_ints():
  for value in (1, 3, np.int64(3), jnp.asarray(4)):
    assert validation.check_positive_int("every_k", value) is value
  accepts_traced(lambda k: validation.check_positive_int("every_k", k), 0)


def test_check_bool_one_of_and_positive():
  assert validation.check_bool("nesterov", np.bool_(True))
  with pytest.raises(ValueError, match="nesterov must be True or False, got 1."):
    validation.check_bool("nesterov", 1)
  with pytest.raises(ValueError, match=r"mode must be one of \('l2-full', 'l2-row'\), got \['l2-full'\]."):
    validation.check_one_of("mode", ["l2-full"], ("l2-full", "l2-row"))
  with pytest.raises(ValueError, match="lam must be a positive number, got np.float32"):
    validation.check_positive("lam", np.float32(0))


def test_check_views():
  view = bj.KernelView(in_axes=(1,), out_axes=(2,), batch_axes=(0,))
  rules = [("blocks/.*", view), ("head/kernel", None), ("stack/.*", 1), ("scan/.*", (1,))]
  assert validation.check_views(rules) is rules
  assert validation.check_views(None) is None
  accepted = re.escape("views must be a sequence of (regex, KernelView | None | int >= 0 | tuple of stacked axis "
                       "positions) pairs")
  for bad in (view, "blocks/.*", [view], [("a", "b")], [("a", view, 1)], [("a", True)], [("a", -1)], {"a": view},
              [("a", ())], [("a", (1, -1))], [("a", (True,))]):
    with pytest.raises(ValueError, match=accepted + ", got"):
      validation.check_views(bad)
  with pytest.raises(ValueError, match=accepted + r" with valid regexes, got \('fc\[3', None\)"):
    validation.check_views([("fc[3", None)])


def test_check_rules():
  rules = (("conv.*", np.float32(0.5)), ("fc/kernel", 0))
  assert validation.check_rules(rules) is rules
  for bad in (("conv.*", 0.5), [("x", -1.0)], [("x", True)], [("x", "1")], [(1, 1.0)], {"x": 1.0}):
    with pytest.raises(ValueError, match=r"rules must be a sequence of \(regex, non-negative scale\) pairs, got"):
      validation.check_rules(bad)
  with pytest.raises(ValueError, match=r"rules must be .* with valid regexes, got \('fc\[3', 0.0\)"):
    validation.check_rules([("fc[3", 0.0)])

  def traced_scale(scale):
    with pytest.raises(ValueError, match="rules must be"):  # a scale is read with float() at trace time
      validation.check_rules([("x", scale)])
    return scale

  jax.make_jaxpr(traced_scale)(1.0)


def test_check_mask_refuses_a_bare_leaf_and_points_to_static_args():
  only_fc = {"fc": {"kernel": True, "bias": False}}
  for mask in (None, bj.kernel_mask, only_fc):
    assert validation.check_mask("mask", mask) is mask
  for leaf in (False, jnp.asarray(True), 1.0):
    with pytest.raises(ValueError, match=r"mask must be None, a callable, or a pytree of booleans .*static_args="
                                         r"\('mask',\)"):
      validation.check_mask("mask", leaf)


def test_check_trees_names_the_first_shape_mismatch():
  params = tree()
  validation.check_trees(jax.tree.map(jnp.zeros_like, params), params)
  updates = {"fc": {"kernel": jnp.zeros((6, 4)), "bias": jnp.zeros(3)}}
  with pytest.raises(ValueError, match=re.escape("updates and params must have the same shapes; at 'fc/kernel': "
                                                 "updates has shape (6, 4), params has shape (6, 3).")):
    validation.check_trees(updates, params)


def test_check_trees_names_the_first_structure_mismatch():
  params = tree()
  renamed = {"fc": {"weight": jnp.zeros((6, 3)), "bias": jnp.zeros(3)}}
  with pytest.raises(ValueError, match="updates and params must have the same tree structure; they first differ at "
                                       "updates leaf 'fc/weight' where params has 'fc/kernel'."):
    validation.check_trees(renamed, params)
  missing = {"fc": {"bias": jnp.zeros(3)}, "extra": jnp.zeros(2)}
  with pytest.raises(ValueError, match="first differ at updates leaf 'extra' where params has 'fc/bias'"):
    validation.check_trees(missing, params)
  with pytest.raises(ValueError, match=re.escape("params has the extra leaf 'fc/kernel' (mask: 1 leaves, params: 2)")):
    validation.check_trees({"fc": {"bias": False}}, params, name="mask", check_shapes=False)
  with pytest.raises(ValueError, match=r"same tree structure; updates: PyTreeDef\(\(\*, \*\)\), params: PyTreeDef"):
    validation.check_trees((1.0, 2.0), [1.0, 2.0])
  validation.check_trees(bj.kernel_mask(params), params, name="mask", check_shapes=False)


# The factories: each argument is checked at construction, with numpy/jax scalars and without tracing.


@pytest.mark.parametrize("factory, kwargs, message", [
    (bj.add_bort_correction, dict(gamma=np.float32(-1)), "gamma must be a non-negative number"),
    (bj.add_bort_correction, dict(gamma=jnp.asarray(-1.0)), "gamma must be a non-negative number"),
    (bj.add_bort_correction, dict(gamma=True), "gamma must be a non-negative number"),
    (bj.add_bort_correction, dict(gamma=0.1, alpha=np.float32(-1)), "alpha must be a positive number or one of"),
    (bj.add_bort_correction, dict(gamma=0.1, every_k=np.int32(0)), "every_k must be a positive integer"),
    (bj.add_bort_correction, dict(gamma=0.1, every_k=2.0), "every_k must be a positive integer"),
    (bj.add_bort_correction, dict(gamma=0.1, views=bj.KernelView((0,), (1,))), "views must be a sequence of"),
    (bj.add_bort_correction, dict(gamma=0.1, views=[("fc[", None)]), "views must be .* with valid regexes"),
    (bj.add_bort_correction, dict(gamma=0.1, mask=False), "mask must be None, a callable"),
    (bj.bort_sgd, dict(learning_rate=0.1, gamma=np.float32(-1)), "gamma must be a non-negative number"),
])
def test_transform_arguments_are_checked(factory, kwargs, message):
  with pytest.raises(ValueError, match=message):
    factory(**kwargs)


def test_update_names_mismatched_updates_and_params():
  params = tree()
  tx = bj.add_bort_correction(0.1)
  state = tx.init(params)
  bad_shape = {"fc": {"kernel": jnp.zeros((6, 4)), "bias": jnp.zeros(3)}}
  with pytest.raises(ValueError, match=re.escape("at 'fc/kernel': updates has shape (6, 4), params has shape (6, 3)")):
    tx.update(bad_shape, state, params)
  bad_tree = {"fc": {"weight": jnp.zeros((6, 3)), "bias": jnp.zeros(3)}}
  with pytest.raises(ValueError, match="first differ at updates leaf 'fc/weight' where params has 'fc/kernel'"):
    tx.update(bad_tree, state, params)
  with pytest.raises(ValueError, match="mask and params must have the same tree structure"):
    bj.add_bort_correction(0.1, mask=lambda p: {"fc": True}).update(params, state, params)


def test_callable_mask_under_inject_hyperparams():
  # inject_hyperparams takes any callable for a schedule: it would call the mask on the step count and pass
  # bort_sgd the result (False for kernel_mask), which used to fail at update with "Expected dict, got False".
  params = tree()
  grads = jax.tree.map(jnp.ones_like, params)
  matrices = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
  with pytest.raises(ValueError, match=r"static_args, e.g. optax.inject_hyperparams\(bort_jax.bort_sgd, "
                                       r"static_args=\('mask',\)\)"):
    optax.inject_hyperparams(bj.bort_sgd)(0.1, 0.5, mask=matrices).init(params)
  with pytest.raises(ValueError, match=r"static_args=\('weight_decay_mask',\)"):
    optax.inject_hyperparams(bj.bort_adamw)(0.1, 0.5, weight_decay_mask=matrices).init(params)
  tx = optax.inject_hyperparams(bj.bort_sgd, static_args=("mask",))(0.1, 0.5, mask=matrices)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  plain = bj.bort_sgd(0.1, 0.5, mask=matrices)
  expected, _ = plain.update(grads, plain.init(params), params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates, expected)


def test_inject_hyperparams_checks_concrete_and_accepts_traced_values():
  params = tree()
  grads = jax.tree.map(jnp.ones_like, params)
  with pytest.raises(ValueError, match=re.escape("b1 must be a number in [0, 1), got Array(1.5")):
    optax.inject_hyperparams(bj.bort_adamw)(0.1, 0.5, b1=1.5).init(params)
  tx = optax.inject_hyperparams(bj.bort_adamw)(0.1, 0.5, b1=0.9, alpha=1.0, every_k=2)
  state = tx.init(params)
  state.hyperparams["gamma"] = jnp.asarray(0.2)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  assert all(np.isfinite(u).all() for u in jax.tree.leaves(updates))
