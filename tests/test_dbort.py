"""DBort: the extra-args transform equals jax.grad of dbort_loss; on real MNIST it finds the PCA subspace."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bort_jax as bj


def dbort_update(params, activations, lam=1e-3, beta=0.1):
  tx = bj.add_dbort_term(lam, beta)
  zeros = jax.tree.map(jnp.zeros_like, params)
  return tx.update(zeros, tx.init(params), params, dbort_activations=activations)[0]


def assert_tree_close(a, b, **kw):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **kw), a, b)


def test_dense_transform_equals_gradient_of_the_loss():
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(k[0], (32, 5, 6))  # extra token axis: inputs are flattened to (N, fan_in)
  params = {"fc": {"kernel": jax.random.normal(k[1], (6, 4)), "bias": jax.random.normal(k[2], (4,))}}
  forward = lambda p: x @ p["fc"]["kernel"] + p["fc"]["bias"]
  expected = jax.grad(lambda p: bj.dbort_loss(forward(p), lam=1e-3, beta=0.1))(params)
  ours = dbort_update(params, {"fc/kernel": bj.dense_io(x, forward(params))})
  assert_tree_close(ours, expected, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("strides, padding", [(1, "SAME"), (2, "VALID")])
def test_conv_transform_equals_gradient_of_the_loss(strides, padding):
  k = jax.random.split(jax.random.PRNGKey(1), 3)
  x = jax.random.normal(k[0], (2, 9, 9, 3))
  params = {"conv": {"kernel": jax.random.normal(k[1], (3, 3, 3, 5)) / 5, "bias": jax.random.normal(k[2], (5,))}}

  def forward(p):
    y = jax.lax.conv_general_dilated(x, p["conv"]["kernel"], (strides, strides), padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + p["conv"]["bias"]

  expected = jax.grad(lambda p: bj.dbort_loss(forward(p), lam=2e-3, beta=0.5))(params)
  io = bj.conv_io(x, forward(params), (3, 3), strides, padding)
  ours = dbort_update(params, {"conv/kernel": io}, lam=2e-3, beta=0.5)
  assert_tree_close(ours, expected, rtol=1e-4, atol=1e-9)


def test_multi_layer_transform_is_the_layer_local_gradient():
  k = jax.random.split(jax.random.PRNGKey(2), 3)
  x = jax.random.normal(k[0], (16, 8))
  params = {"l1": {"kernel": jax.random.normal(k[1], (8, 6))}, "l2": {"kernel": jax.random.normal(k[2], (6, 3))}}

  def outputs(p, local):
    h = x @ p["l1"]["kernel"]
    inner = jax.lax.stop_gradient(jax.nn.relu(h)) if local else jax.nn.relu(h)
    return {"l1": h, "l2": inner @ p["l2"]["kernel"]}

  local_grad = jax.grad(lambda p: bj.dbort_loss(outputs(p, local=True)))(params)
  y = outputs(params, local=True)
  ours = dbort_update(params, {"l1/kernel": bj.dense_io(x, y["l1"]),
                               "l2/kernel": bj.dense_io(jax.nn.relu(y["l1"]), y["l2"])})
  assert_tree_close(ours, local_grad, rtol=1e-5, atol=1e-9)


def test_dbort_in_a_chain_with_bort_sgd_equals_loss_plus_bort():
  k = jax.random.split(jax.random.PRNGKey(3), 2)
  x = jax.random.normal(k[0], (20, 7))
  params = {"fc": {"kernel": jax.random.normal(k[1], (7, 3)) / 3}}
  loss = lambda p: bj.dbort_loss(x @ p["fc"]["kernel"])
  with_loss = bj.bort_sgd(0.1, 0.5, momentum=0.9)
  expected, _ = with_loss.update(jax.grad(loss)(params), with_loss.init(params), params)
  chained = optax.chain(bj.add_dbort_term(), bj.bort_sgd(0.1, 0.5, momentum=0.9))
  io = {"fc/kernel": bj.dense_io(x, x @ params["fc"]["kernel"])}
  ours, _ = jax.jit(chained.update)(jax.tree.map(jnp.zeros_like, params), chained.init(params), params,
                                   dbort_activations=io)
  assert_tree_close(ours, expected, rtol=1e-5, atol=1e-9)


def test_bad_dbort_arguments():
  with pytest.raises(ValueError, match="lam must be a positive number"):
    bj.add_dbort_term(lam=-1.0)
  with pytest.raises(ValueError, match="beta must be a positive number"):
    bj.dbort_loss(jnp.ones(3), beta="x")
  params = {"fc": {"kernel": jnp.ones((2, 2))}}
  with pytest.raises(ValueError, match="is not a kernel path"):
    dbort_update(params, {"fc/weight": bj.dense_io(jnp.ones((1, 2)), jnp.ones((1, 2)))})


def test_dbort_on_real_mnist_finds_the_top10_pca_subspace(data_dir):
  images = np.load(data_dir / "mnist.npz")["x_train"][:20000]
  x = images.reshape(len(images), -1).astype(np.float32) / 255.0
  x -= x.mean(axis=0)
  covariance = x.T.astype(np.float64) @ x / len(x)
  eigenvalues, eigenvectors = np.linalg.eigh(covariance)
  eigenvalues, eigenvectors = eigenvalues[::-1].clip(0), eigenvectors[:, ::-1]
  pca = eigenvectors[:, :10]
  # Full-batch training on the 20,000 centred images, fed through a 784-row factor R with RᵀR/784 = XᵀX/n:
  # it has the same mean(y²) and xᵀy as the data itself, at a 25× smaller cost per step.
  factor = jnp.asarray(np.sqrt(784 * eigenvalues)[:, None] * eigenvectors.T, jnp.float32)
  params = {"fc": {"kernel": jax.random.normal(jax.random.PRNGKey(0), (784, 10)) / 28.0}}
  # β only rescales the gradient by a scalar (fixed point unchanged); β = 1, λ = 1 converges in 500 steps.
  tx = optax.chain(bj.add_dbort_term(lam=1.0, beta=1.0), bj.bort_sgd(0.1, 1.0, momentum=0.9))

  def step(_, carry):
    p, s = carry
    io = {"fc/kernel": bj.LayerIO(factor, factor @ p["fc"]["kernel"])}
    u, s = tx.update(jax.tree.map(jnp.zeros_like, p), s, p, dbort_activations=io)
    return optax.apply_updates(p, u), s

  learned, _ = jax.jit(lambda p: jax.lax.fori_loop(0, 500, step, (p, tx.init(p))))(params)
  m = np.asarray(learned["fc"]["kernel"], np.float64)
  basis, _ = np.linalg.qr(m)
  cosines = np.linalg.svd(pca.T @ basis, compute_uv=False)  # cosines of the principal angles
  assert cosines.min() >= 0.999, cosines


def test_capture_linen_io_feeds_the_transform_like_the_layer_local_loss():
  import flax.linen as nn

  class Block(nn.Module):
    @nn.compact
    def __call__(self, h):
      return nn.Dense(5, name="inner")(h)

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.relu(nn.Conv(4, (3, 3), strides=2, name="conv")(x))
      return Block(name="block")(h.reshape(h.shape[0], -1))

  x = jax.random.normal(jax.random.PRNGKey(4), (3, 8, 8, 2))
  net = Net()
  variables = net.init(jax.random.PRNGKey(5), x)
  logits, records = bj.capture_linen_io(net, variables, x)
  assert set(records) == {"conv/kernel", "block/inner/kernel"}
  np.testing.assert_allclose(logits, net.apply(variables, x), rtol=1e-6)

  def local_loss(params):
    conv_out = nn.Conv(4, (3, 3), strides=2).apply({"params": params["conv"]}, x)
    hidden = jax.lax.stop_gradient(nn.relu(conv_out)).reshape(3, -1)
    dense_out = nn.Dense(5).apply({"params": params["block"]["inner"]}, hidden)
    return bj.dbort_loss({"conv": conv_out, "dense": dense_out})

  expected = jax.grad(local_loss)(variables["params"])
  ours = dbort_update(variables["params"], records)
  assert_tree_close(ours, expected, rtol=1e-4, atol=1e-9)
