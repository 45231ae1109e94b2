"""Bort optimizers: ``bort_sgd`` (reference ``BortS``), ``bort_adamw`` (reference ``BortA``) and ``bort_lamb``.

Argument map from the reference PyTorch optimizers (github.com/zbr17/Bort):

===================  ======================  =============================================================
reference            bort_jax                note
===================  ======================  =============================================================
``lr``               ``learning_rate``       float or optax schedule
``gamma``            ``gamma``               reference default 0.0 (Bort off); required here
``amptitude``        ``alpha``               ``"ada"`` -> ``"adaptive"`` (``"ada"`` also accepted)
``mode``             ``mode``                ``"l2-full"``, ``"l1-fullrow"``, ... (see ``bort_jax.MODES``)
``momentum``         ``momentum``            BortS; torch semantics (first step buffer = gradient)
``dampening``        ``dampening``           BortS
``weight_decay``     ``weight_decay``        BortS: coupled (added to the gradient); BortA: decoupled, default
                                             1e-4 as ``optax.adamw`` (reference BortA: 1e-2)
``nesterov``         ``nesterov``            BortS
``betas``            ``b1``, ``b2``          BortA
``eps``              ``eps``                 BortA
``maximize``         —                       negate the loss instead
===================  ======================  =============================================================

Difference by design: the reference corrects every parameter it is given (biases viewed as ``(n, 1)``
matrices); here only conv/dense/attention kernels are corrected unless ``mask`` says otherwise.
"""

from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from bort_jax._src import correction
from bort_jax._src import kernel_matrix as km
from bort_jax._src import masking
from bort_jax._src import plan as plan_lib
from bort_jax._src import transform
from bort_jax._src import validation
from bort_jax._src import views as views_lib


class DampenedTraceState(NamedTuple):
  count: jax.Array
  trace: optax.Params


