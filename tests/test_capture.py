"""capture_linen_io: every Linen conv padding form, transformed layers, DenseGeneral / attention, against NumPy."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bort_jax as bj


def numpy_patches(x, kernel_size, strides, padding):
  """im2col in the Flax kernel order ``(*window, in)``, re-derived from the Flax docs' padding semantics."""
  rank = len(kernel_size)
  x = np.asarray(x, np.float64)
  x = x.reshape((-1,) + x.shape[x.ndim - rank - 1:])
  spatial = x.shape[1:-1]
  if padding in ("CIRCULAR", "REFLECT"):
    pads = [((k - 1) // 2, k // 2) for k in kernel_size]
    x = np.pad(x, [(0, 0)] + pads + [(0, 0)], mode="wrap" if padding == "CIRCULAR" else "reflect")
    pads = [(0, 0)] * rank
  elif padding == "CAUSAL":
    pads = [(kernel_size[0] - 1, 0)]
  elif padding == "VALID":
    pads = [(0, 0)] * rank
  elif padding == "SAME":  # output ceil(n / s); the odd pixel of padding goes at the end
    totals = [max((-(-n // s) - 1) * s + k - n, 0) for n, k, s in zip(spatial, kernel_size, strides)]
    pads = [(t // 2, t - t // 2) for t in totals]
  elif isinstance(padding, int):
    pads = [(padding, padding)] * rank
  else:
    pads = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
  x = np.pad(x, [(0, 0)] + pads + [(0, 0)])
  out_sizes = [(n - k) // s + 1 for n, k, s in zip(x.shape[1:-1], kernel_size, strides)]
  rows = []
  for b in range(x.shape[0]):
    for position in np.ndindex(*out_sizes):
      window = tuple(slice(i * s, i * s + k) for i, k, s in zip(position, kernel_size, strides))
      rows.append(x[(b,) + window].ravel())
  return np.stack(rows)


def wrapped(make_layer):
  """A root module holding one layer, so that the layer has a name in the parameter paths."""

  class Wrapper(nn.Module):
    @nn.compact
    def __call__(self, x):
      return make_layer()(x)

  return Wrapper()


CONV_FORMS = [  # (kernel_size, strides, padding, input shape)
    ((3, 3), 1, 1, (2, 7, 7, 3)),                 # int padding
    (3, 1, "SAME", (2, 9, 3)),                    # int kernel_size: a 1-D conv
    (3, 2, "VALID", (2, 3, 9, 3)),                # int kernel_size, two leading batch axes
    ((4,), (2,), "SAME", (9, 3)),                 # unbatched 1-D input
    ((2, 3), (2, 1), "SAME", (2, 7, 8, 3)),       # even window: asymmetric SAME padding
    ((3, 3), 2, "VALID", (2, 8, 9, 3)),
    ((3, 3), 1, "CIRCULAR", (2, 6, 5, 3)),
    ((2, 3), 1, "REFLECT", (2, 6, 5, 3)),
    (4, 1, "CAUSAL", (2, 7, 3)),
    ((3, 3), 1, (1, 2), (2, 6, 6, 3)),            # a sequence of ints
    ((3, 3), 2, ((0, 1), (2, 0)), (2, 7, 6, 3)),  # a sequence of (lo, hi) pairs
    ((3,), 2, [(1, 2)], (2, 8, 3)),
]


@pytest.mark.parametrize("kernel_size, strides, padding, shape", CONV_FORMS)
def test_conv_patches_reproduce_the_layer_for_every_padding_form(kernel_size, strides, padding, shape):
  net = wrapped(lambda: nn.Conv(4, kernel_size, strides=strides, padding=padding, name="conv"))
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  variables = net.init(jax.random.PRNGKey(1), x)
  variables = jax.tree.map(lambda v: v + 0.1, variables)  # a non-zero bias
  y, records = bj.capture_linen_io(net, variables, x)
  assert set(records) == {"conv/kernel"}
  io = records["conv/kernel"]
  rank = len(kernel_size) if isinstance(kernel_size, tuple) else 1
  window = kernel_size if isinstance(kernel_size, tuple) else (kernel_size,)
  step = (strides,) * rank if isinstance(strides, int) else strides
  expected = numpy_patches(x, window, step, padding)
  kernel = np.asarray(variables["params"]["conv"]["kernel"], np.float64).reshape(-1, 4)
  bias = np.asarray(variables["params"]["conv"]["bias"], np.float64)
  np.testing.assert_allclose(expected @ kernel + bias, np.asarray(y).reshape(-1, 4), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(io.inputs, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(io.outputs, np.asarray(y).reshape(-1, 4), rtol=1e-6)
  np.testing.assert_allclose(io.inputs @ kernel + bias, io.outputs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("attribute, value", [
    ("kernel_dilation", 2), ("input_dilation", (1, 2)), ("feature_group_count", 3), ("mask", np.ones((3, 3, 3, 3)))])
def test_conv_with_groups_dilation_or_mask_is_refused(attribute, value):
  net = wrapped(lambda: nn.Conv(3, (3, 3), padding=0, name="conv", **{attribute: value}))
  x = jnp.ones((1, 6, 6, 3))
  variables = net.init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match=f"conv/kernel sets {attribute}"):
    bj.capture_linen_io(net, variables, x)


class Block(nn.Module):
  @nn.compact
  def __call__(self, h, _=None):
    return nn.relu(nn.Dense(4, name="fc")(h)), None


class Transformed(nn.Module):
  kind: str

  @nn.compact
  def __call__(self, x):
    if self.kind == "remat":
      return nn.remat(Block)(name="block")(x)[0]
    if self.kind == "vmap":
      return nn.vmap(nn.Dense, variable_axes={"params": 0}, split_rngs={"params": True})(4, name="block")(x)
    scans = {"scan": dict(variable_axes={"params": 0}, split_rngs={"params": True}),
             "scan_shared": dict(variable_broadcast="params", split_rngs={"params": False}),
             "scan_all": dict(variable_axes={True: 0}, split_rngs={"params": True})}
    return nn.scan(Block, length=3, **scans[self.kind])(name="block")(x, None)[0]


def test_remat_layers_are_captured_without_leaking_tracers():
  net = Transformed("remat")
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
  variables = net.init(jax.random.PRNGKey(1), x)
  for capture in (bj.capture_linen_io, jax.jit(bj.capture_linen_io, static_argnums=0)):
    y, records = capture(net, variables, x)
    assert set(records) == {"block/fc/kernel"}
    params = variables["params"]["block"]["fc"]
    pre = np.asarray(x, np.float64) @ np.asarray(params["kernel"], np.float64) + np.asarray(params["bias"])
    np.testing.assert_allclose(records["block/fc/kernel"].inputs, x, rtol=1e-6)
    np.testing.assert_allclose(records["block/fc/kernel"].outputs, pre, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, np.maximum(pre, 0), rtol=1e-5, atol=1e-6)
    # Using the records after capture, eagerly and in a transform, must not meet a leaked tracer.
    tx = bj.add_dbort_term()
    update, _ = tx.update(jax.tree.map(jnp.zeros_like, variables["params"]), tx.init(variables["params"]),
                          variables["params"], dbort_activations=records)
    assert np.isfinite(np.asarray(update["block"]["fc"]["kernel"])).all()
    float(jax.jit(lambda r: jnp.sum(r["block/fc/kernel"].outputs))(records))


@pytest.mark.parametrize("kind", ["scan", "scan_shared", "scan_all", "vmap"])
def test_scan_and_vmap_layers_are_refused_at_capture(kind):
  net = Transformed(kind)
  x = jnp.ones((2, 4))
  variables = net.init(jax.random.PRNGKey(0), x)
  path = "block/kernel" if kind == "vmap" else "block/fc/kernel"
  with pytest.raises(ValueError, match=f"cannot capture {path}: .*nn.scan / nn.vmap.*Unroll"):
    bj.capture_linen_io(net, variables, x)


def test_a_layer_called_twice_is_refused():
  class Tied(nn.Module):
    @nn.compact
    def __call__(self, x):
      dense = nn.Dense(3, name="tied")
      return dense(dense(x))

  x = jnp.ones((2, 3))
  variables = Tied().init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="tied/kernel ran 2 times"):
    bj.capture_linen_io(Tied(), variables, x)


def numpy_attention(x, p):
  """Self-attention re-derived in NumPy: per-head softmax(q kᵀ / √d) v, then the output projection."""
  f = lambda name: (np.asarray(p[name]["kernel"], np.float64), np.asarray(p[name]["bias"], np.float64))
  x = np.asarray(x, np.float64)
  (wq, bq), (wk, bk), (wv, bv), (wo, bo) = f("query"), f("key"), f("value"), f("out")
  q, k, v = (np.einsum("ble,ehd->blhd", x, w) + b for w, b in ((wq, bq), (wk, bk), (wv, bv)))
  logits = np.einsum("bqhd,bkhd->bhqk", q / np.sqrt(q.shape[-1]), k)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  mixed = np.einsum("bhqk,bkhd->bqhd", weights, v)
  return q, k, v, mixed, np.einsum("bqhd,hde->bqe", mixed, wo) + bo


def test_multi_head_attention_projections_are_captured_in_the_matrix_view():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, name="attn")(x)

  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 6))
  net = Net()
  variables = jax.tree.map(lambda v: v + 0.05, net.init(jax.random.PRNGKey(1), x))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # the attention views are the defaults: no warning
    y, records = bj.capture_linen_io(net, variables, x)
  assert set(records) == {f"attn/{name}/kernel" for name in ("query", "key", "value", "out")}
  q, k, v, mixed, out = numpy_attention(x, variables["params"]["attn"])
  np.testing.assert_allclose(y, out, rtol=1e-4, atol=1e-5)
  for name, projected in (("query", q), ("key", k), ("value", v)):
    np.testing.assert_allclose(records[f"attn/{name}/kernel"].inputs, np.reshape(x, (15, 6)), rtol=1e-6)
    np.testing.assert_allclose(records[f"attn/{name}/kernel"].outputs, projected.reshape(15, 8), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(records["attn/out/kernel"].inputs, mixed.reshape(15, 8), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(records["attn/out/kernel"].outputs, out.reshape(15, 6), rtol=1e-4, atol=1e-5)

  # The DBort gradient lands on each kernel through its (embed, heads·head_dim) / (heads·head_dim, embed) view.
  lam, beta = 1e-2, 0.5
  tx = bj.add_dbort_term(lam, beta)
  params = variables["params"]
  update, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params, dbort_activations=records)
  for name, xs, ys, kernel_shape, bias_shape in (
      ("query", np.reshape(x, (15, 6)), q.reshape(15, 8), (6, 2, 4), (2, 4)),
      ("out", mixed.reshape(15, 8), out.reshape(15, 6), (2, 4, 6), (6,))):
    xs = np.asarray(xs, np.float64)
    coefficient = -lam * beta * np.mean(ys ** 2) ** (beta - 1) * 2 / ys.size
    np.testing.assert_allclose(update["attn"][name]["kernel"], (coefficient * xs.T @ ys).reshape(kernel_shape),
                               rtol=1e-3, atol=1e-9)
    np.testing.assert_allclose(update["attn"][name]["bias"], (coefficient * ys.sum(0)).reshape(bias_shape),
                               rtol=1e-3, atol=1e-9)


def test_dense_general_on_non_adjacent_axes_and_a_non_default_view():
  net = wrapped(lambda: nn.DenseGeneral(features=(2, 3), axis=(1, -1), name="proj"))
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 5, 6, 7))
  variables = net.init(jax.random.PRNGKey(1), x)
  with pytest.warns(UserWarning, match=r"proj/kernel .*pass views=\[\('proj/kernel', KernelView\(in_axes=\(0, 1\), "
                                       r"out_axes=\(2, 3\)"):
    y, records = bj.capture_linen_io(net, variables, x)
  io = records["proj/kernel"]
  kernel = np.asarray(variables["params"]["proj"]["kernel"], np.float64)  # (5, 7, 2, 3)
  rows = np.transpose(np.asarray(x, np.float64), (0, 2, 1, 3)).reshape(-1, 35)  # (batch, 6) rows, (5, 7) columns
  np.testing.assert_allclose(io.inputs, rows, rtol=1e-6)
  np.testing.assert_allclose(io.outputs, rows @ kernel.reshape(35, 6), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(io.outputs, np.asarray(y).reshape(-1, 6), rtol=1e-6)
  # With the views rule the warning names, the gradient xᵀy lands on the right kernel entries.
  tx = bj.add_dbort_term(1e-2, 1.0, views=[("proj/kernel", bj.KernelView(in_axes=(0, 1), out_axes=(2, 3)))])
  params = variables["params"]
  update, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params, dbort_activations=records)
  ys = rows @ kernel.reshape(35, 6)
  expected = (-1e-2 * 2 / ys.size * rows.T @ ys).reshape(5, 7, 2, 3)
  np.testing.assert_allclose(update["proj"]["kernel"], expected, rtol=1e-3, atol=1e-9)


def test_dense_general_batch_dims_is_refused_and_other_kernels_are_named():
  batched = wrapped(lambda: nn.DenseGeneral(features=3, axis=-1, batch_dims=(0,), name="batched"))
  x = jnp.ones((2, 4, 5))
  with pytest.raises(ValueError, match="cannot capture batched/kernel: DenseGeneral batch_dims"):
    bj.capture_linen_io(batched, batched.init(jax.random.PRNGKey(0), x), x)

  class Up(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(2, name="head")(nn.ConvTranspose(3, (2, 2), name="up")(x))

  x = jnp.ones((1, 4, 4, 2))
  with pytest.warns(UserWarning, match=r"up/kernel \(ConvTranspose\) gets no LayerIO"):
    _, records = bj.capture_linen_io(Up(), Up().init(jax.random.PRNGKey(0), x), x)
  assert set(records) == {"head/kernel"}


def test_a_root_layer_is_keyed_by_its_kernel_name():
  layer = nn.Dense(2)
  x = jnp.ones((3, 4))
  _, records = bj.capture_linen_io(layer, layer.init(jax.random.PRNGKey(0), x), x)
  assert set(records) == {"kernel"}


def test_user_mutable_collections_come_back_without_the_capture():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.BatchNorm(use_running_average=False, name="bn")(nn.Dense(3, name="fc")(x))

  x = jax.random.normal(jax.random.PRNGKey(0), (6, 2))
  variables = Net().init(jax.random.PRNGKey(1), x)
  (y, state), records = bj.capture_linen_io(Net(), variables, x, mutable=["batch_stats"])
  expected_y, expected_state = Net().apply(variables, x, mutable=["batch_stats"])
  assert set(state) == {"batch_stats"} and set(records) == {"fc/kernel"}
  np.testing.assert_allclose(y, expected_y, rtol=1e-6)
  np.testing.assert_allclose(state["batch_stats"]["bn"]["mean"], expected_state["batch_stats"]["bn"]["mean"])
