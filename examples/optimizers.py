"""Learning-rate schedule and optimizer from a config: SGD / AdamW baselines and their Bort versions.

Baselines follow PyTorch so Bort-vs-baseline comparisons change one thing only: SGD gets coupled weight
decay (g + wd * w, before momentum), AdamW decoupled decay. The Bort optimizers add
gamma * Delta(M) to every constrained kernel (Zhang et al., "Bort", ICLR 2023).
"""

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


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int, views=None
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, learning-rate schedule) for `config.optimizer`.

  `views` are `bort_jax` kernel-view rules, e.g. `bort_jax.nnx_views(model)`.
  """
  lr = learning_rate_schedule(config, steps_per_epoch)
  alpha = "adaptive" if config.adaptive_alpha else config.alpha
  momentum = config.momentum or None
  if config.optimizer == "sgd":
    tx = optax.chain(optax.add_decayed_weights(config.weight_decay),
                     optax.sgd(lr, momentum=momentum, nesterov=config.nesterov))
  elif config.optimizer == "bort_sgd":
    tx = bort_jax.bort_sgd(lr, config.gamma, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.nesterov,
                           alpha=alpha, mode=config.bort_mode, rules=bort_rules(config), views=views)
  elif config.optimizer == "adamw":
    tx = optax.adamw(lr, b1=config.b1, b2=config.b2, eps=config.eps,
                     weight_decay=config.weight_decay)
  elif config.optimizer == "bort_adamw":
    tx = bort_jax.bort_adamw(lr, config.gamma, b1=config.b1, b2=config.b2, eps=config.eps,
                             weight_decay=config.weight_decay, alpha=alpha, mode=config.bort_mode,
                             rules=bort_rules(config), views=views)
  else:
    raise ValueError(f"config.optimizer={config.optimizer!r} is not accepted; accepted values: "
                     "'sgd', 'bort_sgd', 'adamw', 'bort_adamw'.")
  return tx, lr