def torch_momentum(momentum: float, dampening: float = 0.0, nesterov: bool = False) -> optax.GradientTransformation:
  """PyTorch SGD momentum: ``b₁ = g₁``, ``bₜ = μ bₜ₋₁ + (1 − d) gₜ``; Nesterov returns ``g + μ b``.

  With ``dampening == 0`` this equals ``optax.trace`` (used then); dampening needs the first-step special case.
  """
  if _is_static_zero(dampening):
    return optax.trace(decay=momentum, nesterov=nesterov)

  def init_fn(params):
    return DampenedTraceState(count=jnp.zeros([], jnp.int32), trace=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    first = state.count == 0
    trace = jax.tree.map(lambda g, b: jnp.where(first, g, momentum * b + (1.0 - dampening) * g), updates, state.trace)
    out = jax.tree.map(lambda g, b: g + momentum * b, updates, trace) if nesterov else trace
    return out, DampenedTraceState(count=optax.safe_increment(state.count), trace=trace)

  return optax.GradientTransformation(init_fn, update_fn)


def _first_box(tree) -> Optional[str]:
  """Path of the first flax metadata box (Linen ``nn.Partitioned``, NNX variable) in ``tree``, else None."""
  for path, node in jax.tree_util.tree_flatten_with_path(tree, is_leaf=plan_lib.is_box)[0]:
    if plan_lib.is_box(node):
      return views_lib.path_str(path)
  return None


def same_boxing(name: str, tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """``tx``, with a ValueError when ``update`` gets unboxed trees for a state built from boxed params (or the
  reverse): optax's own transforms would fail later with a TypeError that names neither the leaf nor the fix."""

  def update_fn(updates, state, params=None):
    state_box, update_box = _first_box(state), _first_box(updates)
    has_arrays = any(getattr(x, "ndim", 0) for x in jax.tree_util.tree_leaves(state))
    if (state_box is None) != (update_box is None) and (state_box is not None or has_arrays):
      boxed, unboxed = ("init", "update") if state_box else ("update", "init")
      raise ValueError(
          f"{name}: {boxed} got params with flax metadata boxes (at {state_box or update_box}) but {unboxed} got "
          "plain arrays; call init and update with the same kind of tree: unbox both (flax.linen.unbox(params), "
          "nnx.to_pure_dict(state)) or keep the boxes in both.")
    return tx.update(updates, state, params)

  return optax.GradientTransformation(tx.init, update_fn)


def _is_static_zero(value) -> bool:
  """Whether ``value`` is a Python zero (hyperparameters may be traced under ``inject_hyperparams``)."""
  return isinstance(value, (int, float)) and value == 0


def _check_sgd_args(learning_rate, momentum, dampening, weight_decay, nesterov, weight_decay_mask):
  validation.check_nonnegative("learning_rate", learning_rate, allow_schedule=True)
  validation.check_in_range("momentum", momentum, 0, 1)  # torch allows momentum >= 1, where SGD diverges
  validation.check_in_range("dampening", dampening, 0, 1, include_high=True)
  validation.check_nonnegative("weight_decay", weight_decay, allow_schedule=True)  # optax decays by schedules too
  validation.check_bool("nesterov", nesterov)
  validation.check_mask("weight_decay_mask", weight_decay_mask)
  m, d = validation.concrete(momentum), validation.concrete(dampening)
  if nesterov and ((m is not None and m <= 0) or (d is not None and d != 0)):
    raise ValueError(f"nesterov=True requires momentum > 0 and dampening == 0, got momentum={momentum!r}, "
                     f"dampening={dampening!r}.")


def _check_adamw_args(learning_rate, b1, b2, eps, weight_decay, weight_decay_mask):
  validation.check_nonnegative("learning_rate", learning_rate, allow_schedule=True)
  validation.check_in_range("b1", b1, 0, 1)
  validation.check_in_range("b2", b2, 0, 1)
  validation.check_nonnegative("eps", eps)
  # Not a schedule: the correction is evaluated at weights decayed by learning_rate * weight_decay.
  validation.check_nonnegative("weight_decay", weight_decay)
  validation.check_mask("weight_decay_mask", weight_decay_mask)


def bort_sgd(
    learning_rate: optax.ScalarOrSchedule,
    gamma: optax.ScalarOrSchedule,
    *,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    alpha: correction.Amplitude = 1.0,
    mode: correction.Mode = "l2-full",
    mask: masking.Mask = None,
    rules: Optional[masking.Rules] = None,
    layout: views_lib.Layout = "flax",
    views: Optional[views_lib.ViewRules] = None,
    every_k: int = 1,
    group_same_shape: Optional[bool] = None,
    precision: km.Precision = "highest",
    weight_decay_mask: masking.Mask = None,
) -> optax.GradientTransformation:
  """SGD with the Bort correction added to the gradient before coupled weight decay and momentum (BortS).

  .. math::
    g \\leftarrow g + \\gamma \\Delta(W) + \\lambda W, \\quad b \\leftarrow \\mu b + (1-d) g, \\quad
    W \\leftarrow W - \\eta b

  Args:
    learning_rate: η, float or schedule.
    gamma: γ, float or schedule.
    momentum, dampening, nesterov: PyTorch SGD semantics; momentum in [0, 1), dampening in [0, 1].
    weight_decay: λ ≥ 0 (float or schedule), coupled L2 decay; applied to ``weight_decay_mask`` (default: every
      leaf, as the reference).
    alpha, mode, mask, rules, layout, views, every_k, group_same_shape, precision: see
      :func:`bort_jax.add_bort_correction`.

  References:
    Zhang et al., "Bort: Towards Explainable Neural Networks with Bounded Orthogonal Constraint", ICLR 2023.

  Example:
    >>> import jax.numpy as jnp, bort_jax as bj
    >>> params = {"fc": {"kernel": 2.0 * jnp.eye(2)}}
    >>> tx = bj.bort_sgd(learning_rate=0.1, gamma=0.5, momentum=0.9)
    >>> updates, state = tx.update({"fc": {"kernel": jnp.zeros((2, 2))}}, tx.init(params), params)
    >>> jnp.diag(updates["fc"]["kernel"])  # −η·γ·Δ = −0.1·0.5·6
    Array([-0.3, -0.3], dtype=float32)
  """

  _check_sgd_args(learning_rate, momentum, dampening, weight_decay, nesterov, weight_decay_mask)
  return same_boxing("bort_sgd", optax.chain(
      transform.add_bort_correction(
          gamma, alpha, mode, mask=mask, rules=rules, layout=layout, views=views, every_k=every_k,
          group_same_shape=group_same_shape, precision=precision),
      optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
      optax.identity() if _is_static_zero(momentum) else torch_momentum(momentum, dampening, nesterov),
      optax.scale_by_learning_rate(learning_rate),
  ))


def bort_adamw(
    learning_rate: optax.ScalarOrSchedule,
    gamma: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    alpha: correction.Amplitude = 1.0,
    mode: correction.Mode = "l2-full",
    mask: masking.Mask = None,
    rules: Optional[masking.Rules] = None,
    layout: views_lib.Layout = "flax",
    views: Optional[views_lib.ViewRules] = None,
    every_k: int = 1,
    group_same_shape: Optional[bool] = None,
    precision: km.Precision = "highest",
    weight_decay_mask: masking.Mask = None,
) -> optax.GradientTransformation:
  """AdamW whose weights also move by −η·γ·Δ after decoupled decay, not Adam-scaled (BortA).

  .. math::
    W' = (1 - \\eta\\lambda) W, \\quad
    W \\leftarrow W' - \\eta\\gamma\\Delta(W') - \\eta\\,\\hat m/(\\sqrt{\\hat v}+\\epsilon)

  Args:
    learning_rate: η, float or schedule.
    gamma: γ, float or schedule.
    b1, b2, eps: Adam moments (the reference's ``betas`` and ``eps``); b1, b2 in [0, 1), eps ≥ 0.
    weight_decay: λ, decoupled (default 1e-4 as ``optax.adamw``; the reference's is 1e-2); applied to
      ``weight_decay_mask`` (default: every leaf, as the reference).
    alpha, mode, mask, rules, layout, views, every_k, group_same_shape, precision: see
      :func:`bort_jax.add_bort_correction`.

  References:
    Zhang et al., ICLR 2023; Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.

  Example:
    >>> import jax.numpy as jnp, bort_jax as bj
    >>> params = {"fc": {"kernel": 2.0 * jnp.eye(2)}}
    >>> tx = bj.bort_adamw(learning_rate=0.1, gamma=0.5, weight_decay=0.0)
    >>> updates, state = tx.update({"fc": {"kernel": jnp.zeros((2, 2))}}, tx.init(params), params)
    >>> jnp.diag(updates["fc"]["kernel"])  # zero gradient: only −η·γ·Δ, not Adam-scaled
    Array([-0.3, -0.3], dtype=float32)
  """
  _check_adamw_args(learning_rate, b1, b2, eps, weight_decay, weight_decay_mask)
  if callable(learning_rate):
    decoupled_decay = lambda count: learning_rate(count) * weight_decay
  else:
    decoupled_decay = learning_rate * weight_decay
  return same_boxing("bort_adamw", optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
      transform.add_bort_correction(
          gamma, alpha, mode, mask=mask, rules=rules, layout=layout, views=views, every_k=every_k,
          group_same_shape=group_same_shape, precision=precision, decoupled_decay=decoupled_decay,
          decoupled_decay_mask=weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  ))


def bort_lamb(
    learning_rate: optax.ScalarOrSchedule,
    gamma: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    alpha: correction.Amplitude = 1.0,
    mode: correction.Mode = "l2-full",
    mask: masking.Mask = None,
    rules: Optional[masking.Rules] = None,
    layout: views_lib.Layout = "flax",
    views: Optional[views_lib.ViewRules] = None,
    every_k: int = 1,
    group_same_shape: Optional[bool] = None,
    precision: km.Precision = "highest",
    weight_decay_mask: masking.Mask = None,
) -> optax.GradientTransformation:
  """``optax.lamb`` whose weights also move by −η·γ·Δ(W), outside the trust ratio (BortA's form for LAMB).

  .. math::
    r = \\hat m/(\\sqrt{\\hat v}+\\epsilon) + \\lambda W, \\quad
    W \\leftarrow W - \\eta\\, \\frac{\\|W\\|}{\\|r\\|}\\, r - \\eta\\gamma\\Delta(W)

  The correction is added after ``scale_by_trust_ratio``: inside it, the layer-wise ratio ‖W‖/‖r + γΔ‖ would
  renormalise γΔ to the step length of the layer and make γ a direction weight rather than a strength. LAMB has
  no separate decay step (λW is part of the direction the trust ratio rescales), so Δ is evaluated at W, not at
  BortA's decayed (1 − ηλ)W; with λ = 0 the two coincide. With γ = 0 this is ``optax.lamb``.
  Any optax optimizer takes the correction the same way: put :func:`bort_jax.add_bort_correction` just before
  its ``scale_by_learning_rate`` (e.g. after ``scale_by_lion`` or ``scale_by_factored_rms``).

  Args:
    learning_rate: η, float or schedule.
    gamma: γ, float or schedule.
    b1, b2, eps: Adam moments, as ``optax.lamb``; b1, b2 in [0, 1), eps ≥ 0.
    weight_decay: λ ≥ 0, added to the Adam direction before the trust ratio (as ``optax.lamb``); applied to
      ``weight_decay_mask`` (default: every leaf).
    alpha, mode, mask, rules, layout, views, every_k, group_same_shape, precision: see
      :func:`bort_jax.add_bort_correction`.

  References:
    Zhang et al., ICLR 2023; You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76
    minutes", ICLR 2020.

  Example:
    >>> import jax.numpy as jnp, bort_jax as bj
    >>> params = {"fc": {"kernel": 2.0 * jnp.eye(2)}}
    >>> tx = bj.bort_lamb(learning_rate=0.1, gamma=0.5)
    >>> updates, state = tx.update({"fc": {"kernel": jnp.zeros((2, 2))}}, tx.init(params), params)
    >>> jnp.diag(updates["fc"]["kernel"])  # zero gradient: only −η·γ·Δ, not trust-ratio scaled
    Array([-0.3, -0.3], dtype=float32)
  """
  _check_adamw_args(learning_rate, b1, b2, eps, weight_decay, weight_decay_mask)
  return same_boxing("bort_lamb", optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
      optax.scale_by_trust_ratio(),
      transform.add_bort_correction(
          gamma, alpha, mode, mask=mask, rules=rules, layout=layout, views=views, every_k=every_k,
          group_same_shape=group_same_shape, precision=precision),
      optax.scale_by_learning_rate(learning_rate),
  ))
