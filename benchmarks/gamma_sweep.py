"""Choosing γ: accuracy against explainability for Bort-SGD / Bort-AdamW, with tuned baselines (issue 12).

    nice -n 19 python -m benchmarks.gamma_sweep --dataset mnist --model mlp --stage all
    nice -n 19 python -m benchmarks.gamma_sweep --dataset mnist --model mlp --stage baselines   # or one stage

Stages, each resumable (a finished setting is one line of `gamma_sweep_<dataset>_<model>.jsonl` beside the
Markdown; rerunning skips every setting already there, and a run killed mid-setting continues from its last
epoch checkpoint in `--workdir`):

1. `baselines`: SGD and AdamW over a small learning-rate × weight-decay grid (`BASELINE_GRID`), trained on
   the training split minus a held-out validation split (the last 10% of every class,
   `examples.data.holdout_split`; `config.eval_split = "holdout"` in the trainer) and scored on it.
2. `bort`: Bort-SGD / Bort-AdamW at their baseline's best (validation) learning rate and weight decay, γ
   over the half-decade log grid `GAMMAS` (from no measurable effect to a clear accuracy loss),
   α ∈ {1, adaptive}, modes l2-full and l1-full. Per setting: validation accuracy, mean off-diagonal orthogonality gap
   (`mean_offdiag_gap` of the trainer) and the PSNR of the reconstruction of 1,000 validation images from
   the last feature layer (`bort_jax.explain.reconstruction_by_depth`, x̂ = J(x)ᵀ f(x) / ∏α; raw and
   fitted-scale PSNR, every depth stored).
3. `final`: the settings selected from validation numbers only (per family the tuned baseline and two Bort
   settings, `--tolerance`; see `benchmarks/gamma_sweep_report.py`) retrained on the whole training split
   with `--seeds` (default 0 1 2) and scored on the test split.
4. `report`: `gamma_sweep_<dataset>_<model>.md` and `.png` (`benchmarks/gamma_sweep_report.py`). Every other
   stage rewrites both after each finished setting. `all` runs the four in order. The CIFAR-10 models have no
   `final` stage (`all`: baselines, bort, report): their test-split comparison is `benchmarks/cifar_table.py`.

Every run goes through `examples.train.train_and_evaluate` (the example trainer: same data pipeline,
cosine schedule after a linear warmup of min(0.5, epochs/4) epochs, batch 128, float32, the model config's
augmentation: none for the MNIST models, pad-crop and flip for the CIFAR ones).
Records from other machines or processes merge with `--merge-from OTHER.jsonl ...` (settings not yet here
are appended); only records with this invocation's epoch budget, batch size and `--train-limit` are read.

Epoch budget (`EPOCHS`): 10 epochs for the MLP and 3 for LeNet-5, measured costs in `docs/gamma.md` ("Cost of
a sweep"); every optimizer gets the same budget. `--epochs` and `--train-limit` shrink runs for smoke tests.

CIFAR-10 (`--dataset cifar10 --model resnet20 | vit_tiny`, issue 19): the configs' standard baseline recipes
(one grid point, not tuned), γ at 4 values around the configs' prediction (`CIFAR_GAMMAS`) in the MNIST sweeps'
mode and α, `EPOCHS` reduced epochs, the same selection rule; no `final` stage (the test split is
`benchmarks/cifar_table.py`'s; protocol and amendments in `benchmarks/results/cifar10_plan.md`).
"""

import argparse
from collections.abc import Sequence
import dataclasses
import pathlib
import shlex
import shutil
import sys
import time

import jax
import ml_collections

from benchmarks import gamma_sweep_report as report
from benchmarks import jsonl_records
from benchmarks import paths
from benchmarks import stage_reconstruction
from examples import data as data_lib
from examples import metrics_io
from examples import train
from examples.configs import cifar10_resnet20
from examples.configs import cifar10_vit_tiny
from examples.configs import mnist_lenet
from examples.configs import mnist_mlp

