"""Example trainer: loss and step against independent references, schedule, evaluation masking, I/O."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from examples import checkpointing
from examples import data as data_lib
from examples import metrics_io
from examples import optimizers
from examples import sharding
from examples import train
from examples.configs import default

# The trainer reads exact views from the NNX module types: no view of a shipped model is a guess.
pytestmark = pytest.mark.filterwarnings("error::bort_jax.ViewGuessWarning")


def _tiny_mlp_config(**overrides):
  config = default.get_config()
  config.update(dict(model="mlp", dataset="mnist", optimizer="sgd", learning_rate=0.1, momentum=0.0,
                     weight_decay=0.01, lr_schedule="constant", warmup_epochs=0.0, num_epochs=1))
  config.model_kwargs = {"in_features": 16, "hidden_sizes": (8,)}
  config.update(overrides)
  return config


def _batch(rng, n=6, side=4, classes=10):
  return {"image": rng.integers(0, 256, (n, side, side, 1), dtype=np.uint8),
          "label": rng.integers(0, classes, (n,), dtype=np.int32)}


def test_cross_entropy_with_label_smoothing_matches_numpy():
  rng = np.random.default_rng(0)
  logits, labels = rng.normal(size=(5, 7)).astype(np.float32), rng.integers(0, 7, 5)
  eps = 0.1
  log_p = logits - logits.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  target = np.full((5, 7), eps / 7)
  target[np.arange(5), labels] += 1 - eps
  np.testing.assert_allclose(train.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), eps),
                             -(target * log_p).sum(-1), rtol=1e-5)


def _reference_loss(params, image, label, lam, beta, smoothing):
  """Independent jnp re-derivation: normalised input, ReLU MLP, smoothed CE minus DBort energy."""
  x = ((image.astype(jnp.float32) / 255.0 - 0.1307) / 0.3081).reshape(image.shape[0], -1)
  h = x @ params["layers"][0]["kernel"] + params["layers"][0]["bias"]
  y = jax.nn.relu(h) @ params["layers"][1]["kernel"] + params["layers"][1]["bias"]
  target = (1 - smoothing) * jax.nn.one_hot(label, 10) + smoothing / 10
  ce = -jnp.mean(jnp.sum(target * jax.nn.log_softmax(y), -1))
  return ce - lam * (jnp.mean(h ** 2) ** beta + jnp.mean(y ** 2) ** beta)


@pytest.mark.parametrize("lam,smoothing", [(0.0, 0.0), (1e-2, 0.1)])
def test_sgd_step_equals_hand_derived_update(lam, smoothing):
  """One step = p - lr (grad + wd p), grad of CE(+DBort) taken by jax.grad of a separate model."""
  config = _tiny_mlp_config(dbort_lambda=lam, dbort_beta=0.5, label_smoothing=smoothing)
  tx, _ = optimizers.create_optimizer(config, steps_per_epoch=10)
  state, graphs = train.create_train_state(train.create_model(config, 10), tx)
  params = jax.tree.map(np.array, state.params)
  batch = _batch(np.random.default_rng(1))
  new_state, metrics = train.make_train_step(graphs, tx, config, 10)(state, batch)

  grads = jax.grad(_reference_loss)(params, batch["image"], batch["label"], lam, 0.5, smoothing)
  expected = jax.tree.map(lambda p, g: p - 0.1 * (g + 0.01 * p), params, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               new_state.params, expected)
  assert int(new_state.step) == 1
  total = _reference_loss(params, batch["image"], batch["label"], lam, 0.5, smoothing)
  np.testing.assert_allclose(metrics["total_loss"] / metrics["count"], total, rtol=1e-5)


def test_on_device_normalization_of_a_real_batch():
  """The trainer's input: (x / 255 - mean) / std of the uint8 batch, mean ~0 and std ~1 on MNIST."""
  images, _ = data_lib.load_arrays("mnist_small", "test")
  batch = data_lib.eval_dataset(data_lib.load_dataset("mnist_small", "test"), 1000)[0]
  assert batch["image"].dtype == np.uint8
  x = np.asarray(train.normalize_images(jnp.asarray(batch["image"]), data_lib.normalization("mnist")))
  expected = (images.astype(np.float64) / 255.0 - 0.1307) / 0.3081
  np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
  assert x.dtype == np.float32 and abs(x.mean()) < 0.02 and abs(x.std() - 1.0) < 0.02
  bf16 = train.normalize_images(jnp.asarray(batch["image"]), data_lib.normalization("mnist"), jnp.bfloat16)
  assert bf16.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="normalization has 3 channels, images have 1"):
    train.normalize_images(jnp.asarray(batch["image"]), data_lib.normalization("cifar10"))


def test_bcos_loss_and_raw_pixels_options():
  """config.loss="bcos_bce" is the B-cos authors' loss per example; config.normalize=False feeds x / 255."""
  from bort_jax.explain import bcos
  rng = np.random.default_rng(0)
  logits, labels = jnp.asarray(rng.normal(size=(5, 10)), jnp.float32), jnp.asarray(rng.integers(0, 10, 5))
  np.testing.assert_allclose(jnp.mean(train.cross_entropy(logits, labels, loss="bcos_bce")),
                             bcos.bcos_bce_loss(logits, labels), rtol=1e-6)
  images = _batch(rng)["image"]
  raw = train.normalize_images(jnp.asarray(images), train.input_normalization(_tiny_mlp_config(normalize=False)))
  np.testing.assert_allclose(raw, images.astype(np.float32) / 255.0, rtol=1e-6)  # XLA may round x / 255 by 1 ulp


