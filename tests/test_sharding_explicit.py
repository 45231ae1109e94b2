"""Sharded kernels (tensor parallel, FSDP, 2-D, heads, stacked) on Explicit and Auto meshes of 8 fake CPU devices.

The checks run in a subprocess (tests/sharded_script.py) because the device count must be set before jax starts.
"""

import ast
import os
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).with_name("sharded_script.py")


def run_script(*args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-W", "ignore", str(SCRIPT), *args], env=env, capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result.stdout


def test_every_transform_on_every_sharded_layout_equals_the_single_device_result():
  out = run_script()
  assert "ALL_SHARDED_CHECKS_PASSED" in out, out[-3000:]
  worst = float(out.split("WORST_RELATIVE_ERROR")[1].split()[0])
  assert worst <= 1e-6


def test_l2_full_update_all_reduces_partial_grams_and_gathers_no_kernel():
  lines = dict(line.split(" ", 1) for line in run_script("--hlo").splitlines() if "_COLLECTIVES " in line)
  no_gather = ast.literal_eval(lines["NO_GATHER_COLLECTIVES"])
  assert "all-gather" not in no_gather, no_gather
  assert no_gather.get("all-reduce"), no_gather  # the partial Grams (and adaptive α's norms) are reduced
  # A tensor-parallel 3×3 conv: its fan-in Gram (144²) would exceed the kernel (3·3·16·32), so the kernel is
  # gathered once and the 32×32 Gram formed instead.
  conv_tp = ast.literal_eval(lines["CONV_TP_COLLECTIVES"])
  assert conv_tp.get("all-gather") == ["f32[3,3,16,32]"], conv_tp  # once, not once per Gram operand
