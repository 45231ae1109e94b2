"""Models of the explainability report and their pure functions (``examples.explain_protocol.ModelFns``).

Two architectures, each as a ReLU net (trained with SGD, Bort or DBort) and a B-cos net, all registered models of
the trainer (``examples.models``), on raw NHWC images in [0, 1] of the dataset's shape (``image_shape`` = (H, W, C),
``config.normalize = False``). The B-cos nets (``examples.models.explain.BcosNet``) follow the authors' protocol
(``bort_jax.explain.bcos``): MaxOut over 2 units, padding 1 on both sides of every 3×3 convolution, logits = head +
log(1/9), trained with ``config.loss = "bcos_bce"`` (binary cross-entropy), no temperature.

* ``mlp``: "mlp" without biases, (H·W·C)-512-512-10 on one image (MNIST: a 28×28 digit); B-cos: "bcos_mlp". Grids
  of the pointing game are read tile-wise: each H×W cell goes through the MLP and the logits are averaged over
  cells, so cells do not interact.
* ``cnn``: "explain_cnn" (``examples.models.explain.ConvNet``), bias-free and fully convolutional (3×3
  convolutions, a 1×1 convolution to the classes, global average pooling), reading a whole grid at once, as in the
  B-cos paper's grid pointing game; B-cos: "bcos_cnn". MNIST: 32-32-32-32 channels with strides 2, 2, 1, 1;
  CIFAR-10: :data:`CIFAR_CNN` (``DATASET_CNN``).
"""

from collections.abc import Callable
from collections.abc import Sequence
import math

from flax import nnx
import jax

from bort_jax.explain import bcos
from examples import explain_figure
from examples import explain_protocol
from examples import models as models_lib

ARCHS = ("mlp", "cnn")
KINDS = ("sgd", "bort", "dbort", "bcos")
MNIST_SHAPE = (28, 28, 1)
CNN_CHANNELS = (32, 32, 32, 32)
CNN_STRIDES = (2, 2, 1, 1)
CIFAR_CNN = ((32, 32, 64, 64), (2, 2, 1, 1))       # channels, strides: 23×23-pixel receptive field
DATASET_CNN = {"mnist": (CNN_CHANNELS, CNN_STRIDES), "cifar10": CIFAR_CNN}


def model_name(arch: str, kind: str) -> str:
  """The registered model (``config.model``) of the ``kind`` network of ``arch``."""
  if arch not in ARCHS:
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  return f"bcos_{arch}" if kind == "bcos" else "mlp" if arch == "mlp" else "explain_cnn"


def model_kwargs(arch: str, kind: str, widths: Sequence[int], strides: Sequence[int],
                 image_shape: Sequence[int]) -> dict:
  """``config.model_kwargs`` of that network on images of ``image_shape``; ``widths`` are the hidden sizes (mlp)
  or channels (cnn), ``strides`` those of the cnn's 3×3 convolutions."""
  widths, strides, image_shape = tuple(widths), tuple(strides), tuple(image_shape)
  if kind == "bcos":
    return {"widths": widths, "image_shape": image_shape} | ({"strides": strides} if arch == "cnn" else {})
  if arch == "mlp":
    return {"hidden_sizes": widths, "in_features": math.prod(image_shape)}
  return {"channels": widths, "strides": strides, "in_channels": image_shape[-1]}


def explained_net(config, params) -> nnx.Module:
  """The model of ``config`` (a trainer config) with the trained ``params`` (``TrainState.params``); for a B-cos
  net its inner network, which ``bcos.bcos_apply_fns`` reads on encoded input."""
  model = models_lib.create_model(config.model, num_classes=config.num_classes, rngs=nnx.Rngs(0),
                                  use_bias=config.use_bias, **dict(config.model_kwargs))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, jax.device_get(params))
  nnx.update(model, state)
  return model.net if isinstance(model, models_lib.BcosNet) else model


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
  """Pure functions of a trained model from :func:`explained_net` (built once per architecture: seeds share
  compilations)."""
  graphdef = nnx.graphdef(model)
  net = lambda p: nnx.merge(graphdef, p)
  lift = (lambda fn: tiled(fn, image_shape)) if arch == "mlp" else (lambda fn: fn)   # the CNN reads a grid whole
  pool = (lambda y: y.mean(1)) if arch == "mlp" else (lambda y: y)
  if kind == "bcos":
    apply_fn, linear_fn, _ = bcos.bcos_apply_fns(model)
    pooled_linear = lambda p, e: pool(lift(linear_fn)(p, e))
    explain = jax.jit(lambda p, x, t: bcos.bcos_contributions(pooled_linear, p, x, t))
    return explain_protocol.ModelFns(lambda p, x: pool(lift(apply_fn)(p, x)), explain_fn=explain)
  depths, head = explain_figure.feature_depths(model)
  layers = (lambda m: m.layers[:-1]) if arch == "mlp" else (lambda m: m.convs)   # one per depth
  return explain_protocol.ModelFns(
      apply_fn=lambda p, x: pool(lift(lambda q, z: net(q)(z))(p, x)),
      features_fns={name: lift(lambda p, x, f=f: f(net(p), x)) for name, f in depths.items()},
      head_fn=lambda p, h: pool(head(net(p), h)),
      kernels_fn=lambda p: {name: layer.kernel[...] for name, layer in zip(depths, layers(net(p)))})
