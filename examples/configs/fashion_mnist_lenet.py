"""LeNet-5 on Fashion-MNIST; recipes as in `mnist_lenet.py` (pick one after ":").

From `benchmarks/gamma_sweep.py` (3-epoch budget, chosen on a held-out validation split, then 3 seeds on the
test split); the test accuracy, PSNR and gap of every recipe against its baseline are in
`benchmarks/results/gamma_sweep_fashion_mnist_lenet.md` ("Selected settings", "Verdict") and docs/gamma.md:

- sgd / adamw: the tuned baselines (lr x wd grid).
- bort_sgd / bort_adamw: the largest validation reconstruction PSNR (fitted scale, last feature layer) whose
  validation accuracy stays within one binomial standard error of the baseline's: SGD l1-full, alpha = 1;
  AdamW l1-full, adaptive alpha = (mean unit norm)^2. On this dataset no setting that held accuracy raised
  the validation PSNR by more than 0.5 dB (the γ ranges of that file): Bort buys orthogonality here, hardly
  any PSNR. The settings with the best validation accuracy instead (the "Bort, best val. accuracy" rows,
  l2-full with alpha = 1) are `--config.bort_mode=l2-full --config.gamma=...` (AdamW also
  `--config.adaptive_alpha=False`).
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
