"""Shared fixtures: where the offline datasets live (BORT_DATA_DIR, else ../shared/data beside the repo)."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


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
