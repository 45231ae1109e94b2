"""MLP 784-256-256-10 on Fashion-MNIST; recipes as in `mnist_lenet.py` (pick one after ":").

From `benchmarks/gamma_sweep.py` (`benchmarks/results/gamma_sweep_fashion_mnist_mlp.md`, 10-epoch budget,
chosen on a held-out validation split, then 3 seeds on the test split):

- sgd / adamw: the tuned baselines: test 89.65 +- 0.07 % (lr 0.1, wd 1e-4) / 89.86 +- 0.07 % (lr 1e-3,
  wd 1e-4).
- bort_sgd / bort_adamw: the largest validation reconstruction PSNR (raw, last hidden layer) whose validation
  accuracy stays within one binomial standard error (0.39 pt here) of the baseline: SGD l2-full, alpha = 1,
  gamma = 3e-3 (test 89.46 +- 0.14 %, 0.19 pt *below*, PSNR 9.8 dB instead of 8.2); AdamW l1-full, adaptive
  alpha, gamma = 0.5 (89.50 +- 0.10 %, 0.36 pt *below*, 10.6 dB instead of 6.2, gap 0.0000 instead of 0.082).
  The best validation accuracy was SGD l2-full, adaptive alpha, gamma = 1e-3 (89.90 +- 0.05 %, 0.25 pt
  *above* the baseline, 9.3 dB) and AdamW l2-full, alpha = 1, gamma = 0.05 (89.87 +- 0.05 %, level, 6.8 dB):
  `--config.bort_mode=... --config.adaptive_alpha=... --config.gamma=...`.
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
