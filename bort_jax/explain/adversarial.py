"""Explainable adversarial samples (latent move + backtracking) and the plain PGD attack they are compared to.

Explainable adversarial samples (Zhang et al., "Bort", ICLR 2023, Sec. 4.4) need no extra training: move the
latent features of ``x`` toward the target class and map the move back to the input through the transposed
network,

  x_{t+1} = clip(x_t + s · J(x_t)ᵀ η (μ_target − f(x_t))),    s = 1 / ∏_l α_l,

where ``μ_c`` is the mean feature of class ``c`` on training data. For an invertible (orthogonal, Bort) network
``s J(x)ᵀ`` is the inverse map, so the perturbation is the pixel-space picture of "more target-class
features"; no logit gradient is used. The baseline is PGD (Madry et al., 2018) in an L∞ or L2 ball.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from bort_jax.explain.reconstruction import FeaturesFn

ApplyFn = Callable[[Any, jax.Array], jax.Array]
NORMS = ("linf", "l2")


class AttackResult(NamedTuple):
  """Adversarial batch with per-sample outcome."""
  x_adv: jax.Array  # same shape as x
  success: jax.Array  # (N,) bool: target class reached (targeted) or label left (untargeted)
  l2: jax.Array  # (N,) ‖x_adv − x‖₂


def _per_sample_norm(v: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(v).reshape(v.shape[0], -1), axis=1))


def _broadcast(per_sample: jax.Array, like: jax.Array) -> jax.Array:
  return per_sample.reshape((-1,) + (1,) * (like.ndim - 1))


def _reached(apply_fn: ApplyFn, params: Any, x: jax.Array, label: jax.Array, targeted: bool) -> jax.Array:
  hit = jnp.argmax(apply_fn(params, x), axis=-1) == label
  return hit if targeted else ~hit


def attack_result(apply_fn: ApplyFn, params: Any, x: jax.Array, x_adv: jax.Array, label: jax.Array,
                  targeted: bool = True) -> AttackResult:
  """Success flags and perturbation L2 of an adversarial batch.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: model parameters.
    x: clean batch.
    x_adv: adversarial batch.
    label: ``(N,)`` target classes (``targeted``) or true labels (untargeted).
    targeted: success means ``argmax = label`` if True, ``argmax ≠ label`` otherwise.

  Returns:
    ``AttackResult``.
  """
  return AttackResult(x_adv, _reached(apply_fn, params, x_adv, label, targeted), _per_sample_norm(x_adv - x))


def summarize(result: AttackResult) -> dict[str, jax.Array]:
  """Success rate, mean L2 over successful samples (NaN if none) and mean L2 over all samples."""
  success = result.success.astype(result.l2.dtype)
  return {
      "success_rate": jnp.mean(success),
      "l2_success": jnp.sum(result.l2 * success) / jnp.sum(success),
      "l2_all": jnp.mean(result.l2),
  }


def class_prototypes(features_fn: FeaturesFn, params: Any, x: jax.Array, y: jax.Array,
                     num_classes: int) -> jax.Array:
  """Mean feature ``μ_c`` of every class.

  Args:
    features_fn: ``features_fn(params, x) -> features`` of the layer to move in.
    params: parameters passed to ``features_fn``.
    x: labelled batch (training data).
    y: ``(N,)`` integer labels in ``[0, num_classes)``.
    num_classes: number of classes (static).

  Returns:
    ``(num_classes, *feature_shape)``; classes absent from ``y`` get zeros.
  """
  features = features_fn(params, x)
  sums = jax.ops.segment_sum(features, y, num_segments=num_classes)
  counts = jax.ops.segment_sum(jnp.ones_like(y, features.dtype), y, num_segments=num_classes)
  return sums / _broadcast(jnp.maximum(counts, 1.0), sums)


def explainable_adversarial(
    features_fn: FeaturesFn,
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    target: jax.Array,
    prototypes: jax.Array,
    *,
    steps: int = 10,
    step_size: float = 0.25,
    scale: float | jax.Array = 1.0,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> AttackResult:
  """Explainable adversarial samples: latent move toward ``μ_target``, backtracked to the input.

  Args:
    features_fn: ``features_fn(params, x) -> features`` of the latent layer.
    apply_fn: ``apply_fn(params, x) -> logits``; a sample stops moving once it is classified as its target.
    params: model parameters.
    x: clean batch.
    target: ``(N,)`` target classes.
    prototypes: ``(num_classes, *feature_shape)`` class mean features (``class_prototypes``).
    steps: number of move-and-backtrack steps (static).
    step_size: fraction ``η`` of the remaining latent distance ``μ_target − f(x_t)`` moved per step.
    scale: ``1 / ∏ α_l`` of the layers up to the latent layer.
    clip: valid input range, or None.

  Returns:
    ``AttackResult`` (success: classified as ``target``).
  """
  goal = jnp.asarray(prototypes)[target]

  def step(x_t, _):
    features, vjp = jax.vjp(lambda inputs: features_fn(params, inputs), x_t)
    move = scale * vjp(step_size * (goal - features))[0]
    done = _reached(apply_fn, params, x_t, target, True)
    x_next = jnp.where(_broadcast(done, x_t), x_t, x_t + move)
    return (x_next if clip is None else jnp.clip(x_next, *clip)), None

  x_adv, _ = jax.lax.scan(step, x, None, length=steps)
  return attack_result(apply_fn, params, x, x_adv, target)


def pgd_attack(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    label: jax.Array,
    epsilon: float | jax.Array,
    *,
    norm: str = "linf",
    targeted: bool = True,
    steps: int = 20,
    step_size: float | jax.Array | None = None,
    clip: tuple[float, float] | None = (0.0, 1.0),
    stop_on_success: bool = False,
) -> AttackResult:
  """Projected gradient descent on the cross-entropy in an L∞ or L2 ball (Madry et al., 2018).

  Targeted: ``x ← Π(x − η d(∇ CE(f(x), target)))``; untargeted: ``x ← Π(x + η d(∇ CE(f(x), label)))``, with
  ``d = sign`` (L∞) or ``g / ‖g‖₂`` (L2) and ``Π`` the projection onto the ball of radius ``epsilon`` around
  the clean input and onto ``clip``.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: model parameters.
    x: clean batch.
    label: ``(N,)`` target classes (``targeted``) or true labels.
    epsilon: radius of the ball.
    norm: ``"linf"`` or ``"l2"``.
    targeted: attack toward ``label`` (True) or away from it (False).
    steps: number of steps (static).
    step_size: step ``η``; default ``2.5 ε / steps``.
    clip: valid input range, or None.
    stop_on_success: freeze a sample once it succeeds (smallest perturbation along the path).

  Returns:
    ``AttackResult``.
  """
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
  step_size = 2.5 * epsilon / steps if step_size is None else step_size
  sign = -1.0 if targeted else 1.0

  def cross_entropy(z):
    log_p = jax.nn.log_softmax(apply_fn(params, z), axis=-1)
    return -jnp.sum(jnp.take_along_axis(log_p, label[:, None], axis=-1))

  def step(z, _):
    g = jax.grad(cross_entropy)(z)
    if norm == "linf":
      z_next = x + jnp.clip(z + sign * step_size * jnp.sign(g) - x, -epsilon, epsilon)
    else:
      z_next = z + sign * step_size * g / _broadcast(jnp.maximum(_per_sample_norm(g), 1e-12), g)
      delta_norm = _per_sample_norm(z_next - x)
      z_next = x + (z_next - x) * _broadcast(jnp.minimum(1.0, epsilon / jnp.maximum(delta_norm, 1e-12)), x)
    if clip is not None:
      z_next = jnp.clip(z_next, *clip)
    if stop_on_success:
      z_next = jnp.where(_broadcast(_reached(apply_fn, params, z, label, targeted), z), z, z_next)
    return z_next, None

  x_adv, _ = jax.lax.scan(step, x, None, length=steps)
  return attack_result(apply_fn, params, x, x_adv, label, targeted)
