"""Learning-rate schedule and optimizer from a config: SGD / AdamW / LAMB baselines and their Bort versions.

Baselines follow PyTorch so Bort-vs-baseline comparisons change one thing only: SGD gets coupled weight
decay (g + wd * w, before momentum), AdamW decoupled decay, LAMB (You et al., ICLR 2020) optax's form (decay
added to the Adam direction before the layer-wise trust ratio). The Bort optimizers add gamma * Delta(M) to
every constrained kernel (Zhang et al., "Bort", ICLR 2023); `grad_clip_norm > 0` clips the gradient's global
norm first (before the correction, which is not a gradient).

`OPTIMIZERS` is the one list of `config.optimizer` names: config validation, the benchmarks' choices and
`create_optimizer` all read it.
"""

from collections.abc import Callable
from typing import NamedTuple
import warnings

import ml_collections
import optax

import bort_jax


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """Linear warmup from 0 over `warmup_epochs`, then cosine decay to 0 or a constant plateau."""
  total = config.num_epochs * steps_per_epoch
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  if config.lr_schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, max(total, warmup + 1))
  constant = optax.constant_schedule(config.learning_rate)
  if not warmup:
    return constant
  ramp = optax.linear_schedule(0.0, config.learning_rate, warmup)
  return optax.join_schedules([ramp, constant], [warmup])


def bort_rules(config: ml_collections.ConfigDict) -> list[tuple[str, float]] | None:
  return [tuple(rule) for rule in config.bort_rules] or None


def _alpha(config: ml_collections.ConfigDict):
  return "adaptive" if config.adaptive_alpha else config.alpha


def _sgd(config, lr, views):
  del views  # no kernel is constrained
  return optax.chain(optax.add_decayed_weights(config.weight_decay),
                     optax.sgd(lr, momentum=config.momentum or None, nesterov=config.nesterov))


def _bort_sgd(config, lr, views):
  return bort_jax.bort_sgd(lr, config.gamma, momentum=config.momentum, weight_decay=config.weight_decay,
                           nesterov=config.nesterov, alpha=_alpha(config), mode=config.bort_mode,
                           rules=bort_rules(config), views=views)


def _adaptive(optimizer):
  """Builds `optax.adamw` / `optax.lamb` from the config's moments and decoupled decay."""
  def build(config, lr, views):
    del views
    return optimizer(lr, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay)
  return build


def _bort_adaptive(alias):
  """Builds `bort_jax.bort_adamw` / `bort_jax.bort_lamb` from the config's moments, decay and Bort fields."""
  def build(config, lr, views):
    return alias(lr, config.gamma, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay,
                 alpha=_alpha(config), mode=config.bort_mode, rules=bort_rules(config), views=views)
  return build


class OptimizerSpec(NamedTuple):
  """One `config.optimizer` choice: how to build it and whether it applies the Bort correction."""
  build: Callable[[ml_collections.ConfigDict, optax.Schedule, object], optax.GradientTransformation]
  bort: bool  # whether config.gamma, alpha, bort_mode and bort_rules take effect


# Insertion order is the order error messages list the names in.
OPTIMIZERS = {
    "sgd": OptimizerSpec(_sgd, bort=False),
    "bort_sgd": OptimizerSpec(_bort_sgd, bort=True),
    "adamw": OptimizerSpec(_adaptive(optax.adamw), bort=False),
    "bort_adamw": OptimizerSpec(_bort_adaptive(bort_jax.bort_adamw), bort=True),
    "lamb": OptimizerSpec(_adaptive(optax.lamb), bort=False),
    "bort_lamb": OptimizerSpec(_bort_adaptive(bort_jax.bort_lamb), bort=True),
}


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int, views=None
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, learning-rate schedule) for `config.optimizer` (a key of `OPTIMIZERS`).

  `views` are `bort_jax` kernel-view rules, e.g. `bort_jax.nnx_views(model)`.
  """
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(f"config.optimizer={config.optimizer!r} is not accepted; accepted values: "
                     f"{', '.join(repr(name) for name in OPTIMIZERS)}.")
  lr = learning_rate_schedule(config, steps_per_epoch)
  tx = OPTIMIZERS[config.optimizer].build(config, lr, views)
  if config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx, lr


def check_gamma(config: ml_collections.ConfigDict, params, views=None) -> float | None:
  """`bort_jax.stable_gamma` of the configured Bort optimizer at the peak learning rate; warns when
  `config.gamma` exceeds it. None for the baselines and the l1 modes (which have no such bound)."""
  if not OPTIMIZERS[config.optimizer].bort or not config.bort_mode.startswith("l2"):
    return None
  adamw = config.optimizer in ("bort_adamw", "bort_lamb")  # both move by −lr·γ·Δ outside the adaptive scaling
  bound = bort_jax.stable_gamma(
      params, config.learning_rate, momentum=0.0 if adamw else config.momentum,
      nesterov=not adamw and config.nesterov, optimizer="adamw" if adamw else "sgd", mode=config.bort_mode,
      alpha=_alpha(config), rules=bort_rules(config), views=views).gamma
  if config.gamma > bound:
    warnings.warn(f"config.gamma={config.gamma} exceeds bort_jax.stable_gamma's bound {bound:.4g} for "
                  f"learning_rate={config.learning_rate} ({config.optimizer}, momentum={config.momentum}, "
                  f"nesterov={config.nesterov}) at the initial weights: the correction is expected to diverge.",
                  UserWarning, stacklevel=2)
  return bound
