"""Input-pipeline throughput against the jitted train step: is the data loader the bottleneck?

For each setting (LeNet-5 / MNIST, ResNet-20 / CIFAR-10 with pad-4 crop + flip; Bort-SGD, batch 128, float32)
one process measures, sampled round-robin so that load from other processes hits both alike:

* pipeline: images/s of the training batches alone (the trainer's own data iterator, no device work);
* step: images/s of the trainer's jitted train step (`examples.train.make_train_step`) on batches already
  on the device, timed with `block_until_ready`.

The ratio pipeline / step must stay >= 3 for the loader not to bound training. Each run appends one record
per setting to `benchmarks/results/input_pipeline_<platform>.jsonl` (key: label + setting) and rewrites the
Markdown table beside it from all records, so runs before and after a pipeline change share one table.

Usage (from the repository root; $BORT_DATA_DIR holds mnist.npz and cifar10.npz):
  python -m benchmarks.input_pipeline --label grain [--settings lenet5_mnist resnet20_cifar10]
"""

import argparse
import itertools
import os
import pathlib
import platform
import statistics
import subprocess
import time

import jax

from benchmarks import jsonl_records
import bort_jax
from examples import data as data_lib
from examples import optimizers
from examples import sharding
from examples import train
from examples.configs import cifar10_resnet18
from examples.configs import mnist_lenet

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
TARGET_RATIO = 3.0


def setting_config(name: str):
  """The trainer config of a setting: the repository's recipe with model, precision and batch fixed."""
  if name == "lenet5_mnist":
    config = mnist_lenet.get_config("bort_sgd")
  elif name == "resnet20_cifar10":
    config = cifar10_resnet18.get_config("bort_sgd")
    config.model = "resnet20"
  else:
    raise ValueError(f"name must be one of {SETTINGS}, got {name!r}.")
  config.half_precision = False  # CPU XLA has no fast bf16 path; float32 is what runs here.
  config.batch_size = 128
  return config


SETTINGS = ("lenet5_mnist", "resnet20_cifar10")


def timed(fn, count: int) -> float:
  """Seconds per call of `fn` over `count` calls."""
  start = time.perf_counter()
  for _ in range(count):
    fn()
  return (time.perf_counter() - start) / count


def measure(name: str, data_dir: str | None, batches: int, steps: int, repeats: int) -> dict:
  """Median pipeline and step images/s of one setting, sampled alternately `repeats` times."""
  config = setting_config(name)
  records, _ = train.load_splits(config, data_dir)
  stream = train.make_train_batches(config, records)
  next(stream)  # warm-up: start threads/workers, first reads

  mesh = sharding.make_mesh()
  steps_per_epoch = data_lib.steps_per_epoch(len(records), config.batch_size, train=True)
  model = train.create_model(config, data_lib.num_classes(config.dataset, data_dir))
  tx, _ = optimizers.create_optimizer(config, steps_per_epoch, views=bort_jax.nnx_views(model))
  state, graphs = train.create_train_state(model, tx)
  carry = [sharding.replicate(state, mesh)]
  step_fn = train.make_train_step(graphs, tx, config, steps_per_epoch)
  device_batches = itertools.cycle([sharding.shard_batch({k: b[k] for k in ("image", "label")}, mesh)
                                    for b in (next(stream) for _ in range(4))])

  def one_step():
    carry[0], metrics = step_fn(carry[0], next(device_batches))
    jax.block_until_ready(metrics)

  one_step()  # compile
  pipeline, step = [], []
  for _ in range(repeats):
    pipeline.append(config.batch_size / timed(lambda: next(stream), batches))
    step.append(config.batch_size / timed(one_step, steps))
  pipeline_ips, step_ips = statistics.median(pipeline), statistics.median(step)
  return {"setting": name, "model": config.model, "dataset": config.dataset, "augment": config.augment,
          "batch_size": config.batch_size, "pipeline_images_per_s": pipeline_ips,
          "step_images_per_s": step_ips, "ratio": pipeline_ips / step_ips, "pipeline_samples": pipeline,
          "step_samples": step}


def machine_description() -> str:
  versions = {}
  for package in ("jax", "numpy", "grain"):
    try:
      versions[package] = __import__(package).__version__
    except (ImportError, AttributeError):
      continue
  listed = ", ".join(f"{k} {v}" for k, v in versions.items())
  return (f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores available, "
          f"{jax.devices()[0].platform}; Python {platform.python_version()}; {listed}")


def git_commit() -> str:
  out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                       cwd=pathlib.Path(__file__).resolve().parent)
  return out.stdout.strip() or "unknown"


def write_table(records: list[dict], path: pathlib.Path):
  lines = ["# Input pipeline vs train step on CPU (issue #18)", "",
           "`python -m benchmarks.input_pipeline` (see its docstring): images/s of the training batches alone "
           "and of the jitted Bort-SGD train step (batch 128, float32), medians of round-robin samples in one "
           f"process. The pipeline must deliver >= {TARGET_RATIO:g}x the step's images/s. The 2 cores are shared "
           "with other jobs (load average at the start of each setting below), so compare ratios, which are "
           "measured alternately under the same load, rather than absolute rates across rows.", "",
           "| label | commit | setting | pipeline img/s | step img/s | pipeline / step | load avg | machine |",
           "|---|---|---|---:|---:|---:|---:|---|"]
  for r in records:
    lines.append(f"| {r['label']} | {r['commit']} | {r['setting']} | {r['pipeline_images_per_s']:,.0f} | "
                 f"{r['step_images_per_s']:,.0f} | {r['ratio']:.1f} | {r['load_average']:.1f} | "
                 f"{r['machine']} |")
  path.write_text("\n".join(lines) + "\n")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--label", required=True, help="names this run in the table (e.g. the pipeline's kind)")
  parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
  parser.add_argument("--data-dir", default=None, help="folder of <dataset>.npz (default: $BORT_DATA_DIR)")
  parser.add_argument("--batches", type=int, default=40, help="pipeline batches per sample")
  parser.add_argument("--steps", type=int, default=10, help="train steps per sample")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)

  path = RESULTS / f"input_pipeline_{jax.devices()[0].platform}.jsonl"
  for name in args.settings:
    load = os.getloadavg()[0]
    record = measure(name, args.data_dir, args.batches, args.steps, args.repeats)
    record.update(key=f"{args.label}/{name}", label=args.label, commit=git_commit(), load_average=load,
                  machine=machine_description())
    jsonl_records.append_record(path, record)
    print(f"{name}: pipeline {record['pipeline_images_per_s']:,.0f} img/s, step "
          f"{record['step_images_per_s']:,.0f} img/s, ratio {record['ratio']:.1f}", flush=True)
  write_table(jsonl_records.read_records(path), path.with_suffix(".md"))


if __name__ == "__main__":
  main()
