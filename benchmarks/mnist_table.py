"""`python -m benchmarks.mnist_table`: `benchmarks/table.py` with --dataset mnist by default."""

from benchmarks.table import _parser  # noqa: F401  (the script's interface)
from benchmarks.table import current_commands  # noqa: F401  (the script's interface)
from benchmarks.table import main  # noqa: F401  (the script's interface)

if __name__ == "__main__":
  main("mnist")
