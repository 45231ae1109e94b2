"""Models of the explainability report and their pure functions (``examples.explain_protocol.ModelFns``).

Two architectures, each as a ReLU net (trained with SGD, Bort or DBort) and a B-cos net. The B-cos nets follow
the authors' protocol (``bort_jax.explain.bcos``): MaxOut over 2 units, padding 1 on both sides of every 3×3
convolution, logits = head + log(1/9), trained with ``bcos.bcos_bce_loss`` (binary cross-entropy; see
:func:`bcos_loss`), no temperature.

* ``mlp``: bias-free MLP (H·W·C)-512-512-10 on one image (MNIST: a 28×28 digit). Grids of the pointing game are
  read tile-wise: each H×W cell goes through the MLP and the logits are averaged over cells, so cells do not
  interact.
* ``cnn``: bias-free fully convolutional net (3×3 convolutions, a 1×1 convolution to the classes, global average
  pooling) that reads a whole grid at once, as in the B-cos paper's grid pointing game. MNIST: 32-32-32-32
  channels with strides 2, 2, 1, 1; CIFAR-10: :data:`CIFAR_CNN` (``DATASET_CNN``).

Every model takes raw NHWC images in [0, 1] of the dataset's shape (``image_shape`` = (H, W, C)).
"""

import math
from collections.abc import Callable, Sequence

import jax
from flax import nnx

from bort_jax.explain import bcos
from examples import explain_protocol

ARCHS = ("mlp", "cnn")
KINDS = ("sgd", "bort", "dbort", "bcos")
MNIST_SHAPE = (28, 28, 1)
CNN_CHANNELS = (32, 32, 32, 32)
CNN_STRIDES = (2, 2, 1, 1)
CIFAR_CNN = ((32, 32, 64, 64), (2, 2, 1, 1))       # channels, strides: 23×23-pixel receptive field
DATASET_CNN = {"mnist": (CNN_CHANNELS, CNN_STRIDES), "cifar10": CIFAR_CNN}
BCOS_B = 2.0
BCOS_MAX_OUT = 2


class MLP(nnx.Module):
  """Bias-free ReLU MLP on flattened images; ``forward`` also returns every pre-activation (for DBort)."""

  def __init__(self, hidden_sizes: Sequence[int] = (512, 512), num_classes: int = 10, *,
               image_shape: Sequence[int] = MNIST_SHAPE, rngs: nnx.Rngs):
    sizes = (math.prod(image_shape), *hidden_sizes, num_classes)
    self.layers = nnx.List([nnx.Linear(i, o, use_bias=False, rngs=rngs) for i, o in zip(sizes[:-1], sizes[1:])])

  def forward(self, x: jax.Array, depth: int | None = None) -> tuple[jax.Array, list[jax.Array]]:
    """ReLU features of hidden layer ``depth`` (1-based), or the logits when None; plus pre-activations."""
    h, preacts = x.reshape(x.shape[0], -1), []
    for i, layer in enumerate(self.layers, start=1):
      preacts.append(layer(h))
      if i == len(self.layers):
        break
      h = jax.nn.relu(preacts[-1])
      if i == depth:
        return h, preacts
    return preacts[-1], preacts

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.forward(x)[0]


class CNN(nnx.Module):
  """Bias-free fully convolutional ReLU net; ``forward`` as :class:`MLP`'s, depths counted in convolutions.

  The default (3×3 convolutions, strides 2, 2, 1, 1) sees 23×23 pixels per output position: most of a digit,
  which a global-average-pooled classifier needs.
  """

  def __init__(self, channels: Sequence[int] = CNN_CHANNELS, strides: Sequence[int] = CNN_STRIDES,
               num_classes: int = 10, *, in_channels: int = 1, rngs: nnx.Rngs):
    if len(channels) != len(strides):
      raise ValueError(f"channels and strides must have equal lengths, got {len(channels)} and {len(strides)}")
    sizes = (in_channels, *channels)
    self.convs = nnx.List([nnx.Conv(i, o, (3, 3), strides=s, use_bias=False, rngs=rngs)
                           for i, o, s in zip(sizes[:-1], sizes[1:], strides)])
    self.head = nnx.Conv(sizes[-1], num_classes, (1, 1), use_bias=False, rngs=rngs)

  def forward(self, x: jax.Array, depth: int | None = None) -> tuple[jax.Array, list[jax.Array]]:
    h, preacts = x, []
    for i, conv in enumerate(self.convs, start=1):
      preacts.append(conv(h))
      h = jax.nn.relu(preacts[-1])
      if i == depth:
        return h, preacts
    preacts.append(self.head(h))
    return self.pool(preacts[-1]), preacts

  @staticmethod
  def pool(class_maps: jax.Array) -> jax.Array:
    return class_maps.mean((1, 2))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.forward(x)[0]


