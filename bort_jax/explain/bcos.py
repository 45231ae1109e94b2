"""B-cos layers and small B-cos networks with their dynamic-linear explanation, following the authors' protocol.

B-cos (Böhle, Fritz & Schiele, "B-cos Networks: Alignment is All We Need for Interpretability", CVPR 2022;
Böhle, Singh, Fritz & Schiele, "B-cos Alignment for Inherently Interpretable CNNs and Vision Transformers",
TPAMI 2024, "B-cos v2") replaces the linear transform of a unit by

  B-cos(x; w) = |cos(x, ŵ)|^(B−1) · ŵᵀx,    ŵ = w / ‖w‖,

so a unit is large only when its (unit-norm, bias-free) weight aligns with the input. Every layer is a
*dynamic linear* map s(x) ⊙ Ŵᵀx with s(x) = |cos|^(B−1); a network of them (with average pooling, linear, and
MaxOut, which selects one unit) computes logits = W(x) x + b exactly. W(x) is the gradient of the network with
every s(x) held fixed (``detach=True``, the authors' "explanation mode"), so the contributions W(x) ⊙ x sum to
the logit minus the constant logit bias b.

Conventions, the authors' unless an option says otherwise (code: github.com/moboehle/B-cos
``modules/bcosconv2d.py`` and github.com/B-cos/B-cos-v2 ``bcos/modules/bcosconv2d.py``, ``bcoslinear.py``):

* **MaxOut**, 2 units per output (``max_out=2``, as in every configuration of the papers' models: v1
  ``experiments/CIFAR10/bcos/experiment_parameters.py``, v2 ``bcos/experiments/CIFAR10/norm_ablations_final/
  experiment_parameters.py``): the layer holds ``max_out · out`` unit-norm weights, units ``o·M … o·M + M − 1``
  belong to output ``o``, and the output takes the largest ŵᵀx among them before the B-cos scaling (the scaling
  is increasing in ŵᵀx, so this is also the largest B-cos value).
* **Stabilisers**: ‖x‖ = sqrt(Σx² + 1e-6) over the input patch (zero padding included); the scale is
  |ŵᵀx| / ‖x‖ for B = 2 and (|ŵᵀx / ‖x‖| + 1e-6)^(B−1) for any other B > 1; B = 1 is the plain unit-norm linear
  map. Both keep the gradient finite where ŵᵀx = 0 or x = 0, also for B < 2 (for B = 1.5 the gradient of the
  scale at cos = 0 would otherwise be infinite, times ŵᵀx = 0: NaN). (v2's dense ``BcosLinear`` uses
  ‖x‖ + 1e-12; here the dense layer uses the convolution's form, which all the papers' CNNs use throughout.)
* **Explanation mode**: ``detach=True`` stops the gradient through both ŵᵀx inside the scale and ‖x‖, i.e.
  through the whole dynamic scale, so that the input gradient is W(x).
* **Padding**: explicit zero padding of (k − 1) // 2 on *both* sides of each spatial axis (1 for 3×3, 0 for
  1×1), as the authors' ``padding=1`` / ``padding=0``; for a stride-2 convolution this differs from "SAME",
  which pads (0, 1). "SAME" and "VALID" stay available as options.
* **Logit layer**: logits = head / T + b with the logit bias b = log(1 / (C − 1)) for C classes (v2
  ``bcos/models/resnet.py`` and ``bcos/modules/logitlayer.py``; v1's CIFAR-10 ``logit_bias = log(0.1 / 0.9)``),
  so that at zero output every class has sigmoid probability 1 / C; the temperature T is 1 (v2: None).
* **Loss**: binary cross-entropy on the logits against one-hot targets, averaged over samples and classes
  (:func:`bcos_bce_loss`; v1 ``modules/losses.py`` ``LogitsBCE``, v2 ``bcos/modules/losses.py``
  ``BinaryCrossEntropyLoss``), not softmax cross-entropy.
* **Input encoding** [x, 1 − x] along channels (:func:`encode_input`; the authors' ``AddInverse``), so dark
  pixels carry direction too.
"""

from collections.abc import Sequence
import math

