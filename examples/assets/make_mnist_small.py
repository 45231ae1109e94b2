"""Regenerates ``mnist_small.npz``: a class-stratified subset of MNIST embedded with the examples.

Usage: python examples/assets/make_mnist_small.py --data-dir DIR   (DIR holds mnist.npz)

Takes 500 images per class from the 60,000 training images and 100 per class from the 10,000 test images,
drawn without replacement by ``numpy.random.default_rng(SEED)`` and kept in their original order. The
chosen original indices are stored beside the pixels (``train_indices``, ``test_indices``).
"""

import argparse
import hashlib
import os
import pathlib

import numpy as np

SEED = 20231
TRAIN_PER_CLASS = 500
TEST_PER_CLASS = 100


def stratified_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
  """Sorted indices with exactly ``per_class`` examples of every label."""
  picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
  return np.sort(np.concatenate(picks))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data-dir", default=os.environ.get("BORT_DATA_DIR"),
                      help="directory with mnist.npz (default: $BORT_DATA_DIR)")
  parser.add_argument("--out", default=str(pathlib.Path(__file__).with_name("mnist_small.npz")))
  args = parser.parse_args()
  if args.data_dir is None:
    parser.error("--data-dir (or BORT_DATA_DIR) is required")
  source = pathlib.Path(args.data_dir) / "mnist.npz"
  full = np.load(source)
  rng = np.random.default_rng(SEED)
  train = stratified_indices(full["y_train"], TRAIN_PER_CLASS, rng)
  test = stratified_indices(full["y_test"], TEST_PER_CLASS, rng)
  np.savez_compressed(
      args.out,
      x_train=full["x_train"][train], y_train=full["y_train"][train],
      x_test=full["x_test"][test], y_test=full["y_test"][test],
      train_indices=train.astype(np.int32), test_indices=test.astype(np.int32))
  print(f"source sha256 {hashlib.sha256(source.read_bytes()).hexdigest()}")
  print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes): {train.size} train, {test.size} test")


if __name__ == "__main__":
  main()
