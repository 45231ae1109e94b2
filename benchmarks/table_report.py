"""The Markdown and JSON of `benchmarks.table`: rows of mean ± std over seeds, verdicts against the baselines, and
exactly what was run (commands, data, recipes, budget, machine)."""

import json
import os
import pathlib
import time

import jax
import numpy as np

from benchmarks import gamma_sweep_report
from benchmarks import jsonl_records
from benchmarks.gamma_sweep_report import mean_std


def baseline_recipe(optimizer: str) -> str | None:
  """The recipe a Bort recipe is compared with (bort_sgd, dbort_sgd -> sgd); None for a baseline."""
  family = optimizer.removeprefix("d").removeprefix("bort_")
  return None if family == optimizer else family


def _overhead(runs) -> str:
  timed = [r for r in runs if "baseline_step_seconds" in r]
  if not timed:
    return "—"
  ratios = [r["step_seconds"] / r["baseline_step_seconds"] for r in timed]
  return (f"×{np.mean(ratios):.2f} ({1e3 * np.mean([r['step_seconds'] for r in timed]):.0f} vs "
          f"{1e3 * np.mean([r['baseline_step_seconds'] for r in timed]):.0f} ms)")


def wanted_seeds(cell, seeds, planned) -> int:
  """How many seeds `cell` should have: this command's, or the plan's where it asks more."""
  return max(len(seeds), planned["seeds"] if cell in planned["cells"] else 0)


def verdicts(results: dict) -> list[str]:
  """Each Bort row against its baseline row: above / level / below by the difference of the test means against
  twice its standard error (seeds as samples; `gamma_sweep_report.verdict`)."""
  accuracy = lambda rows: [r["test_accuracy"] for r in rows]
  lines = []
  for (model, optimizer), runs in results.items():
    base_name = baseline_recipe(optimizer)
    base = results.get((model, base_name))
    if base is None or not runs:
      continue
    lines.append(f"- {model} {optimizer}: {gamma_sweep_report.verdict(accuracy(runs), accuracy(base), base_name)}; "
                 f"seeds: {len(runs)} {optimizer}, {len(base)} {base_name}.")
  return lines


def floor_text(floors) -> str:
  """"x̂ = 0 scores F dB" for (run label, PSNR of x̂ = 0) pairs; runs whose inputs are normalized differently have
  different floors, and then each floor names its runs rather than one run's floor standing for all."""
  grouped = {}
  for label, floor in floors:
    labels = grouped.setdefault(f"{floor:.2f}", [])
    labels += [] if label in labels else [label]
  if len(grouped) == 1:
    return f"x̂ = 0 scores {next(iter(grouped))} dB"
  return "x̂ = 0 scores " + "; ".join(f"{floor} dB for {', '.join(labels)}" for floor, labels in grouped.items())


