"""README main job: LeNet-5 on the embedded MNIST subset (5,000 train / 1,000 test), a few CPU minutes.

    python -m examples.main --config examples/configs/mnist_small_demo.py --workdir runs/demo \\
        [--config.optimizer=bort_sgd] [--config.explain_baseline=sgd]

`examples.main` also trains the SGD baseline (same seed, data and epochs) in `runs/demo/baseline_sgd` and draws
both in `explain.png`; `--config.explain_baseline=` skips it.
"""

from examples.configs import default


def get_config():
  c = default.get_config()
  c.dataset = "mnist_small"
  c.model = "lenet5"
  c.optimizer = "bort_sgd"
  c.learning_rate = 0.05
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.gamma = 1e-2
  c.warmup_epochs = 1.0
  c.batch_size = 64
  c.eval_batch_size = 500
  c.num_epochs = 15
  c.checkpoint_every_steps = 200
  c.explain_baseline = "sgd"  # explain.png shows this run beside plain SGD of the same recipe
  return c
