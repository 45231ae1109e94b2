"""Where images come from: local ``.npz`` files, the embedded MNIST subset, or any TFDS dataset.

``load_arrays`` returns (images, labels). For ``.npz`` sources both are NumPy arrays (uint8 NHWC, int32),
loaded into memory. For TFDS sources (e.g. ImageNet, too large for memory, with images of varying sizes)
both are lazy ``RecordColumn`` sequences over ``tfds.data_source`` that decode only the examples indexed;
the batching pipeline accepts either.
"""

from collections.abc import Sequence
import os
import pathlib
from typing import NamedTuple

import numpy as np

from examples.data._parallel import parallel_map

LOCAL_DATASETS = ("mnist", "fashion_mnist", "cifar10")
EMBEDDED_DATASET = "mnist_small"
LOCAL_SPLITS = ("train", "test")
HOLDOUT_SPLIT = "holdout"  # config.eval_split value: a validation split held out of the training split.
HOLDOUT_FRACTION = 0.1
_ASSET = pathlib.Path(__file__).resolve().parent.parent / "assets" / "mnist_small.npz"


class Normalization(NamedTuple):
  """Per-channel mean and std of pixel values scaled to [0, 1]; images become (x / 255 - mean) / std."""
  mean: tuple[float, ...]
  std: tuple[float, ...]


# Training-set statistics of the original datasets (ImageNet: the usual torchvision constants).
NORMALIZATION = {
    "mnist": Normalization((0.1307,), (0.3081,)),
    "mnist_small": Normalization((0.1307,), (0.3081,)),
    "fashion_mnist": Normalization((0.2860,), (0.3530,)),
    "cifar10": Normalization((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet2012": Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def normalization(name: str) -> Normalization:
  """Normalization statistics of dataset ``name`` (a key of ``NORMALIZATION``)."""
  if name not in NORMALIZATION:
    raise ValueError(f"name must be one of {sorted(NORMALIZATION)} for normalization, got {name!r}; "
                     "pass a Normalization(mean, std) for other datasets.")
  return NORMALIZATION[name]


def data_dir_or_env(data_dir: str | os.PathLike | None) -> pathlib.Path | None:
  """``data_dir`` if given (not None or ""), else ``$BORT_DATA_DIR`` if set, else None."""
  data_dir = data_dir or os.environ.get("BORT_DATA_DIR") or None
  return None if data_dir is None else pathlib.Path(data_dir)


def load_arrays(name: str, split: str, data_dir: str | os.PathLike | None = None):
  """Loads split ``split`` of dataset ``name`` as (images NHWC uint8, labels int32).

  Looks for ``<data_dir>/<name>.npz`` (keys x_train/y_train/x_test/y_test; ``data_dir`` defaults to
  ``$BORT_DATA_DIR``); ``"mnist_small"`` is the subset embedded with the examples; any other name is opened
  with ``tfds.data_source(name, split=split, data_dir=data_dir)`` and returned as lazy columns.
  """
  root = data_dir_or_env(data_dir)
  if name == EMBEDDED_DATASET:
    return _load_npz(_ASSET, split)
  if root is not None and (root / f"{name}.npz").exists():
    return _load_npz(root / f"{name}.npz", split)
  return _load_tfds(name, split, root)


def _load_npz(path: pathlib.Path, split: str):
  if split not in LOCAL_SPLITS:
    raise ValueError(f"split must be one of {LOCAL_SPLITS} for {path.name}, got {split!r}.")
  with np.load(path) as arrays:
    images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
  if images.dtype != np.uint8:
    raise ValueError(f"{path}: x_{split} must be uint8, got {images.dtype}.")
  if images.ndim == 3:  # grayscale stored as (N, H, W)
    images = images[..., None]
  return images, labels.astype(np.int32)


def _load_tfds(name: str, split: str, root: pathlib.Path | None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (optional, slow to import)

  try:
    source = tfds.data_source(name, split=split, data_dir=None if root is None else os.fspath(root))
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(
        f"name must be {EMBEDDED_DATASET!r}, one of {LOCAL_DATASETS} with <data_dir>/<name>.npz present "
        f"(data_dir={root}, or $BORT_DATA_DIR), or a TFDS dataset name; got {name!r}.") from None
  records = _Records(source)
  return RecordColumn(records, "image"), RecordColumn(records, "label")


class _Records:
  """Random access to a TFDS data source that remembers the last batch read.

  The pipeline reads ``images[idx]`` then ``labels[idx]``; the memo makes the second read free instead
  of decoding every image twice.
  """

  def __init__(self, source: Sequence[dict]):
    self.source = source
    self._last_key, self._last = None, None

  def __len__(self) -> int:
    return len(self.source)

  def read(self, indices: Sequence[int]) -> list[dict]:
    key = tuple(int(i) for i in indices)
    if key != self._last_key:
      self._last_key, self._last = key, parallel_map(self.source.__getitem__, key)
    return self._last


class RecordColumn(Sequence):
  """One feature (``"image"`` or ``"label"``) of a TFDS data source, decoded on access.

  ``column[i]`` gives one value; ``column[indices]`` (an integer array) gives a list of HWC uint8 images
  (sizes may differ) or an int32 array of labels; ``column[a:b]`` is a lazy sub-column.
  """

  def __init__(self, records: _Records, key: str, positions: np.ndarray | None = None):
    self.records, self.key = records, key
    self.positions = np.arange(len(records)) if positions is None else positions

  def __len__(self) -> int:
    return len(self.positions)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return RecordColumn(self.records, self.key, self.positions[index])
    if np.ndim(index) == 0:
      return self._convert([self.records.read([self.positions[index]])[0][self.key]])[0]
    return self._convert([example[self.key] for example in self.records.read(self.positions[index])])

  def _convert(self, values: list):
    if self.key == "label":
      return np.asarray(values, np.int32)
    return [np.asarray(v, np.uint8) for v in values]


def holdout_split(labels: np.ndarray, fraction: float = HOLDOUT_FRACTION) -> tuple[np.ndarray, np.ndarray]:
  """Stratified, deterministic validation split of a training split: (train rows, holdout rows).

  For every class, the last ``round(fraction * n_class)`` of its examples (in stored order) are held out;
  both index arrays are sorted, disjoint and cover every row. No randomness, so every run (and every
  process of a sweep) holds out the same rows.
  """
  labels = np.asarray(labels)
  if not 0 < fraction < 1:
    raise ValueError(f"fraction must be in (0, 1), got {fraction}.")
  holdout = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    rows = np.flatnonzero(labels == c)
    k = int(round(fraction * len(rows)))
    if k:
      holdout[rows[len(rows) - k:]] = True
  return np.flatnonzero(~holdout), np.flatnonzero(holdout)


def num_classes(labels) -> int:
  """Number of classes: from the TFDS metadata for lazy columns (no decoding), else max label + 1."""
  if isinstance(labels, RecordColumn):
    return int(labels.records.source.dataset_info.features[labels.key].num_classes)
  return int(np.max(labels)) + 1
