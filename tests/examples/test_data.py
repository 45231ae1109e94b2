"""Tests for examples.data: loaders (real npz, embedded subset, mock TFDS), augmentation, grain batching."""

import pathlib

import grain
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
  assert data.num_classes("mnist_small") == 10
  records = data.load_dataset("mnist_small", "test")
  assert len(records) == 1000 and records[3]["label"] == labels[3]
  np.testing.assert_array_equal(records[3]["image"], images[3])


def test_random_crop_flip_is_a_crop_of_the_padded_image_or_its_mirror():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
  flips = []
  for image in images:
    crop = augment.random_crop_flip(image, rng, padding=2)
    assert crop.shape == image.shape and crop.dtype == np.uint8
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    found = [(flip, t, l) for flip in (False, True) for t in range(5) for l in range(5)
             if np.array_equal(crop, (padded[:, ::-1] if flip else padded)[t:t + 8, l:l + 8])]
    assert found, "output is not a crop of the padded image or of its mirror"
    flips.append(found[0][0])
  assert 0 < sum(flips) < len(flips)


def test_flip_without_padding_is_an_exact_mirror():
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (64, 5, 7, 1), dtype=np.uint8)
  out = [augment.random_crop_flip(x, rng, padding=0) for x in images]
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
  flips = []
  for seed, image in enumerate(images):
    out = augment.imagenet_train(image, np.random.default_rng(seed), 24)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    replay = np.random.default_rng(seed)  # same draws: the box first, then the flip
    box = augment.sample_resized_crop_box(*image.shape[:2], replay)
    flips.append(replay.random() < 0.5)
    unflipped = augment.resize_box(image, box, 24)
    np.testing.assert_array_equal(out, unflipped[:, ::-1] if flips[-1] else unflipped)
  assert 0 < sum(flips) < len(flips)


def test_imagenet_eval_is_the_central_crop():
  image = np.random.default_rng(0).integers(0, 256, (256, 320, 3), dtype=np.uint8)
  np.testing.assert_array_equal(augment.imagenet_eval(image, 224), image[16:240, 48:272])  # no resampling


SINGLE = grain.sharding.NoSharding()


def _records(n=100):
  return data.load_dataset("mnist_small", "test")[:n]


def test_train_batches_are_deterministic_and_permute_each_epoch():
  records = grain.MapDataset.source(data.ArraySource(np.zeros((50, 4, 4, 1), np.uint8), np.arange(50, dtype=np.int32)))
  batches = data.train_dataset(records, 8, seed=1, shard=SINGLE)  # 6 steps per epoch, 2 records dropped
  seen = [np.concatenate([batches[e * 6 + k]["label"] for k in range(6)]) for e in range(2)]
  for labels in seen:
    assert len(set(labels.tolist())) == 48  # a permutation, last incomplete batch dropped
  assert not np.array_equal(seen[0], seen[1])
  again = data.iterate(data.train_dataset(records, 8, seed=1, shard=SINGLE))
  np.testing.assert_array_equal(np.concatenate([next(again)["label"] for _ in range(12)][6:]), seen[1])


def test_iterator_state_resumes_mid_epoch_exactly():
  batches = data.train_dataset(_records(), 16, seed=3, augment="cifar", shard=SINGLE)
  stream = data.iterate(batches)
  uninterrupted = [next(stream) for _ in range(15)]  # 6 steps per epoch: crosses two epoch boundaries
  stream = data.iterate(batches)
  for _ in range(8):
    next(stream)
  state = stream.get_state()
  resumed = data.iterate(batches)
  resumed.set_state(state)
  for k, expected in enumerate(uninterrupted[8:], start=8):
    got = next(resumed)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key])
      np.testing.assert_array_equal(batches[k][key], expected[key])  # batch = pure function of the step
  other_seed = data.train_dataset(_records(), 16, seed=4, augment="cifar", shard=SINGLE)
  assert not np.array_equal(other_seed[8]["image"], uninterrupted[8]["image"])


class _CountingSource(data.ArraySource):
  """Remembers which rows were read."""

  def __init__(self, images, labels):
    super().__init__(images, labels)
    object.__setattr__(self, "read", [])

  def __getitem__(self, index):
    self.read.append(int(index))
    return super().__getitem__(index)


