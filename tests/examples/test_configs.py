"""Example configs: every file and recipe validates; bad values fail up front, naming field and choices."""

import importlib
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from examples import optimizers
from examples import train
from examples.configs import default

CONFIG_DIR = pathlib.Path(train.__file__).parent / "configs"
CONFIG_NAMES = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "__init__")
REQUIRED = {"mnist_mlp", "mnist_lenet", "fashion_mnist_mlp", "fashion_mnist_lenet", "cifar10_resnet18",
            "imagenet_resnet50", "imagenet_vgg16", "imagenet_deit_s", "imagenet_swin_s", "mnist_small_demo"}


def _module(name):
  return importlib.import_module(f"examples.configs.{name}")


def test_required_configs_exist():
  assert REQUIRED <= set(CONFIG_NAMES)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_config_and_recipe_validates(name):
  module = _module(name)
  train.validate(module.get_config())
  for recipe in getattr(module, "RECIPES", {}):
    config = module.get_config(recipe)
    assert config.optimizer == module.RECIPES[recipe]["optimizer"]
    train.validate(config)


@pytest.mark.parametrize("name", sorted(n for n in CONFIG_NAMES if hasattr(_module(n), "RECIPES")))
def test_bort_recipes_change_only_the_correction(name):
  """Bort-vs-baseline comparisons change one thing: the optimizer name and its Bort fields."""
  recipes = _module(name).RECIPES
  pairs = [(base, "bort_" + base) for base in ("sgd", "adamw", "lamb") if base in recipes]
  assert pairs and all(bort in recipes for _, bort in pairs)
  for base, bort in pairs:
    extra = {k: v for k, v in recipes[bort].items() if recipes[base].get(k) != v}
    assert set(extra) <= {"optimizer", "gamma", "alpha", "adaptive_alpha", "bort_mode"}, extra


def test_unknown_recipe_lists_the_recipes():
  with pytest.raises(ValueError, match=r"'adam' is not accepted; accepted values: 'sgd', 'bort_sgd'"):
    _module("mnist_lenet").get_config("adam")


BAD_VALUES = [
    ("optimizer", "adam", "'sgd', 'bort_sgd', 'adamw', 'bort_adamw', 'lamb', 'bort_lamb'"),
    ("grad_clip_norm", -1.0, "a float >= 0 (0: no clipping)"),
    ("model", "resnet1000", "'lenet5'"),
    ("dataset", "svhn", "'mnist'"),
    ("lr_schedule", "step", "'cosine', 'constant'"),
    ("augment", "autoaugment", "'none', 'cifar', 'imagenet'"),
    ("loss", "hinge", "'cross_entropy', 'bcos_bce'"),
    ("bort_mode", "l3-full", "'l2-full'"),
    ("explain_baseline", "bort_sgd", "'', 'sgd', 'adamw', 'lamb'"),
    ("learning_rate", -0.1, "a float > 0"),
    ("gamma", -1.0, "a float >= 0"),
    ("alpha", 0.0, "a float > 0"),
    ("momentum", 1.0, "a float in [0, 1)"),
    ("label_smoothing", 1.0, "a float in [0, 1)"),
    ("batch_size", 0, "an int > 0"),
    ("num_epochs", 0, "an int > 0"),
    ("keep_checkpoints", 0, "an int > 0"),
    ("checkpoint_every_steps", -5, "an int >= 0"),
    ("dbort_beta", 0.0, "a float > 0"),
    ("bort_rules", (("fc3/kernel", -1.0),), "a sequence of (regex, scale >= 0) pairs"),
    ("bort_rules", (("fc3/kernel",),), "a sequence of (regex, scale >= 0) pairs"),
    ("bort_rules", (("fc[3", 0.0),), "with valid regexes"),
]


@pytest.mark.parametrize("field,value,accepted", BAD_VALUES)
def test_bad_value_names_field_and_accepted_values(field, value, accepted):
  config = _module("mnist_small_demo").get_config()
  config[field] = value
  with pytest.raises(ValueError, match=re.escape(f"config.{field}={value!r} is not accepted") +
                     ".*" + re.escape(accepted)):
    train.validate(config)


@pytest.mark.parametrize("name", list(optimizers.OPTIMIZERS))
def test_optimizer_registry_drives_validation_and_construction(name):
  """Every registered name validates and builds; `bort` decides whether `bort_mode` is checked."""
  config = _module("mnist_small_demo").get_config()
  config.optimizer = name
  train.validate(config)
  tx, _ = optimizers.create_optimizer(config, 10)
  params = {"kernel": jnp.ones((3, 2))}
  assert jax.tree.structure(tx.update(params, tx.init(params), params)[0]) == jax.tree.structure(params)
  config.bort_mode = "l3-full"
  if optimizers.OPTIMIZERS[name].bort:
    with pytest.raises(ValueError, match=r"config\.bort_mode='l3-full' is not accepted"):
      train.validate(config)
  else:
    train.validate(config)  # a baseline ignores the Bort fields


