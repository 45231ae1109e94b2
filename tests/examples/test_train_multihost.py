"""Multi-host on one machine: two trainer processes joined over localhost (SLURM-style environment, gloo).

Each process reads only its half of every global batch (`examples.data`); together they must train what one
process trains on the whole batch, and a two-process run killed between checkpoints and resumed (each process
restoring its own grain iterator state from the Orbax checkpoint) must end bit-identical to an uninterrupted
two-process run.
"""

import json
import os
import pathlib
import random
import subprocess
import sys

import jax
import numpy as np

from examples import train
from examples.configs import default

REPO = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys
import jax
import numpy as np
from examples import train
from tests.examples.test_train_multihost import tiny_config

workdir, stop = sys.argv[1], int(sys.argv[2])
config = tiny_config(stop_after_steps=stop)
state, results = train.train_and_evaluate(config, workdir, resume=True)
leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))
np.savez(f"{workdir}/params_{jax.process_index()}.npz", **{jax.tree_util.keystr(k): v for k, v in leaves})
print("RESULT " + json.dumps(results))
"""


def tiny_config(**overrides):
  """2 epochs x 10 steps of a small MLP on 320 embedded images; checkpoints at steps 6, 10, 12, 18, 20."""
  config = default.get_config()
  config.update(dict(dataset="mnist_small", model="mlp", optimizer="bort_sgd", learning_rate=0.05, gamma=1e-2,
                     warmup_epochs=0.5, num_epochs=2, batch_size=32, eval_batch_size=500, train_limit=320,
                     checkpoint_every_steps=6, keep_checkpoints=2, progress_bar=False, **overrides))
  config.model_kwargs = {"hidden_sizes": (32,)}
  return config


def _two_processes(workdir: pathlib.Path, stop: int = 0) -> list[dict]:
  """Runs SCRIPT as processes 0 and 1 of one job; returns their results."""
  job = str(random.randrange(10**5, 10**6))  # the coordinator's port derives from it: avoid other jobs' ports
  procs = []
  for rank in (0, 1):
    env = dict(os.environ, SLURM_JOB_ID=job, SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
               SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), JAX_PLATFORMS="cpu",
               JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", BORT_MULTIHOST="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    procs.append(subprocess.Popen([sys.executable, "-c", SCRIPT, str(workdir), str(stop)], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return [json.loads(out.split("RESULT ", 1)[1]) for out, _ in outs]


def _params(workdir: pathlib.Path, rank: int) -> dict:
  with np.load(workdir / f"params_{rank}.npz") as f:
    return dict(f)


def test_two_processes_train_like_one_and_resume_bit_identical(tmp_path):
  full = _two_processes(tmp_path / "full")
  assert full[0] == full[1] and full[0]["completed"] and full[0]["step"] == 20
  data_files = sorted(p.name for p in (tmp_path / "full" / "checkpoints" / "20" / "data").glob("*.json"))
  assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]
  assert json.loads((tmp_path / "full" / "checkpoints" / "20" / "data" / data_files[1]).read_text()) == {
      "next_index": 20}

  single_state, single = train.train_and_evaluate(tiny_config(), str(tmp_path / "single"))
  reference = {jax.tree_util.keystr(k): v for k, v in
               jax.tree_util.tree_leaves_with_path(jax.device_get(single_state.params))}
  for rank in (0, 1):  # the same global batches; only the all-reduce's summation order differs
    got = _params(tmp_path / "full", rank)
    assert got.keys() == reference.keys()
    for key, value in reference.items():
      np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
  np.testing.assert_allclose(full[0]["train_loss"], single["train_loss"], rtol=1e-4)
  assert abs(full[0]["test_accuracy"] - single["test_accuracy"]) <= 0.002

  cut = _two_processes(tmp_path / "cut", stop=15)  # killed after step 15: last checkpoint at 12
  assert [r["completed"] for r in cut] == [False, False]
  resumed = _two_processes(tmp_path / "cut")
  assert resumed == full
  for rank in (0, 1):
    got, expected = _params(tmp_path / "cut", rank), _params(tmp_path / "full", rank)
    for key, value in expected.items():
      np.testing.assert_array_equal(got[key], value, err_msg=key)
