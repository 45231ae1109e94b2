"""The measured numbers of the README and the docs, rendered from the committed result files instead of copied by hand.

    python -m benchmarks.readme_numbers             # rewrite every generated block of every file in `FILES`
    python -m benchmarks.readme_numbers --check     # exit 1 with a diff when a file differs from the results
    python -m benchmarks.readme_numbers FILE [...]  # only these files

A generated block sits between ``<!-- generated: NAME (python -m benchmarks.readme_numbers) -->`` and
``<!-- end generated -->``; NAME picks its renderer in `BLOCKS`, and a block may sit in several files (the γ
table is in README.md and docs/gamma.md). Edit the renderer, not the block: the next run overwrites the block.
The γ blocks read the records of `benchmarks/gamma_sweep.py` (`benchmarks/results/gamma_sweep_*.jsonl`) and
select exactly as its report does (`gamma_sweep_report`). Prose claims that are words, not numbers ("never
below", "level elsewhere"), are checked against the records too: a rerun that breaks one stops with a message
instead of rendering a false sentence.
"""

import argparse
from collections.abc import Sequence
import dataclasses
import difflib
import pathlib
import re
import sys

import numpy as np

from benchmarks import gamma_sweep_report as report
from benchmarks import jsonl_records
from benchmarks import paths

RESULTS = paths.REPO / "benchmarks" / "results"
# The files that hold generated blocks.
FILES = (paths.REPO / "README.md", paths.REPO / "docs" / "gamma.md")
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) \(python -m benchmarks\.readme_numbers\) -->\n)"
                   r"(?P<body>.*?)(<!-- end generated -->)", re.DOTALL)

# (dataset, model as in the file name, the table's row label), in the table's row order.
SWEEPS = (("mnist", "lenet", "MNIST LeNet-5"), ("mnist", "mlp", "MNIST MLP"),
          ("fashion_mnist", "mlp", "Fashion MLP"), ("fashion_mnist", "lenet", "Fashion LeNet-5"))
FAMILY_NAMES = {"sgd": "SGD", "adamw": "AdamW"}


@dataclasses.dataclass
class GammaSweep:
  """The records of one committed γ sweep and its selection, as `gamma_sweep_report.write_report` makes them."""
  dataset: str
  model: str
  records: list[dict]
  psnr_metric: str
  chosen: dict[str, dict]

  @classmethod
  def load(cls, dataset: str, model: str, results: pathlib.Path = RESULTS) -> "GammaSweep":
    path = results / f"gamma_sweep_{dataset}_{model}.jsonl"
    records = jsonl_records.read_records(path)
    # The report reads one budget; a file holding two would make "the" selection ambiguous.
    budgets = {(r["epochs"], r["batch_size"], r["train_limit"]) for r in records}
    if len(budgets) != 1:
      raise ValueError(f"{path.name}: expected the records of one budget (epochs, batch, limit), got {budgets}.")
    metric = report.PSNR_METRIC[records[0]["model"]]
    chosen = {family: report.select(records, family, metric) for family in FAMILY_NAMES}
    return cls(dataset, model, records, metric, chosen)

  def test_accuracy(self, family: str, role: str) -> list[float]:
    return [r["test_accuracy"] for r in report.final_runs(self.records, self.chosen[family][role])]

  def test_mean(self, family: str, role: str, field: str) -> float:
    return float(np.mean([r[field] for r in report.final_runs(self.records, self.chosen[family][role])]))

  def compare(self, family: str, role: str) -> tuple[str, float, float]:
    """(above | level | below, difference in points, its standard error in points) against the baseline."""
    word, diff, se = report.compare(self.test_accuracy(family, role), self.test_accuracy(family, "baseline"))
    return word, 100 * diff, 100 * se

  def held(self, family: str) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    return report.held_gammas(self.records, self.chosen[family], self.psnr_metric)


def load_sweeps(results: pathlib.Path = RESULTS) -> dict[tuple[str, str], GammaSweep]:
  return {(d, m): GammaSweep.load(d, m, results) for d, m, _ in SWEEPS}