from flax import nnx
import jax
import jax.numpy as jnp
import optax

NORM_EPS = 1e-6   # inside the square root of the patch norm: sqrt(Σx² + ε)
COS_EPS = 1e-6    # added to |cos| before the power, for B ∉ {1, 2}: (|cos| + ε)^(B−1)


def default_logit_bias(num_classes: int) -> float:
  """log(1 / (C − 1)): the authors' logit bias, under which zero outputs give every class probability 1 / C."""
  if num_classes < 2:
    raise ValueError(f"num_classes must be >= 2 for the logit bias log(1/(C-1)), got {num_classes}")
  return -math.log(num_classes - 1)


def _check_b_and_max_out(b: float, max_out: int) -> None:
  if b < 1:
    raise ValueError(f"b must be >= 1 (b = 1 is a linear layer with unit-norm weights), got {b}")
  if max_out < 1:
    raise ValueError(f"max_out must be >= 1 (1 disables MaxOut), got {max_out}")


def _max_out(linear: jax.Array, max_out: int) -> jax.Array:
  """Max over groups of ``max_out`` consecutive units along the last axis: (..., O·M) -> (..., O)."""
  if max_out == 1:
    return linear
  return linear.reshape(*linear.shape[:-1], -1, max_out).max(axis=-1)


def bcos_transform(linear: jax.Array, norm_sq: jax.Array, b: float, *, detach: bool = False) -> jax.Array:
  """``|cos|^(B−1) · ŵᵀx`` from ŵᵀx and Σx² over the input (patch), with the authors' stabilisers.

  Args:
    linear: ŵᵀx for unit-norm ŵ (after MaxOut).
    norm_sq: Σx² over each unit's input (patch), broadcastable to ``linear``.
    b: the exponent B >= 1.
    detach: explanation mode; the dynamic scale is excluded from differentiation.
  """
  if b == 1:
    return linear
  norm = jnp.sqrt(norm_sq + NORM_EPS)
  if b == 2:
    scale = jnp.abs(linear) / norm
  else:
    scale = (jnp.abs(linear / norm) + COS_EPS) ** (b - 1.0)
  if detach:
    scale = jax.lax.stop_gradient(scale)
  return scale * linear


def _unit_columns(kernel: jax.Array) -> jax.Array:
  """Normalise every unit (a column of the (fan_in, units) matrix view) to unit L2 norm."""
  m = kernel.reshape(-1, kernel.shape[-1])
  return kernel / jnp.linalg.norm(m, axis=0)


class BcosDense(nnx.Module):
  """Bias-free B-cos dense layer with MaxOut: kernel (in, out · max_out); out_o = max_m of
  ``|cos(x, ŵ_{o,m})|^(B−1) ŵ_{o,m}ᵀx``, unit (o, m) being column o · max_out + m."""

  def __init__(self, in_features: int, out_features: int, *, b: float = 2.0, max_out: int = 2,
               rngs: nnx.Rngs):
    _check_b_and_max_out(b, max_out)
    self.b, self.max_out = b, max_out
    self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (in_features, out_features * max_out)))

  def __call__(self, x: jax.Array, *, detach: bool = False) -> jax.Array:
    linear = _max_out(x @ _unit_columns(self.kernel[...]), self.max_out)
    return bcos_transform(linear, jnp.sum(x**2, axis=-1, keepdims=True), self.b, detach=detach)


Padding = str | int | Sequence[tuple[int, int]] | None


