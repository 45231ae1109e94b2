"""Where images come from: local ``.npz`` files, the embedded MNIST subset, or any TFDS dataset.

``load_dataset`` returns a ``grain.MapDataset`` of {"image": HWC uint8, "label": int32} records over one
split: for ``.npz`` files an ``ArraySource`` over the arrays in memory (``load_arrays``), for TFDS datasets
(e.g. ImageNet, too large for memory, with images of varying sizes) ``tfds.data_source``, which decodes only
the records read. Both are random-access sources, so the pipeline reads only the records it batches.
"""

import dataclasses
import os
import pathlib
from typing import NamedTuple
import zipfile
import zlib

import grain
import numpy as np

LOCAL_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10}  # labels must lie in [0, classes)
LOCAL_DATASETS = tuple(LOCAL_CLASSES)
EMBEDDED_DATASET = "mnist_small"  # a subset of MNIST, embedded with the examples
_CLASSES = {**LOCAL_CLASSES, EMBEDDED_DATASET: LOCAL_CLASSES["mnist"]}
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
  """Loads split ``split`` of a local dataset ``name`` into memory as (images NHWC uint8, labels int32).

  Reads ``<data_dir>/<name>.npz`` (keys x_train/y_train/x_test/y_test; ``data_dir`` defaults to
  ``$BORT_DATA_DIR``); ``"mnist_small"`` is the subset embedded with the examples. A ``.npz`` that lacks the
  split, cannot be read, or holds other dtypes, shapes or labels outside [0, classes) raises one ValueError
  naming the file, what was expected and what was found.
  """
  path = _local_path(name, data_dir)
  if path is None:
    raise ValueError(f"name must be {EMBEDDED_DATASET!r} or one of {LOCAL_DATASETS} with <data_dir>/<name>.npz "
                     f"present (data_dir={data_dir_or_env(data_dir)}, or $BORT_DATA_DIR); got {name!r}. "
                     "TFDS datasets are read lazily with load_dataset.")
  return _load_npz(path, split, _CLASSES.get(name))


def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None) -> grain.MapDataset:
  """Split ``split`` of dataset ``name`` as a grain ``MapDataset`` of {"image", "label"} records.

  A local dataset (``load_arrays``) is read into memory; any other name is opened lazily with
  ``tfds.data_source(name, split=split, data_dir=data_dir)``.
  """
  if _local_path(name, data_dir) is not None:
    return grain.MapDataset.source(ArraySource(*load_arrays(name, split, data_dir)))
  return grain.MapDataset.source(_tfds_source(name, split, data_dir)).map(_image_and_label)


def is_local(name: str, data_dir: str | os.PathLike | None = None) -> bool:
  """Whether ``name`` is read from a local ``.npz`` (into memory) rather than from TFDS."""
  return _local_path(name, data_dir) is not None


def _local_path(name: str, data_dir) -> pathlib.Path | None:
  if name == EMBEDDED_DATASET:
    return _ASSET
  root = data_dir_or_env(data_dir)
  if root is not None and (root / f"{name}.npz").exists():
    return root / f"{name}.npz"
  return None


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """Images (N, H, W, C) uint8 and labels (N,) int32 in memory as a grain random-access data source."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {"image": self.images[index], "label": self.labels[index]}


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


def _tfds_source(name: str, split: str, data_dir):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (optional, slow to import)

  root = data_dir_or_env(data_dir)
  try:
    return tfds.data_source(name, split=split, data_dir=None if root is None else os.fspath(root))
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(
        f"name must be {EMBEDDED_DATASET!r}, one of {LOCAL_DATASETS} with <data_dir>/<name>.npz present "
        f"(data_dir={root}, or $BORT_DATA_DIR), or a TFDS dataset name; got {name!r}.") from None


def _image_and_label(record: dict) -> dict[str, np.ndarray]:
  """A TFDS record reduced to the two features the pipeline batches (ImageNet also has file names)."""
  return {"image": np.asarray(record["image"], np.uint8), "label": np.int32(record["label"])}


def load_holdout(name: str, data_dir: str | os.PathLike | None = None, fraction: float = HOLDOUT_FRACTION
                 ) -> tuple[grain.MapDataset, grain.MapDataset]:
  """(training rows, held-out rows) of local dataset ``name``'s train split (``holdout_split``) as datasets."""
  images, labels = load_arrays(name, "train", data_dir)
  return tuple(grain.MapDataset.source(ArraySource(images[rows], labels[rows]))
               for rows in holdout_split(labels, fraction))


def as_arrays(records: grain.MapDataset) -> tuple[np.ndarray, np.ndarray]:
  """Every record stacked as (images NHWC uint8, labels int32), for small evaluation sets of one image size."""
  batch = records.batch(len(records))[0]
  return batch["image"], batch["label"]


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


def num_classes(name: str, data_dir: str | os.PathLike | None = None) -> int:
  """Number of classes of dataset ``name``: fixed for local datasets, from the TFDS metadata otherwise."""
  if name in _CLASSES:
    return _CLASSES[name]
  return int(_tfds_source(name, "train", data_dir).dataset_info.features["label"].num_classes)
