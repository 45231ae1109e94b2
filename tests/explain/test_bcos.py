"""B-cos layers and networks against NumPy re-derivations of the papers' definitions (Böhle et al., CVPR 2022
and TPAMI 2024) under the authors' conventions: MaxOut over 2 units, ‖x‖ = sqrt(Σx² + 1e-6), |cos| + 1e-6 for
B ≠ 2, padding (k − 1) // 2 on both sides, logits = head / T + log(1 / (C − 1)), binary cross-entropy.

The NumPy side builds every layer's dynamic linear matrix explicitly (no autodiff), so the network's W(x) and
its contributions W(x) ⊙ x are checked independently of JAX's gradients."""

import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bort_jax.explain import bcos

EPS = 1e-6


def _np_scale(linear, norm_sq, b):
  """The dynamic scale |cos|^(B−1) with the authors' stabilisers, float64."""
  if b == 1:
    return np.ones_like(linear)
  norm = np.sqrt(norm_sq + EPS)
  return np.abs(linear) / norm if b == 2 else (np.abs(linear / norm) + EPS) ** (b - 1)


def _np_bcos_rows(rows, w, b, max_out):
  """B-cos with MaxOut on rows x of (P, D), units = columns of w (D, O·M), unit (o, m) = column o·M + m.

  Returns (outputs (P, O), dynamic weights (P, O, D)) with outputs[p, o] = weights[p, o] · rows[p]."""
  w_hat = w / np.linalg.norm(w, axis=0)
  linear = (rows @ w_hat).reshape(len(rows), -1, max_out)                   # (P, O, M)
  pick = linear.argmax(-1)                                                  # MaxOut: the unit with largest ŵᵀx
  lin = np.take_along_axis(linear, pick[..., None], -1)[..., 0]             # (P, O)
  scale = _np_scale(lin, (rows**2).sum(1, keepdims=True), b)
  units = w_hat.T.reshape(-1, max_out, w.shape[0])                          # (O, M, D)
  weights = scale[..., None] * units[np.arange(units.shape[0])[None], pick]  # (P, O, D)
  return scale * lin, weights


def _np_conv_matrix(x, kernel, stride, pads, b, max_out):
  """A B-cos convolution on one (H, W, C) image as its dynamic linear matrix A(x): out.ravel() = A @ x.ravel().

  ``pads`` = ((top, bottom), (left, right)) zero padding; patches are taken in (kh, kw, C) order, the kernel
  is (kh, kw, C, O·M) (cross-correlation)."""
  h, w, c = x.shape
  kh, kw = kernel.shape[:2]
  (pt, pb), (pl, pr) = pads
  index = np.pad(np.arange(h * w * c).reshape(h, w, c) + 1, ((pt, pb), (pl, pr), (0, 0)))  # 0 = padding
  xp = np.pad(x, ((pt, pb), (pl, pr), (0, 0)))
  ho, wo = (h + pt + pb - kh) // stride + 1, (w + pl + pr - kw) // stride + 1
  rows, where = [], []
  for i in range(ho):
    for j in range(wo):
      rows.append(xp[i * stride:i * stride + kh, j * stride:j * stride + kw].ravel())
      where.append(index[i * stride:i * stride + kh, j * stride:j * stride + kw].ravel())
  out, weights = _np_bcos_rows(np.array(rows), kernel.reshape(-1, kernel.shape[-1]), b, max_out)
  num_out = out.shape[1]
  a = np.zeros((ho * wo * num_out, h * w * c + 1))
  for p, idx in enumerate(where):
    a[p * num_out:(p + 1) * num_out, idx] += weights[p]
  a = a[:, 1:]                                                              # drop the padding column
  np.testing.assert_allclose(a @ x.ravel(), out.ravel(), atol=1e-12)       # A(x) x is the layer's output
  return a, out.reshape(ho, wo, num_out)


def _np_cnn(model, image, b, max_out, pads, temperature=None):
  """NumPy logits (C,) and dynamic linear map W(x) (C, H·W·2) of a BcosCNN on one raw (H, W, 1) image."""
  h = np.concatenate([image, 1 - image], -1)                                # [x, 1 − x]
  total = np.eye(h.size)
  for conv in model.convs:
    a, h = _np_conv_matrix(h, np.asarray(conv.kernel[...], np.float64), conv.strides, pads, b, max_out)
    total = a @ total
  a, h = _np_conv_matrix(h, np.asarray(model.head.kernel[...], np.float64), 1, ((0, 0), (0, 0)), b, max_out)
  total = a @ total
  num_classes = h.shape[-1]
  pool = np.tile(np.eye(num_classes), h.shape[0] * h.shape[1]) / (h.shape[0] * h.shape[1])  # global mean
  w_x = pool @ total / (temperature or 1.0)
  logits = h.mean((0, 1)) / (temperature or 1.0) + math.log(1 / (num_classes - 1))
  return logits, w_x


