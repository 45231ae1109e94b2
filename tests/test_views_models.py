"""Views of the kernels that real Flax models and PyTorch state_dicts hold: stacked, local, einsum, attention.

Each case compares the transform's Δ with :func:`bort_jax.bort_correction` of each true per-layer matrix, and
checks that a guessed view warns (naming the path) while a known one does not.
"""

import warnings

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bort_jax as bj
from bort_jax._src.views import path_str


def delta_of(params, **kwargs):
  tx = bj.add_bort_correction(1.0, "adaptive", **kwargs)
  return tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)[0]


class _NoGuess:
  """Context: fails if a ViewGuessWarning is raised inside."""

  def __enter__(self):
    self._catcher = warnings.catch_warnings(record=True)
    self._records = self._catcher.__enter__()
    warnings.simplefilter("always")

  def __exit__(self, *exc):
    self._catcher.__exit__(*exc)
    guesses = [str(r.message) for r in self._records if issubclass(r.category, bj.ViewGuessWarning)]
    assert not guesses, guesses


def assert_per_layer(delta_stack, kernel_stack, to_matrix=lambda k: k.reshape(-1, k.shape[-1])):
  for i in range(kernel_stack.shape[0]):
    m = to_matrix(kernel_stack[i])
    want = bj.bort_correction(m, "adaptive").reshape(kernel_stack[i].shape)
    np.testing.assert_allclose(delta_stack[i], want, rtol=1e-5, atol=1e-6)


class ScannedMlp(nn.Module):
  """An ``nn.scan`` stack of Dense layers with partitioning metadata, as big Linen projects write it."""

  @nn.compact
  def __call__(self, x):
    def block(module, carry, _):
      init = nn.with_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
      return nn.Dense(8, kernel_init=init)(carry), None

    scan = nn.scan(lambda m, c, xs: block(m, c, xs), variable_axes={"params": 0}, split_rngs={"params": True},
                   length=3, metadata_params={nn.PARTITION_NAME: "layers"})
    return scan(self, x, None)[0]


def test_linen_scan_with_metadata_is_viewed_per_layer_without_warning():
  params = ScannedMlp().init(jax.random.PRNGKey(0), jnp.ones((2, 8)))["params"]
  with _NoGuess():
    delta = delta_of(params)
    rows = bj.describe(params)
  kernel = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  boxed = [k for k in kernel if isinstance(k, nn.Partitioned)][0]
  assert boxed.names == ("layers", "embed", "mlp")
  delta_kernel = [d for d in jax.tree.leaves(delta) if d.ndim == 3][0]
  assert_per_layer(delta_kernel, boxed.value)
  assert any("3 × 8 × 8" in row[2] for row in rows)


def test_linen_scan_without_metadata_warns_and_takes_the_leading_axis_as_stacked():
  class Plain(nn.Module):
    @nn.compact
    def __call__(self, x):
      scan = nn.scan(lambda m, c, _: (nn.Dense(8)(c), None), variable_axes={"params": 0},
                     split_rngs={"params": True}, length=3)
      return scan(self, x, None)[0]

  params = nn.unbox(Plain().init(jax.random.PRNGKey(1), jnp.ones((2, 8)))["params"])
  path, kernel = [(path_str(p), k) for p, k in jax.tree_util.tree_leaves_with_path(params) if k.ndim == 3][0]
  with pytest.warns(bj.ViewGuessWarning, match=path):
    delta = delta_of(params)
  assert_per_layer(jax.tree.leaves(delta)[[l.ndim for l in jax.tree.leaves(params)].index(3)], kernel)


def test_nnx_vmap_stack_with_metadata_is_viewed_per_layer():
  class Layer(nnx.Module):
    def __init__(self, rngs):
      self.fc = nnx.Linear(8, 6, rngs=rngs)
      self.fc.kernel.set_metadata(out_sharding=("embed", "mlp"))

  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def create(key):
    return Layer(nnx.Rngs(key))

  state = nnx.state(create(jax.random.split(jax.random.PRNGKey(2), 4)), nnx.Param)
  with _NoGuess():
    delta = delta_of(state)
  assert_per_layer(delta["fc"]["kernel"][...], state["fc"]["kernel"][...])


