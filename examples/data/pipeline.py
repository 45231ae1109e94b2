"""Batching with grain: records (``load_dataset``) -> shuffled, augmented, per-process batches.

Training (``train_dataset``): epoch e visits the records in grain's seeded shuffle for epoch e and drops the
last incomplete global batch; every record draws its augmentation from grain's generator for (seed, its
position in the shuffled stream). Evaluation (``eval_dataset``): stored order, no augmentation, the last
global batch padded with blank records (``mask`` False).

Global batch k holds the positions [kB, (k+1)B); process p of P reads only the rows
[kB + pB/P, kB + (p+1)B/P), its slice of the batch's device-sharded array (``examples.sharding.shard_batch``),
so no process loads or augments another's records and the global batch does not depend on P. Both datasets
are ``grain.MapDataset``s indexed by step: ``iterate`` turns one into a checkpointable iterator whose state
the trainer saves in its Orbax checkpoint.

Batches hold raw uint8 pixels, {"image": (B/P, H, W, C) uint8, "label": (B/P,) int32} and, for evaluation,
"mask": (B/P,) bool: the trainer normalises the pixels on the accelerator (``examples.train.normalize_images``),
so hosts ship 4x fewer bytes than float32 images.
"""

import functools

from absl import flags
import grain
import numpy as np

from examples.data import augment as augment_lib

AUGMENTATIONS = (None, "cifar", "imagenet")
# Few prefetch threads and batches: on a CPU host they share the cores with the step, and ImageNet batches
# are large (128 x 224 x 224 x 3 bytes each).
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


def steps_per_epoch(num_examples: int, batch_size: int, *, train: bool) -> int:
  """Batches per pass: floor when training (incomplete batch dropped), ceil when evaluating."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  steps = num_examples // batch_size if train else -(-num_examples // batch_size)
  if steps < 1:
    raise ValueError(f"batch_size {batch_size} leaves no batch from {num_examples} examples.")
  return steps


def train_dataset(records: grain.MapDataset, batch_size: int, *, seed: int = 0, augment: str | None = None,
                  image_size: int | None = None, shard: grain.sharding.ShardOptions | None = None
                  ) -> grain.MapDataset:
  """Endless training batches of this process: element k is its part of global step k's batch.

  Args:
    records: {"image", "label"} records (``load_dataset``).
    batch_size: global batch size (all processes together).
    seed: shuffling and augmentation seed.
    augment: None, "cifar" (zero-pad 4, random crop, flip) or "imagenet" (random-resized-crop + flip).
    image_size: output side for "imagenet" (None: 224); with ``augment=None`` every image is resized and
      centre-cropped to it (needed when the source's images differ in size). Must be None for "cifar".
    shard: which part of each batch this process reads (default: ``grain.sharding.ShardByJaxProcess``).
  """
  if augment not in AUGMENTATIONS:
    raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}.")
  if augment == "cifar" and image_size is not None:
    raise ValueError(f"image_size must be None with augment='cifar', got {image_size}.")
  steps = steps_per_epoch(len(records), batch_size, train=True)
  ds = records.seed(seed).shuffle()
  if augment == "cifar":
    ds = ds.random_map(_cifar)
  elif augment == "imagenet":
    ds = ds.random_map(functools.partial(_imagenet_train, size=image_size or 224))
  elif image_size is not None:
    ds = ds.map(functools.partial(_center_crop, size=image_size))
  return _process_part(ds, batch_size, steps, shard).repeat()


def eval_dataset(records: grain.MapDataset, batch_size: int, *, image_size: int | None = None,
                 shard: grain.sharding.ShardOptions | None = None) -> grain.MapDataset:
  """One pass in stored order, this process's part of each global batch; ``mask`` is False on padding.

  ``image_size`` resizes the shorter side to image_size / 0.875 and takes the central crop (the ImageNet
  evaluation transform).
  """
  steps = steps_per_epoch(len(records), batch_size, train=False)
  if image_size is not None:
    records = records.map(functools.partial(_center_crop, size=image_size))
  records = records.map(_real)
  padding = steps * batch_size - len(records)
  if padding:
    blank = {k: np.zeros_like(v) for k, v in records[0].items()}
    records = grain.MapDataset.concatenate([records, grain.MapDataset.source([blank] * padding)])
  return _process_part(records, batch_size, steps, shard)


def iterate(dataset: grain.MapDataset, workers: int = 0) -> grain.DatasetIterator:
  """A checkpointable iterator (``get_state``/``set_state``) over ``dataset``.

  ``workers`` > 0 reads and augments in that many worker processes (for costly decoding and resizing,
  e.g. ImageNet); 0 reads in this process with a few prefetch threads.
  """
  ds = dataset.to_iter_dataset(READ_OPTIONS)
  if workers:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside an absl app, take the defaults
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(ds)


def _process_part(records: grain.MapDataset, batch_size: int, steps: int,
                  shard: grain.sharding.ShardOptions | None) -> grain.MapDataset:
  """Process p's rows of the first ``steps`` global batches of every epoch.

  Batches of B/P consecutive records, cut to steps * P per epoch (drops the leftover records; grain slices
  and batches each epoch apart), then every P-th from the p-th. Cutting batches rather than records keeps
  the per-record chain short: each grain stage costs tens of microseconds per record here.
  """
  shard = shard or grain.sharding.ShardByJaxProcess()
  if batch_size % shard.shard_count:
    raise ValueError(f"batch_size {batch_size} does not split over {shard.shard_count} processes.")
  local = records.batch(batch_size // shard.shard_count, drop_remainder=True)[:steps * shard.shard_count]
  return local[shard.shard_index::shard.shard_count]


def _cifar(record: dict, rng: np.random.Generator) -> dict:
  return dict(record, image=augment_lib.random_crop_flip(record["image"], rng))


def _imagenet_train(record: dict, rng: np.random.Generator, size: int) -> dict:
  return dict(record, image=augment_lib.imagenet_train(record["image"], rng, size))


def _center_crop(record: dict, size: int) -> dict:
  return dict(record, image=augment_lib.imagenet_eval(record["image"], size))


def _real(record: dict) -> dict:
  return dict(record, mask=np.True_)