@pytest.mark.parametrize("b, max_out", [(1.0, 2), (2.0, 2), (2.0, 1), (1.5, 2), (2.5, 3)])
def test_bcos_dense_matches_numpy(b, max_out):
  layer = bcos.BcosDense(6, 4, b=b, max_out=max_out, rngs=nnx.Rngs(0))
  assert layer.kernel.shape == (6, 4 * max_out)
  x = np.random.default_rng(0).normal(size=(5, 6))
  out = layer(jnp.asarray(x, jnp.float32))
  expected, _ = _np_bcos_rows(x, np.asarray(layer.kernel[...], np.float64), b, max_out)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)


def test_bcos_conv_matches_numpy_patches():
  layer = bcos.BcosConv(2, 3, (3, 3), padding="VALID", rngs=nnx.Rngs(1))
  x = np.random.default_rng(1).uniform(size=(2, 5, 6, 2))
  out = np.asarray(layer(jnp.asarray(x, jnp.float32)))
  kernel = np.asarray(layer.kernel[...], np.float64)
  for n in range(2):
    _, expected = _np_conv_matrix(x[n], kernel, 1, ((0, 0), (0, 0)), 2.0, 2)
    np.testing.assert_allclose(out[n], expected, rtol=1e-4, atol=1e-6)


def test_stride_2_padding_is_symmetric_like_the_authors():
  """Default padding: 1 on both sides of a 3×3 stride-2 convolution (the authors' padding=1); "SAME" pads
  (0, 1) on even sizes and gives different outputs on the same weights."""
  layer = bcos.BcosConv(2, 3, (3, 3), strides=2, rngs=nnx.Rngs(2))
  same = bcos.BcosConv(2, 3, (3, 3), strides=2, padding="SAME", rngs=nnx.Rngs(2))
  explicit = bcos.BcosConv(2, 3, (3, 3), strides=2, padding=((1, 1), (1, 1)), rngs=nnx.Rngs(2))
  assert layer.padding == ((1, 1), (1, 1)) and bcos.BcosConv(2, 3, (1, 1), rngs=nnx.Rngs(0)).padding == ((0, 0),) * 2
  x = np.random.default_rng(2).uniform(size=(2, 8, 8, 2))
  kernel = np.asarray(layer.kernel[...], np.float64)
  out, out_same = (np.asarray(m(jnp.asarray(x, jnp.float32))) for m in (layer, same))
  assert out.shape == out_same.shape == (2, 4, 4, 3)
  np.testing.assert_array_equal(out, np.asarray(explicit(jnp.asarray(x, jnp.float32))))
  for n in range(2):
    _, symmetric = _np_conv_matrix(x[n], kernel, 2, ((1, 1), (1, 1)), 2.0, 2)
    _, low_high = _np_conv_matrix(x[n], kernel, 2, ((0, 1), (0, 1)), 2.0, 2)
    np.testing.assert_allclose(out[n], symmetric, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out_same[n], low_high, rtol=1e-4, atol=1e-6)
  assert np.abs(out - out_same).max() > 0.05


@pytest.mark.parametrize("b, temperature", [(2.0, None), (1.5, None), (2.0, 0.5)])
def test_maxout_cnn_logits_and_contributions_match_numpy(b, temperature):
  model = bcos.BcosCNN(2, (3, 4), (1, 2), num_classes=3, b=b, logit_temperature=temperature, rngs=nnx.Rngs(3))
  assert model.logit_bias == pytest.approx(math.log(1 / 2))
  x = np.random.default_rng(3).uniform(size=(2, 6, 6, 1))
  apply_fn, linear_fn, params = bcos.bcos_apply_fns(model)
  logits = np.asarray(apply_fn(params, jnp.asarray(x, jnp.float32)))
  for n in range(2):
    expected_logits, w_x = _np_cnn(model, x[n], b, 2, ((1, 1), (1, 1)), temperature)
    np.testing.assert_allclose(logits[n], expected_logits, rtol=1e-4, atol=1e-5)
    encoded = np.concatenate([x[n], 1 - x[n]], -1).ravel()
    for target in range(3):
      contributions = bcos.bcos_contributions(linear_fn, params, jnp.asarray(x[n:n + 1], jnp.float32),
                                              jnp.array([target]))
      expected = (w_x[target] * encoded).reshape(6, 6, 2)
      np.testing.assert_allclose(contributions[0], expected, rtol=1e-3, atol=1e-6)
      np.testing.assert_allclose(expected.sum(), expected_logits[target] - model.logit_bias, rtol=1e-9)


