"""MLP 784-256-256-10 on MNIST; recipes as in `mnist_lenet.py` (pick one after ":"), with the MLP's settings.

From `benchmarks/gamma_sweep.py` (`benchmarks/results/gamma_sweep_mnist_mlp.md`, 10-epoch budget, chosen on a
held-out validation split, then 3 seeds on the test split):

- sgd / adamw: the tuned baselines: test 98.51 +- 0.03 % (lr 0.1, wd 5e-4) / 98.34 +- 0.08 % (lr 1e-3, wd 1e-2).
- bort_sgd / bort_adamw: the largest validation reconstruction PSNR (raw, last hidden layer) whose validation
  accuracy stays within one binomial standard error of the baseline: l2-full, adaptive alpha = (mean unit
  norm)^2, gamma = 0.03 (SGD: test 98.36 +- 0.04 %, 0.15 pt *below* its baseline, for a PSNR of 11.9 dB
  instead of -2.2 and a gap of 0.003 instead of 0.146) and gamma = 1.5 (AdamW: 98.38 +- 0.02 %, level,
  11.1 dB instead of 4.2). The best validation accuracy was gamma = 3e-4 (SGD: 98.61 +- 0.04 %, 0.09 pt above
  the baseline, PSNR -1.7 dB) and gamma = 0.15 (AdamW: 98.39 +- 0.05 %, 7.1 dB): `--config.gamma=...`.
  l1-full never kept the accuracy on this MLP.
- dbort_sgd: bort_sgd plus the DBort term (lambda = 1e-3, beta = 0.1; not swept).

These configs train 15 epochs, the sweep 10.
"""

from examples.configs import default
from examples.configs import mnist_lenet

RECIPES = mnist_lenet.make_recipes(sgd=dict(learning_rate=0.1, momentum=0.9, weight_decay=5e-4),
                                   adamw=dict(learning_rate=1e-3, weight_decay=1e-2),
                                   bort_sgd=mnist_lenet.bort_fields(0.03, "l2-full", "adaptive"),
                                   bort_adamw=mnist_lenet.bort_fields(1.5, "l2-full", "adaptive"))


def get_config(recipe: str = "bort_sgd"):
  c = mnist_lenet.get_config("sgd")
  c.model = "mlp"
  c.num_epochs = 15
  return default.apply_recipe(c, RECIPES, recipe)
