"""Data for the examples: records from ``load_dataset``, batched by grain.

    records = load_dataset("cifar10", "train", data_dir)        # or "mnist_small", "imagenet2012"...
    batches = iterate(train_dataset(records, 128, seed=0, augment="cifar"))
    for batch in batches:           # endless; batches.get_state() / set_state() resume exactly
      ...  # batch["image"] (128 / P, 32, 32, 3) uint8, batch["label"] (128 / P,) int32 on each of P processes
    for batch in eval_dataset(load_dataset("cifar10", "test", data_dir), 1000):
      ...  # last batch padded; batch["mask"] marks real examples

Batches hold raw uint8 pixels: the trainer normalises them on the accelerator with the dataset's
``normalization(name)`` statistics (``examples.train.normalize_images``).
"""

from examples.data.augment import imagenet_eval
from examples.data.augment import imagenet_train
from examples.data.augment import random_crop_flip
from examples.data.pipeline import AUGMENTATIONS
from examples.data.pipeline import eval_dataset
from examples.data.pipeline import iterate
from examples.data.pipeline import steps_per_epoch
from examples.data.pipeline import train_dataset
from examples.data.sources import EMBEDDED_DATASET
from examples.data.sources import HOLDOUT_FRACTION
from examples.data.sources import HOLDOUT_SPLIT
from examples.data.sources import LOCAL_DATASETS
from examples.data.sources import NORMALIZATION
from examples.data.sources import ArraySource
from examples.data.sources import Normalization
from examples.data.sources import as_arrays
from examples.data.sources import holdout_split
from examples.data.sources import is_local
from examples.data.sources import load_arrays
from examples.data.sources import load_dataset
from examples.data.sources import load_holdout
from examples.data.sources import normalization
from examples.data.sources import num_classes

__all__ = ["load_dataset", "load_arrays", "load_holdout", "as_arrays", "is_local", "ArraySource", "holdout_split",
           "HOLDOUT_SPLIT", "HOLDOUT_FRACTION", "num_classes", "normalization", "Normalization", "NORMALIZATION",
           "LOCAL_DATASETS", "EMBEDDED_DATASET", "train_dataset", "eval_dataset", "iterate", "steps_per_epoch",
           "AUGMENTATIONS", "random_crop_flip", "imagenet_train", "imagenet_eval"]
