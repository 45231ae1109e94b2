"""MLP 784-256-256-10 on Fashion-MNIST; recipes as in `mnist_lenet.py` (pick one after ":").

From `benchmarks/gamma_sweep.py` (10-epoch budget, chosen on a held-out validation split, then 3 seeds on
the test split); the test accuracy, PSNR and gap of every recipe against its baseline are in
`benchmarks/results/gamma_sweep_fashion_mnist_mlp.md` ("Selected settings", "Verdict") and docs/gamma.md:

- sgd / adamw: the tuned baselines (lr x wd grid).
- bort_sgd / bort_adamw: the largest validation reconstruction PSNR (raw, last hidden layer) whose validation
  accuracy stays within one binomial standard error of the baseline's: SGD l2-full, alpha = 1; AdamW l1-full,
  adaptive alpha. Both buy their PSNR with test accuracy below their baselines (see "Verdict"); the settings
  with the best validation accuracy instead (the "Bort, best val. accuracy" rows: SGD l2-full with adaptive
  alpha, AdamW l2-full with alpha = 1) are `--config.bort_mode=... --config.adaptive_alpha=... --config.gamma=...`.
- dbort_sgd: bort_sgd plus the DBort term (lambda = 1e-3, beta = 0.1; not swept).

These configs train 15 epochs, the sweep 10.
"""

from examples.configs import default
from examples.configs import mnist_lenet
from examples.configs import mnist_mlp

RECIPES = mnist_lenet.make_recipes(sgd=dict(learning_rate=0.1, momentum=0.9, weight_decay=1e-4),
                                   adamw=dict(learning_rate=1e-3, weight_decay=1e-4),
                                   bort_sgd=mnist_lenet.bort_fields(3e-3, "l2-full", "1"),
                                   bort_adamw=mnist_lenet.bort_fields(0.5, "l1-full", "adaptive"))


def get_config(recipe: str = "bort_sgd"):
  c = mnist_mlp.get_config("sgd")
  c.dataset = "fashion_mnist"
  return default.apply_recipe(c, RECIPES, recipe)
