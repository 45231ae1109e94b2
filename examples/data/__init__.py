"""Data for the examples: one loader (``load_arrays``) and one batching pipeline.

    images, labels = load_arrays("cifar10", "train", data_dir)       # or "mnist_small", "imagenet2012"...
    loader = TrainLoader(images, labels, 128, seed=0, augment="cifar")
    for batch in loader.epoch(epoch, start_step=step):                # or loader.batches(start_step=s)
      ...  # batch["image"] (128, 32, 32, 3) uint8, batch["label"] (128,) int32, batch["mask"] (128,) bool
    for batch in eval_batches(test_images, test_labels, 1000):
      ...  # last batch padded; batch["mask"] marks real examples

Batches hold raw uint8 pixels: the trainer normalises them on the accelerator with the dataset's
``normalization(name)`` statistics (``examples.train.normalize_images``).
"""

from examples.data.augment import imagenet_eval, imagenet_train, random_crop_flip
from examples.data.pipeline import AUGMENTATIONS, TrainLoader, eval_batches, steps_per_epoch
from examples.data.sources import (EMBEDDED_DATASET, HOLDOUT_FRACTION, HOLDOUT_SPLIT, LOCAL_DATASETS,
                                   NORMALIZATION, Normalization, RecordColumn, holdout_split, load_arrays,
                                   normalization, num_classes)

__all__ = ["load_arrays", "holdout_split", "HOLDOUT_SPLIT", "HOLDOUT_FRACTION", "num_classes", "normalization",
           "Normalization", "NORMALIZATION", "RecordColumn",
           "LOCAL_DATASETS", "EMBEDDED_DATASET", "TrainLoader", "eval_batches", "steps_per_epoch",
           "AUGMENTATIONS", "random_crop_flip", "imagenet_train", "imagenet_eval"]