def write_table(path: str, dataset: str, results: dict, commands: list[str], args, seeds, started: float,
                recipes: dict, data_note: str | None = None, psnr_floors=()):
  """The Markdown table and its .json; the PSNR, hours and overhead columns appear once a run has them.

  `recipes` maps the dataset's models to their config modules; `data_note` is said under the data line;
  `psnr_floors` ((row label, PSNR of x̂ = 0 on its images) pairs) beside the PSNR's definition.
  """
  extra = any("psnr" in r for runs in results.values() for r in runs)
  planned = args.planned
  missing = [cell for cell, runs in results.items() if len(runs) < wanted_seeds(cell, seeds, planned)]
  not_run = [cell for cell in planned["cells"] if not results.get(cell)]
  title = f"# {dataset}: test accuracy and orthogonality gap, mean ± std over seeds {list(seeds)}"
  header = "| model | optimizer | epochs | test accuracy (%) | orthogonality gap |"
  header += " PSNR (dB) | train hours | Bort step overhead |" if extra else ""
  header += " per-seed accuracy (%) | settings |"
  lines = [title + (" (in progress)" if missing or not_run else ""), "", header, "|---" * (header.count("|") - 1) + "|"]
  for (model, optimizer), runs in results.items():
    if not runs:
      continue
    accs = [r["test_accuracy"] for r in runs]
    row = (f"| {model} | {optimizer} | {runs[0]['epochs']} | {mean_std(accs, 100)} | "
           f"{mean_std([r['gap'] for r in runs], digits=4)} | ")
    if extra:
      psnr = [r["psnr"] for r in runs if "psnr" in r]
      row += (f"{mean_std(psnr) if psnr else '—'} | {sum(r['seconds'] for r in runs) / 3600:.2f} | "
              f"{_overhead(runs)} | ")
    wanted = wanted_seeds((model, optimizer), seeds, planned)
    in_progress = f" (in progress: {len(runs)} of {wanted} seeds)" if len(runs) < wanted else ""
    lines.append(row + f"{', '.join(f'{100 * a:.2f}' for a in accs)}{in_progress} | {runs[0]['settings']} |")
  compared = verdicts(results)
  if compared:
    lines += ["", "Bort against its baseline (test accuracy; level: the difference of the means within twice its "
              "standard error, seeds as samples; p: Welch's two-sided t-test). "
              f"{gamma_sweep_report.rule_note(max(2, len(seeds)))} "
              "The papers' claim is that Bort improves accuracy.", "", *compared]
  if not_run:
    lines += ["", f"Planned rows not yet run ({planned['seeds']} seeds each): "
              + ", ".join(f"{m} {o}" for m, o in not_run) + "."]
  modules = dict.fromkeys(recipes[m].__name__.rsplit(".", 1)[-1] for m, _ in results if m in recipes)
  recipe_files = [f"`examples/configs/{name}.py`" for name in modules] or ["the configs"]
  data = f"`{dataset}.npz`, full train split{f' (first {args.train_limit})' if args.train_limit else ''}"
  lines += ["", "## Exactly what was run", "",
            *(f"- Command: `python -m benchmarks.{script_name(dataset)} {c}`" for c in commands),
            f"- Data: {data}, full test split; batch size {args.batch_size}; "
            + ("pad-4 crop + flip (He et al., 2016); " if dataset == "cifar10" else "no augmentation; ")
            + "cosine learning-rate decay to 0 after a linear warmup of min(the config's warmup or 0.5, epochs/4) "
            "epochs."
            + (f" Note: {data_note}." if data_note else ""),
            f"- Models: {', '.join(f'`{m}`' for m in dict.fromkeys(m for m, _ in results))}, with biases, float32; "
            "epochs as in the table.",
            f"- Optimizers: the recipes of {' and '.join(recipe_files)} (settings column, after overrides "
            f"{args.set or 'none'}); SGD has coupled weight decay (PyTorch), AdamW decoupled; Bort corrects every "
            "conv/dense kernel (not biases); dbort_sgd adds -λ mean(y²)^β over every kernel's sown output.",
            "- Orthogonality gap: `bort_jax.orthogonality_gap(params)` `offdiag` statistic (RMS of the "
            "off-diagonal of G/mean diag G, G the Gram of the constrained side of each kernel), averaged "
            "over the constrained layers, after the last epoch."]
  if extra:
    lines += ["- PSNR: reconstruction x̂ = J(x)ᵀ f(x) of 1,000 test images from the last feature stage (MLP / "
              "LeNet-5: the last hidden ReLU; ResNet: the last stage's map; ViT: the final LayerNorm's tokens), "
              "with the least-squares scale per image, in [0, 1] pixel space "
              "(`stage_reconstruction.reconstruction_metrics`)."
              " Folding BatchNorm into the convolutions (`bort_jax.explain.canonize`) leaves J(x) unchanged, so it is"
              " not needed here."
              + (f" {floor_text(psnr_floors)} on these images (c = 0 is always a choice): a "
                 "PSNR at that floor means the stage keeps nothing of the image." if psnr_floors else ""),
              "- Train hours: the trainer's per-epoch seconds (training + evaluation; an epoch cut and resumed counts "
              "its timed steps scaled to the whole epoch) summed over the row's seeds. "
              f"Bort step overhead: median of {args.timed_steps} jitted train steps of the Bort recipe over its "
              "baseline's, same batch, interleaved, after training in the same process (the ratio is comparable "
              "across rows; the milliseconds depend on the load)."]
  if args.budget_hours:
    lines.append(budget_line(path, dataset, results, recipes, args.budget_hours))
  lines.append(f"- Machine: {os.cpu_count()} CPU cores shared with other jobs, jax {jax.__version__}; "
               + (f"wall time {(time.time() - started) / 60:.1f} min for the runs of the last command; "
                  if args.models else "the last command only merged cells (no training); ")
               + "seconds per run in the .json beside this file (runs shared the machine with other jobs, so "
               "times are not comparable across rows).")
  pathlib.Path(path).write_text("\n".join(lines) + "\n")
  with open(pathlib.Path(path).with_suffix(".json"), "w") as f:
    json.dump({"commands": commands, "planned": {"cells": [f"{m}/{o}" for m, o in planned["cells"]],
                                                  "seeds": planned["seeds"]},
               "runs": {f"{m}/{o}": runs for (m, o), runs in results.items()}}, f, indent=1)


def script_name(dataset: str) -> str:
  return "cifar_table" if dataset == "cifar10" else "mnist_table"


def budget_line(path: str, dataset: str, results: dict, recipes: dict, budget_hours: float) -> str:
  """The budget against the hours spent: the table's runs and the γ sweeps of its models found beside it
  (`gamma_sweep_<dataset>_<model>.jsonl`, the sweep's records), each run's own training seconds."""
  table_hours = sum(r["seconds"] for runs in results.values() for r in runs) / 3600
  sweeps = {}
  for model in recipes:
    sweep = pathlib.Path(path).with_name(f"gamma_sweep_{dataset}_{model}.jsonl")
    if sweep.exists():
      sweeps[sweep.name] = sum(r["seconds"] for r in jsonl_records.read_records(sweep)) / 3600
  used = table_hours + sum(sweeps.values())
  spent = f"{table_hours:.1f} h of training in the table" + "".join(
      f" + {hours:.1f} h in `{name}`" for name, hours in sweeps.items())
  plan = pathlib.Path(path).with_name(f"{dataset}_plan.md")
  plan_ref = f" (`{plan.name}` beside this file)" if plan.exists() else ""
  verdict = "within the budget" if used <= budget_hours else f"over the budget by {used - budget_hours:.1f} h"
  return (f"- Budget: {budget_hours:g} CPU-hours planned for this table and its γ sweeps{plan_ref}; spent so far "
          f"{spent} = {used:.1f} h, {verdict}.")
