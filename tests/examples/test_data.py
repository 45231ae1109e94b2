"""Tests for examples.data: loaders (real npz, embedded subset, mock TFDS), augmentation, batching."""

import pathlib

import numpy as np
import pytest

from examples import data
from examples.data import augment

REPO = pathlib.Path(__file__).resolve().parents[2]

# `data_dir` is the shared fixture of tests/conftest.py: $BORT_DATA_DIR or ../shared/data, else skip.


@pytest.mark.parametrize("name, split, shape, first_labels", [
    ("mnist", "train", (60000, 28, 28, 1), [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]),
    ("mnist", "test", (10000, 28, 28, 1), [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]),
    ("fashion_mnist", "train", (60000, 28, 28, 1), [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]),
    ("cifar10", "test", (10000, 32, 32, 3), [0] * 10),  # the local CIFAR-10 test split is sorted by class
])
def test_load_npz(name, split, shape, first_labels, data_dir):
  images, labels = data.load_arrays(name, split, data_dir)
  assert images.shape == shape and images.dtype == np.uint8
  assert labels.shape == shape[:1] and labels.dtype == np.int32
  np.testing.assert_array_equal(labels[:10], first_labels)
  assert labels.min() == 0 and labels.max() == 9


def test_data_dir_defaults_to_env(monkeypatch, data_dir):
  monkeypatch.setenv("BORT_DATA_DIR", str(data_dir))
  images, labels = data.load_arrays("mnist", "test", data_dir="")  # "" also means: use the variable
  assert images.shape == (10000, 28, 28, 1) and labels[0] == 7


@pytest.mark.parametrize("name, tolerance", [("mnist", 5e-5), ("fashion_mnist", 5e-5), ("cifar10", 2e-3)])
def test_normalization_matches_training_set(name, tolerance, data_dir):
  """The table's mean/std equal the statistics of the real training pixels (CIFAR copy: JPEG, looser)."""
  images, _ = data.load_arrays(name, "train", data_dir)
  values = np.arange(256) / 255.0
  mean, std = [], []
  for channel in range(images.shape[-1]):  # exact moments from the 256-bin histogram of each channel
    p = np.bincount(images[..., channel].ravel(), minlength=256) / images[..., channel].size
    mean.append(p @ values)
    std.append(np.sqrt(p @ (values - mean[-1]) ** 2))
  stats = data.normalization(name)
  np.testing.assert_allclose(mean, stats.mean, atol=tolerance)
  np.testing.assert_allclose(std, stats.std, atol=tolerance)


def test_mnist_small_is_a_stratified_subset_of_mnist(data_dir):
  full_images, full_labels = data.load_arrays("mnist", "train", data_dir)
  with np.load(REPO / "examples" / "assets" / "mnist_small.npz") as subset:
    indices = subset["train_indices"]
  images, labels = data.load_arrays("mnist_small", "train")
  np.testing.assert_array_equal(images, full_images[indices])
  np.testing.assert_array_equal(labels, full_labels[indices])


def test_mnist_small_shapes_and_classes():
  for split, per_class in [("train", 500), ("test", 100)]:
    images, labels = data.load_arrays("mnist_small", split, data_dir="/nonexistent")
    assert images.shape == (10 * per_class, 28, 28, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, per_class))
  assert data.num_classes(labels) == 10


def test_random_crop_flip_is_a_crop_of_the_padded_image_or_its_mirror():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
  out = augment.random_crop_flip(images, np.random.default_rng(1), padding=2)
  assert out.shape == images.shape and out.dtype == np.uint8
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  flips = []
  for image, crop in zip(padded, out):
    found = [(flip, t, l) for flip in (False, True) for t in range(5) for l in range(5)
             if np.array_equal(crop, (image[:, ::-1] if flip else image)[t:t + 8, l:l + 8])]
    assert found, "output is not a crop of the padded image or of its mirror"
    flips.append(found[0][0])
  assert 0 < sum(flips) < len(flips)


def test_flip_without_padding_is_an_exact_mirror():
  images = np.random.default_rng(0).integers(0, 256, (64, 5, 7, 1), dtype=np.uint8)
  out = augment.random_crop_flip(images, np.random.default_rng(3), padding=0)
  mirrored = np.array([np.array_equal(o, x[:, ::-1]) for o, x in zip(out, images)])
  same = np.array([np.array_equal(o, x) for o, x in zip(out, images)])
  assert np.all(mirrored ^ same) and 20 < mirrored.sum() < 44


