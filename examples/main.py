"""Thin CLI around `examples.train.train_and_evaluate`, ending with the explainability figure `explain.png`.

    python -m examples.main --config examples/configs/mnist_small_demo.py --workdir runs/demo \\
        [--config.optimizer=bort_sgd] [--resume] [--data-dir DIR]

`--data-dir` (or $BORT_DATA_DIR) holds `<dataset>.npz` files; any `--config.<field>=value` overrides the
config file. Set BORT_MULTIHOST=1 (or --config.multi_host=True) on every host of a TPU pod.

A finished run of an MLP, LeNet-5 or ConvNet also writes `explain.png` beside `curves.png` (`examples.explain_figure`).
With `config.explain_baseline` (e.g. "sgd", as the demo config sets) main then trains that baseline, the same config
with only the optimizer replaced, in `<workdir>/baseline_<optimizer>` and draws both runs in `explain.png`.
A run that diverges (a non-finite loss or parameter) stops with a message, draws nothing and exits with status 1.
"""

import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from examples import explain_figure
from examples import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file with get_config().",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.")
_RESUME = flags.DEFINE_bool("resume", False, "Continue from the newest checkpoint in --workdir.")
_DATA_DIR = flags.DEFINE_string("data-dir", None,
                                "Directory of <dataset>.npz files (default: $BORT_DATA_DIR, then TFDS).")
flags.mark_flags_as_required(["config", "workdir"])


def _train(config, workdir: str):
  """Trains `config` in `workdir` and prints how it ended; (final state or None if it did not finish, exit status)."""
  state, results = train.train_and_evaluate(config, workdir, resume=_RESUME.value, data_dir=_DATA_DIR.value)
  if results["status"] == "diverged":
    print(f"results in {workdir}/results.json")  # train_and_evaluate printed why it stopped
    return None, 1
  if not results["completed"]:
    print(f"stopped at step {results['step']}; continue with --resume")
    return None, 0
  print(f"{config.optimizer}: test accuracy {results['test_accuracy']:.4f}, mean off-diagonal orthogonality gap "
        f"{results['mean_offdiag_gap']:.4f}; results in {workdir}/results.json")
  return state, 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  config, workdir = _CONFIG.value, _WORKDIR.value
  state, status = _train(config, workdir)
  if state is None:
    return status
  states = {config.optimizer: state}
  if config.explain_baseline:
    baseline = config.copy_and_resolve_references()
    baseline.optimizer, baseline.explain_baseline = config.explain_baseline, ""
    baseline_dir = os.path.join(workdir, f"baseline_{baseline.optimizer}")
    print(f"baseline for explain.png: the same config with optimizer={baseline.optimizer!r}, in {baseline_dir}")
    states[baseline.optimizer], status = _train(baseline, baseline_dir)
    if states[baseline.optimizer] is None:
      return status
  if jax.process_index() == 0:
    path = explain_figure.write_explain_figure(config, workdir, states, _DATA_DIR.value)
    if path:
      print(f"reconstructions and backtracking saliency in {path}")

if __name__ == "__main__":
  app.run(main)