DATASETS = ("mnist", "fashion_mnist", "cifar10")
# CLI model name -> (trainer model name, config module whose baseline recipes (momentum, b1/b2) are used).
MODELS = {"mlp": ("mlp", mnist_mlp), "lenet": ("lenet5", mnist_lenet), "resnet20": ("resnet20", cifar10_resnet20),
          "vit_tiny": ("vit_tiny", cifar10_vit_tiny)}
CIFAR_MODELS = ("resnet20", "vit_tiny")
EPOCHS = {"mlp": 10, "lenet": 3, "resnet20": 2, "vit_tiny": 2}  # see "Epoch budget" above and cifar10_plan.md
FAMILIES = ("sgd", "adamw")
BASELINE_GRID = {
    "sgd": {"learning_rate": (0.02, 0.05, 0.1), "weight_decay": (1e-4, 5e-4)},
    "adamw": {"learning_rate": (3e-4, 1e-3, 3e-3), "weight_decay": (1e-4, 1e-2)},
}
# BortS moves a weight by ~lr·γ/(1 - momentum) per step, BortA by lr·γ (not Adam-scaled): at the recipes'
# learning rates (0.05 with momentum 0.9, 1e-3) equal corrections need γ_adamw = 500 γ_sgd, hence the grids.
GAMMAS = {"sgd": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
          "adamw": (0.05, 0.15, 0.5, 1.5, 5.0, 15.0, 50.0)}
# Quarter-to-half-decade steps around each config's predicted γ (see its docstring): SGD from the MNIST LeNet-5
# choice at the same lr and momentum (0.03) down towards its AdamW choice at equal lr·γ; AdamW between that
# choice at equal lr·γ and the SGD↔AdamW rule of examples/configs/default.py.
CIFAR_GAMMAS = {"resnet20": {"sgd": (3e-3, 1e-2, 3e-2, 1e-1), "adamw": (1.5, 5.0, 15.0, 50.0)},
                "vit_tiny": {"sgd": (3e-3, 1e-2, 3e-2, 1e-1), "adamw": (5.0, 15.0, 50.0, 150.0)}}
CIFAR_FAMILIES = {"resnet20": ("sgd",), "vit_tiny": ("adamw",)}
# Added after the ResNet-20 baseline and γ = 3e-3 runs, before any other: ResNet-20's last-stage fitted PSNR sat at
# a zero image's for both, so it cannot rank γ; the orthogonality gap breaks such ties (the numbers:
# benchmarks/results/cifar10_plan.md, "Amendment").
CIFAR_PSNR_RESOLUTION = 0.1
ALPHAS = ("1", "adaptive")
MODES = ("l2-full", "l1-full")
SELECTION_RULE = ("on the validation (holdout) split only: the baseline with the best accuracy; the Bort setting "
                  "with the best accuracy; the Bort setting with the highest PSNR whose accuracy is at least the "
                  "baseline's minus --tolerance (default one binomial standard error), PSNRs within --psnr-resolution "
                  "dB of the highest tying and a tie going to the smallest orthogonality gap; these alone go to the "
                  "test split (stage final)")
HOLDOUT = data_lib.HOLDOUT_SPLIT


@dataclasses.dataclass(frozen=True)
class Setting:
  """One training run; `key` identifies it in the JSONL file (every field that changes the result)."""
  stage: str  # "baselines" | "bort" | "final"
  dataset: str
  model: str  # trainer model name ("mlp", "lenet5")
  optimizer: str
  learning_rate: float
  weight_decay: float
  gamma: float = 0.0
  alpha: str = ""  # "1" | "adaptive" (Bort only)
  mode: str = ""
  seed: int = 0
  split: str = HOLDOUT  # "holdout" (validation, sweep stages) | "test" (final stage)
  epochs: int = 1
  batch_size: int = 128
  train_limit: int = 0

  @property
  def family(self) -> str:
    return self.optimizer.removeprefix("bort_")

  @property
  def is_bort(self) -> bool:
    return self.optimizer.startswith("bort_")

  @property
  def key(self) -> str:
    bort = f" gamma={self.gamma:g} alpha={self.alpha} mode={self.mode}" if self.is_bort else ""
    return (f"{self.dataset} {self.model} {self.optimizer} lr={self.learning_rate:g} "
            f"wd={self.weight_decay:g}{bort} seed={self.seed} split={self.split} epochs={self.epochs} "
            f"batch={self.batch_size} limit={self.train_limit}")

  @property
  def dirname(self) -> str:
    return self.key.replace(" ", "_").replace("=", "")


