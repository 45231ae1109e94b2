"""Image augmentation in NumPy (uint8 in, uint8 out), driven by an explicit ``np.random.Generator``.

* CIFAR (He et al., 2016, §4.2): zero-pad 4 pixels, take a random 32x32 crop, flip horizontally with p=1/2.
* ImageNet (Szegedy et al., 2015, "Going deeper with convolutions"; torchvision's RandomResizedCrop):
  a crop covering a fraction s ~ U(0.08, 1) of the area with aspect ratio r, log r ~ U(log 3/4, log 4/3),
  resized to ``size`` x ``size``, then a flip; evaluation resizes the shorter side to size / 0.875 and
  takes the central ``size`` x ``size`` crop.

Random parameters are drawn before any pixel work, in a fixed order, so a batch depends only on the
generator's seed.
"""

import math

import numpy as np
from PIL import Image

from examples.data._parallel import parallel_map

EVAL_CROP_FRACTION = 0.875  # 224 of 256


def random_crop_flip(images: np.ndarray, rng: np.random.Generator, padding: int = 4) -> np.ndarray:
  """Pads (B, H, W, C) with zeros, crops back to (H, W) at a random offset, flips half of the images."""
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  top = rng.integers(0, 2 * padding + 1, size=b)
  left = rng.integers(0, 2 * padding + 1, size=b)
  flip = rng.random(b) < 0.5
  rows = top[:, None] + np.arange(h)
  cols = left[:, None] + np.arange(w)
  cols = np.where(flip[:, None], cols[:, ::-1], cols)  # flipping = reading the crop's columns backwards
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


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


def imagenet_train(images, rng: np.random.Generator, size: int) -> np.ndarray:
  """Random-resized-crop + horizontal flip of a sequence of HWC uint8 images to (B, size, size, C)."""
  boxes = [sample_resized_crop_box(im.shape[0], im.shape[1], rng) for im in images]
  flip = rng.random(len(boxes)) < 0.5
  out = np.stack(parallel_map(lambda args: resize_box(*args, size), list(zip(images, boxes))))
  out[flip] = out[flip, :, ::-1]
  return out


def center_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
  """The central square covering ``EVAL_CROP_FRACTION`` of the shorter side."""
  side = max(1, int(round(EVAL_CROP_FRACTION * min(height, width))))
  return (height - side) // 2, (width - side) // 2, side, side


def imagenet_eval(images, size: int) -> np.ndarray:
  """Resize shorter side to size / 0.875, central size x size crop (one resampling step)."""
  return np.stack(parallel_map(lambda im: resize_box(im, center_crop_box(*im.shape[:2]), size), images))
