"""`python -m benchmarks.mnist_table`: `benchmarks/table.py` with --dataset mnist by default."""

from benchmarks.table import _parser, current_commands, main  # noqa: F401  (the script's interface)

if __name__ == "__main__":
  main("mnist")
