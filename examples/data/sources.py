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
import zipfile
import zlib

import numpy as np

from examples.data._parallel import parallel_map

LOCAL_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10}  # labels must lie in [0, classes)
LOCAL_DATASETS = tuple(LOCAL_CLASSES)
EMBEDDED_DATASET = "mnist_small"  # a subset of MNIST, embedded with the examples
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
  with ``tfds.data_source(name, split=split, data_dir=data_dir)`` and returned as lazy columns. A ``.npz``
  that lacks the split, cannot be read, or holds other dtypes, shapes or labels outside [0, classes) raises
  one ValueError naming the file, what was expected and what was found.
  """
  root = data_dir_or_env(data_dir)
  if name == EMBEDDED_DATASET:
    return _load_npz(_ASSET, split, LOCAL_CLASSES["mnist"])
  if root is not None and (root / f"{name}.npz").exists():
    return _load_npz(root / f"{name}.npz", split, LOCAL_CLASSES.get(name))
  return _load_tfds(name, split, root)


def _load_npz(path: pathlib.Path, split: str, classes: int | None):
  """(images NHWC uint8, labels int32) of ``split``; ``classes`` None: any label >= 0 is accepted."""
  if split not in LOCAL_SPLITS:
    raise ValueError(f"split must be one of {LOCAL_SPLITS} for {path.name}, got {split!r}.")
  x_key, y_key = f"x_{split}", f"y_{split}"
  expected = (f"arrays {x_key} (uint8 images, shape (N, H, W) or (N, H, W, C)) and {y_key} (integer labels, "
              f"shape (N,), values in [0, {classes or 'number of classes'}))")

  def invalid(found: str) -> ValueError:
    return ValueError(f"{path} holds no valid {split!r} split: expected {expected}; found {found}.")

  try:
    with np.load(path) as archive:  # allow_pickle=False: a data file never needs to run code
      keys = sorted(archive.files)
      arrays = {k: archive[k] for k in (x_key, y_key) if k in keys}
  except (OSError, ValueError, EOFError, TypeError, zipfile.BadZipFile, zlib.error) as e:
    # numpy's own messages here mislead: for a file that is no zip it suggests allow_pickle=True.
    raise invalid(_unreadable(path, e)) from None
  if len(arrays) < 2:
    raise invalid(f"keys {keys}")
  images, labels = arrays[x_key], arrays[y_key]
  found = f"{x_key} {images.dtype} {images.shape}, {y_key} {labels.dtype} {labels.shape}"
  labels_ok = np.issubdtype(labels.dtype, np.integer) and labels.shape == images.shape[:1]
  if labels_ok and labels.size:
    low, high = int(labels.min()), int(labels.max())
    found += f" with values in [{low}, {high}]"
    labels_ok = low >= 0 and (classes is None or high < classes)
  if not (labels_ok and images.dtype == np.uint8 and images.ndim in (3, 4)):
    raise invalid(found)
  if images.ndim == 3:  # grayscale stored as (N, H, W)
    images = images[..., None]
  return images, labels.astype(np.int32)


def _unreadable(path: pathlib.Path, error: Exception) -> str:
  """What a file that ``np.load`` could not read as an .npz archive holds, judged by its first bytes."""
  with open(path, "rb") as f:
    head = f.read(8)
  if head.startswith(b"PK"):
    return f"a damaged zip archive ({type(error).__name__}: {error})"
  if head.startswith(b"\x93NUMPY"):
    return "a single .npy array, not an .npz archive"
  return f"no zip archive (first bytes {head!r})"


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
