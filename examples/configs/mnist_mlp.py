"""MLP 784-256-256-10 on MNIST; recipes as in `mnist_lenet.py` (pick one after ":"), with the MLP's settings.

From `benchmarks/gamma_sweep.py` (10-epoch budget, chosen on a held-out validation split, then 3 seeds on the
test split); the test accuracy, PSNR and gap of every recipe against its baseline are in
`benchmarks/results/gamma_sweep_mnist_mlp.md` ("Selected settings", "Verdict") and docs/gamma.md:

- sgd / adamw: the tuned baselines (lr x wd grid).
- bort_sgd / bort_adamw: the largest validation reconstruction PSNR (raw, last hidden layer) whose validation
  accuracy stays within one binomial standard error of the baseline's: l2-full, adaptive alpha = (mean unit
  norm)^2 for both. Bort-SGD buys its PSNR with test accuracy below its baseline (see "Verdict"); the
  settings with the best validation accuracy instead (the "Bort, best val. accuracy" rows, also l2-full and
  adaptive alpha) are `--config.gamma=...`. l1-full never kept the accuracy on this MLP.
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
