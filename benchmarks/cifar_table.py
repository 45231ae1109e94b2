"""`python -m benchmarks.cifar_table`: `benchmarks/table.py` with --dataset cifar10 by default (ResNet-20 and
ViT-Tiny; `benchmarks/results/cifar10_plan.md` has the measured speed, the budget and the commands)."""

from benchmarks.table import main

if __name__ == "__main__":
  main("cifar10")
