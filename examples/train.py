"""Train state, jitted train/eval steps and the training loop of the examples.

The state is explicit and purely functional: NNX modules are split once into a static graph and pure
dicts of arrays (parameters, other model state such as BatchNorm statistics or dropout RNG streams), so
a step is a plain `jax.jit` function that donates the old state, shards the batch on the mesh axis
"data" and keeps the state replicated. Everything needed to continue a run bit-for-bit (state, step
counter) lives in that one pytree, checkpointed with Orbax beside the grain data iterator's position.
"""

import dataclasses
import functools
import itertools
import os
import time
from typing import Any
from typing import NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import optax
import tqdm

import bort_jax
from examples import checkpointing
from examples import config_validation
from examples import data as data_lib
from examples import metrics_io
from examples import models as models_lib
from examples import optimizers
from examples import sharding


class TrainState(NamedTuple):
  """Everything a training run carries from one step to the next."""
  step: jax.Array  # int32 scalar: optimizer steps taken so far (also the data position).
  params: dict  # nnx.Param values as a pure nested dict, float32.
  model_state: dict  # the model's other variables: BatchNorm statistics, RNG streams.
  opt_state: optax.OptState
  epoch_metrics: dict  # sums over the current epoch's steps so far: loss, correct, count.
  divergence: jax.Array  # int32 (2,): first step whose loss or parameters were not finite (0: none) and the
  # index of its first non-finite parameter leaf (-1: only the loss); see `keep_finite`.


@dataclasses.dataclass(frozen=True)
class ModelGraphs:
  """Static NNX graphs of the same model in training mode and in evaluation mode."""
  train: nnx.GraphDef
  eval: nnx.GraphDef


def validate(config: ml_collections.ConfigDict):
  """Checks every config field (ValueError naming the field and the accepted values)."""
  config_validation.validate_config(config, model_names=sorted(models_lib.MODELS),
                                    dataset_names=sorted(data_lib.NORMALIZATION),
                                    bort_modes=bort_jax.MODES,
                                    check_rules=lambda rules: bort_jax.add_bort_correction(
                                        0.0, rules=[tuple(r) for r in rules]))
  if config.dbort_lambda > 0 and not models_lib.MODELS[config.model].sows_outputs:
    accepted = ", ".join(repr(n) for n, spec in sorted(models_lib.MODELS.items()) if spec.sows_outputs)
    raise ValueError(f"config.model={config.model!r} is not accepted with dbort_lambda > 0; accepted "
                     f"values: {accepted} (models that sow their layer outputs).")


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nnx.Module:
  kwargs = dict(config.model_kwargs)
  if config.dbort_lambda > 0:
    kwargs["capture"] = True
  return models_lib.create_model(
      config.model, num_classes=num_classes, rngs=nnx.Rngs(config.seed), use_bias=config.use_bias,
      dtype=jnp.bfloat16 if config.half_precision else jnp.float32, **kwargs)


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation
                       ) -> tuple[TrainState, ModelGraphs]:
  """Splits `model` into graphs and pure-dict state and initializes the optimizer on its parameters."""
  model.train()
  train_graph, params, model_state = nnx.split(model, nnx.Param, ...)
  model.eval()
  eval_graph = nnx.split(model, nnx.Param, ...)[0]
  model.train()
  params, model_state = nnx.to_pure_dict(params), nnx.to_pure_dict(model_state)
  sums = {"loss": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.int32),
          "count": jnp.zeros((), jnp.int32)}
  state = TrainState(jnp.zeros((), jnp.int32), params, model_state, tx.init(params), sums,
                     jnp.zeros((2,), jnp.int32))
  return state, ModelGraphs(train_graph, eval_graph)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0, loss: str = "cross_entropy"
                  ) -> jax.Array:
  """Per-example loss `loss` (`config.loss`) against one-hot labels smoothed towards uniform by `eps`.

  y = (1 - eps) onehot + eps / K (Szegedy et al., 2016, "Rethinking the Inception architecture"). "cross_entropy":
  softmax cross-entropy; "bcos_bce": the B-cos authors' binary cross-entropy of sigmoid(logits), averaged over
  classes (`bort_jax.explain.bcos.bcos_bce_loss` per example).
  """
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  if loss == "bcos_bce":
    return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets).mean(-1)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def normalize_images(images: jax.Array, stats: data_lib.Normalization, dtype=jnp.float32) -> jax.Array:
  """uint8 NHWC -> (x / 255 - mean) / std in `dtype`, on device (hosts then ship 4x fewer bytes)."""
  channels = images.shape[-1]
  if len(stats.mean) != channels or len(stats.std) != channels:  # would broadcast silently
    raise ValueError(f"normalization has {len(stats.mean)} channels, images have {channels}.")
  mean = jnp.asarray(stats.mean, jnp.float32)
  std = jnp.asarray(stats.std, jnp.float32)
  return ((images.astype(jnp.float32) / 255.0 - mean) / std).astype(dtype)


