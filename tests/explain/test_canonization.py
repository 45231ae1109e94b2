"""BatchNorm folding: the folded network computes the same function."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bort_jax import explain


class _ConvBnNet(nnx.Module):
  def __init__(self, rngs):
    self.conv1 = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.bn1 = nnx.BatchNorm(4, use_running_average=True, rngs=rngs)
    self.blocks = nnx.List([nnx.Conv(4, 6, (3, 3), strides=2, use_bias=False, rngs=rngs),
                            nnx.BatchNorm(6, use_running_average=True, epsilon=1e-3, use_scale=False, rngs=rngs)])
    self.dense = nnx.Linear(4 * 4 * 6, 5, rngs=rngs)
    self.bn3 = nnx.BatchNorm(5, use_running_average=True, rngs=rngs)

  def __call__(self, x):
    h = jax.nn.relu(self.bn1(self.conv1(x)))
    h = jax.nn.relu(self.blocks[1](self.blocks[0](h)))
    return self.bn3(self.dense(h.reshape(h.shape[0], -1)))


def _randomize_batchnorm(model, seed):
  rng = np.random.default_rng(seed)
  for _, bn in nnx.iter_graph(model):
    if isinstance(bn, nnx.BatchNorm):
      n = bn.num_features
      bn.mean[...] = jnp.asarray(rng.normal(size=n), jnp.float32)
      bn.var[...] = jnp.asarray(rng.uniform(0.2, 3.0, size=n), jnp.float32)
      if bn.scale is not None:
        bn.scale[...] = jnp.asarray(rng.uniform(0.5, 2.0, size=n), jnp.float32)
      if bn.bias is not None:
        bn.bias[...] = jnp.asarray(rng.normal(size=n), jnp.float32)


def test_fold_batchnorm_matches_numpy_batchnorm_of_dense_layer():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(7, 5)).astype(np.float32)
  m, b = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
  mean, var = rng.normal(size=3).astype(np.float32), rng.uniform(0.5, 2, size=3).astype(np.float32)
  gamma, beta = rng.normal(size=3).astype(np.float32), rng.normal(size=3).astype(np.float32)
  kernel, bias = explain.fold_batchnorm(m, b, mean, var, gamma, beta, epsilon=1e-3)
  want = gamma * (x @ m + b - mean) / np.sqrt(var + 1e-3) + beta
  np.testing.assert_allclose(x @ np.asarray(kernel) + np.asarray(bias), want, rtol=1e-5, atol=1e-5)
  kernel, bias = explain.fold_batchnorm(m, None, mean, var)
  np.testing.assert_allclose(x @ np.asarray(kernel) + np.asarray(bias), (x @ m - mean) / np.sqrt(var + 1e-5),
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="mean must have shape"):
    explain.fold_batchnorm(m, b, mean[:2], var)


def test_canonize_nnx_conv_net_keeps_outputs_and_leaves_the_original_untouched():
  model = _ConvBnNet(nnx.Rngs(0))
  _randomize_batchnorm(model, 1)
  x = jnp.asarray(np.random.default_rng(2).uniform(size=(4, 8, 8, 1)), jnp.float32)
  before = model(x)
  folded = explain.canonize(model, {"conv1": "bn1", "blocks/0": "blocks/1", "dense": "bn3"})
  np.testing.assert_allclose(folded(x), before, rtol=1e-5, atol=1e-5)
  assert not any(isinstance(node, nnx.BatchNorm) for _, node in nnx.iter_graph(folded))
  assert folded.blocks[0].bias is not None and model.blocks[0].bias is None
  np.testing.assert_array_equal(model(x), before)
  # The folded kernel is M diag(s): column norms change, so orthogonality must be measured before folding.
  s = model.bn1.scale[...] / jnp.sqrt(model.bn1.var[...] + model.bn1.epsilon)
  np.testing.assert_allclose(folded.conv1.kernel[...], model.conv1.kernel[...] * s, rtol=1e-6)


def test_canonize_rejects_wrong_pairs():
  model = _ConvBnNet(nnx.Rngs(0))
  with pytest.raises(ValueError, match="nnx.Linear or nnx.Conv"):
    explain.canonize(model, {"bn1": "bn1"})
  with pytest.raises(ValueError, match="nnx.BatchNorm"):
    explain.canonize(model, {"conv1": "dense"})


def test_fold_batchnorm_params_linen_style_dicts():
  rng = np.random.default_rng(3)
  f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)
  params = {"block": {"Conv_0": {"kernel": f32(3, 3, 2, 4)}, "BatchNorm_0": {"scale": f32(4), "bias": f32(4)}},
            "Dense_0": {"kernel": f32(4, 3), "bias": f32(3)}}
  stats = {"block": {"BatchNorm_0": {"mean": f32(4), "var": rng.uniform(0.5, 2, 4).astype(np.float32)}}}
  x = rng.uniform(size=(2, 5, 5, 2)).astype(np.float32)

  def conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  bn, st = params["block"]["BatchNorm_0"], stats["block"]["BatchNorm_0"]
  want = bn["scale"] * (conv(x, params["block"]["Conv_0"]["kernel"]) - st["mean"]) / np.sqrt(st["var"] + 1e-5) + bn[
      "bias"]
  folded = explain.fold_batchnorm_params(params, stats, {"block/Conv_0": "block/BatchNorm_0"})
  layer = folded["block"]["Conv_0"]
  np.testing.assert_allclose(conv(x, layer["kernel"]) + layer["bias"], want, rtol=1e-5, atol=1e-5)
  assert set(folded["block"]) == {"Conv_0"} and "BatchNorm_0" in params["block"]
  assert folded["Dense_0"]["kernel"] is params["Dense_0"]["kernel"]
  with pytest.raises(ValueError, match="layer path 'block/Conv_9' not found"):
    explain.fold_batchnorm_params(params, stats, {"block/Conv_9": "block/BatchNorm_0"})
