"""The explainability report's nets (``benchmarks/explain_report.py``): a fully convolutional ReLU net and B-cos nets.

Both read raw pixels in [0, 1] (``config.normalize = False``) and are fully convolutional or tile-wise, so the
report can apply them to whole grids of images. The report's MLP is ``examples.models.MLP`` without biases.
"""

from collections.abc import Sequence
import math

from flax import nnx
import jax
import jax.numpy as jnp

from bort_jax.explain import bcos
from examples.models.capture import record


class ConvNet(nnx.Module):
  """3×3 convolutions with ReLU, a 1×1 convolution to the classes and global average pooling.

  The default (32 channels, strides 2, 2, 1, 1) sees 23×23 pixels per output position: most of a digit, which a
  global-average-pooled classifier needs. ``capture=True`` sows every pre-activation (the head's class maps too)
  as ``preact`` beside the layer's kernel, for DBort.
  """

  def __init__(self, num_classes: int = 10, *, channels: Sequence[int] = (32, 32, 32, 32),
               strides: Sequence[int] = (2, 2, 1, 1), in_channels: int = 1, use_bias: bool = True,
               dtype: jnp.dtype = jnp.float32, capture: bool = False, rngs: nnx.Rngs):
    if len(channels) != len(strides):
      raise ValueError(f"channels and strides must have equal lengths, got {len(channels)} and {len(strides)}.")
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    sizes = (in_channels, *channels)
    self.convs = nnx.List([nnx.Conv(i, o, (3, 3), strides=s, **kw) for i, o, s in zip(sizes[:-1], sizes[1:], strides)])
    self.head = nnx.Conv(sizes[-1], num_classes, (1, 1), **kw)
    self.capture = capture

  def features(self, x: jax.Array, depth: int | None = None) -> jax.Array:
    """ReLU output of the first ``depth`` convolutions (None: all of them)."""
    for conv in self.convs[:depth]:
      x = nnx.relu(record(conv, conv(x), self.capture))
    return x

  def __call__(self, x: jax.Array) -> jax.Array:
    return record(self.head, self.head(self.features(x)), self.capture).mean((1, 2)).astype(jnp.float32)


class BcosNet(nnx.Module):
  """A B-cos net of ``bort_jax.explain.bcos`` on raw images: ``net(encode_input(x))``, encoding [x, 1 − x].

  ``arch`` "mlp": ``BcosMLP`` with hidden sizes ``widths`` on flattened images of ``image_shape``; "cnn":
  ``BcosCNN`` with channels ``widths`` and ``strides``. The authors' protocol: B = 2, MaxOut 2, padding 1 on both
  sides of a 3×3 convolution, logit bias log(1/(C − 1)); train with ``config.loss = "bcos_bce"``.
  ``bcos.bcos_apply_fns(model.net)`` gives its explanation functions.
  """

  def __init__(self, num_classes: int = 10, *, arch: str, widths: Sequence[int], image_shape: Sequence[int],
               strides: Sequence[int] = (), b: float = 2.0, max_out: int = 2, use_bias: bool = False,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    if use_bias:
      raise ValueError("use_bias must be False for a B-cos net (its layers have no bias), got True.")
    if dtype != jnp.float32:
      raise ValueError(f"dtype must be float32 for a B-cos net, got {dtype}.")
    if arch == "mlp":
      self.net = bcos.BcosMLP(2 * math.prod(image_shape), widths, num_classes, b=b, max_out=max_out, rngs=rngs)
    elif arch == "cnn":
      self.net = bcos.BcosCNN(2 * image_shape[-1], widths, strides, num_classes, b=b, max_out=max_out, rngs=rngs)
    else:
      raise ValueError(f"arch must be one of ('mlp', 'cnn'), got {arch!r}.")

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.net(bcos.encode_input(x))