def input_normalization(config: ml_collections.ConfigDict) -> data_lib.Normalization:
  """The dataset's statistics, or mean 0 and std 1 with `config.normalize=False` (pixels x / 255 in [0, 1])."""
  stats = data_lib.normalization(config.dataset)
  if config.normalize:
    return stats
  return data_lib.Normalization((0.0,) * len(stats.mean), (1.0,) * len(stats.std))


def forward(model: nnx.Module, images: jax.Array, config: ml_collections.ConfigDict):
  """Returns (logits, sown layer outputs); models built for DBort sow, and sowing needs `nnx.capture`."""
  if config.dbort_lambda > 0:
    return nnx.capture(model, nnx.Intermediate)(images)
  return model(images), None


def keep_finite(old: TrainState, new: TrainState, loss: jax.Array) -> TrainState:
  """`new`, or `old` with the step recorded in `divergence` once the loss or a parameter is not finite.

  The check stays on device (no host sync per step); the loop reads `divergence` where it syncs anyway. After
  the first non-finite step every step returns the last finite state, so nothing NaN is saved or returned.
  """
  leaf_finite = jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(new.params)])
  fresh = old.divergence[0] == 0
  ok = fresh & jnp.isfinite(loss) & jnp.all(leaf_finite)
  first_leaf = jnp.where(jnp.all(leaf_finite), -1, jnp.argmin(leaf_finite)).astype(jnp.int32)
  record = jnp.where(fresh, jnp.stack([old.step + 1, first_leaf]), old.divergence)
  return jax.lax.cond(ok, lambda: new, lambda: old._replace(divergence=record))


