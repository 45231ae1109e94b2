"""Kernel views, layouts and masks on Linen dicts and NNX State."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bort_jax as bj
from bort_jax._src.views import path_str


def correct(params, mode="l2-full", alpha=1.0, **kw):
  tx = bj.add_bort_correction(1.0, alpha, mode, **kw)
  zeros = jax.tree.map(jnp.zeros_like, params)
  return tx.update(zeros, tx.init(params), params)[0]


def test_roundtrip_of_every_default_view():
  key = jax.random.PRNGKey(0)
  for names, shape in [(("Dense_0", "kernel"), (5, 3)), (("Conv_0", "kernel"), (3, 3, 4, 8)),
                       (("attn", "query", "kernel"), (16, 2, 8)), (("attn", "out", "kernel"), (2, 8, 16))]:
    kernel = jax.random.normal(key, shape)
    view = bj.default_view(names, len(shape))
    m = bj.to_matrix(kernel, view)
    np.testing.assert_array_equal(bj.from_matrix(m, view, shape), kernel)
  q = bj.default_view(("attn", "query", "kernel"), 3)
  assert bj.to_matrix(jnp.zeros((16, 2, 8)), q).shape == (16, 16)  # embed -> heads*head_dim
  o = bj.default_view(("attn", "out", "kernel"), 3)
  assert bj.to_matrix(jnp.zeros((2, 8, 16)), o).shape == (16, 16)  # heads*head_dim -> embed


def test_conv_view_is_the_flax_reshape():
  kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 4, 8))
  m = bj.to_matrix(kernel, bj.default_view(("c", "kernel"), 4))
  np.testing.assert_array_equal(m, kernel.reshape(-1, 8))


@pytest.mark.parametrize("mode", ["l2-full", "l1-fullrow", "l1-fullcol", "l2-row", "l1-col"])
@pytest.mark.parametrize("alpha", [1.0, "adaptive"])
def test_flax_and_torch_layouts_give_the_same_correction(mode, alpha):
  key = jax.random.PRNGKey(2)
  conv = jax.random.normal(key, (3, 3, 4, 8)) / 6.0  # Flax (kh, kw, in, out)
  dense = jax.random.normal(key, (20, 7)) / 4.0  # Flax (in, out)
  flax_tree = {"conv": {"kernel": conv, "bias": jnp.ones(8)}, "fc": {"kernel": dense, "bias": jnp.ones(7)}}
  torch_tree = {"conv": {"weight": jnp.transpose(conv, (3, 2, 0, 1)), "bias": jnp.ones(8)},  # (out, in, kh, kw)
                "fc": {"weight": dense.T, "bias": jnp.ones(7)}}
  flax_delta = correct(flax_tree, mode, alpha)
  torch_delta = correct(torch_tree, mode, alpha, layout="torch")
  np.testing.assert_allclose(jnp.transpose(torch_delta["conv"]["weight"], (2, 3, 1, 0)), flax_delta["conv"]["kernel"],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(torch_delta["fc"]["weight"].T, flax_delta["fc"]["kernel"], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(torch_delta["fc"]["bias"], 0.0)
  # And the torch view is the reference's param.view(out, -1).
  w = np.asarray(torch_tree["conv"]["weight"]).reshape(8, -1)
  view = bj.default_view(("conv", "weight"), 4, layout="torch")
  np.testing.assert_array_equal(bj.to_matrix(torch_tree["conv"]["weight"], view), w.T)


def test_stacked_layers_view_equals_each_layer():
  stack = jax.random.normal(jax.random.PRNGKey(3), (4, 6, 3)) / 2.0
  stacked = {"layers": {"kernel": stack}}
  rule = [(r"layers/kernel", bj.KernelView(in_axes=(1,), out_axes=(2,), batch_axes=(0,)))]
  delta = correct(stacked, "l2-full", "adaptive", views=rule)["layers"]["kernel"]
  for i in range(4):
    np.testing.assert_allclose(delta[i], bj.bort_correction(stack[i], "adaptive", "l2-full"), rtol=1e-6, atol=1e-6)


class Net(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
    self.norm = nnx.BatchNorm(4, rngs=rngs)
    self.embed = nnx.Embed(10, 6, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=6, qkv_features=6, decode=False, rngs=rngs)
    self.fc = nnx.Linear(6, 3, rngs=rngs)


def test_default_mask_on_nnx_state_selects_kernels_only():
  state = nnx.state(Net(nnx.Rngs(0)), nnx.Param)
  selected = {path_str(p) for p, v in jax.tree_util.tree_flatten_with_path(bj.kernel_mask(state))[0] if v}
  assert selected == {"conv/kernel", "fc/kernel", "attn/query/kernel", "attn/key/kernel", "attn/value/kernel",
                      "attn/out/kernel"}
  delta = correct(state)
  assert float(jnp.abs(delta["norm"]["scale"][...]).max()) == 0.0
  assert float(jnp.abs(delta["embed"]["embedding"][...]).max()) == 0.0
  assert float(jnp.abs(delta["attn"]["query"]["kernel"][...]).max()) > 0.0


def test_default_mask_on_linen_params():
  import flax.linen as nn

  class Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.LayerNorm()(nn.Dense(5)(x))
      return nn.Dense(2)(nn.Embed(4, 5)(jnp.zeros((1,), jnp.int32)) + x)

  params = Mlp().init(jax.random.PRNGKey(0), jnp.ones((1, 3)))["params"]
  selected = {path_str(p) for p, v in jax.tree_util.tree_flatten_with_path(bj.kernel_mask(params))[0] if v}
  assert selected == {"Dense_0/kernel", "Dense_1/kernel"}


def test_rules_scale_gamma_per_layer():
  params = {"a": {"kernel": jnp.ones((4, 2))}, "b": {"kernel": jnp.ones((4, 2))}, "c": {"kernel": jnp.ones((4, 2))}}
  delta = correct(params, rules=[("a/.*", 0.5), ("c/kernel", 0.0)])
  full = bj.bort_correction(jnp.ones((4, 2)))
  np.testing.assert_allclose(delta["a"]["kernel"], 0.5 * full)
  np.testing.assert_allclose(delta["b"]["kernel"], full)
  np.testing.assert_array_equal(delta["c"]["kernel"], 0.0)


def test_bad_layout_and_rules_and_views_are_rejected():
  with pytest.raises(ValueError, match="layout must be one of"):
    bj.add_bort_correction(0.1, layout="tf")
  with pytest.raises(ValueError, match="rules must be a sequence of"):
    bj.add_bort_correction(0.1, rules=[("x", -1.0)])
  with pytest.raises(ValueError, match=r"rules must be .* with valid regexes, got \('fc\[3', 0.0\)"):
    bj.add_bort_correction(0.1, rules=[("fc[3", 0.0)])
  with pytest.raises(ValueError, match="permutation"):
    bj.KernelView(in_axes=(0,), out_axes=(2,))
  with pytest.raises(ValueError, match="views rule"):
    correct({"k": {"kernel": jnp.ones((2, 3))}}, views=[("k/kernel", bj.KernelView((1,), (2,), (0,)))])