# ----------------------------------------------------------------------------------------------- runs


@dataclasses.dataclass
class Sweep:
  """One (dataset, model) sweep: its grids, budget and files."""
  dataset: str
  cli_model: str
  epochs: int
  batch_size: int = 128
  train_limit: int = 0
  families: Sequence[str] = FAMILIES
  grid: dict = dataclasses.field(default_factory=lambda: {f: dict(g) for f, g in BASELINE_GRID.items()})
  gammas: dict = dataclasses.field(default_factory=lambda: dict(GAMMAS))
  alphas: Sequence[str] = ALPHAS
  modes: Sequence[str] = MODES
  seeds: Sequence[int] = (0, 1, 2)
  tolerance: float | None = None
  psnr_resolution: float = 0.0
  out: pathlib.Path = paths.REPO / "benchmarks" / "results"
  workdir: pathlib.Path = paths.REPO / "runs" / "gamma_sweep"
  data_dir: str | None = None
  command: str = ""
  keep_workdirs: bool = False

  @property
  def model(self) -> str:
    return MODELS[self.cli_model][0]

  @property
  def name(self) -> str:
    return f"gamma_sweep_{self.dataset}_{self.cli_model}"

  @property
  def jsonl(self) -> pathlib.Path:
    return pathlib.Path(self.out) / f"{self.name}.jsonl"

  @property
  def psnr_metric(self) -> str:
    return report.PSNR_METRIC[self.model]

  @property
  def augment(self) -> str:
    return MODELS[self.cli_model][1].get_config().augment

  @property
  def validation_only(self) -> bool:
    """The CIFAR models' sweeps stop at the selection: their test-split runs are `benchmarks/cifar_table.py`'s."""
    return self.cli_model in CIFAR_MODELS

  @property
  def feature_layer(self) -> str:
    return stage_reconstruction.FEATURE_LAYERS.get(self.model, (stage_reconstruction.FEATURES,))[-1]

  def setting(self, stage: str, optimizer: str, lr: float, wd: float, **kw) -> Setting:
    return Setting(stage=stage, dataset=self.dataset, model=self.model, optimizer=optimizer, learning_rate=lr,
                   weight_decay=wd, epochs=self.epochs, batch_size=self.batch_size, train_limit=self.train_limit,
                   **kw)

  def records(self) -> list[dict]:
    """This budget's records (other epoch budgets, batch sizes or train limits are left out)."""
    budget = dict(dataset=self.dataset, model=self.model, epochs=self.epochs, batch_size=self.batch_size,
                  train_limit=self.train_limit)
    return [r for r in jsonl_records.read_records(self.jsonl) if all(r.get(k) == v for k, v in budget.items())]

  # -- the settings of each stage

  def baseline_settings(self) -> list[Setting]:
    return [self.setting("baselines", f, lr, wd) for f in self.families
            for lr in self.grid[f]["learning_rate"] for wd in self.grid[f]["weight_decay"]]

  def bort_grid(self, family: str) -> list[tuple[float, str, str]]:
    """(γ, α, mode) of every Bort setting of `family`, run at its baseline's learning rate and weight decay."""
    return [(g, a, m) for m in self.modes for a in self.alphas for g in self.gammas[family]]

  @property
  def planned_runs(self) -> int:
    """Validation runs of the baselines and bort stages."""
    return len(self.baseline_settings()) + sum(len(self.bort_grid(f)) for f in self.families)

  def bort_settings(self, records: Sequence[dict]) -> list[Setting]:
    settings = []
    for family in self.families:
      baseline = self._complete_baseline(records, family)
      settings += [self.setting("bort", f"bort_{family}", baseline["learning_rate"], baseline["weight_decay"],
                                gamma=g, alpha=a, mode=m) for g, a, m in self.bort_grid(family)]
    return settings

  def _complete_baseline(self, records, family):
    keys = {r["key"] for r in records}
    missing = [s.key for s in self.baseline_settings() if s.family == family and s.key not in keys]
    if missing:
      raise SystemExit(f"{len(missing)} baseline setting(s) of {family} not finished (e.g. {missing[0]!r}); "
                       "run --stage baselines first.")
    return report.select(records, family, self.psnr_metric)["baseline"]

  def selected(self, records: Sequence[dict]) -> dict[str, dict]:
    return {f: report.select(records, f, self.psnr_metric, self.tolerance, self.psnr_resolution)
            for f in self.families}

  def final_settings(self, records: Sequence[dict]) -> list[Setting]:
    for family in self.families:
      self._complete_baseline(records, family)
    settings, seen = [], set()
    for family, chosen in self.selected(records).items():
      if chosen["bort_best_accuracy"] is None:
        raise SystemExit(f"no Bort-{family} record at the baseline's lr/wd; run --stage bort first.")
      for role in report.ROLES:
        record = chosen[role]
        if record is None or record["key"] in seen:
          continue
        seen.add(record["key"])
        settings += [self.setting("final", record["optimizer"], record["learning_rate"], record["weight_decay"],
                                  gamma=record["gamma"], alpha=record["alpha"], mode=record["mode"], seed=seed,
                                  split="test") for seed in self.seeds]
    return settings

  # -- running

  def run_all(self, settings: Sequence[Setting]):
    done = {r["key"] for r in jsonl_records.read_records(self.jsonl)}
    todo = [s for s in settings if s.key not in done]
    print(f"{self.name}: selection rule, fixed before the runs: {SELECTION_RULE}", flush=True)
    print(f"{self.name}: {len(settings) - len(todo)} of {len(settings)} settings already finished, "
          f"{len(todo)} to run", flush=True)
    for i, setting in enumerate(todo, 1):
      record = run_setting(setting, self.cli_model, self.workdir / self.name, self.data_dir, self.command)
      jsonl_records.append_record(self.jsonl, record)
      if not self.keep_workdirs:  # only once recorded: a kill before the record resumes from the checkpoints
        shutil.rmtree(self.workdir / self.name / setting.dirname, ignore_errors=True)
      split = "val" if setting.split == HOLDOUT else "test"
      print(f"[{i}/{len(todo)}] {setting.key}: {split} acc {record[f'{split}_accuracy']:.4f} gap "
            f"{record['gap']:.4f} PSNR {record[f'{split}_psnr']:.2f} fitted {record[f'{split}_psnr_fitted']:.2f} dB "
            f"({record['seconds']:.0f}s)", flush=True)
      report.write_report(self)


