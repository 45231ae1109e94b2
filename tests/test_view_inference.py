"""Where views come from: axis names (logical vs mesh, short lists, fused and stacked axes anywhere), layer
kinds, the views= shorthand, and the errors a user gets for trees that do not fit."""

import inspect
import warnings

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

import bort_jax as bj
from bort_jax._src.view_inference import infer_view


def reference_delta(kernel, view, alpha=1.0):
  """Float64 l2-full Δ of every matrix of ``view``: M Mᵀ M − αM on (*batch, fan_in, out)."""
  k = np.asarray(kernel, np.float64)
  m = np.transpose(k, view.order).reshape(view.matrix_shape(k.shape))
  d = m @ np.swapaxes(m, -1, -2) @ m - alpha * m
  moved = d.reshape(tuple(k.shape[a] for a in view.order))
  return np.transpose(moved, np.argsort(view.order))


def delta(params, **kw):
  tx = bj.add_bort_correction(1.0, **kw)
  return tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)[0]


def test_mesh_axis_names_do_not_change_a_view():
  # The flax sharding guide's row-parallel conv: "model" says how the axis is sharded, not what it is.
  guess = infer_view(("Conv_0", "kernel"), 4, axis_names=(None, None, "model", None))
  assert guess.certain and guess.view == bj.KernelView((0, 1, 2), (3,))
  guess = infer_view(("Einsum_0", "kernel"), 3, axis_names=("model", None, None))
  assert not guess.certain  # an einsum's kind is unknown without its string: a warned guess, not a wrong view


def test_an_unnamed_axis_beside_embed_is_never_folded_into_the_outputs():
  # nn.scan(metadata_params={nn.PARTITION_NAME: None}) at axis 1, or a mesh name: the axis may be stacked layers.
  scanned = infer_view(("Dense_0", "kernel"), 3, axis_names=("embed", None, "mlp"))
  assert scanned.certain and scanned.view == bj.KernelView((0,), (2,), (1,))
  query = infer_view(("attention", "query", "kernel"), 4, axis_names=("embed", None, "heads", "kv"))
  assert query.certain and query.view == bj.KernelView((0,), (2, 3), (1,))
  assert not infer_view(("mlp", "wi", "kernel"), 3, axis_names=("embed", "model", "mlp")).certain


def test_short_axis_name_lists_are_ignored_and_said():
  # flax lm1b: ("embed", "kv") on a 3-D attention kernel.
  guess = infer_view(("attention", "query", "kernel"), 3, axis_names=("embed", "kv"))
  assert guess.certain and guess.view == bj.KernelView((0,), (1, 2))
  assert "ignored (2 names for 3 axes)" in guess.source


@pytest.mark.parametrize("scan_name", ["layers", "dense_layers", "moe_layers", "layers_outside_pipeline"])
def test_scan_axis_names_anywhere_and_fused_axes_are_batches(scan_name):
  guess = infer_view(("decoder", "mlp", "wi", "kernel"), 4, axis_names=("embed", scan_name, "num_activations", "mlp"))
  assert guess.certain and guess.view == bj.KernelView((0,), (3,), (1, 2))
  guess = infer_view(("attn", "qkv_proj", "kernel"), 4, axis_names=("embed", "qkv", "heads", "kv"))
  assert guess.certain and guess.view == bj.KernelView((0,), (2, 3), (1,))


def test_custom_conv_names_are_guesses_and_linen_auto_names_are_not():
  assert not infer_view(("conv_init", "kernel"), 4).certain  # could be nn.ConvLocal (flax ResNet18Local)
  assert infer_view(("Conv_0", "kernel"), 4).certain
  local = infer_view(("ConvLocal_0", "kernel"), 4)
  assert local.certain and local.view == bj.KernelView((2,), (3,), (0, 1))


def test_linen_views_reads_conv_local_and_stacked_axes_at_position_one():
  class Block(nn.Module):
    @nn.compact
    def __call__(self, x, _):
      return nn.Dense(6, name="wo")(nn.relu(nn.Dense(5, name="wi")(x)))[..., :6], None

  class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.ConvLocal(6, (3, 3), name="conv_init")(x).mean((1, 2))
      scan = nn.scan(Block, variable_axes={"params": 1}, split_rngs={"params": True}, length=3)
      return scan(name="layers")(x, None)[0]

  x = jnp.ones((1, 5, 5, 2))
  rules = dict(bj.linen_views(Model(), x))
  assert rules["conv_init/kernel"] == bj.KernelView((2,), (3,), (0, 1))
  assert rules["layers/wi/kernel"] == bj.KernelView((0,), (2,), (1,))
  params = Model().init(jax.random.key(0), x)["params"]
  with warnings.catch_warnings():
    warnings.simplefilter("error", bj.ViewGuessWarning)
    out = delta(params, views=bj.linen_views(Model(), x))
  np.testing.assert_allclose(out["conv_init"]["kernel"], reference_delta(params["conv_init"]["kernel"],
                             rules["conv_init/kernel"]), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["layers"]["wi"]["kernel"], reference_delta(params["layers"]["wi"]["kernel"],
                             rules["layers/wi/kernel"]), rtol=1e-4, atol=1e-5)


