"""A diverging run stops at its first non-finite step, keeps its last finite checkpoint and says so."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from examples import checkpointing
from examples import optimizers
from examples import train
from examples.configs import default

REPO = pathlib.Path(__file__).resolve().parents[2]


def _reject_constant(name):
  raise ValueError(f"invalid JSON number {name}")


def _diverging_config(**overrides):
  """An MLP on 320 embedded images, 2 epochs × 10 steps, γ ~1e4 × its stable bound."""
  config = default.get_config()
  config.update(dict(dataset="mnist_small", model="mlp", optimizer="bort_sgd", learning_rate=0.05, momentum=0.9,
                     gamma=1e4, warmup_epochs=0.0, lr_schedule="constant", num_epochs=2, batch_size=32,
                     eval_batch_size=500, train_limit=320, checkpoint_every_steps=6, keep_checkpoints=2,
                     progress_bar=False))
  config.model_kwargs = {"hidden_sizes": (32,)}
  config.update(overrides)
  return config


def test_gamma_above_the_bound_warns_before_step_one_and_the_run_stops_at_divergence(tmp_path, capsys):
  config = _diverging_config()
  with pytest.warns(UserWarning, match=r"config.gamma=10000.0 exceeds bort_jax.stable_gamma's bound .* "
                                       r"for learning_rate=0.05"):
    state, results = train.train_and_evaluate(config, str(tmp_path))

  diverged = results["diverged"]
  assert results["status"] == "diverged" and not results["completed"]
  assert diverged["layer"].startswith("layers/") and diverged["gamma"] == 1e4
  assert 0 < diverged["stable_gamma"] < 1e4 and diverged["step"] <= 20
  assert results["step"] == diverged["step"] - 1 == int(state.step)
  assert diverged["message"] in capsys.readouterr().out
  assert diverged["message"].startswith(f"diverged at step {diverged['step']}: parameter {diverged['layer']} "
                                        "is not finite (gamma=10000.0, stable_gamma bound ")
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state.params)))

  text = (tmp_path / "results.json").read_text()
  written = json.loads(text, parse_constant=_reject_constant)  # NaN/Infinity would raise
  assert written["status"] == "diverged" and "test_accuracy" not in written
  assert written["diverged"] == {k: v for k, v in diverged.items()}

  template, _ = train.create_train_state(train.create_model(config, 10), optimizers.create_optimizer(config, 10)[0])
  checkpointer = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), every_steps=6, keep=2)
  assert checkpointer.latest_step() == results["step"]
  restored = jax.device_get(checkpointer.restore_latest(template))
  checkpointer.close()
  assert int(restored.step) == results["step"] and not np.any(restored.divergence)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored.params))
  jax.tree.map(np.testing.assert_array_equal, restored.params, jax.device_get(state.params))


def test_a_stable_run_records_no_divergence(tmp_path):
  _, results = train.train_and_evaluate(_diverging_config(gamma=1e-2, num_epochs=1), str(tmp_path))
  assert results["status"] == "completed" and "diverged" not in results


def test_cli_stops_with_the_message_and_draws_no_figure(tmp_path):
  workdir = tmp_path / "run"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run(
      [sys.executable, "-m", "examples.main", "--config", "examples/configs/mnist_small_demo.py", "--workdir",
       str(workdir), "--config.model=mlp", "--config.train_limit=256", "--config.num_epochs=2",
       "--config.gamma=1e4", "--config.progress_bar=False"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "exceeds bort_jax.stable_gamma's bound" in proc.stderr
  assert "diverged at step" in proc.stdout and "stable_gamma bound" in proc.stdout
  assert json.loads((workdir / "results.json").read_text(), parse_constant=_reject_constant)["status"] == "diverged"
  assert not (workdir / "explain.png").exists()