def make_config(setting: Setting, cli_model: str) -> ml_collections.ConfigDict:
  """The trainer config of one setting: the model's baseline recipe with the setting's fields."""
  config = MODELS[cli_model][1].get_config(setting.family)
  config.update(dict(
      dataset=setting.dataset, model=setting.model, optimizer=setting.optimizer,
      learning_rate=float(setting.learning_rate), weight_decay=float(setting.weight_decay), seed=setting.seed,
      eval_split=setting.split, num_epochs=setting.epochs, warmup_epochs=min(0.5, setting.epochs / 4),
      batch_size=setting.batch_size, eval_batch_size=1000, train_limit=setting.train_limit,
      keep_checkpoints=1, progress_bar=False))
  if setting.is_bort:
    config.update(dict(gamma=float(setting.gamma), alpha=1.0, adaptive_alpha=setting.alpha == "adaptive",
                       bort_mode=setting.mode, bort_rules=()))
  train.validate(config)
  return config


def run_setting(setting: Setting, cli_model: str, workdir: pathlib.Path, data_dir: str | None,
                command: str = "") -> dict:
  """Trains one setting with `examples.train.train_and_evaluate` and returns its record."""
  config = make_config(setting, cli_model)
  run_dir = workdir / setting.dirname
  state, results = train.train_and_evaluate(config, str(run_dir), resume=True, data_dir=data_dir)
  if results["status"] == "diverged":  # no accuracy to record: say so and stop rather than log a fake number
    raise SystemExit(f"{setting.key}: {results['diverged']['message']} Drop this setting from the sweep grid.")
  eval_images, eval_labels = data_lib.as_arrays(train.load_splits(config, data_dir)[1])
  recon = stage_reconstruction.reconstruction_metrics(config, state, eval_images)
  last = list(recon.values())[-1]  # the last feature layer
  split = "val" if setting.split == HOLDOUT else "test"
  record = dataclasses.asdict(setting) | {
      "key": setting.key, f"{split}_accuracy": results["test_accuracy"], f"{split}_loss": results["test_loss"],
      f"{split}_count": int(len(eval_labels)), "train_accuracy": results["train_accuracy"],
      "gap": results["mean_offdiag_gap"], f"{split}_psnr": last["psnr"], f"{split}_psnr_fitted": last["psnr_fitted"],
      f"{split}_reconstruction": recon, "command": command,
      # the trainer's epoch seconds, also of processes cut before this one, as the table counts them
      "seconds": metrics_io.MetricsLog(str(run_dir / "metrics.jsonl")).training_seconds(),
      "jax": jax.__version__, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
  return record


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default="mnist", choices=DATASETS)
  parser.add_argument("--model", default="mlp", choices=tuple(MODELS))
  parser.add_argument("--stage", default="all", choices=("baselines", "bort", "final", "report", "all"))
  parser.add_argument("--epochs", type=int, help=f"Epochs per run (default: {EPOCHS}).")
  parser.add_argument("--train-limit", type=int, default=0, help="Keep the first N training images (smoke runs).")
  parser.add_argument("--batch-size", type=int, default=128)
  # Grid defaults depend on --model (`model_defaults`).
  parser.add_argument("--families", nargs="+", choices=FAMILIES)
  for family in FAMILIES:
    parser.add_argument(f"--{family}-lrs", type=float, nargs="+")
    parser.add_argument(f"--{family}-wds", type=float, nargs="+")
    parser.add_argument(f"--{family}-gammas", type=float, nargs="+")
  parser.add_argument("--alphas", nargs="+", choices=ALPHAS)
  parser.add_argument("--modes", nargs="+")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Seeds of the final stage.")
  parser.add_argument("--tolerance", type=float,
                      help="Accuracy (fraction) Bort may lose against the baseline on validation and still count as "
                           "'held' (default: one binomial standard error of the baseline's validation accuracy).")
  parser.add_argument("--psnr-resolution", type=float,
                      help="PSNRs (dB) this close to the highest held one tie; a tie goes to the smallest "
                           "orthogonality gap (default: 0 for MNIST models, CIFAR_PSNR_RESOLUTION for CIFAR ones).")
  parser.add_argument("--out", default=str(paths.REPO / "benchmarks" / "results"),
                      help="Folder of the .md/.png/.jsonl.")
  parser.add_argument("--workdir", default=str(paths.REPO / "runs" / "gamma_sweep"),
                      help="Per-run trainer folders (checkpoints for resuming a cut run; deleted once recorded).")
  parser.add_argument("--keep-workdirs", action="store_true", help="Keep each finished run's trainer folder.")
  parser.add_argument("--data-dir", default=paths.default_data_dir())
  parser.add_argument("--merge-from", nargs="+", default=[], metavar="JSONL",
                      help="Append the records of these JSONL files (other machines/processes) that are not here yet.")
  return parser.parse_args(argv)