def make_train_step(graphs: ModelGraphs, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict, steps_per_epoch: int):
  """Returns jit(train_step)(state, batch) -> (state, batch metrics); the input state is donated.

  The loss is `config.loss`(label-smoothed) + [DBort] -lambda * sum_l mean(y_l^2)^beta over the sown outputs.
  `state.epoch_metrics` restarts from zero on the first step of every epoch, so a resumed run reports
  the same epoch averages as an uninterrupted one.
  """
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    images = normalize_images(batch["image"], input_normalization(config), dtype)

    def loss_fn(params):
      model = nnx.merge(graphs.train, params, state.model_state)
      logits, outputs = forward(model, images, config)
      task_loss = jnp.mean(cross_entropy(logits, batch["label"], config.label_smoothing, config.loss))
      loss = task_loss
      if config.dbort_lambda > 0:
        loss = loss + bort_jax.dbort_loss(outputs, config.dbort_lambda, config.dbort_beta)
      model_state = nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))
      return loss, (logits, task_loss, model_state)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (logits, task_loss, model_state)), grads = grad_fn(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    size = batch["label"].shape[0]
    metrics = {"loss": task_loss * size,
               "correct": jnp.sum(jnp.argmax(logits, -1) == batch["label"]).astype(jnp.int32),
               "count": jnp.asarray(size, jnp.int32)}
    fresh = state.step % steps_per_epoch == 0
    sums = jax.tree.map(lambda s, m: jnp.where(fresh, jnp.zeros_like(s), s) + m,
                        state.epoch_metrics, metrics)
    new_state = TrainState(state.step + 1, params, model_state, opt_state, sums, state.divergence)
    return keep_finite(state, new_state, loss), dict(metrics, total_loss=loss * size)

  return jax.jit(train_step, donate_argnums=0)


def make_eval_step(graphs: ModelGraphs, config: ml_collections.ConfigDict):
  """Returns jit(eval_step)(params, model_state, batch) -> summed loss/correct/count over mask == 1."""
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32

  def eval_step(params, model_state, batch):
    model = nnx.merge(graphs.eval, params, model_state)
    logits, _ = forward(model, normalize_images(batch["image"], input_normalization(config), dtype), config)
    mask = batch["mask"].astype(jnp.float32)
    return {
        "loss": jnp.sum(cross_entropy(logits, batch["label"], loss=config.loss) * mask),
        "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
        "count": jnp.sum(mask),
    }

  return jax.jit(eval_step)


def evaluate(eval_step, state: TrainState, records, config: ml_collections.ConfigDict,
             mesh) -> dict[str, float]:
  """Loss and accuracy over a whole split (grain records); the padded tail of the last batch is masked out."""
  totals = None
  for batch in data_lib.eval_dataset(records, config.eval_batch_size, image_size=config.image_size or None):
    out = eval_step(state.params, state.model_state, sharding.shard_batch(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  return {"loss": float(totals["loss"] / totals["count"]),
          "accuracy": float(totals["correct"] / totals["count"])}


def _epoch_summary(sums: dict[str, jax.Array]) -> dict[str, float]:
  sums = jax.device_get(sums)
  return {"loss": float(sums["loss"] / sums["count"]),
          "accuracy": float(sums["correct"] / sums["count"])}


def _measure(state: TrainState, eval_step, gap_fn, records, config: ml_collections.ConfigDict, mesh):
  """End-of-epoch metrics of `state` as metrics-log fields.

  "train_*" come from the epoch's running sums inside `state`, so a state restored after its last epoch
  gives the same numbers as the run that saved it.
  """
  train = _epoch_summary(state.epoch_metrics)
  test = evaluate(eval_step, state, records, config, mesh)
  return {"train_loss": train["loss"], "train_accuracy": train["accuracy"], "test_loss": test["loss"],
          "test_accuracy": test["accuracy"], "orthogonality_gap": metrics_io.gap_metrics(gap_fn(state.params))}


def divergence_report(state: TrainState, config: ml_collections.ConfigDict, bound: float | None) -> dict | None:
  """None, or where `state` diverged (`keep_finite`), with the γ used and its `bort_jax.stable_gamma` bound."""
  step, leaf = (int(v) for v in jax.device_get(state.divergence))
  if not step:
    return None
  paths = [jax.tree_util.keystr(path, simple=True, separator="/")
           for path, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]]
  layer = "loss" if leaf < 0 else paths[leaf]
  gamma = config.gamma if optimizers.OPTIMIZERS[config.optimizer].bort else None
  message = (f"diverged at step {step}: {'the loss' if leaf < 0 else 'parameter ' + layer} is not finite "
             f"(gamma={gamma}, stable_gamma bound {'n/a' if bound is None else f'{bound:.4g}'} at "
             f"learning_rate={config.learning_rate}). Stopped; the last checkpoint is the last finite state "
             f"(step {step - 1}).")
  return {"step": step, "layer": layer, "gamma": gamma, "stable_gamma": bound,
          "learning_rate": config.learning_rate, "message": message}


def is_chief_process() -> bool:
  """Whether this process writes the run's files (process 0 of a multi-host run); all of them train."""
  return jax.process_index() == 0


def load_splits(config: ml_collections.ConfigDict, data_dir: str | None = None):
  """(training records, evaluation records) of `config` as grain MapDatasets, as `train_and_evaluate` uses them.

  `config.eval_split = "holdout"` evaluates on a validation split held out of the training split (the last
  10% of every class, `data.holdout_split`) and trains on the rest; `config.train_limit` then keeps the
  first N of the remaining training rows, so the held-out rows never enter training.
  """
  data_dir = data_dir or config.data_dir or None
  if config.eval_split == data_lib.HOLDOUT_SPLIT:
    if not data_lib.is_local(config.dataset, data_dir):
      raise ValueError(f"config.eval_split={config.eval_split!r} is not accepted for the lazy TFDS dataset "
                       f"{config.dataset!r}; accepted values: a split of that dataset (e.g. 'validation').")
    train_records, eval_records = data_lib.load_holdout(config.dataset, data_dir)
  else:
    train_records = data_lib.load_dataset(config.dataset, "train", data_dir)
    eval_records = data_lib.load_dataset(config.dataset, config.eval_split, data_dir)
  if config.train_limit:
    train_records = train_records[:config.train_limit]
  return train_records, eval_records


def make_train_batches(config: ml_collections.ConfigDict, records):
  """This process's part of every global training batch, endless, as a checkpointable grain iterator."""
  dataset = data_lib.train_dataset(records, config.batch_size, seed=config.seed,
                                   augment=None if config.augment == "none" else config.augment,
                                   image_size=config.image_size or None)
  return data_lib.iterate(dataset, workers=config.data_workers)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = False,
                       data_dir: str | None = None) -> tuple[TrainState, dict[str, Any]]:
  """Trains `config` in `workdir`; returns the final state and results (also in results.json).

  Every process of a multi-host run returns the same results; only process 0 writes the files below
  (Orbax checkpoints are written by all processes together).

  Writes `metrics.jsonl` (one record per epoch), `curves.png`, `config.json`, `results.json` and Orbax
  checkpoints under `workdir/checkpoints` (every `checkpoint_every_steps` and at each epoch end, so
  also at the end). With `resume`, continues from the newest checkpoint exactly as if the run had
  never stopped. `config.stop_after_steps` ends the run like a kill would: without saving, so the
  steps since the last checkpoint are lost and redone on resume (results have "completed": False and
  results.json is not written). A run whose loss or parameters stop being finite stops at the next sync
  point (every 20 steps, checkpoint, epoch end), saves its last finite state and reports "status":
  "diverged" with the step, the first non-finite layer, γ and its stable bound (`divergence_report`).
  """
  validate(config)
  sharding.maybe_initialize_distributed(config.multi_host)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  sharding.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  is_chief = is_chief_process()
  os.makedirs(workdir, exist_ok=True)

  train_records, test_records = load_splits(config, data_dir)
  num_classes = config.num_classes or data_lib.num_classes(config.dataset, data_dir or config.data_dir or None)
  train_batches = make_train_batches(config, train_records)
  steps_per_epoch = data_lib.steps_per_epoch(len(train_records), config.batch_size, train=True)
  total_steps = config.num_epochs * steps_per_epoch

  model = create_model(config, num_classes)
  views = bort_jax.nnx_views(model)  # exact kernel views from the module types, no guessing
  tx, lr_schedule = optimizers.create_optimizer(config, steps_per_epoch, views=views)
  state, graphs = create_train_state(model, tx)
  bound = optimizers.check_gamma(config, state.params, views)  # warns before step 1 when γ exceeds it
  if is_chief and optimizers.OPTIMIZERS[config.optimizer].bort:
    print("Bort constrains these kernels (bort_jax.describe):")
    print(bort_jax.describe(state.params, mode=config.bort_mode, rules=optimizers.bort_rules(config), views=views))
  state = sharding.replicate(state, mesh)
  train_step = make_train_step(graphs, tx, config, steps_per_epoch)
  eval_step = make_eval_step(graphs, config)
  gap_fn = jax.jit(functools.partial(bort_jax.orthogonality_gap, views=views))

  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                            every_steps=config.checkpoint_every_steps,
                                            keep=config.keep_checkpoints)
  log = metrics_io.MetricsLog(os.path.join(workdir, "metrics.jsonl"))
  if resume and checkpointer.latest_step() is not None:
    state = checkpointer.restore_latest(state, train_batches)
  step = int(state.step)
  if is_chief:
    log.keep_until(step // steps_per_epoch)  # drops a stale log of a fresh run, too.
    metrics_io.write_json(os.path.join(workdir, "config.json"), config.to_dict())

  completed = True
  diverged = None
  record = None  # the last finished epoch's metrics-log record
  for epoch in range(step // steps_per_epoch, config.num_epochs):
    start = time.time()
    first = step - epoch * steps_per_epoch
    bar = tqdm.tqdm(itertools.islice(train_batches, steps_per_epoch - first), total=steps_per_epoch, initial=first,
                    desc=f"epoch {epoch + 1}/{config.num_epochs}", leave=False,
                    disable=not (config.progress_bar and is_chief))
    for batch in bar:
      state, metrics = train_step(state, sharding.shard_batch(batch, mesh))
      step += 1
      if step % 20 == 0 or checkpointer.is_due(step):  # points where the loop syncs with the device anyway
        diverged = divergence_report(state, config, bound)
        if diverged:
          break
      checkpointer.maybe_save(step, state, train_batches)
      if step % 20 == 0:
        bar.set_postfix(loss=f"{float(metrics['loss'] / metrics['count']):.4f}")
      if config.stop_after_steps and config.stop_after_steps <= step < total_steps:
        completed = False
        break
    bar.close()
    diverged = diverged or divergence_report(state, config, bound)
    if not completed or diverged:
      break
    measured = _measure(state, eval_step, gap_fn, test_records, config, mesh)
    record = {"epoch": epoch + 1, "step": step, "learning_rate": float(lr_schedule(step - 1)), **measured,
              "seconds": time.time() - start, "timed_steps": steps_per_epoch - first}
    if is_chief:
      log.append(record)
      metrics_io.plot_curves(log.read(), os.path.join(workdir, "curves.png"),
                             title=f"{config.model} / {config.dataset} / {config.optimizer}")
      # One short line per epoch; the per-layer gaps are in metrics.jsonl and curves.png.
      print(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | "
            f"test loss {record['test_loss']:.4f} acc {record['test_accuracy']:.4f} | "
            f"mean offdiag gap {metrics_io.mean_gap(record['orthogonality_gap']):.4f}", flush=True)
    # After the record: a crash in between resumes from an older step and rewrites the record.
    checkpointer.save(step, state, train_batches)
  if diverged:
    completed, step = False, int(state.step)
    # The data position is the detecting step's (at most 20 batches past the finite state): a rerun with a
    # smaller γ resumes from the finite weights, not bit-for-bit the original batch order.
    checkpointer.save(step, state._replace(divergence=jnp.zeros_like(state.divergence)), train_batches)
    if is_chief:
      print(diverged["message"], flush=True)
  checkpointer.close()  # the last epoch's checkpoint is the final one; a stopped run saves nothing more.

  results = {"completed": completed, "step": step, "epochs": config.num_epochs, "model": config.model,
             "dataset": config.dataset, "optimizer": config.optimizer, "seed": config.seed,
             "eval_split": config.eval_split,  # "test_*" below are on this split ("holdout": validation).
             "status": "diverged" if diverged else "completed" if completed else "stopped"}
  if diverged:
    results["diverged"] = diverged
  if completed:
    # From memory, not from the log: only process 0 writes the log. A resumed run that had already
    # finished trained no epoch here, so it measures its restored final state.
    final = record or _measure(state, eval_step, gap_fn, test_records, config, mesh)
    results.update({k: final[k] for k in ("train_loss", "train_accuracy", "test_loss",
                                          "test_accuracy", "orthogonality_gap")})
    results["mean_offdiag_gap"] = metrics_io.mean_gap(final["orthogonality_gap"])
  if (completed or diverged) and is_chief:
    metrics_io.write_json(os.path.join(workdir, "results.json"), results)
  return state, results
