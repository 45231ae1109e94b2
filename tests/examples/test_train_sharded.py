"""Data parallelism: on 4 fake CPU devices the sharded train step equals the single-device step.

Runs in a subprocess because the device count is fixed when JAX initialises
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`). The model has BatchNorm, so this also checks
that batch statistics are taken over the global batch, not per shard.
"""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json
import jax
import numpy as np
from examples import optimizers, sharding, train
from examples.configs import default

assert jax.device_count() == 4, jax.devices()
config = default.get_config()
config.update(dict(model="resnet18", dataset="mnist", optimizer="bort_sgd", gamma=1e-2,
                   learning_rate=0.1, lr_schedule="constant", warmup_epochs=0.0, batch_size=8))
config.model_kwargs = {"in_channels": 1, "stage_sizes": (1,), "widths": (4,)}
tx, _ = optimizers.create_optimizer(config, 10)
rng = np.random.default_rng(0)
batches = [{"image": rng.integers(0, 256, (8, 12, 12, 1), dtype=np.uint8),
            "label": rng.integers(0, 10, (8,), dtype=np.int32)} for _ in range(3)]

def run(devices):
  mesh = sharding.make_mesh(devices)
  state, graphs = train.create_train_state(train.create_model(config, 10), tx)
  state = sharding.replicate(state, mesh)
  step = train.make_train_step(graphs, tx, config, steps_per_epoch=10)
  for batch in batches:
    batch = sharding.shard_batch(batch, mesh)
    state, _ = step(state, batch)
  return state, batch

sharded, batch = run(jax.devices())
single, _ = run(jax.devices()[:1])
pairs = zip(jax.tree.leaves(jax.device_get(sharded)), jax.tree.leaves(jax.device_get(single)))
out = {
    "batch_spec": list(batch["image"].sharding.spec),
    "shard_rows": sorted(s.data.shape[0] for s in batch["image"].addressable_shards),
    "state_replicated": all(x.sharding.is_fully_replicated for x in jax.tree.leaves(sharded)),
    "max_abs_diff": max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                        for a, b in pairs),
    "steps": int(sharded.step),
}
try:
  sharding.check_batch_size(6, sharding.make_mesh())
  out["bad_batch_error"] = None
except ValueError as e:
  out["bad_batch_error"] = str(e)
print("RESULT " + json.dumps(out))
"""


def test_sharded_step_equals_single_device_step():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT ", 1)[1])
  assert out["batch_spec"] == ["data"]
  assert out["shard_rows"] == [2, 2, 2, 2]
  assert out["state_replicated"]
  assert out["steps"] == 3
  assert out["max_abs_diff"] < 1e-5, out
  assert "config.batch_size=6 is not accepted" in out["bad_batch_error"]
  assert "multiples of the device count 4" in out["bad_batch_error"]