def test_resized_crop_boxes_respect_scale_and_ratio():
  rng = np.random.default_rng(0)
  boxes = np.array([augment.sample_resized_crop_box(300, 400, rng) for _ in range(2000)])
  top, left, h, w = boxes.T
  assert np.all(top >= 0) and np.all(left >= 0) and np.all(top + h <= 300) and np.all(left + w <= 400)
  area = h * w / (300 * 400)
  assert area.min() > 0.075 and area.max() <= 1.0 and area.mean() > 0.4  # E[s] = 0.54 before rejection
  aspect = w / h
  assert aspect.min() > 0.74 and aspect.max() < 1.35


def test_imagenet_train_is_resized_crop_then_exact_flip():
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(40, 60), (64, 32), (50, 50)] * 4]
  out = augment.imagenet_train(images, np.random.default_rng(5), 24)
  assert out.shape == (12, 24, 24, 3) and out.dtype == np.uint8
  replay = np.random.default_rng(5)  # same draws: boxes first, then flips
  boxes = [augment.sample_resized_crop_box(*im.shape[:2], replay) for im in images]
  flips = replay.random(len(images)) < 0.5
  for image, box, flip, result in zip(images, boxes, flips, out):
    unflipped = augment.resize_box(image, box, 24)
    np.testing.assert_array_equal(result, unflipped[:, ::-1] if flip else unflipped)
  assert 0 < flips.sum() < len(flips)


def test_imagenet_eval_is_the_central_crop():
  image = np.random.default_rng(0).integers(0, 256, (256, 320, 3), dtype=np.uint8)
  out = augment.imagenet_eval([image], 224)
  np.testing.assert_array_equal(out[0], image[16:240, 48:272])  # 0.875 * 256 = 224: no resampling


def _loader(**kw):
  images, labels = data.load_arrays("mnist_small", "test")
  return data.TrainLoader(images[:100], labels[:100], 16, seed=3, augment="cifar", **kw)


def test_train_loader_is_deterministic_and_permutes_each_epoch():
  images = np.zeros((50, 4, 4, 1), np.uint8)
  loader = data.TrainLoader(images, np.arange(50, dtype=np.int32), 8, seed=1)
  assert loader.steps_per_epoch == 6
  seen = [np.concatenate([b["label"] for b in loader.epoch(e)]) for e in range(2)]
  for labels in seen:
    assert len(set(labels.tolist())) == 48  # a permutation, last incomplete batch dropped
  assert not np.array_equal(seen[0], seen[1])
  again = data.TrainLoader(images, np.arange(50, dtype=np.int32), 8, seed=1)
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in again.epoch(1)]), seen[1])


def test_resume_mid_epoch_continues_exactly():
  loader = _loader()
  stream = loader.batches()
  uninterrupted = [next(stream) for _ in range(15)]  # 6 steps per epoch: crosses two epoch boundaries
  resumed = loader.batches(start_step=8)
  for expected in uninterrupted[8:]:
    got = next(resumed)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key])
  np.testing.assert_array_equal(loader.get_batch(1, 2)["image"], uninterrupted[8]["image"])
  assert not np.array_equal(_loader().get_batch(1, 3)["image"], uninterrupted[8]["image"])


def test_eval_batches_pad_and_mask():
  images, labels = data.load_arrays("mnist_small", "test")
  batches = list(data.eval_batches(images[:70], labels[:70], 32))
  assert [b["image"].shape for b in batches] == [(32, 28, 28, 1)] * 3
  assert batches[0]["image"].dtype == np.uint8
  np.testing.assert_array_equal(batches[-1]["mask"], np.arange(32) < 6)
  np.testing.assert_array_equal(batches[-1]["image"][:6], images[64:70])
  assert not batches[-1]["image"][6:].any()
  np.testing.assert_array_equal(np.concatenate([b["label"][b["mask"]] for b in batches]), labels[:70])


def test_bad_arguments_raise_value_error():
  with pytest.raises(ValueError, match="name must be"):
    data.load_arrays("no_such_dataset", "train")
  with pytest.raises(ValueError, match="split must be one of"):
    data.load_arrays("mnist_small", "validation")
  with pytest.raises(ValueError, match="name must be one of"):
    data.normalization("svhn")
  with pytest.raises(ValueError, match="augment must be one of"):
    data.TrainLoader(np.zeros((4, 2, 2, 1), np.uint8), np.zeros(4, np.int32), 2, augment="flip")
  with pytest.raises(ValueError, match="image_size must be None"):
    _loader(image_size=64)
  with pytest.raises(ValueError, match="batch_size"):
    data.TrainLoader(np.zeros((4, 2, 2, 1), np.uint8), np.zeros(4, np.int32), 5).steps_per_epoch


