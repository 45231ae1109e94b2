"""B-cos layers and a small B-cos MNIST network with its dynamic-linear explanation.

B-cos (Böhm, Fritz & Schiele, "B-cos Networks: Alignment is All We Need for Interpretability", CVPR 2022)
replaces the linear transform of a unit by

  B-cos(x; w) = |cos(x, ŵ)|^(B−1) · ŵᵀx,    ŵ = w / ‖w‖,

so a unit is large only when its (unit-norm, bias-free) weight aligns with the input. Every layer is a
*dynamic linear* map s(x) ⊙ Ŵᵀx with s(x) = |cos|^(B−1); a network of them (with max-pooling and average
pooling, both dynamic linear too) computes logits = W(x) x exactly. W(x) x is the gradient of the network
with every s(x) held fixed (``detach=True``), so the contributions W(x) ⊙ x sum to the logit.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

_NORM_EPS = 1e-6


def _scaled(linear: jax.Array, input_norm: jax.Array, b: float, detach: bool) -> jax.Array:
  """ŵᵀx · |cos|^(B−1) given ŵᵀx and ‖x‖; ``detach`` freezes the dynamic scale |cos|^(B−1)."""
  scale = (jnp.abs(linear) / (input_norm + _NORM_EPS)) ** (b - 1.0)
  if detach:
    scale = jax.lax.stop_gradient(scale)
  return scale * linear


def _unit_columns(kernel: jax.Array) -> jax.Array:
  """Normalise every output unit (a column of the (fan_in, out) matrix view) to unit L2 norm."""
  m = kernel.reshape(-1, kernel.shape[-1])
  return kernel / jnp.linalg.norm(m, axis=0)


class BcosDense(nnx.Module):
  """Bias-free B-cos dense layer: kernel (in, out), out_j = |cos(x, ŵ_j)|^(B−1) ŵ_jᵀx."""

  def __init__(self, in_features: int, out_features: int, *, b: float = 2.0, rngs: nnx.Rngs):
    if b < 1:
      raise ValueError(f"b must be >= 1 (b = 1 is a linear layer with unit-norm weights), got {b}")
    self.b = b
    self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (in_features, out_features)))

  def __call__(self, x: jax.Array, *, detach: bool = False) -> jax.Array:
    linear = x @ _unit_columns(self.kernel[...])
    return _scaled(linear, jnp.linalg.norm(x, axis=-1, keepdims=True), self.b, detach)


class BcosConv(nnx.Module):
  """Bias-free B-cos convolution (NHWC, kernel (kh, kw, in, out)); cos is taken per input patch."""

  def __init__(self, in_features: int, out_features: int, kernel_size: Sequence[int] = (3, 3), *,
               strides: int = 1, padding: str = "SAME", b: float = 2.0, rngs: nnx.Rngs):
    if b < 1:
      raise ValueError(f"b must be >= 1 (b = 1 is a linear layer with unit-norm weights), got {b}")
    if padding not in ("SAME", "VALID"):
      raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    self.b, self.strides, self.padding = b, strides, padding
    shape = (*kernel_size, in_features, out_features)
    self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), shape))

  def _conv(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (self.strides,) * 2, self.padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def __call__(self, x: jax.Array, *, detach: bool = False) -> jax.Array:
    kernel = self.kernel[...]
    linear = self._conv(x, _unit_columns(kernel))
    # ‖patch‖² is the convolution of x² with a ones kernel of the same window (zero padding adds nothing).
    patch_norm = jnp.sqrt(self._conv(x**2, jnp.ones((*kernel.shape[:3], 1), x.dtype)))
    return _scaled(linear, patch_norm, self.b, detach)


def encode_input(x: jax.Array) -> jax.Array:
  """[x, 1 − x] along channels, so dark pixels carry direction too (Böhm et al., 2022, Sec. 3.3)."""
  return jnp.concatenate([x, 1.0 - x], axis=-1)


class BcosMLP(nnx.Module):
  """Small B-cos MNIST network: flattened ``encode_input(x)`` → B-cos dense layers → × ``logit_scale``.

  No biases and no ReLU: every layer is dynamic linear (the |cos|^(B−1) factor is the non-linearity), so
  logits = W(x) · encoded exactly. ``logit_scale`` is a fixed temperature: B-cos outputs are bounded by the
  input norm, and the softmax needs a wider logit range.
  """

  def __init__(self, in_features: int = 2 * 784, hidden_sizes: Sequence[int] = (512, 512),
               num_classes: int = 10, *, b: float = 2.0, logit_scale: float = 10.0, rngs: nnx.Rngs):
    sizes = (in_features, *hidden_sizes, num_classes)
    self.layers = nnx.List([BcosDense(i, o, b=b, rngs=rngs) for i, o in zip(sizes[:-1], sizes[1:])])
    self.logit_scale = logit_scale

  def __call__(self, encoded: jax.Array, *, detach: bool = False) -> jax.Array:
    h = encoded.reshape(encoded.shape[0], -1)
    for layer in self.layers:
      h = layer(h, detach=detach)
    return self.logit_scale * h


class BcosCNN(nnx.Module):
  """Small fully convolutional B-cos network: 3×3 B-cos convolutions → 1×1 B-cos convolution to the classes →
  global average pooling → × ``logit_scale``.

  Average pooling is linear, so the network stays dynamic linear; being fully convolutional it reads images
  of any size, e.g. the grids of the pointing game.
  """

  def __init__(self, in_features: int = 2, channels: Sequence[int] = (32, 64, 64),
               strides: Sequence[int] = (1, 2, 2), num_classes: int = 10, *, b: float = 2.0,
               logit_scale: float = 10.0, rngs: nnx.Rngs):
    if len(channels) != len(strides):
      raise ValueError(f"channels and strides must have equal lengths, got {len(channels)} and {len(strides)}")
    sizes = (in_features, *channels)
    self.convs = nnx.List([BcosConv(i, o, strides=s, b=b, rngs=rngs)
                           for i, o, s in zip(sizes[:-1], sizes[1:], strides)])
    self.head = BcosConv(sizes[-1], num_classes, (1, 1), b=b, rngs=rngs)
    self.logit_scale = logit_scale

  def __call__(self, encoded: jax.Array, *, detach: bool = False) -> jax.Array:
    h = encoded
    for conv in self.convs:
      h = conv(h, detach=detach)
    return self.logit_scale * jnp.mean(self.head(h, detach=detach), axis=(1, 2))


def bcos_apply_fns(model: nnx.Module):
  """Split a B-cos net into pure functions of raw images and its parameter state.

  Returns:
    (apply_fn, linear_fn, params): ``apply_fn(params, x) -> logits`` on raw NHWC images in [0, 1];
    ``linear_fn(params, encoded)`` is the same network on encoded input with the dynamic scales frozen, i.e.
    ``encoded ↦ W(x) encoded`` at the point of evaluation. ``model`` is a B-cos network called as
    ``model(encoded, detach=...)``.
  """
  graphdef, params = nnx.split(model)
  apply_fn = lambda p, x: nnx.merge(graphdef, p)(encode_input(x))
  linear_fn = lambda p, encoded: nnx.merge(graphdef, p)(encoded, detach=True)
  return apply_fn, linear_fn, params


def bcos_contributions(linear_fn, params, x: jax.Array, target: jax.Array) -> jax.Array:
  """Dynamic-linear contributions W(x)_t ⊙ enc(x) of every encoded input to logit ``target``.

  Returns:
    (N, H, W, 2·C) contributions; their sum over all axes but the first equals the target logit exactly, and
    the sum over the last axis is the per-pixel explanation.
  """
  encoded = encode_input(x)

  def logit(e):
    return jnp.take_along_axis(linear_fn(params, e), target[:, None], axis=-1).sum()

  return encoded * jax.grad(logit)(encoded)
