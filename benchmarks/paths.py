"""Where the benchmark scripts find the repository and the offline datasets."""

import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def default_data_dir() -> str:
  """$BORT_DATA_DIR, else `../shared/data` beside the repository: the folder of the offline `<dataset>.npz` copies."""
  return os.environ.get("BORT_DATA_DIR", str(REPO.parent / "shared" / "data"))
