"""Sharded kernels (tensor parallel, FSDP, 2-D, heads, stacked) on Explicit and Auto meshes of 8 fake CPU devices.

The checks run in a subprocess (tests/sharded_script.py) because the device count must be set before jax starts.
"""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).with_name("sharded_script.py")
REPO = SCRIPT.parents[1]


@pytest.fixture(scope="module")
def script_output():
  # The script's own folder comes first on its path: name this checkout, not whichever bort_jax is installed.
  path = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
  flags = " ".join(filter(None, (os.environ.get("XLA_FLAGS"), "--xla_force_host_platform_device_count=8")))
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", PYTHONPATH=path)
  result = subprocess.run([sys.executable, "-W", "ignore", str(SCRIPT)], env=env, capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result.stdout


def test_every_transform_on_every_sharded_layout_equals_the_single_device_result(script_output):
  out = script_output
  assert "ALL_SHARDED_CHECKS_PASSED" in out, out[-3000:]
  worst = float(out.split("WORST_RELATIVE_ERROR")[1].split()[0])
  assert worst <= 1e-6


def test_l2_full_update_all_reduces_partial_grams_and_gathers_no_kernel(script_output):
  lines = dict(line.split(" ", 1) for line in script_output.splitlines() if "_COLLECTIVES " in line)
  no_gather = ast.literal_eval(lines["NO_GATHER_COLLECTIVES"])
  assert "all-gather" not in no_gather, no_gather
  assert no_gather.get("all-reduce"), no_gather  # the partial Grams (and adaptive α's norms) are reduced
  # A tensor-parallel 3×3 conv: its fan-in Gram (144²) would exceed the kernel (3·3·16·32), so the kernel is
  # gathered once and the 32×32 Gram formed instead.
  conv_tp = ast.literal_eval(lines["CONV_TP_COLLECTIVES"])
  assert conv_tp.get("all-gather") == ["f32[3,3,16,32]"], conv_tp  # once, not once per Gram operand


def test_a_kernel_with_sharded_gram_units_is_gathered_once_and_each_device_computes_its_share(script_output):
  results = {}
  for line in script_output.splitlines():
    if line.startswith("GATHER_ONCE "):
      _, axis_type, name, mode, result = line.split(" ", 4)
      results[axis_type, name, mode] = ast.literal_eval(result)
  assert len(results) == 20, results
  for (axis_type, name, mode), result in results.items():
    case = (axis_type, name, mode, result)
    assert result["error"] <= 1e-6, case
    # Gram rows and Δ's slice per device: 1/n of the single-device FLOPs, plus elementwise work on the Gram.
    assert result["flops_ratio"] <= 1.25 / result["devices"], case
    # Auto meshes hide the specs from the trace: there the partitioner chooses (on jax 0.10.2 it gathers once
    # per product but keeps the FLOPs per device at 1/n).
    if axis_type == "Explicit":
      assert len(result["gathers"]) == 1 and result["keeps_spec"], case
