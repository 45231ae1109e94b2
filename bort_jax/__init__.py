"""Bort and DBort as optax gradient transformations."""
