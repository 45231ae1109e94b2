"""`benchmarks/build_imagenet_configs.py`: every ImageNet config builds, steps twice and reports its Bort cost."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # `benchmarks` lives beside `tests`
from benchmarks import build_imagenet_configs as build  # noqa: E402


@pytest.mark.parametrize("image_size, window", [(224, 7), (64, 4), (32, 4), (448, 7)])
def test_swin_window_tiles_every_stage(image_size, window):
  assert build.swin_window(image_size) == window


def test_every_config_builds_steps_and_reports_the_overhead(tmp_path):
  """All configs at width / 16, 32 px, one block per stage, in one process (the init compiles are shared)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  raw = tmp_path / "build.json"
  result = subprocess.run([sys.executable, "-m", "benchmarks.build_imagenet_configs", "--width-scale", "0.0625",
                           "--image-size", "32", "--min-depth", "--json", str(raw)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  results = {r["name"]: r for r in json.loads(raw.read_text())}
  assert set(results) == set(build.CHECKS)
  for name, r in results.items():
    assert r["guess_warnings"] == 0 and r["guessed"] == 0, name
    assert r["kernels"] > 0 and r["sources"] == {"nnx_views": r["kernels"]}, name
    assert len(r["losses"]) == 2 and all(math.isfinite(v) for v in r["losses"]), name
    assert r["flops"] > r["baseline_flops"] > 0, name
    assert f"{r['config']} (vs {r['baseline']})" in result.stdout and "Bort overhead +" in result.stdout
