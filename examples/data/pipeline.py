"""Deterministic, resumable batching: (images, labels) -> dicts of NHWC batches.

Training (``TrainLoader``): epoch e visits the examples in the permutation drawn by
``default_rng((seed, e))`` and drops the last incomplete batch; batch (e, k) draws its augmentation from
``default_rng((seed, e, k))``. A batch is a pure function of (seed, epoch, step), so a run resumed at
global step s (``loader.epoch(s // steps, start_step=s % steps)`` or ``loader.batches(start_step=s)``)
sees exactly the batches an uninterrupted run would have seen.

Evaluation (``eval_batches``): stored order, no augmentation, the last batch padded to ``batch_size``.

Every batch is {"image": (B, H, W, C) uint8, "label": (B,) int32, "mask": (B,) bool (False on padding)}:
the trainer normalises the pixels on the accelerator (``examples.train.normalize_images``), so hosts
ship 4x fewer bytes than float32 images.
"""

from collections.abc import Iterator
import dataclasses
import itertools

import numpy as np

from examples.data import augment as augment_lib

AUGMENTATIONS = (None, "cifar", "imagenet")
Batch = dict[str, np.ndarray]


def steps_per_epoch(num_examples: int, batch_size: int, *, train: bool) -> int:
  """Batches per pass: floor when training (incomplete batch dropped), ceil when evaluating."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  steps = num_examples // batch_size if train else -(-num_examples // batch_size)
  if steps < 1:
    raise ValueError(f"batch_size {batch_size} leaves no batch from {num_examples} examples.")
  return steps


@dataclasses.dataclass(frozen=True)
class TrainLoader:
  """Shuffled, augmented training batches addressed by (epoch, step); holds no iteration state.

  Attributes:
    images, labels: from ``load_arrays`` (uint8 NHWC / int32 arrays, or the lazy TFDS columns).
    batch_size: examples per batch.
    seed: shuffling and augmentation seed.
    augment: None, "cifar" (zero-pad 4, random crop, flip) or "imagenet" (random-resized-crop + flip).
    image_size: output side for "imagenet" (None: 224); with ``augment=None`` every image is resized and
      centre-cropped to it (needed when the source's images differ in size). Must be None for "cifar".
  """
  images: object
  labels: object
  batch_size: int
  seed: int = 0
  augment: str | None = None
  image_size: int | None = None

  def __post_init__(self):
    _check_options(self.augment, self.image_size)

  @property
  def steps_per_epoch(self) -> int:
    return steps_per_epoch(len(self.labels), self.batch_size, train=True)

  def get_batch(self, epoch: int, step: int) -> Batch:
    """Batch ``step`` (0 <= step < steps_per_epoch) of epoch ``epoch``."""
    if not 0 <= step < self.steps_per_epoch:
      raise ValueError(f"step must be in [0, {self.steps_per_epoch}), got {step}.")
    order = np.random.default_rng((self.seed, epoch)).permutation(len(self.labels))
    index = order[step * self.batch_size:(step + 1) * self.batch_size]
    rng = np.random.default_rng((self.seed, epoch, step))
    pixels = self.images[index]
    if self.augment == "imagenet":
      pixels = augment_lib.imagenet_train(pixels, rng, self.image_size or 224)
    else:
      pixels = _fixed_size(pixels, self.image_size)
      if self.augment == "cifar":
        pixels = augment_lib.random_crop_flip(pixels, rng)
    return _make_batch(pixels, self.labels[index], self.batch_size)

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
    """The batches of epoch ``epoch`` from ``start_step`` on."""
    for step in range(start_step, self.steps_per_epoch):
      yield self.get_batch(epoch, step)

  def batches(self, start_step: int = 0) -> Iterator[Batch]:
    """Endless batches from global step ``start_step`` = epoch * steps_per_epoch + step."""
    if start_step < 0:
      raise ValueError(f"start_step must be >= 0, got {start_step}.")
    first_epoch, first_step = divmod(start_step, self.steps_per_epoch)
    for epoch in itertools.count(first_epoch):
      yield from self.epoch(epoch, first_step if epoch == first_epoch else 0)


def eval_batches(images, labels, batch_size: int, *, image_size: int | None = None) -> Iterator[Batch]:
  """One pass in stored order; the last batch is zero-padded to ``batch_size`` with ``mask`` False.

  ``image_size`` resizes the shorter side to image_size / 0.875 and takes the central crop (the
  ImageNet evaluation transform).
  """
  n = len(labels)
  for step in range(steps_per_epoch(n, batch_size, train=False)):
    index = np.arange(step * batch_size, min((step + 1) * batch_size, n))
    yield _make_batch(_fixed_size(images[index], image_size), labels[index], batch_size)


def _check_options(augment, image_size):
  if augment not in AUGMENTATIONS:
    raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}.")
  if augment == "cifar" and image_size is not None:
    raise ValueError(f"image_size must be None with augment='cifar', got {image_size}.")


def _fixed_size(pixels, image_size: int | None) -> np.ndarray:
  """Stacks a batch, resizing + centre-cropping to ``image_size`` when given."""
  if image_size is not None:
    return augment_lib.imagenet_eval(pixels, image_size)
  if isinstance(pixels, np.ndarray):
    return pixels
  shapes = sorted({p.shape for p in pixels})
  if len(shapes) > 1:
    raise ValueError(f"images differ in shape ({shapes[:3]}); pass image_size or augment='imagenet'.")
  return np.stack(pixels)


def _make_batch(pixels: np.ndarray, labels, batch_size: int) -> Batch:
  batch = {"image": pixels, "label": np.asarray(labels, np.int32), "mask": np.ones(len(pixels), bool)}
  pad = batch_size - len(pixels)
  if pad:
    batch = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
  return batch
