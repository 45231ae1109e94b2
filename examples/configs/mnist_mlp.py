"""MLP 784-256-256-10 on MNIST; same recipes as `mnist_lenet.py` (pick one after ":")."""

from examples.configs import mnist_lenet


def get_config(recipe: str = "bort_sgd"):
  c = mnist_lenet.get_config(recipe)
  c.model = "mlp"
  return c
