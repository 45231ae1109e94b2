"""Resume exactness: a run killed between checkpoints and resumed ends bit-identical to an uninterrupted one.

Covers the whole state: parameters, optimizer state, BatchNorm statistics (tiny ResNet), the step
counter, the per-epoch metric sums and the data order (a pure function of seed, epoch and step).
"""

import json

import jax
import numpy as np
import pytest

import bort_jax
from examples import metrics_io
from examples import train
from examples.configs import default

pytestmark = pytest.mark.filterwarnings("error::bort_jax.ViewGuessWarning")


def _resume_config(model: str):
  """2 epochs x 10 steps on 320 embedded images; checkpoints at steps 6, 10, 12, 18 and 20."""
  config = default.get_config()
  config.update(dict(dataset="mnist_small", model=model, optimizer="bort_sgd", learning_rate=0.05,
                     gamma=1e-2, warmup_epochs=0.5, num_epochs=2, batch_size=32, eval_batch_size=500,
                     train_limit=320, checkpoint_every_steps=6, keep_checkpoints=2, progress_bar=False))
  if model == "resnet18":  # BatchNorm statistics must survive the restart as well.
    config.model_kwargs = {"in_channels": 1, "stage_sizes": (1,), "widths": (4,)}
  else:
    config.model_kwargs = {"hidden_sizes": (32,)}
  return config


@pytest.mark.parametrize("model", ["mlp", "resnet18"])
def test_killed_and_resumed_run_ends_bit_identical(tmp_path, model):
  config = _resume_config(model)
  full_state, full = train.train_and_evaluate(config, str(tmp_path / "full"))

  config.stop_after_steps = 15  # "killed" after step 15: steps 13-15 are lost (last checkpoint 12).
  _, partial = train.train_and_evaluate(config, str(tmp_path / "cut"))
  assert not partial["completed"] and partial["step"] == 15
  assert not (tmp_path / "cut" / "results.json").exists()
  config.stop_after_steps = 0
  resumed_state, resumed = train.train_and_evaluate(config, str(tmp_path / "cut"), resume=True)

  assert resumed["completed"] and resumed["step"] == full["step"] == 20
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed_state),
               jax.device_get(full_state))
  log = lambda run: metrics_io.MetricsLog(str(tmp_path / run / "metrics.jsonl")).read()
  read = lambda run: [{k: v for k, v in r.items() if k not in ("seconds", "timed_steps")} for r in log(run)]
  assert read("cut") == read("full") and [r["epoch"] for r in read("full")] == [1, 2]
  # epoch 2 resumed at step 12: its 8 steps timed; the restarted process did not see steps 11-12
  assert [r["timed_steps"] for r in log("full")] == [10, 10] and [r["timed_steps"] for r in log("cut")] == [10, 8]
  assert read("full")[1]["train_loss"] < read("full")[0]["train_loss"]
  results = json.loads((tmp_path / "full" / "results.json").read_text())
  assert results["test_accuracy"] == read("full")[-1]["test_accuracy"]
  views = bort_jax.nnx_views(train.create_model(config, 10))  # as the trainer reads them: no guessed view
  assert set(results["orthogonality_gap"]) == set(metrics_io.gap_metrics(
      jax.device_get(bort_jax.orthogonality_gap(full_state.params, views=views))))
  assert (tmp_path / "full" / "curves.png").exists()
