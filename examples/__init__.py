"""Flax NNX example trainers for bort_jax: models, data, training loop and CLI."""
