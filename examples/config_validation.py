"""Up-front validation of a training config: every bad value fails before any data is loaded.

Each error names the offending field and the accepted values, e.g.
`ValueError: config.optimizer='adam' is not accepted; accepted values: 'sgd', 'bort_sgd', ...`.
"""

from collections.abc import Callable
from collections.abc import Iterable
import numbers

import ml_collections

from examples import optimizers

LR_SCHEDULES = ("cosine", "constant")
AUGMENTATIONS = ("none", "cifar", "imagenet")
LOSSES = ("cross_entropy", "bcos_bce")


def _fail(field: str, value, accepted: str):
  raise ValueError(f"config.{field}={value!r} is not accepted; accepted values: {accepted}.")


def _one_of(config, field: str, choices: Iterable[str]):
  choices = tuple(choices)
  value = config[field]
  if value not in choices:
    _fail(field, value, ", ".join(repr(c) for c in choices))


def _number(config, field: str, ok: Callable[[float], bool], accepted: str, integer: bool = False):
  value = config[field]
  kind = numbers.Integral if integer else numbers.Real
  if isinstance(value, bool) or not isinstance(value, kind) or not ok(value):
    _fail(field, value, accepted)


def _check_rules(config, field: str, check_rules: Callable):
  try:
    check_rules(config[field])
  except ValueError as e:
    _fail(field, config[field], "a sequence of (regex, scale >= 0) pairs with valid regexes, e.g. "
          f"(('fc3/kernel', 0.0),) ({e})")


def validate_config(config: ml_collections.ConfigDict, *, model_names: Iterable[str],
                    dataset_names: Iterable[str] | None = None, bort_modes: Iterable[str] = (),
                    check_rules: Callable | None = None):
  """Raises ValueError naming the first invalid field of `config` and the values it accepts.

  Args:
    config: a config built from `examples/configs/default.py`.
    model_names: names `create_model` accepts.
    dataset_names: names the loader accepts; None skips the check (TFDS accepts open-ended names).
    bort_modes: the correction modes of `bort_jax` (checked only for the Bort optimizers).
    check_rules: raises ValueError for bad `config.bort_rules` (e.g. building `bort_jax.add_bort_correction`
      with them); None skips the check.
  """
  _one_of(config, "model", model_names)
  if dataset_names is not None:
    _one_of(config, "dataset", dataset_names)
  elif not isinstance(config.dataset, str) or not config.dataset:
    _fail("dataset", config.dataset, "a non-empty dataset name")
  _one_of(config, "optimizer", optimizers.OPTIMIZERS)
  _one_of(config, "lr_schedule", LR_SCHEDULES)
  _one_of(config, "augment", AUGMENTATIONS)
  _one_of(config, "loss", LOSSES)
  _one_of(config, "explain_baseline", ("",) + tuple(n for n, spec in optimizers.OPTIMIZERS.items() if not spec.bort))
  if optimizers.OPTIMIZERS[config.optimizer].bort and bort_modes:
    _one_of(config, "bort_mode", bort_modes)

  positive = lambda v: v > 0
  non_negative = lambda v: v >= 0
  unit_interval = lambda v: 0 <= v < 1
  _number(config, "learning_rate", positive, "a float > 0")
  _number(config, "warmup_epochs", non_negative, "a float >= 0")
  _number(config, "momentum", unit_interval, "a float in [0, 1)")
  _number(config, "weight_decay", non_negative, "a float >= 0")
  _number(config, "b1", unit_interval, "a float in [0, 1)")
  _number(config, "b2", unit_interval, "a float in [0, 1)")
  _number(config, "eps", positive, "a float > 0")
  _number(config, "grad_clip_norm", non_negative, "a float >= 0 (0: no clipping)")
  _number(config, "gamma", non_negative, "a float >= 0")
  _number(config, "alpha", positive, "a float > 0")
  _number(config, "dbort_lambda", non_negative, "a float >= 0")
  _number(config, "dbort_beta", positive, "a float > 0")
  _number(config, "label_smoothing", unit_interval, "a float in [0, 1)")
  _number(config, "batch_size", positive, "an int > 0", integer=True)
  _number(config, "eval_batch_size", positive, "an int > 0", integer=True)
  _number(config, "num_epochs", positive, "an int > 0", integer=True)
  _number(config, "seed", non_negative, "an int >= 0", integer=True)
  _number(config, "image_size", non_negative, "an int >= 0 (0: the pipeline's default)", integer=True)
  _number(config, "num_classes", non_negative, "an int >= 0 (0: the dataset's)", integer=True)
  _number(config, "train_limit", non_negative, "an int >= 0 (0: the whole split)", integer=True)
  _number(config, "data_workers", non_negative, "an int >= 0 (0: in the training process)", integer=True)
  _number(config, "checkpoint_every_steps", non_negative, "an int >= 0 (0: only at the end)",
          integer=True)
  _number(config, "keep_checkpoints", positive, "an int > 0", integer=True)
  _number(config, "stop_after_steps", non_negative, "an int >= 0 (0: never)", integer=True)
  if check_rules is not None:
    _check_rules(config, "bort_rules", check_rules)
  if config.warmup_epochs >= config.num_epochs:
    _fail("warmup_epochs", config.warmup_epochs, f"a float < num_epochs={config.num_epochs}")
  if config.nesterov and config.momentum == 0:
    _fail("nesterov", config.nesterov, "False when momentum == 0")
