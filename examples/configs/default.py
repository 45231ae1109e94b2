"""Defaults shared by every example config; the other files override a few fields.

Every field is validated by `examples.config_validation.validate_config` before training starts.

Choosing gamma. Bort-SGD adds gamma * Delta to the gradient before momentum, so its correction moves a
weight by about lr * gamma / (1 - momentum) per step; Bort-AdamW adds lr * gamma * Delta after the Adam
scaling (BortA), Bort-LAMB after the trust ratio. The recipes match them: gamma_adamw = gamma_sgd * lr_sgd /
((1 - momentum) * lr_adamw), the same for LAMB (MNIST: 0.01 * 0.05 / (0.1 * 1e-3) = 5). Only the MNIST
values were checked here (embedded subset: offdiag gap 2-5x smaller at equal accuracy); the CIFAR/ImageNet
gammas are starting points.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the default config: LeNet-5 on MNIST with plain SGD, no checkpoint pressure."""
  c = ml_collections.ConfigDict()

  # Model: a name understood by `examples.models.create_model`, plus its keyword arguments.
  c.model = "lenet5"
  c.model_kwargs = ml_collections.ConfigDict()
  c.use_bias = True  # False gives the bias-free variants used for explainability work.

  # Data: `examples.data.load_dataset(dataset, split, data_dir)`; data_dir "" means $BORT_DATA_DIR / TFDS.
  c.dataset = "mnist"
  c.data_dir = ""
  c.eval_split = "test"  # ImageNet (TFDS): "validation"; "holdout": last 10% per class of the train split.
  c.augment = "none"  # "none" | "cifar" (pad-4 crop + flip) | "imagenet" (random-resized crop + flip).
  c.image_size = 0  # side of ImageNet-style crops (0: the pipeline's default, 224).
  c.num_classes = 0  # 0: the dataset's (10 for the local datasets, the TFDS metadata otherwise).
  c.train_limit = 0  # keep only the first N training examples (0: all), for smoke tests.
  c.data_workers = 0  # grain worker processes that read and augment (0: the training process does).
  c.normalize = True  # False: pixels enter as x / 255 in [0, 1] (nets explained on raw pixels).

  # Optimizer: "sgd" | "bort_sgd" | "adamw" | "bort_adamw" | "lamb" | "bort_lamb".
  c.optimizer = "sgd"
  c.learning_rate = 0.1
  c.lr_schedule = "cosine"  # "cosine" (to 0 over the run) | "constant"; both after a linear warmup.
  c.warmup_epochs = 0.0
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 5e-4  # SGD: coupled (PyTorch style); AdamW: decoupled; LAMB: inside the trust ratio.
  c.b1 = 0.9
  c.b2 = 0.999
  c.eps = 1e-8
  c.grad_clip_norm = 0.0  # > 0: clip the gradient's global L2 norm to this (0: no clipping).

  # Bort (only read by the bort_* optimizers): correction strength, amplitude and mode.
  c.gamma = 1e-2
  c.alpha = 1.0
  c.adaptive_alpha = False  # True: alpha = (mean row norm)^2, computed in-graph.
  c.bort_mode = "l2-full"
  # Per-kernel gamma scales, big_vision style: ((regex on the kernel path, scale), ...), first full match
  # wins, unmatched kernels keep scale 1; e.g. (("fc3/kernel", 0.0),) leaves LeNet-5's classifier free.
  c.bort_rules = ()

  # DBort data-aware term -lambda * mean(y^2)^beta over the model's sown layer outputs (0 disables).
  c.dbort_lambda = 0.0
  c.dbort_beta = 0.1

  # Loss and loop.
  c.loss = "cross_entropy"  # "cross_entropy" (softmax) | "bcos_bce" (B-cos: sigmoid BCE against one-hot labels).
  c.label_smoothing = 0.0
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 10
  c.seed = 0
  c.half_precision = False  # True: bfloat16 compute, float32 parameters and optimizer state.

  # Checkpoints (Orbax): every N steps (0: only at the end), keep the newest K.
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 2
  c.stop_after_steps = 0  # stop (as if preempted) after this many global steps; 0: never.

  # examples.main only: "" (nothing more), or a non-Bort optimizer ("sgd", "adamw", "lamb") that main also trains,
  # with every other field unchanged, in <workdir>/baseline_<name>, and draws in explain.png beside this run.
  c.explain_baseline = ""

  # Infrastructure.
  c.multi_host = False  # call jax.distributed.initialize() (TPU pods / multi-process GPU).
  c.progress_bar = True
  return c


def imagenet(config: ml_collections.ConfigDict, model: str, num_epochs: int):
  """`config` set up for ImageNet training (TFDS "imagenet2012", 224x224, batch 1024): the schedule every
  ImageNet config here shares (5 warmup epochs, label smoothing 0.1, bf16 compute)."""
  config.dataset = "imagenet2012"
  config.eval_split = "validation"
  config.model = model
  config.num_classes = 1000
  config.augment = "imagenet"
  config.image_size = 224
  config.batch_size = 1024
  config.eval_batch_size = 1024
  config.num_epochs = num_epochs
  config.warmup_epochs = 5.0
  config.label_smoothing = 0.1
  config.half_precision = True
  config.checkpoint_every_steps = 5000
  return config


def cifar10(config: ml_collections.ConfigDict, model: str, *, num_epochs: int, half_precision: bool,
            checkpoint_every_steps: int):
  """`config` set up for CIFAR-10 with He et al. (2016)'s augmentation (pad-4 crop + flip), batch 128 and one
  warmup epoch."""
  config.dataset = "cifar10"
  config.model = model
  config.augment = "cifar"
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.num_epochs = num_epochs
  config.warmup_epochs = 1.0
  config.half_precision = half_precision
  config.checkpoint_every_steps = checkpoint_every_steps
  return config


def cifar10_cpu(config: ml_collections.ConfigDict, model: str, checkpoint_every_steps: int):
  """`cifar10` for the CPU-budget table (issue #19): 10 epochs, float32, checkpoints every few minutes of
  training so that a kill loses little."""
  return cifar10(config, model, num_epochs=10, half_precision=False, checkpoint_every_steps=checkpoint_every_steps)


def apply_recipe(config: ml_collections.ConfigDict, recipes: dict[str, dict], name: str):
  """Updates `config` with recipe `name` of `recipes` (ValueError listing the recipes otherwise)."""
  if name not in recipes:
    raise ValueError(f"config argument (recipe) {name!r} is not accepted; accepted values: "
                     f"{', '.join(repr(r) for r in recipes)}.")
  config.update(recipes[name])
  return config
