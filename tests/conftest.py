"""Shared fixtures: where the offline datasets live (BORT_DATA_DIR, else ../shared/data beside the repo)."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# Compiling dominates this suite on CPU. XLA's CPU code generation at optimisation level 0 halves it and runs the
# same HLO (partitioning, collectives and float32 semantics do not depend on it); subprocesses inherit it.
# BORT_TEST_XLA_OPTIMIZE=1 tests the optimised code instead.
_OPTIMIZE = os.environ.get("BORT_TEST_XLA_OPTIMIZE", "0")
if _OPTIMIZE not in ("0", "1"):
  raise pytest.UsageError(f"BORT_TEST_XLA_OPTIMIZE={_OPTIMIZE!r} is not accepted; accepted values: '0', '1'.")
if _OPTIMIZE == "0":
  os.environ["XLA_FLAGS"] = " ".join(filter(None, (
      os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")))


def find_data_dir():
  for candidate in (os.environ.get("BORT_DATA_DIR"), REPO.parent / "shared" / "data"):
    if candidate and pathlib.Path(candidate, "mnist.npz").exists():
      return pathlib.Path(candidate)
  return None


@pytest.fixture(scope="session")
def data_dir():
  found = find_data_dir()
  if found is None:
    pytest.skip("offline datasets not found: set BORT_DATA_DIR to a folder with mnist.npz")
  return found