def test_mlp_logits_match_numpy():
  model = bcos.BcosMLP(2 * 16, (6, 5), num_classes=4, rngs=nnx.Rngs(4))
  x = np.random.default_rng(4).uniform(size=(3, 4, 4, 1))
  h = np.concatenate([x, 1 - x], -1).reshape(3, -1)
  for layer in model.layers:
    h, _ = _np_bcos_rows(h, np.asarray(layer.kernel[...], np.float64), 2.0, 2)
  logits = model(bcos.encode_input(jnp.asarray(x, jnp.float32)))
  np.testing.assert_allclose(logits, h + math.log(1 / 3), rtol=1e-4, atol=1e-5)


class _ConvNet(nnx.Module):
  # B-cos conv → max-pool → B-cos conv → global mean → B-cos dense: pooling keeps the net dynamic linear.
  logit_bias = 0.0

  def __init__(self, rngs):
    self.conv1, self.conv2 = bcos.BcosConv(2, 4, rngs=rngs), bcos.BcosConv(4, 6, strides=2, rngs=rngs)
    self.head = bcos.BcosDense(6, 3, rngs=rngs)

  def __call__(self, encoded, *, detach=False):
    h = nnx.max_pool(self.conv1(encoded, detach=detach), (2, 2), (2, 2))
    return self.head(jnp.mean(self.conv2(h, detach=detach), axis=(1, 2)), detach=detach)


def test_detach_keeps_the_forward_value():
  model = bcos.BcosMLP(2 * 64, (16, 8), rngs=nnx.Rngs(2))
  encoded = bcos.encode_input(jnp.asarray(np.random.default_rng(2).uniform(size=(3, 8, 8, 1)), jnp.float32))
  np.testing.assert_allclose(model(encoded, detach=True), model(encoded), rtol=1e-6)


@pytest.mark.parametrize("net", ["mlp", "conv", "cnn", "cnn-b1.5"])
def test_contributions_sum_to_the_logit_minus_bias(net):
  model = {"mlp": lambda r: bcos.BcosMLP(2 * 64, (16, 8), num_classes=3, rngs=r), "conv": _ConvNet,
           "cnn": lambda r: bcos.BcosCNN(channels=(4, 6), strides=(1, 2), num_classes=3, rngs=r),
           "cnn-b1.5": lambda r: bcos.BcosCNN(channels=(4, 6), strides=(1, 2), num_classes=3, b=1.5, rngs=r),
           }[net](nnx.Rngs(3))
  apply_fn, linear_fn, params = bcos.bcos_apply_fns(model)
  x = jnp.asarray(np.random.default_rng(4).uniform(size=(4, 8, 8, 1)), jnp.float32)
  logits = jax.jit(apply_fn)(params, x)
  contributions_fn = jax.jit(bcos.bcos_contributions, static_argnums=0)
  for target in range(3):
    labels = jnp.full((4,), target)
    contributions = contributions_fn(linear_fn, params, x, labels)
    assert contributions.shape == (4, 8, 8, 2)
    np.testing.assert_allclose(contributions.sum(axis=(1, 2, 3)), logits[:, target] - model.logit_bias,
                               rtol=1e-4, atol=1e-5)