def model_defaults(cli_model: str) -> dict:
  """The sweep grid of a model when no flag overrides it: MNIST models the full grids above; CIFAR models their
  config's standard baseline recipe (one point), `CIFAR_GAMMAS` and the MNIST sweeps' mode and α."""
  if cli_model not in CIFAR_MODELS:
    return {"families": FAMILIES, "grid": BASELINE_GRID, "gammas": GAMMAS, "alphas": ALPHAS, "modes": MODES,
            "psnr_resolution": 0.0}
  recipes = MODELS[cli_model][1].RECIPES
  grid = {f: {"learning_rate": (recipes[f]["learning_rate"],), "weight_decay": (recipes[f]["weight_decay"],)}
          for f in FAMILIES}
  return {"families": CIFAR_FAMILIES[cli_model], "grid": grid, "gammas": CIFAR_GAMMAS[cli_model], "alphas": ("1",),
          "modes": ("l1-full",), "psnr_resolution": CIFAR_PSNR_RESOLUTION}


def sweep_from_args(args, command: str) -> Sweep:
  if (args.dataset == "cifar10") != (args.model in CIFAR_MODELS):
    raise SystemExit(f"--model {args.model} is not accepted with --dataset {args.dataset}; accepted values: "
                     f"{', '.join(CIFAR_MODELS) if args.dataset == 'cifar10' else 'mlp, lenet'}.")
  defaults = model_defaults(args.model)
  pick = lambda value, default: tuple(default if value is None else value)
  pick_one = lambda value, default: default if value is None else value
  grid = {f: {k: pick(getattr(args, f"{f}_{flag}"), defaults["grid"][f][k])
              for k, flag in (("learning_rate", "lrs"), ("weight_decay", "wds"))} for f in FAMILIES}
  return Sweep(dataset=args.dataset, cli_model=args.model, epochs=args.epochs or EPOCHS[args.model],
               batch_size=args.batch_size, train_limit=args.train_limit,
               families=pick(args.families, defaults["families"]), grid=grid,
               gammas={f: pick(getattr(args, f"{f}_gammas"), defaults["gammas"][f]) for f in FAMILIES},
               alphas=pick(args.alphas, defaults["alphas"]), modes=pick(args.modes, defaults["modes"]),
               seeds=tuple(args.seeds), tolerance=args.tolerance,
               psnr_resolution=pick_one(args.psnr_resolution, defaults["psnr_resolution"]),
               out=pathlib.Path(args.out), workdir=pathlib.Path(args.workdir), data_dir=args.data_dir,
               command=command, keep_workdirs=args.keep_workdirs)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  sweep = sweep_from_args(args, shlex.join(argv))
  if args.merge_from:
    merged = jsonl_records.merge_records(sweep.jsonl, map(pathlib.Path, args.merge_from))
    print(f"merged {merged} record(s) into {sweep.jsonl}")
  if sweep.validation_only and args.stage == "final":
    raise SystemExit(f"--stage final is not accepted for --model {args.model}; accepted values: baselines, bort, "
                     "report, all (its test-split runs are benchmarks/cifar_table.py's).")
  every = ("baselines", "bort") if sweep.validation_only else ("baselines", "bort", "final")
  stages = every if args.stage == "all" else (args.stage,)
  for stage in stages:
    if stage == "baselines":
      sweep.run_all(sweep.baseline_settings())
    elif stage == "bort":
      sweep.run_all(sweep.bort_settings(sweep.records()))
    elif stage == "final":
      sweep.run_all(sweep.final_settings(sweep.records()))
  report.write_report(sweep)
  print(f"wrote {pathlib.Path(sweep.out) / sweep.name}.md and .png", flush=True)


if __name__ == "__main__":
  main()
