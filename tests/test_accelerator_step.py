"""Smoke run of `benchmarks.accelerator_step --tiny` (no timing assertions) and its torch loop's arithmetic."""

import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bort_jax

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `benchmarks` lives beside `tests`
from benchmarks import accelerator_step  # noqa: E402

# The benchmark reads every view from the model: a guess would mean it times something other than it says.
pytestmark = pytest.mark.filterwarnings("error::bort_jax.ViewGuessWarning")
TRAIN_ROWS = ["train optax.sgd", "train bort_sgd", "train optax.adamw", "train bort_adamw"]


def table_rows(section):
  """{row name: cells} of the Markdown table in `section`, header and rule left out."""
  rows = {}
  for line in section.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if line.startswith("| ") and cells[0] != "row":
      rows[cells[0]] = cells[1:]
  return rows


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
  out = tmp_path_factory.mktemp("accelerator_step") / "tiny.md"
  # A subprocess runs the documented command line, with a fresh XLA backend.
  result = subprocess.run([sys.executable, "-m", "benchmarks.accelerator_step", "--tiny", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "ViewGuessWarning" not in result.stderr
  return out.read_text(), result.stdout


def test_tiny_run_reports_every_model_with_finite_positive_times(tiny_report):
  report, stdout = tiny_report
  assert report in stdout  # the same Markdown is printed
  assert "device: " in report and f"jax {jax.__version__}" in report and "total wall time" in report
  sections = report.split("### ")[1:]
  assert [s.splitlines()[0] for s in sections] == list(accelerator_step.FULL["models"])
  for section in sections:
    rows = table_rows(section)
    names = list(rows)
    assert names[:4] == TRAIN_ROWS
    corrections = [n for n in names if n.startswith("correction ")]
    assert corrections, names
    assert set(names) <= set(TRAIN_ROWS + corrections) | {f"torch loop {p}" for p in accelerator_step.TORCH_PRECISIONS}
    for name, (ms, *_rest) in rows.items():
      assert math.isfinite(float(ms)) and float(ms) > 0, (name, ms)
    assert "batch 4, 32x32x3" in section
    assert "bort_sgd vs optax.sgd: measured overhead" in section
    assert "bort_adamw vs optax.adamw: measured overhead" in section


def test_torch_loop_matches_add_bort_correction():
  """The torch rows compute what add_bort_correction adds: their timing compares like with like."""
  pytest.importorskip("torch")
  params = {"conv": {"kernel": jax.random.normal(jax.random.key(0), (3, 3, 2, 4)) / 4,
                     "bias": jnp.ones((4,))},
            "dense": {"kernel": jax.random.normal(jax.random.key(1), (4, 6)) / 2}}
  views = [("conv/kernel", bort_jax.KernelView(in_axes=(0, 1, 2), out_axes=(3,)))]  # an nn.Conv
  grads = jax.tree.map(lambda p: 1e-3 * p, params)
  tx = bort_jax.add_bort_correction(0.5, views=views)
  expected, _ = tx.update(grads, tx.init(params), params)
  got = accelerator_step.torch_correction(accelerator_step.torch_kernels(params, "cpu", 1e-3, views),
                                          accelerator_step.torch_kernels(params, "cpu", views=views), "highest",
                                          gamma=0.5)
  want = accelerator_step.torch_kernels(expected, "cpu", views=views)
  assert len(got) == len(want) == 2
  for g, w in zip(got, want):
    np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-6)
