"""Per-epoch metrics as JSON lines, a PNG of the curves, and the final `results.json`.

One JSONL record per finished epoch: {"epoch", "step", "train_loss", "train_accuracy", "test_loss",
"test_accuracy", "learning_rate", "orthogonality_gap": {layer path: {"offdiag", "diag", "norm_spread"}}, "seconds",
"timed_steps"} (the gap statistics of `bort_jax.orthogonality_gap`; the curves show "offdiag"; "seconds" is the
wall time of the epoch's "timed_steps" train steps and its evaluation, in the process that finished it).
"""

import json
import math
import os

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless: files only, never a window.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def gap_metrics(gaps) -> dict[str, dict[str, float]]:
  """`bort_jax.orthogonality_gap` output as {layer path: {"offdiag", "diag", "norm_spread"}} floats."""
  gaps = jax.device_get(gaps)
  return {path: {k: float(np.mean(v)) for k, v in stats._asdict().items()}
          for path, stats in gaps.items()}


def mean_gap(gaps: dict[str, dict[str, float]], statistic: str = "offdiag") -> float:
  """Mean over constrained layers of one gap statistic (the benchmark's "orthogonality gap")."""
  return float(np.mean([g[statistic] for g in gaps.values()])) if gaps else float("nan")


def finite_json(obj):
  """`obj` with every NaN or infinity replaced by None: JSON has no such numbers (`json.dump` would write
  the invalid literals NaN and Infinity)."""
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  if isinstance(obj, dict):
    return {k: finite_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [finite_json(v) for v in obj]
  return obj


def write_json(path: str, obj):
  """Writes `obj` atomically (temporary file + rename) so readers never see half a file; non-finite -> null."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(finite_json(obj), f, indent=2, sort_keys=True, allow_nan=False)
  os.replace(tmp, path)


class MetricsLog:
  """Append-only JSONL file of epoch records, trimmed on resume to the restored epoch."""

  def __init__(self, path: str):
    self.path = path

  def read(self) -> list[dict]:
    if not os.path.exists(self.path):
      return []
    with open(self.path) as f:
      return [json.loads(line) for line in f if line.strip()]

  def keep_until(self, epoch: int):
    """Drops records of epochs > `epoch` (written after the checkpoint a resumed run starts from)."""
    records = [r for r in self.read() if r["epoch"] <= epoch]
    tmp = f"{self.path}.tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in records)
    os.replace(tmp, self.path)

  def training_seconds(self) -> float:
    """Wall seconds of the logged epochs. An epoch resumed after a cut counts its measured seconds scaled to all its
    steps (the time before the cut was not measured); records without "timed_steps" count as measured."""
    return sum(r["seconds"] * (r["step"] / r["epoch"]) / r.get("timed_steps", r["step"] / r["epoch"])
               for r in self.read())

  def append(self, record: dict):
    with open(self.path, "a") as f:
      f.write(json.dumps(finite_json(record), sort_keys=True, allow_nan=False) + "\n")


def plot_curves(records: list[dict], path: str, title: str = "", gap_statistic: str = "offdiag"):
  """Saves loss, accuracy and per-layer orthogonality gap against epoch as one PNG."""
  epochs = [r["epoch"] for r in records]
  num = lambda v: float("nan") if v is None else v  # a non-finite value is logged as null
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for split in ("train", "test"):
    axes[0].plot(epochs, [num(r[f"{split}_loss"]) for r in records], marker="o", label=split)
    axes[1].plot(epochs, [100 * num(r[f"{split}_accuracy"]) for r in records], marker="o", label=split)
  axes[0].set(xlabel="epoch", ylabel="cross-entropy", title="loss")
  axes[1].set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
  layers = sorted(records[-1].get("orthogonality_gap", {})) if records else []
  gap_values = []
  for layer in layers:
    values = [num(r["orthogonality_gap"].get(layer, {}).get(gap_statistic)) for r in records]
    axes[2].plot(epochs, values, marker=".", label=layer)
    gap_values += values
  axes[2].set(xlabel="epoch", ylabel=gap_statistic, title="orthogonality gap per layer")
  if gap_values and min(gap_values) > 0:
    axes[2].set_yscale("log")
  for ax in axes:
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
