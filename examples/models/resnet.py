"""Residual networks (He et al., 2016, "Deep Residual Learning for Image Recognition").

One ``ResNet`` class covers the three recipes used by the examples:

* ResNet-20 for 32x32 inputs (paper §4.2): 3x3 stem, three stages of 3 basic blocks, widths 16/32/64.
* ResNet-18 for 32x32 inputs (the common CIFAR adaptation): 3x3 stem without max pooling, stages
  (2, 2, 2, 2) of basic blocks, widths 64..512.
* ResNet-50 for 224x224 ImageNet: 7x7/2 stem + 3x3/2 max pool, stages (3, 4, 6, 3) of bottleneck blocks
  (stride on the 3x3 convolution, "v1.5"), widths 64..512, expansion 4.

Convolutions never carry a bias because each is followed by BatchNorm, whose shift makes a bias redundant;
``use_bias=False`` also drops the BatchNorm shift (``bias``) and the classifier bias. BatchNorm still
subtracts its (running) mean, so the bias-free network is not exactly positively homogeneous.
Shortcuts that change shape use a 1x1 projection + BatchNorm (option B), and the last BatchNorm of every
block starts at scale 0 (Goyal et al., 2017) so each block begins as the identity.

``capture=True`` sows every convolution's output (before its BatchNorm) and the classifier's logits as the
layer's ``preact`` (``examples.models.capture``): one per constrained kernel, as DBort needs.
``features(x)`` is the last stage's feature map, the representation reconstruction is measured from;
``features(x, depth)`` stops after the stem and ``depth`` stages, named in ``feature_stages()``.
"""

from collections.abc import Sequence
import functools
import itertools

from flax import nnx
import jax
import jax.numpy as jnp

from examples.models.capture import record

# He initialisation on fan_out, as torchvision's ResNet.
_CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv_bn_factories(use_bias: bool, dtype: jnp.dtype, rngs: nnx.Rngs):
  """Bias-free conv and BatchNorm (PyTorch momentum 0.1 = flax 0.9) constructors sharing dtype and rngs."""
  conv = functools.partial(
      nnx.Conv, use_bias=False, kernel_init=_CONV_INIT, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
  norm = functools.partial(
      nnx.BatchNorm, use_bias=use_bias, momentum=0.9, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32,
      rngs=rngs)
  return conv, norm


class _Block(nnx.Module):
  """What both blocks share: sowing convolutions and the (projected) shortcut (subclasses set ``capture`` and
  ``shortcut``, None for the identity)."""

  def conv(self, layer: nnx.Conv, x: jax.Array) -> jax.Array:
    return record(layer, layer(x), self.capture)

  def residual(self, x: jax.Array) -> jax.Array:
    if self.shortcut is None:
      return x
    conv, norm = self.shortcut.layers
    return norm(self.conv(conv, x))


class BasicBlock(_Block):
  """Two 3x3 convolutions with an identity (or projected) shortcut; output width = ``width``."""

  expansion = 1

  def __init__(self, in_features: int, width: int, stride: int, *, use_bias: bool, dtype: jnp.dtype,
               rngs: nnx.Rngs, capture: bool = False):
    conv, norm = conv_bn_factories(use_bias, dtype, rngs)
    self.conv1 = conv(in_features, width, (3, 3), strides=stride, padding=1)
    self.norm1 = norm(width)
    self.conv2 = conv(width, width, (3, 3), padding=1)
    self.norm2 = norm(width, scale_init=nnx.initializers.zeros)
    self.shortcut = _projection(in_features, width, stride, conv, norm)
    self.capture = capture

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.norm1(self.conv(self.conv1, x)))
    y = self.norm2(self.conv(self.conv2, y))
    return nnx.relu(y + self.residual(x))