def test_gradients_are_finite_at_cos_zero_for_b_below_2():
  """B = 1.5 at ŵᵀx = 0: d/dx [(|cos| + ε)^(B−1) ŵᵀx] = ε^(B−1) ŵ, finite; the unstabilised
  |ŵᵀx / (‖x‖ + ε)|^(B−1) ŵᵀx has a NaN gradient there."""
  b = 1.5
  layer = bcos.BcosDense(4, 1, b=b, max_out=2, rngs=nnx.Rngs(0))
  w = np.array([[2.0, -1.0], [0.0, -1.0], [0.0, 0.0], [0.0, 0.0]])  # unit 0 ⊥ x, unit 1 has ŵᵀx < 0
  layer.kernel[...] = jnp.asarray(w, jnp.float32)
  graphdef, params = nnx.split(layer)
  f = lambda p, x: nnx.merge(graphdef, p)(x).sum()
  x = jnp.array([[0.0, 1.0, 2.0, 0.0]])
  x_grad, p_grad = jax.grad(f, argnums=1)(params, x), jax.grad(f)(params, x)
  np.testing.assert_allclose(x_grad, [[EPS ** (b - 1), 0, 0, 0]], rtol=1e-4)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(p_grad))
  for inp in (jnp.zeros((1, 4)), x):                                   # x = 0: ‖x‖ = sqrt(ε)
    assert np.isfinite(jax.grad(f, argnums=1)(params, inp)).all()
  naive = lambda x: (jnp.abs(x[0]) / (jnp.linalg.norm(x) + EPS)) ** (b - 1) * x[0]
  assert not np.isfinite(jax.grad(naive)(jnp.array([0.0, 1.0, 2.0]))).all()

  # A whole B = 1.5 CNN on an image with all-zero patches (its zero padding and a zero channel): the training
  # loss has finite gradients with respect to every parameter and the input.
  model = bcos.BcosCNN(1, (3, 4), (1, 2), num_classes=3, b=b, rngs=nnx.Rngs(1))
  graphdef, params = nnx.split(model)
  image = jnp.zeros((2, 6, 6, 1)).at[:, 1:3, 1:3].set(0.5)
  loss = lambda p, z: bcos.bcos_bce_loss(nnx.merge(graphdef, p)(z), jnp.array([0, 2]))
  p_grad, z_grad = jax.grad(loss, argnums=(0, 1))(params, image)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(p_grad)) and np.isfinite(z_grad).all()


def test_bce_loss_matches_numpy():
  rng = np.random.default_rng(5)
  logits = rng.normal(scale=3, size=(6, 4))
  labels = rng.integers(0, 4, 6)
  y = np.eye(4)[labels]
  p = 1 / (1 + np.exp(-logits))
  expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))                # mean over samples and classes
  z = jnp.asarray(logits, jnp.float32)
  np.testing.assert_allclose(bcos.bcos_bce_loss(z, jnp.asarray(labels)), expected, rtol=1e-5)
  np.testing.assert_allclose(bcos.bcos_bce_loss(z, jnp.asarray(y, jnp.float32)), expected, rtol=1e-5)
  soft = rng.uniform(size=(6, 4))
  np.testing.assert_allclose(bcos.bcos_bce_loss(z, jnp.asarray(soft, jnp.float32)),
                             -np.mean(soft * np.log(p) + (1 - soft) * np.log(1 - p)), rtol=1e-5)


def test_logit_bias_and_temperature():
  assert bcos.default_logit_bias(10) == pytest.approx(math.log(1 / 9))
  assert bcos.default_logit_bias(2) == 0.0
  # At the bias alone (zero head output), every class has sigmoid probability 1 / C.
  np.testing.assert_allclose(jax.nn.sigmoid(bcos.default_logit_bias(10)), 0.1, rtol=1e-6)
  kwargs = dict(channels=(4,), strides=(1,), num_classes=5)
  x = bcos.encode_input(jnp.asarray(np.random.default_rng(6).uniform(size=(2, 6, 6, 1)), jnp.float32))
  plain = bcos.BcosCNN(**kwargs, logit_bias=0.0, rngs=nnx.Rngs(7))
  scaled = bcos.BcosCNN(**kwargs, logit_temperature=0.1, rngs=nnx.Rngs(7))
  np.testing.assert_allclose(scaled(x), plain(x) / 0.1 + math.log(1 / 4), rtol=1e-5, atol=1e-6)
  assert bcos.BcosMLP(2 * 36, (4,), num_classes=10, rngs=nnx.Rngs(0)).logit_bias == pytest.approx(math.log(1 / 9))


def test_invalid_options_raise():
  with pytest.raises(ValueError, match="b must be >= 1"):
    bcos.BcosDense(2, 2, b=0.5, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="max_out must be >= 1"):
    bcos.BcosDense(2, 2, max_out=0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="padding"):
    bcos.BcosConv(2, 2, padding="FULL", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="padding"):
    bcos.BcosConv(2, 2, padding=((1, 1),), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="channels and strides"):
    bcos.BcosCNN(channels=(4, 6), strides=(1,), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_classes"):
    bcos.default_logit_bias(1)
  with pytest.raises(ValueError, match="logit_temperature"):
    bcos.BcosMLP(4, (2,), num_classes=3, logit_temperature=0.0, rngs=nnx.Rngs(0))