def test_scanned_attention_query_is_per_layer_embed_by_heads():
  kernel = jax.random.normal(jax.random.PRNGKey(3), (2, 16, 4, 8)) / 4  # (layers, embed, heads, head_dim)
  params = {"encoder": {"attention": {"query": {"kernel": kernel}}}}
  with pytest.warns(bj.ViewGuessWarning, match="encoder/attention/query/kernel"):
    delta = delta_of(params)
  assert_per_layer(delta["encoder"]["attention"]["query"]["kernel"], kernel, lambda k: k.reshape(k.shape[0], -1))
  with _NoGuess():
    declared = delta_of(params, views=[(".*/query/kernel", 1)])
  np.testing.assert_array_equal(declared["encoder"]["attention"]["query"]["kernel"],
                                delta["encoder"]["attention"]["query"]["kernel"])


def test_conv_local_is_one_matrix_per_position():
  class Local(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.ConvLocal(5, (3, 3))(x)

  params = Local().init(jax.random.PRNGKey(4), jnp.ones((1, 6, 6, 2)))["params"]
  kernel = params["ConvLocal_0"]["kernel"]  # (out_h, out_w, kh·kw·in, out)
  with _NoGuess():
    delta = delta_of(params)["ConvLocal_0"]["kernel"]
  flat_kernel, flat_delta = kernel.reshape(-1, *kernel.shape[2:]), delta.reshape(-1, *kernel.shape[2:])
  assert_per_layer(flat_delta, flat_kernel)


def test_nnx_einsum_kernel_warns_and_a_declared_view_is_exact():
  class Attention(nnx.Module):
    def __init__(self, rngs):
      self.q_einsum = nnx.Einsum("BTD,NDH->BTNH", (4, 16, 8), rngs=rngs)  # gemma-style (heads, embed, head_dim)

  state = nnx.state(Attention(nnx.Rngs(5)), nnx.Param)
  assert "view guessed" in dict((row[0], row[5]) for row in bj.describe(state))["q_einsum/kernel"]
  with pytest.warns(bj.ViewGuessWarning, match="q_einsum/kernel"):
    delta_of(state)
  view = bj.KernelView(in_axes=(1,), out_axes=(0, 2))
  with _NoGuess():
    delta = delta_of(state, views=[("q_einsum/kernel", view)])["q_einsum"]["kernel"][...]
  kernel = state["q_einsum"]["kernel"][...]
  m = jnp.transpose(kernel, (1, 0, 2)).reshape(16, 32)
  want = jnp.transpose(bj.bort_correction(m, "adaptive").reshape(16, 4, 8), (1, 0, 2))
  np.testing.assert_allclose(delta, want, rtol=1e-5, atol=1e-6)


def test_describe_lists_every_leaf_with_its_view_side_and_status():
  params = {"conv": {"kernel": jnp.ones((3, 3, 4, 8)), "bias": jnp.ones(8)}, "head": {"kernel": jnp.ones((4, 10))},
            "odd": {"kernel": jnp.ones((2, 3, 4, 5))}}
  rows = {row[0]: row for row in bj.describe(params, rules=[("head/kernel", 0.0)])}
  assert rows["conv/kernel"][2:5] == ("36 × 8", "row", 1.0)
  assert rows["conv/bias"][5] == "not a kernel"
  assert rows["head/kernel"][3].startswith("col (tall)") and rows["head/kernel"][5] == "off (rules scale 0)"
  assert "view guessed" in rows["odd/kernel"][5]
  assert "matrix (batch × fan_in × out)" in str(bj.describe(params))


def test_rules_and_views_that_match_nothing_are_errors():
  params = {"fc": {"kernel": jnp.ones((4, 2))}}
  with pytest.raises(ValueError, match=r"rules regex '\.\*/head/kernel' matches no kernel"):
    delta_of(params, rules=[(".*/head/kernel", 0.0)])
  with pytest.raises(ValueError, match="views regex 'stack/kernel' matches no kernel"):
    delta_of(params, views=[("stack/kernel", 1)])


def test_readme_rule_switches_off_a_top_level_linen_head():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3, name="head")(nn.Dense(6, name="body")(x))

  params = Net().init(jax.random.PRNGKey(6), jnp.ones((1, 4)))["params"]
  delta = delta_of(params, rules=[(r"(.*/)?head/kernel", 0.0)])
  np.testing.assert_array_equal(delta["head"]["kernel"], 0.0)
  assert float(jnp.abs(delta["body"]["kernel"]).max()) > 0