class BottleneckBlock(_Block):
  """1x1 reduce -> 3x3 (strided) -> 1x1 expand to ``4 * width``, with a shortcut."""

  expansion = 4

  def __init__(self, in_features: int, width: int, stride: int, *, use_bias: bool, dtype: jnp.dtype,
               rngs: nnx.Rngs, capture: bool = False):
    conv, norm = conv_bn_factories(use_bias, dtype, rngs)
    out = width * self.expansion
    self.conv1 = conv(in_features, width, (1, 1))
    self.norm1 = norm(width)
    self.conv2 = conv(width, width, (3, 3), strides=stride, padding=1)
    self.norm2 = norm(width)
    self.conv3 = conv(width, out, (1, 1))
    self.norm3 = norm(out, scale_init=nnx.initializers.zeros)
    self.shortcut = _projection(in_features, out, stride, conv, norm)
    self.capture = capture

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.norm1(self.conv(self.conv1, x)))
    y = nnx.relu(self.norm2(self.conv(self.conv2, y)))
    y = self.norm3(self.conv(self.conv3, y))
    return nnx.relu(y + self.residual(x))


def _projection(in_features, out_features, stride, conv, norm):
  if stride == 1 and in_features == out_features:
    return None
  return nnx.Sequential(conv(in_features, out_features, (1, 1), strides=stride), norm(out_features))


BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}
STEMS = ("cifar", "imagenet")


class ResNet(nnx.Module):
  """ResNet with a CIFAR (3x3) or ImageNet (7x7/2 + max pool) stem; NHWC input, logits output."""

  def __init__(
      self,
      num_classes: int,
      *,
      stage_sizes: Sequence[int],
      block: str = "basic",
      widths: Sequence[int] = (64, 128, 256, 512),
      stem: str = "cifar",
      in_channels: int = 3,
      use_bias: bool = True,
      dtype: jnp.dtype = jnp.float32,
      capture: bool = False,
      rngs: nnx.Rngs,
  ):
    if block not in BLOCKS:
      raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}.")
    if stem not in STEMS:
      raise ValueError(f"stem must be one of {STEMS}, got {stem!r}.")
    if len(widths) != len(stage_sizes):
      raise ValueError(f"widths {tuple(widths)} and stage_sizes {tuple(stage_sizes)} differ in length.")
    conv, norm = conv_bn_factories(use_bias, dtype, rngs)
    block_cls = BLOCKS[block]
    self.imagenet_stem = stem == "imagenet"
    if self.imagenet_stem:
      self.stem_conv = conv(in_channels, widths[0], (7, 7), strides=2, padding=3)
    else:
      self.stem_conv = conv(in_channels, widths[0], (3, 3), padding=1)
    self.stem_norm = norm(widths[0])
    blocks, features = [], widths[0]
    for stage, (size, width) in enumerate(zip(stage_sizes, widths)):
      for i in range(size):
        stride = 2 if stage > 0 and i == 0 else 1
        blocks.append(block_cls(features, width, stride, use_bias=use_bias, dtype=dtype, rngs=rngs,
                                capture=capture))
        features = width * block_cls.expansion
    self.blocks = nnx.List(blocks)
    self.stage_ends = tuple(itertools.accumulate(stage_sizes))  # blocks applied after each stage
    self.head = nnx.Linear(features, num_classes, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                           rngs=rngs)
    self.capture = capture

  def features(self, x: jax.Array, depth: int | None = None) -> jax.Array:
    """The output of the stem and the first ``depth`` stages, (N, H', W', C); 0: the stem's; None: the last
    stage's, the feature map the classifier average-pools."""
    if depth is not None and not 0 <= depth <= len(self.stage_ends):
      raise ValueError(f"depth must be None or in [0, {len(self.stage_ends)}] (the stages), got {depth}.")
    x = nnx.relu(self.stem_norm(record(self.stem_conv, self.stem_conv(x), self.capture)))
    if self.imagenet_stem:
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks[:None if depth is None else (0, *self.stage_ends)[depth]]:
      x = block(x)
    return x

  def feature_stages(self) -> dict[str, int | None]:
    """Stage name -> ``features`` depth in forward order: the stem, every stage but the last, and "features"
    (the last stage, ``features(x)``), the representations reconstruction is measured from."""
    return {"stem": 0, **{f"stage{s}": s for s in range(1, len(self.stage_ends))}, "features": None}

  def __call__(self, x: jax.Array) -> jax.Array:
    logits = self.head(jnp.mean(self.features(x), axis=(1, 2)))
    return record(self.head, logits, self.capture).astype(jnp.float32)