def test_mock_tfds_imagenet_pipeline():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
    images, labels = data.load_arrays("imagenet2012", "train")
    assert isinstance(images, data.RecordColumn) and len(images) == 10
    assert data.num_classes(labels) == 1000
    sizes = {images[i].shape for i in range(10)}
    assert len(sizes) > 1  # mock images have random sizes, as real ImageNet
    loader = data.TrainLoader(images, labels, 4, seed=0, augment="imagenet")
    batch = loader.get_batch(0, 1)
    assert batch["image"].shape == (4, 224, 224, 3) and batch["image"].dtype == np.uint8
    order = np.random.default_rng((0, 0)).permutation(10)[4:8]
    np.testing.assert_array_equal(batch["label"], [labels[i] for i in order])
    np.testing.assert_array_equal(loader.get_batch(0, 1)["image"], batch["image"])
    with pytest.raises(ValueError, match="images differ in shape"):
      data.TrainLoader(images, labels, 4).get_batch(0, 0)

    val_images, val_labels = data.load_arrays("imagenet2012", "validation")
    evals = list(data.eval_batches(val_images, val_labels, 4, image_size=224))
    assert [b["image"].shape for b in evals] == [(4, 224, 224, 3)] * 3
    np.testing.assert_array_equal(evals[-1]["mask"], [True, True, False, False])
    np.testing.assert_array_equal(evals[0]["image"][0], augment.imagenet_eval([val_images[0]], 224)[0])


def _npz(directory, **arrays):
  """Writes `arrays` as <directory>/mnist.npz and returns (data_dir, path)."""
  path = directory / "mnist.npz"
  np.savez(path, **arrays)
  return directory, path


def _split(n=4, labels=(0, 1, 2, 9), image_dtype=np.uint8):
  return np.zeros((n, 3, 3), image_dtype), np.asarray(labels)


def _expect_invalid(data_dir, path, found):
  """One ValueError naming the file, the expected layout and what was found (not numpy's own message)."""
  with pytest.raises(ValueError) as info:
    data.load_arrays("mnist", "test", data_dir)
  message = str(info.value)
  assert message.startswith(f"{path} holds no valid 'test' split: expected arrays x_test (uint8 images, "
                            "shape (N, H, W) or (N, H, W, C)) and y_test (integer labels, shape (N,), "
                            "values in [0, 10)); found "), message
  assert found in message, message
  assert "allow_pickle" not in message and info.value.__cause__ is None


def test_npz_without_the_split_names_the_missing_keys(tmp_path):
  x, y = _split()
  _expect_invalid(*_npz(tmp_path, x_train=x, y_train=y), "found keys ['x_train', 'y_train'].")


def test_npz_with_labels_outside_the_classes_shows_their_range(tmp_path):
  x, y = _split(labels=(0, 1, 10, 3))
  _expect_invalid(*_npz(tmp_path, x_test=x, y_test=y), "found x_test uint8 (4, 3, 3), y_test int64 (4,) "
                  "with values in [0, 10].")
  x, y = _split(labels=(-1, 1, 2, 3))
  _expect_invalid(*_npz(tmp_path, x_test=x, y_test=y), "with values in [-1, 3].")


@pytest.mark.parametrize("x, y, found", [
    (*_split(image_dtype=np.float32), "x_test float32 (4, 3, 3), y_test int64 (4,)"),
    (np.zeros((4, 3), np.uint8), _split()[1], "x_test uint8 (4, 3), y_test int64 (4,)"),
    (_split()[0], np.zeros(4, np.float32), "y_test float32 (4,)."),
    (_split()[0], np.zeros(3, np.int32), "y_test int32 (3,)."),
])
def test_npz_with_other_dtypes_or_shapes_shows_them(tmp_path, x, y, found):
  _expect_invalid(*_npz(tmp_path, x_test=x, y_test=y), found)


def test_unreadable_npz_says_what_the_file_is(tmp_path):
  path = tmp_path / "mnist.npz"
  path.write_text("not an archive")  # numpy would advise allow_pickle=True for this
  _expect_invalid(tmp_path, path, "found no zip archive (first bytes b'not an a').")
  x, y = _split()
  np.savez(path, x_test=x, y_test=y)
  path.write_bytes(path.read_bytes()[:100])  # cut short, e.g. by an interrupted download
  _expect_invalid(tmp_path, path, "found a damaged zip archive (BadZipFile: ")
  with open(path, "wb") as f:
    np.save(f, x)
  _expect_invalid(tmp_path, path, "found a single .npy array, not an .npz archive.")


def test_valid_npz_of_any_integer_labels_loads(tmp_path):
  x, y = _split(labels=np.array([0, 9, 3, 3], np.uint8))
  images, labels = data.load_arrays("mnist", "test", _npz(tmp_path, x_test=x, y_test=y)[0])
  assert images.shape == (4, 3, 3, 1) and labels.dtype == np.int32
  np.testing.assert_array_equal(labels, [0, 9, 3, 3])
