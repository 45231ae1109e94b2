"""Explainable adversarial samples (latent move + backtracking) and the plain PGD attack they are compared to.

Explainable adversarial samples (Zhang et al., "Bort", ICLR 2023, Sec. 4.4) need no extra training: move the
latent features of ``x`` toward the target class and map the move back to the input through the transposed
network,

  x_{t+1} = clip(x_t + s · J(x_t)ᵀ η (μ_target − f(x_t))),    s = 1 / ∏_l α_l,

where ``μ_c`` is the mean feature of class ``c`` on training data. For an invertible (orthogonal, Bort) network
``s J(x)ᵀ`` is the inverse map, so the perturbation is the pixel-space picture of "more target-class
features"; no logit gradient is used. The baselines are PGD (Madry et al., 2018) in an L∞ or L2 ball, with
foolbox's optional random start, and the Carlini–Wagner L2 attack (Carlini & Wagner, 2017) with foolbox's
conventions; both also serve the boundary search of :mod:`bort_jax.explain.attributions`.
"""

from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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


def uniform_ball_start(key: jax.Array, x: jax.Array, epsilon: float | jax.Array, norm: str = "l2",
                       clip: tuple[float, float] | None = (0.0, 1.0)) -> jax.Array:
  """foolbox's PGD start: a uniform sample of the ε-ball around each clean input, clipped to the valid range.

  L2: uniform in the ball, drawn as the first n coordinates of a uniform point on the unit sphere of R^{n+2}
  (Voelker et al., 2017, the sampler foolbox's ``uniform_l2_n_balls`` uses), times ε. L∞: uniform in
  [−ε, ε] per coordinate. Not projected again: the sample already lies in the ball.
  """
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
  if norm == "linf":
    offset = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
  else:
    n = int(np.prod(x.shape[1:]))
    sphere = jax.random.normal(key, (x.shape[0], n + 2), x.dtype)
    sphere = sphere / jnp.linalg.norm(sphere, axis=1, keepdims=True)
    offset = sphere[:, :n].reshape(x.shape)
  start = x + epsilon * offset
  return start if clip is None else jnp.clip(start, *clip)


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
    random_start: bool = False,
    key: jax.Array | None = None,
) -> AttackResult:
  """Projected gradient descent on the cross-entropy in an L∞ or L2 ball (Madry et al., 2018).

  Targeted: ``x ← Π(x − η d(∇ CE(f(x), target)))``; untargeted: ``x ← Π(x + η d(∇ CE(f(x), label)))``, with
  ``d = sign`` (L∞) or ``g / max(‖g‖₂, 1e-12)`` (L2) and ``Π`` the projection onto the ball of radius
  ``epsilon`` around the clean input followed by clipping to ``clip`` — foolbox's ``L2PGD`` / ``LinfPGD``
  update, run for all ``steps`` (no early stop unless ``stop_on_success``).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: model parameters.
    x: clean batch.
    label: ``(N,)`` target classes (``targeted``) or true labels.
    epsilon: radius of the ball.
    norm: ``"linf"`` or ``"l2"``.
    targeted: attack toward ``label`` (True) or away from it (False).
    steps: number of steps (static).
    step_size: absolute step ``η`` (foolbox's ``abs_stepsize``; foolbox's relative ``rel_stepsize`` r is
      ``step_size = r · epsilon``); default ``2.5 ε / steps``.
    clip: valid input range, or None.
    stop_on_success: freeze a sample once it succeeds (smallest perturbation along the path).
    random_start: start from :func:`uniform_ball_start` (uniform in the ε-ball, clipped) instead of ``x``, as
      foolbox's PGD does by default.
    key: PRNG key of the random start; ``None`` means ``jax.random.PRNGKey(0)``.

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

  start = x
  if random_start:
    start = uniform_ball_start(jax.random.PRNGKey(0) if key is None else key, x, epsilon, norm, clip)
  x_adv, _ = jax.lax.scan(step, start, None, length=steps)
  return attack_result(apply_fn, params, x, x_adv, label, targeted)


def clip_l2_perturbation(x: jax.Array, x_adv: jax.Array, epsilon: float | jax.Array) -> jax.Array:
  """``x + δ · min(1, ε / max(‖δ‖₂, 1e-12))`` with ``δ = x_adv − x`` (foolbox's ``l2.clip_perturbation``)."""
  delta = x_adv - x
  return x + delta * _broadcast(jnp.minimum(1.0, epsilon / jnp.maximum(_per_sample_norm(delta), 1e-12)), x)


def cw_l2_attack(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    label: jax.Array,
    *,
    targeted: bool = False,
    binary_search_steps: int = 9,
    steps: int = 100,
    step_size: float = 1e-2,
    confidence: float = 0.0,
    initial_const: float = 1e-3,
    abort_early: bool = True,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> AttackResult:
  """Carlini–Wagner L2 attack (Carlini & Wagner, 2017, "Towards evaluating the robustness of neural networks")
  with the conventions of foolbox's ``L2CarliniWagnerAttack``.

  Minimises ``‖x' − x̃‖² + c · max(0, z_label(x') − max_{j≠label} z_j(x') + κ)`` (untargeted; targeted:
  ``max(0, max_{j≠t} z_j − z_t + κ)``) over ``x' = to_model(w + δ)`` with Adam (β = 0.9, 0.999, ε̂ = 1e-8, learning
  rate ``step_size``) from ``δ = 0``, for ``steps`` steps per constant, and binary-searches ``c`` per sample over
  ``binary_search_steps`` rounds: starting at ``initial_const``, ×10 while no adversarial was found for a
  sample, then the midpoint of the bracket. Conventions:

  - box: ``to_model(w) = tanh(w) · (hi − lo)/2 + (hi + lo)/2``, ``w = arctanh(0.999999 · (x − mid)/half)``,
    and the squared norm is taken to ``x̃ = to_model(w)`` (the round-tripped input); with ``clip=None``,
    ``x' = x + δ`` directly;
  - the runner-up class ``j`` is the arg max of the other logits, re-chosen at every step;
  - each step records the iterate it differentiated (before the Adam update); the closest adversarial in L2
    to ``x`` over all steps and rounds is returned;
  - ``abort_early``: every ``ceil(steps / 10)`` steps (from step 0) the round stops unless the loss, summed over
    the batch as in foolbox, dropped below 0.9999 × its value at the previous check — so, as in foolbox,
    samples of one batch share this stop;
  - with ``binary_search_steps ≥ 10`` the last round uses ``c = min(upper bound, 1e10)``.

  foolbox returns zeros for samples it never made adversarial; this returns ``x`` for them (``success`` False).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: model parameters.
    x: clean batch.
    label: ``(N,)`` labels to move away from (untargeted) or target classes (``targeted``).
    targeted: attack toward ``label`` instead of away from it.
    binary_search_steps: rounds of the search over ``c`` (static); foolbox's default 9.
    steps: Adam steps per round (static); 100 as in Wang et al. (2022)'s boundary search (foolbox: 10000).
    step_size: Adam learning rate; foolbox's default 1e-2.
    confidence: margin κ.
    initial_const: first ``c``; foolbox's default 1e-3.
    abort_early: foolbox's early stop of a round (above).
    clip: valid input range (the tanh box), or None for an unbounded input.

  Returns:
    ``AttackResult`` of the closest adversarial found.
  """
  n = x.shape[0]
  if clip is None:
    w0 = x
    to_model = lambda w: w
  else:
    mid, half = (clip[0] + clip[1]) / 2, (clip[1] - clip[0]) / 2
    w0 = jnp.arctanh((x - mid) / half * 0.999999)
    to_model = lambda w: jnp.tanh(w) * half + mid
  x_ref = to_model(w0)
  onehot = jax.nn.one_hot(label, apply_fn(params, x[:1]).shape[-1], dtype=bool)

  def is_adversarial(logits):
    shifted = logits + (-confidence if targeted else confidence) * onehot
    hit = jnp.argmax(shifted, axis=-1) == label
    return hit if targeted else ~hit

  def loss_fn(delta, consts):
    z = to_model(w0 + delta)
    logits = apply_fn(params, z)
    runner_up = jnp.argmax(jnp.where(onehot, -jnp.inf, logits), axis=-1)
    other = jnp.take_along_axis(logits, runner_up[:, None], axis=-1)[:, 0]
    own = jnp.take_along_axis(logits, label[:, None], axis=-1)[:, 0]
    margin = (other - own) if targeted else (own - other)
    adv_loss = jnp.maximum(0.0, margin + confidence) * consts
    loss = jnp.sum(adv_loss) + jnp.sum(jnp.square(z - x_ref))
    return loss, (z, logits)

  value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
  check_every = int(np.ceil(steps / 10))
  beta1, beta2, adam_eps = 0.9, 0.999, 1e-8

  def round_(carry, round_index):
    consts, lower, upper, best, best_norm = carry
    if binary_search_steps >= 10:
      consts = jnp.where(round_index == binary_search_steps - 1, jnp.minimum(upper, 1e10), consts)

    def step(state, k):
      delta, m, v, active, previous, found, best, best_norm = state
      (loss, (z, logits)), g = value_and_grad(delta, consts)
      t = (k + 1).astype(x.dtype)
      m_next = beta1 * m + (1 - beta1) * g
      v_next = beta2 * v + (1 - beta2) * g * g
      update = step_size * (m_next / (1 - beta1**t)) / (jnp.sqrt(v_next / (1 - beta2**t)) + adam_eps)
      check = abort_early & (k % check_every == 0)
      stop = check & ~(loss <= 0.9999 * previous)
      record = active & ~stop
      previous = jnp.where(record & check, loss, previous)
      hit = is_adversarial(logits) & record
      norm = _per_sample_norm(z - x)
      new_best = hit & (norm < best_norm)
      keep = lambda new, old: jnp.where(active, new, old)
      return (keep(delta - update, delta), keep(m_next, m), keep(v_next, v), record, previous, found | hit,
              jnp.where(_broadcast(new_best, x), z, best), jnp.where(new_best, norm, best_norm)), None

    zeros = jnp.zeros_like(w0)
    init = (zeros, zeros, zeros, jnp.array(True), jnp.array(jnp.inf, x.dtype), jnp.zeros(n, bool), best, best_norm)
    (_, _, _, _, _, found, best, best_norm), _ = jax.lax.scan(step, init, jnp.arange(steps))
    upper = jnp.where(found, consts, upper)
    lower = jnp.where(found, lower, consts)
    consts = jnp.where(jnp.isinf(upper), consts * 10, (lower + upper) / 2)
    return (consts, lower, upper, best, best_norm), None

  init = (jnp.full(n, initial_const, x.dtype), jnp.zeros(n, x.dtype), jnp.full(n, jnp.inf, x.dtype), x,
          jnp.full(n, jnp.inf, x.dtype))
  (_, _, _, best, _), _ = jax.lax.scan(round_, init, jnp.arange(binary_search_steps))
  return attack_result(apply_fn, params, x, best, label, targeted)
