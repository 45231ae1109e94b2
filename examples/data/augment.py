"""Per-image augmentation in NumPy (HWC uint8 in, HWC uint8 out), driven by an explicit ``np.random.Generator``.

* CIFAR (He et al., 2016, §4.2): zero-pad 4 pixels, take a random 32x32 crop, flip horizontally with p=1/2.
* ImageNet (Szegedy et al., 2015, "Going deeper with convolutions"; torchvision's RandomResizedCrop):
  a crop covering a fraction s ~ U(0.08, 1) of the area with aspect ratio r, log r ~ U(log 3/4, log 4/3),
  resized to ``size`` x ``size``, then a flip; evaluation resizes the shorter side to size / 0.875 and
  takes the central ``size`` x ``size`` crop.

Random parameters are drawn before any pixel work, in a fixed order, so an output depends only on the
generator's state: the pipeline (``examples.data.pipeline``) hands each record grain's generator seeded by
(seed, record position), which makes every augmented batch reproducible on resume and on any process.
"""

import math

import numpy as np
from PIL import Image

EVAL_CROP_FRACTION = 0.875  # 224 of 256


def random_crop_flip(image: np.ndarray, rng: np.random.Generator, padding: int = 4) -> np.ndarray:
  """Pads (H, W, C) with zeros, crops back to (H, W) at a random offset, flips with p=1/2."""
  h, w, _ = image.shape
  top, left = rng.integers(0, 2 * padding + 1, size=2)
  flip = rng.random() < 0.5
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  crop = padded[top:top + h, left:left + w]
  return crop[:, ::-1] if flip else crop


def sample_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """(top, left, crop_height, crop_width) of a random-resized-crop; 10 tries, then a central crop."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  # Fallback (as torchvision): the largest central crop whose aspect ratio lies within `ratio`.
  aspect = width / height
  if aspect < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif aspect > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def resize_box(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
  """Bilinear (antialiased) resize of the (top, left, height, width) region of HWC uint8 to (size, size)."""
  top, left, h, w = box
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h)))
  return out.reshape(size, size, channels)


def imagenet_train(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
  """Random-resized-crop + horizontal flip of one HWC uint8 image to (size, size, C)."""
  box = sample_resized_crop_box(image.shape[0], image.shape[1], rng)
  flip = rng.random() < 0.5
  out = resize_box(image, box, size)
  return out[:, ::-1] if flip else out


def center_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
  """The central square covering ``EVAL_CROP_FRACTION`` of the shorter side."""
  side = max(1, int(round(EVAL_CROP_FRACTION * min(height, width))))
  return (height - side) // 2, (width - side) // 2, side, side


def imagenet_eval(image: np.ndarray, size: int) -> np.ndarray:
  """Resize shorter side to size / 0.875, central size x size crop (one resampling step) of one HWC image."""
  return resize_box(image, center_crop_box(*image.shape[:2]), size)