# ---------------------------------------------------------------------------------------------- formats


def number(value: float, digits: int) -> str:
  """Fixed decimals with a typographic minus, as the README's prose writes negative numbers."""
  return f"{value:.{digits}f}".replace("-", "−")


def gamma(value: float) -> str:
  """γ as the README writes it: 3e-3 below 0.01, plain decimals above (0.03, 1.5, 50)."""
  if value < 0.01:
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"
  return f"{value:g}"


def span(values: Sequence[float]) -> str:
  """One γ, or the range lo–hi of several."""
  lo, hi = min(values), max(values)
  return gamma(lo) if lo == hi else f"{gamma(lo)}–{gamma(hi)}"


def accuracy(values: Sequence[float]) -> str:
  values = 100 * np.asarray(values, float)
  return f"{values.mean():.2f} ± {values.std(ddof=1):.2f} %"


def claim(holds: bool, sentence: str):
  """Stops the rendering when a sentence of the prose no longer follows from the records."""
  if not holds:
    raise ValueError(f"the docs say {sentence!r}, which the records no longer support: rewrite the prose in "
                     "benchmarks/readme_numbers.py.")


# ----------------------------------------------------------------------------------------------- blocks


def gamma_table(sweeps: dict[tuple[str, str], GammaSweep]) -> str:
  """The "Choosing γ" table (README.md, docs/gamma.md): tuned baseline and the max-PSNR Bort setting of every
  sweep, test split."""
  lines = ["| dataset / model | tuned baseline | Bort at the selected γ (max validation PSNR, accuracy held) |",
           "|---|---|---|"]
  for dataset, model, label in SWEEPS:
    sweep = sweeps[dataset, model]
    for family, family_name in FAMILY_NAMES.items():
      pick = sweep.chosen[family]["bort_max_psnr"]
      word, diff, _ = sweep.compare(family, "bort_max_psnr")
      position = "level" if word == "level" else f"{abs(diff):.2f} pt {word}"
      alpha = "α 1" if pick["alpha"] != "adaptive" else "adaptive α"
      field = f"test_{sweep.psnr_metric}"
      # The first LeNet-5 row of each dataset says which PSNR the LeNet-5 rows show (see the caption).
      kind = "fitted PSNR " if sweep.psnr_metric == "psnr_fitted" and family == "sgd" else ""
      psnr = (f"{kind}{number(sweep.test_mean(family, 'bort_max_psnr', field), 1)} dB vs "
              f"{number(sweep.test_mean(family, 'baseline', field), 1)}")
      lines.append(f"| {label}, {family_name} | {accuracy(sweep.test_accuracy(family, 'baseline'))} | "
                   f"γ {gamma(pick['gamma'])}, {alpha}, {pick['mode']}: "
                   f"{accuracy(sweep.test_accuracy(family, 'bort_max_psnr'))} ({position}), {psnr} |")
  return "\n".join(lines) + "\n"


