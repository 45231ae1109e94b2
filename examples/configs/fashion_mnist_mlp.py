"""MLP 784-256-256-10 on Fashion-MNIST; the recipes of `mnist_mlp.py` (pick one after ":")."""

from examples.configs import mnist_mlp


def get_config(recipe: str = "bort_sgd"):
  c = mnist_mlp.get_config(recipe)
  c.dataset = "fashion_mnist"
  return c
