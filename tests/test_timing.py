"""benchmarks/timing.py: the single-thread mode holds (CPU/wall ≤ 1.15), and both benchmarks time through it."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `benchmarks` lives beside `tests`
from benchmarks import accelerator_step  # noqa: E402
from benchmarks import timing  # noqa: E402
from benchmarks import update_speed  # noqa: E402

pytestmark = pytest.mark.filterwarnings("error::bort_jax.ViewGuessWarning")  # the benchmarks declare every view

# Pinned before jax's backend starts, as `update_speed --single-thread` does; a 4 GFLOP matmul is large enough
# for XLA to split it over threads when it may.
PINNED_RUN = """
import json
import jax.numpy as jnp
from benchmarks import timing, update_speed
timing.pin_to_one_cpu()
samplers = [update_speed.gemm_sampler(4e9, jnp.float32), update_speed.optimizer_sampler(
    update_speed.sgd_tx(), {"w": jnp.ones((512, 512))}, {"w": jnp.ones((512, 512))})]
rows = [dict(name=name, seconds=wall, cpu_seconds=cpu) for name, (wall, cpu)
        in zip(["GEMM", "sgd"], timing.interleaved_medians(samplers, repeats=3, warmup=1))]
timing.check_single_threaded(rows)
print(json.dumps(dict(rows=rows, cpus=sorted(timing.thread_cpus()))))
"""


def test_pinned_run_uses_one_cpu():
  # A subprocess: the pin must come before the XLA backend starts, and it would stay on the test process.
  result = subprocess.run([sys.executable, "-c", PINNED_RUN], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.splitlines()[-1])
  assert len(report["cpus"]) == 1, report["cpus"]  # every thread, XLA's included, on the same single CPU
  for row in report["rows"]:
    assert row["cpu_seconds"] <= timing.MAX_CPU_PER_WALL * row["seconds"], row


def test_check_single_threaded_names_the_row_and_what_was_tried():
  rows = [dict(name="fine", seconds=1.0, cpu_seconds=0.6), dict(name="leaky", seconds=1.0, cpu_seconds=1.9)]
  with pytest.raises(RuntimeError, match=r"leaky: 1\.90.*sched_setaffinity"):
    timing.check_single_threaded(rows)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs a process allowed on 2 CPUs")
def test_check_single_threaded_catches_an_unpinned_process():
  # CPU/wall alone passes here, as it does for a multi-threaded run on a loaded machine.
  with pytest.raises(RuntimeError, match=r"threads on CPUs \[\d+, \d+.*in no row"):
    timing.check_single_threaded([dict(name="fine", seconds=1.0, cpu_seconds=0.6)])


def test_both_benchmarks_time_through_timing(monkeypatch):
  calls = []
  for name in ("sampler", "interleaved_medians"):
    original = getattr(timing, name)
    monkeypatch.setattr(timing, name, lambda *a, _name=name, _f=original, **k: calls.append(_name) or _f(*a, **k))
  tree = {"dense": {"kernel": jax.ShapeDtypeStruct((4, 6), jnp.float32)}}
  update_speed.benchmark_tree(tree, modes=("l2-full",), repeats=1, warmup=0, with_torch=False)
  assert calls == ["sampler"] * 3 + ["interleaved_medians"]  # rows optax.sgd, bort_sgd, GEMM
  calls.clear()
  params = {"dense": {"kernel": jnp.ones((4, 6))}}
  rows = accelerator_step.correction_rows(params, params, correction_flops=1)
  assert len(accelerator_step.timed(rows, repeats=1)) == len(rows)
  assert calls == ["sampler"] * len(rows) + ["interleaved_medians"]