def test_bort_rules_scale_the_correction_per_kernel():
  """A (regex, 0) rule leaves that kernel's update exactly SGD's; the other kernels keep their correction."""
  config = _module("mnist_lenet").get_config("bort_sgd")
  config.bort_rules = (("fc3/kernel", 0.0),)
  config.learning_rate, config.warmup_epochs = 0.1, 0.0
  bort_tx, _ = optimizers.create_optimizer(config, 10)
  config.optimizer = "sgd"
  sgd_tx, _ = optimizers.create_optimizer(config, 10)
  state, _ = train.create_train_state(train.create_model(config, 10), sgd_tx)
  grads = jax.tree.map(jnp.ones_like, state.params)
  update = lambda tx: tx.update(grads, tx.init(state.params), state.params)[0]
  bort, sgd = update(bort_tx), update(sgd_tx)
  np.testing.assert_allclose(bort["fc3"]["kernel"], sgd["fc3"]["kernel"], rtol=1e-6)
  np.testing.assert_allclose(bort["fc3"]["bias"], sgd["fc3"]["bias"], rtol=1e-6)
  assert not np.allclose(bort["fc2"]["kernel"], sgd["fc2"]["kernel"], rtol=1e-4)


def test_grad_clip_norm_clips_the_gradient_before_the_correction():
  """The update is the unclipped Bort-SGD's on the gradient scaled to global norm 1; Δ itself is not clipped."""
  config = _module("mnist_small_demo").get_config()
  config.update(dict(optimizer="bort_sgd", gamma=0.5, warmup_epochs=0.0, grad_clip_norm=1.0))
  clipped_tx, _ = optimizers.create_optimizer(config, 10)
  config.grad_clip_norm = 0.0
  plain_tx, _ = optimizers.create_optimizer(config, 10)
  params = {"fc": {"kernel": jnp.eye(4)[:, :3] * 1.5, "bias": jnp.ones(3)}}
  grads = jax.tree.map(lambda p: 10.0 * jnp.ones_like(p), params)
  scaled = jax.tree.map(lambda g: g / optax.tree.norm(grads), grads)
  update = lambda tx, g: tx.update(g, tx.init(params), params)[0]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), update(clipped_tx, grads),
               update(plain_tx, scaled))
  assert not np.allclose(update(clipped_tx, grads)["fc"]["bias"], update(plain_tx, grads)["fc"]["bias"])
  assert _module("imagenet_swin_s").get_config().grad_clip_norm == 5.0


def test_cross_field_checks():
  config = default.get_config()
  config.warmup_epochs = float(config.num_epochs)
  with pytest.raises(ValueError, match=r"config\.warmup_epochs=10\.0.*a float < num_epochs=10"):
    train.validate(config)
  config = default.get_config()
  config.momentum, config.nesterov = 0.0, True
  with pytest.raises(ValueError, match=r"config\.nesterov=True.*False when momentum == 0"):
    train.validate(config)
  config = default.get_config()
  config.model, config.dbort_lambda = "vgg16", 1e-3
  with pytest.raises(ValueError, match=r"config\.model='vgg16'.*dbort_lambda > 0.*'lenet5', 'mlp'"):
    train.validate(config)


def test_bad_config_fails_before_anything_is_written(tmp_path):
  config = _module("mnist_small_demo").get_config()
  config.optimizer = "adam"
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=r"config\.optimizer='adam'"):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


SWEPT = {"mnist_mlp": "gamma_sweep_mnist_mlp.jsonl", "mnist_lenet": "gamma_sweep_mnist_lenet.jsonl",
         "fashion_mnist_mlp": "gamma_sweep_fashion_mnist_mlp.jsonl",
         "fashion_mnist_lenet": "gamma_sweep_fashion_mnist_lenet.jsonl"}


@pytest.mark.parametrize("name", sorted(SWEPT))
def test_recipes_are_the_settings_the_committed_gamma_sweep_selected(name):
  """The recipes cite `benchmarks/results/gamma_sweep_*.md`: re-select from its records (validation only)."""
  from benchmarks import gamma_sweep_report as sweep_report
  from benchmarks import jsonl_records
  path = pathlib.Path(__file__).resolve().parents[2] / "benchmarks/results" / SWEPT[name]
  recipes = _module(name).RECIPES
  records = jsonl_records.read_records(path)
  for family in ("sgd", "adamw"):
    chosen = sweep_report.select(records, family, sweep_report.PSNR_METRIC[records[0]["model"]])
    baseline, bort = chosen["baseline"], chosen["bort_max_psnr"]
    for recipe in (family, f"bort_{family}"):
      assert recipes[recipe]["learning_rate"] == baseline["learning_rate"]
      assert recipes[recipe]["weight_decay"] == baseline["weight_decay"]
    config = _module(name).get_config(f"bort_{family}")
    assert (config.gamma, config.bort_mode) == (bort["gamma"], bort["mode"])
    assert config.adaptive_alpha == (bort["alpha"] == "adaptive")
    assert bort["alpha"] == "adaptive" or config.alpha == float(bort["alpha"])


def test_recipe_bort_fields_read_the_sweeps_alpha_and_refuse_others():
  from examples.configs import mnist_lenet
  assert mnist_lenet.bort_fields(0.1, "l2-full", "adaptive")["adaptive_alpha"] is True
  assert mnist_lenet.bort_fields(0.1, "l2-full", "2")["alpha"] == 2.0
  with pytest.raises(ValueError, match=r"alpha 'ada' is not accepted; accepted values: 'adaptive' or a number"):
    mnist_lenet.bort_fields(0.1, "l2-full", "ada")
