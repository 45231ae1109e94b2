"""MNIST-sized models: a fully connected MLP and LeNet-5.

Both record every layer's pre-activation with ``capture=True`` (``examples.models.capture``), e.g.
``layers/0/preact`` beside ``layers/0/kernel``.
"""

from collections.abc import Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from examples.models.capture import record


class MLP(nnx.Module):
  """ReLU MLP on flattened images: in_features -> hidden_sizes... -> num_classes logits."""

  def __init__(
      self,
      num_classes: int = 10,
      *,
      in_features: int = 784,
      hidden_sizes: Sequence[int] = (256, 256),
      use_bias: bool = True,
      dtype: jnp.dtype = jnp.float32,
      capture: bool = False,
      rngs: nnx.Rngs,
  ):
    sizes = (in_features, *hidden_sizes, num_classes)
    self.layers = nnx.List([
        nnx.Linear(n_in, n_out, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        for n_in, n_out in zip(sizes[:-1], sizes[1:])
    ])
    self.capture = capture

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for i, layer in enumerate(self.layers):
      x = record(layer, layer(x), self.capture)
      if i < len(self.layers) - 1:
        x = nnx.relu(x)
    return x.astype(jnp.float32)


class LeNet5(nnx.Module):
  """LeNet-5 (LeCun et al., 1998) with ReLU and max pooling.

  conv5x5(6) -> pool -> conv5x5(16, valid) -> pool -> 120 -> 84 -> classes. The first convolution keeps
  the spatial size (padding 2), so a 28x28 input gives the classic 16x5x5 = 400 features.
  """

  def __init__(
      self,
      num_classes: int = 10,
      *,
      in_channels: int = 1,
      image_size: int = 28,
      use_bias: bool = True,
      dtype: jnp.dtype = jnp.float32,
      capture: bool = False,
      rngs: nnx.Rngs,
  ):
    if image_size < 12:
      raise ValueError(f"image_size must be >= 12 for LeNet5, got {image_size}.")
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.conv1 = nnx.Conv(in_channels, 6, (5, 5), padding=2, **kw)
    self.conv2 = nnx.Conv(6, 16, (5, 5), padding="VALID", **kw)
    side = (image_size // 2 - 4) // 2
    self.fc1 = nnx.Linear(16 * side * side, 120, **kw)
    self.fc2 = nnx.Linear(120, 84, **kw)
    self.fc3 = nnx.Linear(84, num_classes, **kw)
    self.capture = capture

  def __call__(self, x: jax.Array) -> jax.Array:
    pool = lambda y: nnx.max_pool(y, (2, 2), strides=(2, 2))
    x = pool(nnx.relu(record(self.conv1, self.conv1(x), self.capture)))
    x = pool(nnx.relu(record(self.conv2, self.conv2(x), self.capture)))
    x = x.reshape(x.shape[0], -1)
    x = nnx.relu(record(self.fc1, self.fc1(x), self.capture))
    x = nnx.relu(record(self.fc2, self.fc2(x), self.capture))
    return record(self.fc3, self.fc3(x), self.capture).astype(jnp.float32)