def gamma_prose(sweeps: dict[tuple[str, str], GammaSweep]) -> str:
  """The paragraph under the table in docs/gamma.md: validation γ ranges on MNIST and the accuracy-first
  choices."""
  lenet, mlp = sweeps["mnist", "lenet"], sweeps["mnist", "mlp"]
  held = lambda sweep, family, alpha: sweep.held(family)[alpha, "l2-full"][0]
  rises = lambda family: [min(s.held(family)[a, "l2-full"][1]) for s in (lenet, mlp) for a in ("1", "adaptive")
                          if s.held(family)[a, "l2-full"][1]]
  claim(all(not holds for family in FAMILY_NAMES for (_, mode), (holds, _) in mlp.held(family).items()
            if mode == "l1-full"), "l1-full never kept the MNIST MLP's accuracy")
  best = {key: sweep.compare("sgd", "bort_best_accuracy") for key, sweep in sweeps.items()}
  claim(all(s.compare(f, "bort_best_accuracy")[0] != "below" for s in sweeps.values() for f in FAMILY_NAMES),
        "The accuracy-first choice is never below its baseline")
  above = [("fashion_mnist", "mlp"), ("mnist", "mlp")]
  claim({key for key, (word, _, _) in best.items() if word == "above"} == set(above),
        "Bort-SGD at its best validation accuracy is above on Fashion MLP, on MNIST MLP and level elsewhere")
  fashion_mlp = sweeps["fashion_mnist", "mlp"].chosen["sgd"]["bort_best_accuracy"]
  fashion_lenet = sweeps["fashion_mnist", "lenet"]
  claim(not any(both for f in FAMILY_NAMES for _, both in fashion_lenet.held(f).values()),
        "On Fashion-MNIST LeNet-5 Bort buys orthogonality but hardly any PSNR")
  return (
      f"On MNIST validation, l2-full Bort-SGD kept the baseline's accuracy up to γ = "
      f"{gamma(max(held(mlp, 'sgd', '1')))} (MLP, α = 1), {gamma(max(held(mlp, 'sgd', 'adaptive')))} (MLP,\n"
      f"adaptive α) and {span([max(held(lenet, 'sgd', a)) for a in ('1', 'adaptive')])} (LeNet-5), and "
      f"Bort-AdamW (its correction is not Adam-scaled) up to "
      f"{span([max(held(mlp, 'adamw', a)) for a in ('1', 'adaptive')])} (MLP) and "
      f"{span([max(held(lenet, 'adamw', a)) for a in ('1', 'adaptive')])}\n"
      f"(LeNet-5); the PSNR rose from γ ≈ {span(rises('sgd'))} (SGD) and {span(rises('adamw'))} (AdamW) on; "
      "l1-full never kept the MNIST\n"
      "MLP's accuracy. The accuracy-first choice is never below its baseline: Bort-SGD at its best validation\n"
      f"accuracy is {best[above[0]][1]:.2f} pt above on Fashion MLP (γ {gamma(fashion_mlp['gamma'])}, "
      f"{'adaptive α' if fashion_mlp['alpha'] == 'adaptive' else 'α 1'}; s.e. {best[above[0]][2]:.2f}), "
      f"{best[above[1]][1]:.2f} above on MNIST MLP and level\n"
      "elsewhere. On Fashion-MNIST LeNet-5 Bort buys orthogonality (gap "
      f"{fashion_lenet.test_mean('sgd', 'baseline', 'gap'):.2f} → "
      f"{fashion_lenet.test_mean('sgd', 'bort_max_psnr', 'gap'):.4f}) but hardly any PSNR.\n")


BLOCKS = {"gamma-table": gamma_table, "gamma-prose": gamma_prose}


# ------------------------------------------------------------------------------------------------- main


def render(text: str, sweeps: dict[tuple[str, str], GammaSweep]) -> str:
  """`text` with the body of every generated block re-rendered; an unknown block name is an error."""
  names = [m["name"] for m in BLOCK.finditer(text)]
  unknown = sorted(set(names) - set(BLOCKS))
  if unknown:
    raise ValueError(f"unknown generated block(s) {unknown}; known: {sorted(BLOCKS)}.")
  return BLOCK.sub(lambda m: m[1] + BLOCKS[m["name"]](sweeps) + m[4], text)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("files", nargs="*", type=pathlib.Path, default=list(FILES),
                      help="files with generated blocks (default: README.md and docs/gamma.md)")
  parser.add_argument("--check", action="store_true", help="exit 1 with a diff instead of rewriting the files")
  args = parser.parse_args(argv)
  sweeps = load_sweeps()
  stale = False
  for path in args.files:
    text = path.read_text()
    if not BLOCK.search(text):
      raise ValueError(f"{path} has no generated block.")
    new = render(text, sweeps)
    if new == text:
      continue
    stale = True
    if args.check:
      sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True), str(path),
                                                 "rendered from benchmarks/results"))
    else:
      path.write_text(new)
      print(f"rewrote the generated blocks of {path}")
  return int(stale and args.check)


if __name__ == "__main__":
  sys.exit(main())