def test_views_shorthand_takes_stacked_axis_positions():
  kernel = jax.random.normal(jax.random.key(1), (6, 3, 4)) / 3.0  # (embed, layers, mlp): MaxText param_scan_axis=1
  with warnings.catch_warnings():
    warnings.simplefilter("error", bj.ViewGuessWarning)
    out = delta({"mlp": {"kernel": kernel}}, views=[("mlp/kernel", (1,))])["mlp"]["kernel"]
  np.testing.assert_allclose(out, reference_delta(kernel, bj.KernelView((0,), (2,), (1,))), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="stacked axes"):
    delta({"mlp": {"kernel": kernel}}, views=[("mlp/kernel", (3,))])


def test_nnx_partition_spec_metadata_is_read():
  class Model(nnx.Module):
    def __init__(self, rngs):
      rules = (("layers", None), ("embed", None), ("mlp", "model"))  # logical names -> mesh axes
      init = nnx.with_partitioning(nnx.initializers.lecun_normal(), P("layers", "embed", "mlp"), sharding_rules=rules)
      self.w = nnx.Einsum("td,ldm->ltm", (3, 4, 5), kernel_init=init, rngs=rngs)

  with jax.set_mesh(jax.make_mesh((1,), ("model",), axis_types=(jax.sharding.AxisType.Explicit,))):
    model = Model(nnx.Rngs(0))
  assert isinstance(nnx.state(model, nnx.Param)["w"]["kernel"].get_metadata()["out_sharding"], P)
  rows = {r[0]: r for r in bj.describe(nnx.state(model, nnx.Param))}
  assert rows["w/kernel"][2] == "3 × 4 × 5" and "axis names" in rows["w/kernel"][6]


def test_nnx_views_splits_fused_einsums_and_finds_stacked_axes():
  class Attention(nnx.Module):
    def __init__(self, rngs):
      self.qkv_einsum = nnx.Einsum("BTD,SNDH->SBTNH", (3, 2, 8, 4), rngs=rngs)
      self.kv_einsum = nnx.Einsum("BSD,CKDH->CBSKH", (2, 1, 8, 4), rngs=rngs)

  rules = dict(bj.nnx_views(Attention(nnx.Rngs(0))))
  assert rules["qkv_einsum/kernel"] == bj.KernelView((2,), (1, 3), (0,))
  assert rules["kv_einsum/kernel"] == bj.KernelView((2,), (1, 3), (0,))

  @nnx.vmap(in_axes=0, out_axes=1)
  def stacked(key):
    return nnx.Linear(5, 7, rngs=nnx.Rngs(key))

  class Stack(nnx.Module):
    def __init__(self):
      self.mlp = stacked(jax.random.split(jax.random.key(0), 3))

  model = Stack()
  assert model.mlp.kernel.shape == (5, 3, 7)
  assert dict(bj.nnx_views(model))["mlp/kernel"] == bj.KernelView((0,), (2,), (1,))


def test_default_view_refuses_an_array_for_ndim():
  assert bj.default_view("attn/query/kernel", 3) == bj.KernelView((0,), (1, 2))
  with pytest.raises(ValueError, match="ndim"):
    bj.default_view("fc/kernel", jnp.zeros((3, 4)))


def test_boxed_init_with_unboxed_update_names_the_leaf():
  params = {"fc": {"kernel": nn.Partitioned(jnp.eye(3), names=("embed", "mlp"))}}
  for tx in (bj.bort_sgd(0.1, 0.1, momentum=0.9), bj.bort_adamw(0.1, 0.1)):
    state = tx.init(params)
    plain = nn.unbox(params)
    with pytest.raises(ValueError, match="fc/kernel.*same kind of tree"):
      tx.update(plain, state, plain)
    state = tx.init(plain)
    with pytest.raises(ValueError, match="same kind of tree"):
      tx.update(params, state, params)
    tx.update(plain, state, plain)  # consistent trees still work


def test_dbort_activation_of_the_wrong_shape_names_the_kernel():
  params = {"fc": {"kernel": jnp.eye(3)[:, :2]}}
  tx = bj.add_dbort_term()
  io = bj.dense_io(jnp.ones((4, 2)), jnp.ones((4, 2)))  # fan-in 2, the kernel's is 3
  with pytest.raises(ValueError, match=r"dbort_activations\['fc/kernel'\].*\(n, 3\)"):
    tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params, dbort_activations={"fc/kernel": io})


@pytest.mark.parametrize("alias", [bj.bort_sgd, bj.bort_adamw, bj.bort_lamb])
def test_aliases_accept_every_option_of_add_bort_correction(alias):
  # decoupled_decay is bort_adamw's own lr·weight_decay, not a user option of the aliases.
  own = {"gamma", "decoupled_decay", "decoupled_decay_mask"}
  correction = set(inspect.signature(bj.add_bort_correction).parameters) - own
  assert correction <= set(inspect.signature(alias).parameters)
  tx = alias(0.1, 0.1, precision="default", group_same_shape=True)
  params = {"a": {"kernel": jnp.eye(3)}, "b": {"kernel": jnp.eye(3)}}
  tx.update(params, tx.init(params), params)
  assert isinstance(tx, optax.GradientTransformation)


def test_attention_names_need_an_attention_parent_and_torch_fused_qkv_is_split():
  assert infer_view(("MultiHeadDotProductAttention_0", "out", "kernel"), 3).certain
  stacked_out = infer_view(("layers", "out", "kernel"), 3)  # an nnx.vmap-stacked Linear named `out`
  assert not stacked_out.certain and "not named like attention" in stacked_out.reason
  timm = infer_view(("blocks", "0", "attn", "qkv", "weight"), 2, layout="torch")  # nn.Linear(dim, 3·dim)
  assert timm.certain and timm.view == bj.KernelView((2,), (1,), (0,), leading_split=3)