def make_model(arch: str, kind: str, seed: int, widths: Sequence[int], *,
               image_shape: Sequence[int] = MNIST_SHAPE, strides: Sequence[int] = CNN_STRIDES) -> nnx.Module:
  """The ``kind`` network of ``arch`` on images of ``image_shape`` (H, W, C); ``widths`` are the hidden sizes
  (mlp) or channels (cnn), ``strides`` those of the cnn's 3×3 convolutions."""
  if arch not in ARCHS:
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  rngs = nnx.Rngs(seed)
  channels = image_shape[-1]
  if kind == "bcos":
    # The authors' protocol: MaxOut 2, symmetric padding, logit bias log(1/(C−1)), T = 1 (the defaults), on the
    # encoded input [x, 1 − x] (2C channels).
    if arch == "mlp":
      return bcos.BcosMLP(2 * math.prod(image_shape), widths, b=BCOS_B, max_out=BCOS_MAX_OUT, rngs=rngs)
    return bcos.BcosCNN(2 * channels, widths, strides, b=BCOS_B, max_out=BCOS_MAX_OUT, rngs=rngs)
  if arch == "mlp":
    return MLP(widths, image_shape=image_shape, rngs=rngs)
  return CNN(widths, strides, in_channels=channels, rngs=rngs)


def bcos_loss(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
  """The B-cos training loss on raw images: binary cross-entropy of the logits (with their bias log(1/(C−1)))
  against one-hot labels, as the authors train (``bcos.bcos_bce_loss``); not softmax cross-entropy."""
  return bcos.bcos_bce_loss(model(bcos.encode_input(x)), y)


def head_kernel_path(arch: str, widths: Sequence[int]) -> str:
  """Path of the classifier kernel in the ReLU net's params (left free by the Bort optimizer)."""
  return f"layers/{len(widths)}/kernel" if arch == "mlp" else "head/kernel"


def tiled(fn: Callable, tile: Sequence[int]) -> Callable:
  """``fn(params, tiles) -> (N·T, ...)`` on (th, tw) tiles, lifted to images of g×g tiles: (N, T, ...)."""
  th, tw = tile[:2]

  def wrapped(params, x):
    n, h, w, c = x.shape
    tiles = x.reshape(n, h // th, th, w // tw, tw, c).transpose(0, 1, 3, 2, 4, 5)
    out = fn(params, tiles.reshape(-1, th, tw, c))
    return out.reshape(n, -1, *out.shape[1:])
  return wrapped


def model_fns(arch: str, kind: str, model: nnx.Module, image_shape: Sequence[int] = MNIST_SHAPE
              ) -> explain_protocol.ModelFns:
  """Pure functions of a trained model (built once per architecture: seeds share compilations)."""
  graphdef = nnx.graphdef(model)
  net = lambda p: nnx.merge(graphdef, p)
  lift = (lambda fn: tiled(fn, image_shape)) if arch == "mlp" else (lambda fn: fn)   # the CNN reads a grid whole
  pool = (lambda y: y.mean(1)) if arch == "mlp" else (lambda y: y)
  if kind == "bcos":
    apply_fn, linear_fn, _ = bcos.bcos_apply_fns(model)
    pooled_linear = lambda p, e: pool(lift(linear_fn)(p, e))
    explain = jax.jit(lambda p, x, t: bcos.bcos_contributions(pooled_linear, p, x, t))
    return explain_protocol.ModelFns(lambda p, x: pool(lift(apply_fn)(p, x)), explain_fn=explain)
  if arch == "mlp":
    layers = {f"fc{d}": lambda p, d=d: net(p).layers[d - 1] for d in range(1, len(model.layers))}
    head_fn = lambda p, h: net(p).layers[-1](h).mean(1)
  else:
    layers = {f"conv{d}": lambda p, d=d: net(p).convs[d - 1] for d in range(1, len(model.convs) + 1)}
    head_fn = lambda p, h: CNN.pool(net(p).head(h))
  features = lambda depth: lift(lambda p, x: net(p).forward(x, depth)[0])
  return explain_protocol.ModelFns(
      apply_fn=lambda p, x: pool(lift(lambda q, z: net(q)(z))(p, x)),
      features_fns={name: features(d) for d, name in enumerate(layers, start=1)},
      head_fn=head_fn,
      kernels_fn=lambda p: {name: layer(p).kernel[...] for name, layer in layers.items()})
