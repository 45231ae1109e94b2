"""MLP 784-256-256-10 on MNIST; the recipes of `mnist_lenet.py` (pick one after ":") with the MLP's Bort setting.

The Bort recipes use the adaptive amplitude alpha = (mean unit norm)^2 and a gamma 5x smaller than LeNet's
(BortA's gamma matched to BortS's by the rule in `default.py`): with alpha fixed at 1 and gamma = 1e-2 the
MLP lost 0.5 pt of accuracy (capped weight norms), with these it matches its baseline
(`benchmarks/results/mnist_table.md`).
"""

from examples.configs import default
from examples.configs import mnist_lenet

_MLP_BORT = dict(adaptive_alpha=True)
RECIPES = dict(mnist_lenet.RECIPES)
RECIPES["bort_sgd"] = dict(RECIPES["bort_sgd"], gamma=2e-3, **_MLP_BORT)
RECIPES["dbort_sgd"] = dict(RECIPES["dbort_sgd"], gamma=2e-3, **_MLP_BORT)
RECIPES["bort_adamw"] = dict(RECIPES["bort_adamw"], gamma=1.0, **_MLP_BORT)


def get_config(recipe: str = "bort_sgd"):
  c = mnist_lenet.get_config("sgd")
  c.model = "mlp"
  c.num_epochs = 15
  return default.apply_recipe(c, RECIPES, recipe)