def test_flat_torch_state_dict_behaves_like_the_nested_tree():
  k = jax.random.split(jax.random.PRNGKey(7), 4)
  flat = {"conv1.weight": jax.random.normal(k[0], (8, 3, 3, 3)) / 5, "conv1.bias": jnp.zeros(8),
          "patch_embed.proj.weight": jax.random.normal(k[1], (16, 3, 4, 4)) / 7,
          "embed_tokens.weight": jax.random.normal(k[2], (50, 16)), "fc.weight": jax.random.normal(k[3], (10, 16)) / 4}
  nested = {"conv1": {"weight": flat["conv1.weight"], "bias": flat["conv1.bias"]},
            "patch_embed": {"proj": {"weight": flat["patch_embed.proj.weight"]}},
            "embed_tokens": {"weight": flat["embed_tokens.weight"]}, "fc": {"weight": flat["fc.weight"]}}
  flat_delta, nested_delta = delta_of(flat, layout="torch"), delta_of(nested, layout="torch")
  np.testing.assert_array_equal(flat_delta["conv1.weight"], nested_delta["conv1"]["weight"])
  np.testing.assert_array_equal(flat_delta["fc.weight"], nested_delta["fc"]["weight"])
  assert float(jnp.abs(flat_delta["patch_embed.proj.weight"]).max()) > 0  # a conv patch embedding is a kernel
  np.testing.assert_array_equal(flat_delta["embed_tokens.weight"], 0.0)  # an embedding table is not
  assert set(bj.orthogonality_gap(flat, layout="torch")) == {"conv1/weight", "patch_embed/proj/weight", "fc/weight"}
  with pytest.raises(ValueError, match="layout='torch'"):
    delta_of(flat)


def test_torch_in_proj_weight_is_three_matrices():
  e = 8
  weight = jax.random.normal(jax.random.PRNGKey(8), (3 * e, e)) / 3  # q, k, v stacked along the output axis
  delta = delta_of({"attn": {"in_proj_weight": weight}}, layout="torch")["attn"]["in_proj_weight"]
  for i in range(3):
    w = weight[i * e:(i + 1) * e]  # torch (out, in); the Flax matrix is its transpose
    np.testing.assert_allclose(delta[i * e:(i + 1) * e], bj.bort_correction(w.T, "adaptive").T, rtol=1e-5, atol=1e-6)


def test_a_view_that_does_not_fit_or_matches_nothing_fails_at_init():
  params = {"k": {"kernel": jnp.ones((2, 3))}}
  with pytest.raises(ValueError, match="views rule 'k/kernel' gives"):
    bj.add_bort_correction(0.1, views=[("k/kernel", bj.KernelView((1,), (2,), (0,)))]).init(params)
  with pytest.raises(ValueError, match="rules regex 'head/kernel' matches no kernel"):
    bj.bort_sgd(0.1, 0.1, rules=[("head/kernel", 0.0)]).init(params)
  with pytest.raises(ValueError, match="views regex"):
    bj.orthogonalize(views=[("x/kernel", None)]).init(params)


def test_nnx_views_reads_the_module_types_of_a_model():
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.shortcut = nnx.Sequential(nnx.Conv(3, 4, (1, 1), rngs=rngs))
      self.q_einsum = nnx.Einsum("BTD,NDH->BTNH", (4, 16, 8), rngs=rngs)
      self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=rngs)
      self.general = nnx.LinearGeneral((4, 2), (3,), axis=(-2, -1), rngs=rngs)

  @nnx.vmap(in_axes=0, out_axes=0)
  def stack(key):
    return nnx.Linear(5, 7, rngs=nnx.Rngs(key))

  model = Block(nnx.Rngs(9))
  model.layers = stack(jax.random.split(jax.random.PRNGKey(10), 3))
  views = dict(bj.nnx_views(model))
  assert views[r"shortcut/layers/0/kernel"] == bj.KernelView((0, 1, 2), (3,))
  assert views["q_einsum/kernel"] == bj.KernelView((1,), (0, 2))
  assert views["attn/query/kernel"] == bj.KernelView((0,), (1, 2))
  assert views["attn/out/kernel"] == bj.KernelView((0, 1), (2,))
  assert views["general/kernel"] == bj.KernelView((0, 1), (2,))
  assert views["layers/kernel"] == bj.KernelView((1,), (2,), (0,))
  state = nnx.state(model, nnx.Param)
  with _NoGuess():
    delta = delta_of(state, views=bj.nnx_views(model))
  assert_per_layer(delta["layers"]["kernel"][...], state["layers"]["kernel"][...])
