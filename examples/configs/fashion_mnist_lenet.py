"""LeNet-5 on Fashion-MNIST; recipes as in `mnist_lenet.py` (pick one after ":").

From `benchmarks/gamma_sweep.py` (`benchmarks/results/gamma_sweep_fashion_mnist_lenet.md`, 3-epoch budget,
chosen on a held-out validation split, then 3 seeds on the test split):

- sgd / adamw: the tuned baselines: test 89.57 +- 0.07 % (lr 0.1, wd 5e-4) / 89.11 +- 0.09 % (lr 3e-3,
  wd 1e-2).
- bort_sgd / bort_adamw: the largest validation reconstruction PSNR (fitted scale, last feature layer) whose
  validation accuracy stays within one binomial standard error (0.39 pt) of the baseline: SGD l1-full,
  alpha = 1, gamma = 3e-3 (test 89.54 +- 0.07 %, level; fitted PSNR 9.7 dB vs 9.5, gap 0.0006 vs 0.180);
  AdamW l1-full, adaptive alpha = (mean unit norm)^2, gamma = 1.5 (88.93 +- 0.21 %, level at -0.18 pt;
  9.95 dB vs 9.56, gap 0.0000 vs 0.124). On this dataset no setting that held accuracy raised the
  validation PSNR by more than 0.5 dB. The best validation accuracy was l2-full, alpha = 1, gamma = 3e-3
  (SGD, 89.73 +- 0.18 %) and gamma = 0.05 (AdamW, 89.19 +- 0.11 %), both level.
- dbort_sgd: bort_sgd plus the DBort term (lambda = 1e-3, beta = 0.1; not swept).

These configs train 10 epochs, the sweep 3.
"""

from examples.configs import default
from examples.configs import mnist_lenet

RECIPES = mnist_lenet.make_recipes(sgd=dict(learning_rate=0.1, momentum=0.9, weight_decay=5e-4),
                                   adamw=dict(learning_rate=3e-3, weight_decay=1e-2),
                                   bort_sgd=mnist_lenet.bort_fields(3e-3, "l1-full", "1"),
                                   bort_adamw=mnist_lenet.bort_fields(1.5, "l1-full", "adaptive"))


def get_config(recipe: str = "bort_sgd"):
  c = mnist_lenet.get_config("sgd")
  c.dataset = "fashion_mnist"
  return default.apply_recipe(c, RECIPES, recipe)