def conv_padding(padding: Padding, kernel_size: Sequence[int]) -> str | tuple[tuple[int, int], ...]:
  """``lax.conv_general_dilated`` padding: None -> (k − 1) // 2 on both sides of each axis (the authors'),
  int p -> (p, p) on each axis, pairs as given, "SAME" / "VALID" as in lax."""
  if padding is None:
    return tuple(((k - 1) // 2, (k - 1) // 2) for k in kernel_size)
  if isinstance(padding, str):
    if padding not in ("SAME", "VALID"):
      raise ValueError(f"padding must be None, an int, (low, high) pairs, 'SAME' or 'VALID', got {padding!r}")
    return padding
  if isinstance(padding, int):
    return ((padding, padding),) * len(kernel_size)
  pairs = tuple(tuple(int(q) for q in p) for p in padding)
  if len(pairs) != len(kernel_size) or any(len(p) != 2 for p in pairs):
    raise ValueError(f"padding must give one (low, high) pair per spatial axis, got {padding!r}")
  return pairs


class BcosConv(nnx.Module):
  """Bias-free B-cos convolution with MaxOut (NHWC, kernel (kh, kw, in, out · max_out)); cos is taken per
  input patch, zero padding included in the patch norm.

  ``padding``: None (default) pads (k − 1) // 2 on both sides, the authors' convention; an int pads that much on
  both sides; a sequence of (low, high) pairs is explicit; "SAME" / "VALID" as in ``lax`` ("SAME" pads (0, 1)
  for a 3×3 stride-2 convolution on even sizes, unlike the authors).
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: Sequence[int] = (3, 3), *,
               strides: int = 1, padding: Padding = None, b: float = 2.0, max_out: int = 2, rngs: nnx.Rngs):
    _check_b_and_max_out(b, max_out)
    self.b, self.max_out, self.strides = b, max_out, strides
    self.padding = conv_padding(padding, kernel_size)
    shape = (*kernel_size, in_features, out_features * max_out)
    self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), shape))

  def _conv(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (self.strides,) * 2, self.padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def __call__(self, x: jax.Array, *, detach: bool = False) -> jax.Array:
    kernel = self.kernel[...]
    linear = _max_out(self._conv(x, _unit_columns(kernel)), self.max_out)
    # Σx² over each patch is the convolution of x² with a ones kernel of the same window and padding.
    norm_sq = self._conv(x**2, jnp.ones((*kernel.shape[:3], 1), x.dtype))
    return bcos_transform(linear, norm_sq, self.b, detach=detach)


def encode_input(x: jax.Array) -> jax.Array:
  """[x, 1 − x] along channels (the authors' ``AddInverse``), so dark pixels carry direction too."""
  return jnp.concatenate([x, 1.0 - x], axis=-1)


class _LogitLayer:
  """head / T + b: ``logit_temperature`` None means T = 1; ``logit_bias`` None means log(1 / (C − 1)),
  0.0 means none."""

  def _init_logits(self, num_classes: int, logit_bias: float | None, logit_temperature: float | None):
    if logit_temperature is not None and not logit_temperature > 0:
      raise ValueError(f"logit_temperature must be > 0 or None, got {logit_temperature}")
    self.logit_bias = default_logit_bias(num_classes) if logit_bias is None else float(logit_bias)
    self.logit_temperature = logit_temperature

  def _logits(self, head: jax.Array) -> jax.Array:
    if self.logit_temperature is not None:
      head = head / self.logit_temperature
    return head + self.logit_bias


class BcosMLP(nnx.Module, _LogitLayer):
  """Small B-cos network on flattened ``encode_input(x)``: B-cos dense layers with MaxOut, then the logit
  layer head / T + b (b = log(1 / (C − 1)) by default, T = 1).

  No biases inside and no ReLU: every layer is dynamic linear (the ``|cos|^(B−1)`` factor and MaxOut are the
  non-linearities), so logits = W(x) · encoded + b exactly. Train it with :func:`bcos_bce_loss`. The former
  protocol of this module (no MaxOut, no bias, softmax cross-entropy on 10 × the output) is
  ``max_out=1, logit_bias=0.0, logit_temperature=0.1`` with ``optax.softmax_cross_entropy``.
  """

  def __init__(self, in_features: int = 2 * 784, hidden_sizes: Sequence[int] = (512, 512),
               num_classes: int = 10, *, b: float = 2.0, max_out: int = 2, logit_bias: float | None = None,
               logit_temperature: float | None = None, rngs: nnx.Rngs):
    sizes = (in_features, *hidden_sizes, num_classes)
    self.layers = nnx.List([BcosDense(i, o, b=b, max_out=max_out, rngs=rngs)
                            for i, o in zip(sizes[:-1], sizes[1:])])
    self._init_logits(num_classes, logit_bias, logit_temperature)

  def __call__(self, encoded: jax.Array, *, detach: bool = False) -> jax.Array:
    h = encoded.reshape(encoded.shape[0], -1)
    for layer in self.layers:
      h = layer(h, detach=detach)
    return self._logits(h)


class BcosCNN(nnx.Module, _LogitLayer):
  """Small fully convolutional B-cos network in the layout of the v1 CIFAR-10 model: 3×3 B-cos convolutions
  (MaxOut 2, padding 1 on both sides) → 1×1 B-cos convolution to the classes → global average pooling → logit
  layer head / T + b (b = log(1 / (C − 1)) by default, T = 1). Train it with :func:`bcos_bce_loss`.

  Average pooling is linear, so the network stays dynamic linear; being fully convolutional it reads images
  of any size, e.g. the grids of the pointing game. The former protocol of this module is ``max_out=1,
  padding="SAME", logit_bias=0.0, logit_temperature=0.1`` with softmax cross-entropy.
  """

  def __init__(self, in_features: int = 2, channels: Sequence[int] = (32, 64, 64),
               strides: Sequence[int] = (1, 2, 2), num_classes: int = 10, *, b: float = 2.0, max_out: int = 2,
               padding: Padding = None, logit_bias: float | None = None, logit_temperature: float | None = None,
               rngs: nnx.Rngs):
    if len(channels) != len(strides):
      raise ValueError(f"channels and strides must have equal lengths, got {len(channels)} and {len(strides)}")
    sizes = (in_features, *channels)
    self.convs = nnx.List([BcosConv(i, o, strides=s, padding=padding, b=b, max_out=max_out, rngs=rngs)
                           for i, o, s in zip(sizes[:-1], sizes[1:], strides)])
    self.head = BcosConv(sizes[-1], num_classes, (1, 1), b=b, max_out=max_out, rngs=rngs)
    self._init_logits(num_classes, logit_bias, logit_temperature)

  def __call__(self, encoded: jax.Array, *, detach: bool = False) -> jax.Array:
    h = encoded
    for conv in self.convs:
      h = conv(h, detach=detach)
    return self._logits(jnp.mean(self.head(h, detach=detach), axis=(1, 2)))


def bcos_bce_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The authors' B-cos training loss: binary cross-entropy of sigmoid(logits) against one-hot targets,
  averaged over samples *and* classes (PyTorch ``BCEWithLogitsLoss(reduction="mean")``).

  Args:
    logits: (N, C) logits (including the logit bias).
    labels: (N,) integer classes, or (N, C) targets in [0, 1].
  """
  if labels.shape != logits.shape:
    labels = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  return optax.sigmoid_binary_cross_entropy(logits, labels).mean()


def bcos_apply_fns(model: nnx.Module):
  """Split a B-cos net into pure functions of raw images and its parameter state.

  Returns:
    (apply_fn, linear_fn, params): ``apply_fn(params, x) -> logits`` on raw NHWC images in [0, 1];
    ``linear_fn(params, encoded)`` is the same network on encoded input in explanation mode (dynamic scales
    frozen), i.e. ``encoded ↦ W(x) encoded + b`` at the point of evaluation. ``model`` is a B-cos network
    called as ``model(encoded, detach=...)``.
  """
  graphdef, params = nnx.split(model)
  apply_fn = lambda p, x: nnx.merge(graphdef, p)(encode_input(x))
  linear_fn = lambda p, encoded: nnx.merge(graphdef, p)(encoded, detach=True)
  return apply_fn, linear_fn, params


def bcos_contributions(linear_fn, params, x: jax.Array, target: jax.Array) -> jax.Array:
  """Dynamic-linear contributions W(x)_t ⊙ enc(x) of every encoded input to logit ``target``.

  Returns:
    (N, H, W, 2·C) contributions; their sum over all axes but the first equals the target logit minus the
    logit bias exactly, and the sum over the last axis is the per-pixel explanation (the authors'
    ``contribution_map``).
  """
  encoded = encode_input(x)

  def logit(e):
    return jnp.take_along_axis(linear_fn(params, e), target[:, None], axis=-1).sum()

  return encoded * jax.grad(logit)(encoded)
