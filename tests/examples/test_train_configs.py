"""One training step and one evaluation step for every example config, with the models shrunk.

Each config keeps its optimizer, loss options and precision; only the architecture's sizes are cut
(`TINY`), warmup is off and the images are 28x28 (MNIST-like) or 32x32 RGB, so a step compiles in
seconds on CPU.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bort_jax
from examples import optimizers
from examples import train

# The trainer reads exact views from the NNX module types: a user training a shipped config sees no guess.
pytestmark = pytest.mark.filterwarnings("error::bort_jax.ViewGuessWarning")

TINY = {
    "mlp": {"hidden_sizes": (16,)},
    "lenet5": {},
    "resnet18": {"stage_sizes": (1, 1), "widths": (4, 8)},
    "resnet20": {"stage_sizes": (1, 1), "widths": (4, 8)},
    "resnet50": {"stage_sizes": (1, 1), "widths": (4, 8)},
    "vgg16": {"widths": (4, 4, 4, 4, 4), "image_size": 32, "fc_width": 8},
    "deit_s": {"dim": 12, "depth": 1, "image_size": 32},
    "vit_tiny": {"dim": 12, "depth": 1},
}
CASES = [("mnist_small_demo", None), ("mnist_mlp", "dbort_sgd"), ("fashion_mnist_mlp", "bort_adamw"),
         ("cifar10_resnet18", None), ("imagenet_resnet50", None), ("imagenet_vgg16", None),
         ("imagenet_deit_s", None), ("cifar10_resnet20", "dbort_sgd"), ("cifar10_vit_tiny", "dbort_sgd")]


def _tiny(name, recipe):
  module = importlib.import_module(f"examples.configs.{name}")
  config = module.get_config(*([recipe] if recipe else []))
  config.model_kwargs.update(TINY[config.model])
  config.batch_size = 4
  config.warmup_epochs = 0.0  # the first step must already move the weights.
  side, channels = (28, 1) if "mnist" in config.dataset else (32, 3)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (4, side, side, channels), dtype=np.uint8),
           "label": rng.integers(0, 10, (4,), dtype=np.int32)}
  return config, batch


@pytest.mark.parametrize("name,recipe", CASES)
def test_one_step_per_config(name, recipe):
  config, batch = _tiny(name, recipe)
  train.validate(config)
  model = train.create_model(config, 10)
  views = bort_jax.nnx_views(model)
  tx, _ = optimizers.create_optimizer(config, steps_per_epoch=10, views=views)
  state, graphs = train.create_train_state(model, tx)
  before = jax.tree.map(np.array, state.params)  # a copy: the step donates the state
  step = train.make_train_step(graphs, tx, config, steps_per_epoch=10)
  if config.half_precision:  # bf16 compute, f32 parameters.
    assert "bf16[" in str(jax.make_jaxpr(step)(state, batch))
  state, metrics = step(state, batch)

  assert int(state.step) == 1 and int(state.epoch_metrics["count"]) == 4
  assert np.isfinite(float(metrics["total_loss"]))
  kernels_moved = []
  for (path, old), new in zip(jax.tree_util.tree_leaves_with_path(before),
                              jax.tree.leaves(jax.device_get(state.params))):
    assert new.dtype == jnp.float32 and np.all(np.isfinite(new)), path
    if "kernel" in jax.tree_util.keystr(path):
      kernels_moved.append(not np.array_equal(old, new))
  assert kernels_moved and all(kernels_moved)
  assert bort_jax.orthogonality_gap(state.params, views=views)  # the trainer's gap metric, with the same views

  out = train.make_eval_step(graphs, config)(
      state.params, state.model_state, dict(batch, mask=np.array([True, True, True, False])))
  assert float(out["count"]) == 3 and 0 <= float(out["correct"]) <= 3
  assert np.isfinite(float(out["loss"]))