def test_each_process_reads_and_augments_only_its_part_of_the_batch():
  images, labels = data.load_arrays("mnist_small", "test")
  whole = data.train_dataset(_records(), 16, seed=3, augment="cifar", shard=SINGLE)
  sources = [_CountingSource(images[:100], labels[:100]) for _ in range(2)]
  parts = [data.train_dataset(grain.MapDataset.source(source), 16, seed=3, augment="cifar",
                              shard=grain.sharding.ShardOptions(p, 2)) for p, source in enumerate(sources)]
  for step in (0, 5, 6, 13):  # within and across epochs
    for source in sources:
      source.read.clear()
    got = [part[step] for part in parts]
    assert [g["image"].shape[0] for g in got] == [8, 8]
    for key in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), whole[step][key])
    assert [len(set(source.read)) for source in sources] == [8, 8]  # one read per row of its own part
    assert not set(sources[0].read) & set(sources[1].read)
  with pytest.raises(ValueError, match="does not split over 3 processes"):
    data.train_dataset(_records(), 16, shard=grain.sharding.ShardOptions(0, 3))


def test_worker_processes_give_the_same_batches():
  batches = data.train_dataset(_records(), 16, seed=3, augment="cifar", shard=SINGLE)
  stream = data.iterate(batches, workers=2)
  for k in range(7):
    np.testing.assert_array_equal(next(stream)["image"], batches[k]["image"])
  resumed = data.iterate(batches, workers=2)
  resumed.set_state(stream.get_state())
  np.testing.assert_array_equal(next(resumed)["image"], batches[7]["image"])


def test_eval_batches_pad_and_mask_and_split_over_processes():
  images, labels = data.load_arrays("mnist_small", "test")
  batches = list(data.eval_dataset(_records(70), 32, shard=SINGLE))
  assert [b["image"].shape for b in batches] == [(32, 28, 28, 1)] * 3
  assert batches[0]["image"].dtype == np.uint8
  np.testing.assert_array_equal(batches[-1]["mask"], np.arange(32) < 6)
  np.testing.assert_array_equal(batches[-1]["image"][:6], images[64:70])
  assert not batches[-1]["image"][6:].any()
  np.testing.assert_array_equal(np.concatenate([b["label"][b["mask"]] for b in batches]), labels[:70])
  parts = [list(data.eval_dataset(_records(70), 32, shard=grain.sharding.ShardOptions(p, 2))) for p in (0, 1)]
  for k, batch in enumerate(batches):
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([parts[0][k][key], parts[1][k][key]]), batch[key])


def test_bad_arguments_raise_value_error():
  with pytest.raises(ValueError, match="name must be"):
    data.load_dataset("no_such_dataset", "train")
  with pytest.raises(ValueError, match="name must be"):
    data.load_arrays("no_such_dataset", "train")
  with pytest.raises(ValueError, match="split must be one of"):
    data.load_arrays("mnist_small", "validation")
  with pytest.raises(ValueError, match="name must be one of"):
    data.normalization("svhn")
  with pytest.raises(ValueError, match="augment must be one of"):
    data.train_dataset(_records(), 2, augment="flip")
  with pytest.raises(ValueError, match="image_size must be None"):
    data.train_dataset(_records(), 2, augment="cifar", image_size=64)
  with pytest.raises(ValueError, match="batch_size"):
    data.train_dataset(_records(4), 5)


def test_mock_tfds_imagenet_pipeline():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
    records = data.load_dataset("imagenet2012", "train")
    assert len(records) == 10 and data.num_classes("imagenet2012") == 1000
    sizes = {records[i]["image"].shape for i in range(10)}
    assert len(sizes) > 1  # mock images have random sizes, as real ImageNet
    batches = data.train_dataset(records, 4, seed=0, augment="imagenet", shard=SINGLE)
    batch = batches[1]
    assert batch["image"].shape == (4, 224, 224, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32 and set(batch) == {"image", "label"}
    np.testing.assert_array_equal(batches[1]["image"], batch["image"])
    with pytest.raises(ValueError):  # images of different sizes need a crop to be batched
      data.train_dataset(records, 4, shard=SINGLE)[0]

    val = data.load_dataset("imagenet2012", "validation")
    evals = list(data.eval_dataset(val, 4, image_size=224, shard=SINGLE))
    assert [b["image"].shape for b in evals] == [(4, 224, 224, 3)] * 3
    np.testing.assert_array_equal(evals[-1]["mask"], [True, True, False, False])
    np.testing.assert_array_equal(evals[0]["image"][0], augment.imagenet_eval(val[0]["image"], 224))


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
