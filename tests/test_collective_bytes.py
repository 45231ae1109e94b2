"""The HLO collective parser of `benchmarks.collective_bytes`, and its `--tiny` run on 8 fake CPU devices."""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `benchmarks` lives beside `tests`
from benchmarks import collective_bytes as cb  # noqa: E402

HLO = """
HloModule m
ENTRY %main {
  %all-reduce.1 = f32[32,32]{1,0} all-reduce(%dot.1), channel_id=1, to_apply=%add
  %all-reduce.14 = (f32[32,32]{1,0}, f32[32]{0}, bf16[4,8]{1,0}) all-reduce(%a, %b, %c), to_apply=%add
  %get-tuple-element = f32[32]{0} get-tuple-element(%all-reduce.14), index=1
  %all-gather-start = (f32[8,32]{1,0}, f32[64,32]{1,0}) all-gather-start(%p), dimensions={0}
  %all-gather-done = f32[64,32]{1,0} all-gather-done(%all-gather-start)
  %ag.2 = ((f32[1,4]{1,0}, f32[1,8]{1,0}), (f32[8,4]{1,0}, f32[8,8]{1,0})) all-gather-start(%q, %r)
  %all-reduce-start = f32[16]{0} all-reduce-start(%x), to_apply=%add
  %all-reduce-done = f32[16]{0} all-reduce-done(%all-reduce-start)
  %cp = (f32[4]{0}, f32[4]{0}, u32[], u32[]) collective-permute-start(%y), source_target_pairs={{0,1}}
  %rs = f32[8,128]{1,0:T(8,128)} reduce-scatter(%z), dimensions={0}, to_apply=%add
  ROOT %a2a = s4[3]{0} all-to-all(%w), dimensions={0}
}
"""


def test_shapes_are_results_split_into_arrays():
  shapes = cb.collective_shapes(HLO)
  assert shapes["all-reduce"] == ["f32[32,32]", "f32[32,32]", "f32[32]", "bf16[4,8]", "f32[16]"]
  # async starts hold (operands, results): only the results count, and `-done` is not counted again
  assert shapes["all-gather"] == ["f32[64,32]", "f32[8,4]", "f32[8,8]"]
  assert shapes["collective-permute"] == ["f32[4]"]
  assert shapes["reduce-scatter"] == ["f32[8,128]"]
  assert shapes["all-to-all"] == ["s4[3]"]


def test_bytes_by_kind():
  assert cb.collective_bytes(HLO) == {
      "all-reduce": 4 * (1024 + 1024 + 32 + 16) + 2 * 32,
      "all-gather": 4 * (64 * 32 + 8 * 4 + 8 * 8),
      "collective-permute": 16,
      "reduce-scatter": 4 * 8 * 128,
      "all-to-all": 2,  # three 4-bit values, rounded up to whole bytes
  }


def test_no_collectives():
  assert cb.collective_bytes("%add = f32[4]{0} add(%x, %y)") == {op: 0 for op in cb.COLLECTIVES}


def test_tiny_run_all_reduces_exactly_the_grams(tmp_path):
  env = dict(os.environ, XLA_FLAGS=cb.XLA_FLAG, JAX_PLATFORMS="cpu")
  out, raw = tmp_path / "tiny.md", tmp_path / "tiny.json"
  result = subprocess.run([sys.executable, "-m", "benchmarks.collective_bytes", "--tiny", "--out", str(out),
                           "--json", str(raw)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "ViewGuessWarning" not in result.stderr  # every view is declared
  results = json.loads(raw.read_text())["tiny"]
  fsdp = results["FSDP"]["rows"]["bort_sgd l2-full"]
  # α = 1: no adaptive-α reductions, so the all-reduced bytes are the Grams' exactly.
  assert fsdp["all-gather"] == 0 and fsdp["all-reduce"] == fsdp["gram"] > 0
  assert fsdp["reduce-scatter"] == fsdp["all-to-all"] == fsdp["collective-permute"] == 0
  for strategy, result in results.items():
    rows = result["rows"]
    assert all(rows["optax.sgd"][op] == 0 for op in cb.COLLECTIVES)
    for name in ("bort_sgd l2-full", "bort_sgd l1-fullrow"):
      # All-reduced Gram rows, and each gathered kernel gathered once (on both mesh axes too).
      assert rows[name]["all-reduce"] == rows[name]["predicted_all_reduce"], (strategy, name)
      assert rows[name]["all-gather"] == rows[name]["predicted_all_gather"], (strategy, name)
      # Each device forms its share of the Grams and of Δ, gathered kernels included, not the whole products.
      assert rows[name]["flops_share"] <= 1.25 / cb.DEVICES, (strategy, name, rows[name]["flops_share"])
  tensor_parallel = results["tensor parallel"]["rows"]
  # l2-full all-reduces the square fc2's Gram instead of gathering it; l1-fullrow must gather every kernel.
  assert 0 < tensor_parallel["bort_sgd l2-full"]["all-gather"] < tensor_parallel["bort_sgd l1-fullrow"]["all-gather"]
  assert tensor_parallel["bort_sgd l1-fullrow"]["all-gather"] == tensor_parallel["bort_sgd l1-fullrow"]["kernel"]
  assert "## tiny, FSDP" in out.read_text()