def test_schedule_warmup_then_cosine():
  config = _tiny_mlp_config(lr_schedule="cosine", warmup_epochs=1.0, num_epochs=3, learning_rate=0.3)
  lr = optimizers.learning_rate_schedule(config, steps_per_epoch=10)
  np.testing.assert_allclose([lr(0), lr(5), lr(10)], [0.0, 0.15, 0.3], atol=1e-7)
  np.testing.assert_allclose(lr(20), 0.3 * 0.5 * (1 + np.cos(np.pi * 10 / 20)), rtol=1e-6)
  np.testing.assert_allclose(lr(30), 0.0, atol=1e-7)


def test_evaluate_masks_the_padded_tail():
  """1,000 embedded test images in batches of 300: the padded 200 must not count."""
  config = _tiny_mlp_config(eval_batch_size=300, dataset="mnist_small")
  config.model_kwargs = {"hidden_sizes": (16,)}
  images, labels = data_lib.load_arrays("mnist_small", "test")
  tx, _ = optimizers.create_optimizer(config, 10)
  model = train.create_model(config, 10)
  state, graphs = train.create_train_state(model, tx)
  got = train.evaluate(train.make_eval_step(graphs, config), state, data_lib.load_dataset("mnist_small", "test"),
                       config, sharding.make_mesh())
  model.eval()
  logits = np.asarray(model(train.normalize_images(jnp.asarray(images), data_lib.normalization("mnist"))))
  np.testing.assert_allclose(got["accuracy"], np.mean(logits.argmax(-1) == labels), rtol=1e-6)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  np.testing.assert_allclose(got["loss"], np.mean(ce), rtol=1e-5)


def test_checkpointer_round_trips_typed_keys_and_optimizer_state(tmp_path):
  params = {"layers": {0: {"kernel": jnp.arange(6.0).reshape(2, 3)}}}
  tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))
  state = train.TrainState(jnp.asarray(7, jnp.int32), params, {"rng": jax.random.key(3)},
                           tx.init(params), {"count": jnp.asarray(3, jnp.int32)}, jnp.zeros(2, jnp.int32))
  ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=7, keep=1)
  ckpt.maybe_save(6, state)
  assert ckpt.latest_step() is None
  ckpt.maybe_save(7, state)
  ckpt.close()
  template = jax.tree.map(jnp.zeros_like, state._replace(model_state={"rng": jax.random.key(0)}))
  restored = checkpointing.Checkpointer(str(tmp_path), every_steps=7, keep=1).restore_latest(template)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  np.testing.assert_array_equal(jax.random.key_data(restored.model_state["rng"]),
                                jax.random.key_data(state.model_state["rng"]))
  np.testing.assert_array_equal(restored.params["layers"][0]["kernel"], params["layers"][0]["kernel"])


def test_metrics_log_trims_on_resume_and_plots(tmp_path):
  log = metrics_io.MetricsLog(str(tmp_path / "m.jsonl"))
  for epoch in (1, 2, 3):
    log.append({"epoch": epoch, "train_loss": 1.0 / epoch, "test_loss": 1.2 / epoch,
                "train_accuracy": 0.5, "test_accuracy": 0.4,
                "orthogonality_gap": {"fc/kernel": {"offdiag": 0.1 / epoch}}})
  log.keep_until(2)
  assert [r["epoch"] for r in log.read()] == [1, 2]
  metrics_io.plot_curves(log.read(), str(tmp_path / "c.png"))
  assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_seconds_scale_an_epoch_resumed_after_a_cut(tmp_path):
  """10 steps an epoch: a whole epoch of 30 s counts 30 s, one resumed with 4 steps timed in 20 s counts 50 s, and
  a record from before "timed_steps" existed counts as measured."""
  log = metrics_io.MetricsLog(str(tmp_path / "m.jsonl"))
  log.append({"epoch": 1, "step": 10, "seconds": 30.0, "timed_steps": 10})
  log.append({"epoch": 2, "step": 20, "seconds": 20.0, "timed_steps": 4})
  log.append({"epoch": 3, "step": 30, "seconds": 7.0})
  assert log.training_seconds() == pytest.approx(87.0)


def test_every_process_returns_results_and_only_process_0_writes_files(tmp_path, monkeypatch):
  """A pod's other processes get the same results as process 0 without reading its files.

  `is_chief_process` is faked rather than `jax.process_index` itself: a fake index would also make this
  single process feed the batch slice and Orbax role of a process that does not exist.
  """
  config = _tiny_mlp_config(dataset="mnist_small", train_limit=128, batch_size=32, eval_batch_size=500,
                            progress_bar=False)
  config.model_kwargs = {"hidden_sizes": (16,)}
  _, chief = train.train_and_evaluate(config, str(tmp_path / "chief"))
  assert chief == json.loads((tmp_path / "chief" / "results.json").read_text())

  monkeypatch.setattr(train, "is_chief_process", lambda: False)  # as when jax.process_index() == 1
  _, other = train.train_and_evaluate(config, str(tmp_path / "other"))
  assert other == chief and other["completed"] and 0 <= other["test_accuracy"] <= 1
  assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["checkpoints"]  # written by all

  # Resuming a finished run trains nothing: its results come from the restored final state.
  _, again = train.train_and_evaluate(config, str(tmp_path / "other"), resume=True)
  assert again == chief
