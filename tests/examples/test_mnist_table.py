"""benchmarks/table.py (as mnist_table / cifar_table): tiny cells through the example trainer, resuming, and
merging of committed tables."""

import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from benchmarks import cifar10_explain
from benchmarks import cifar_table
from benchmarks import jsonl_records
from benchmarks import kernel_spectra
from benchmarks import mnist_table
from benchmarks import paths
from benchmarks import table
from benchmarks import table_report

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(monkeypatch, *args, script=mnist_table):
  monkeypatch.setattr(sys, "argv", [script.__name__, *args])
  script.main(*(["cifar10"] if script is cifar_table else []))


def _rows(path) -> list[str]:
  return [line for line in pathlib.Path(path).read_text().splitlines() if line.startswith("| ")][1:]


def test_tiny_cell_trains_with_the_example_trainer(tmp_path, monkeypatch):
  out = tmp_path / "table.md"  # not there yet: --merge starts the table, so one command line serves every run
  _run(monkeypatch, "--dataset", "mnist_small", "--out", str(out), "--merge", "--models", "mlp", "--optimizers", "sgd",
       "--seeds", "0", "--mlp-epochs", "1", "--train-limit", "256", "--batch-size", "64",
       "--set", "learning_rate=0.1", "--timed-steps", "1", "--workdir", str(tmp_path / "runs"))
  [row] = _rows(out)
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[:3] == ["mlp", "sgd", "1"]
  assert cells[9] == "learning_rate=0.1, weight_decay=0.0005, momentum=0.9"
  [run] = json.loads(out.with_suffix(".json").read_text())["runs"]["mlp/sgd"]
  assert set(run) == {"seed", "test_accuracy", "gap", "psnr", "psnr_floor", "seconds", "epochs", "settings",
                      "step_seconds"}
  assert run["test_accuracy"] > 0.2 and run["gap"] > 0  # chance: 0.1
  assert cells[3] == f"{100 * run['test_accuracy']:.2f} (1 seed)"


def test_committed_tables_merge_unchanged(tmp_path, monkeypatch):
  for name in ("mnist", "fashion_mnist"):
    committed = REPO / "benchmarks" / "results" / f"{name}_table.md"
    out = tmp_path / f"{name}.md"
    _run(monkeypatch, "--dataset", name, "--out", str(out), "--merge-from",
         str(committed.with_suffix(".json")), "--models")
    assert _rows(out) == _rows(committed)


def test_the_zero_image_floor_loads_the_test_split_once_per_command(monkeypatch):
  args = table.resolve(table._parser().parse_args(["--dataset", "mnist_small", "--out", "t.md"]))
  real, loads = table.data_lib.load_arrays, []
  monkeypatch.setattr(table.data_lib, "load_arrays", lambda *a: loads.append(a) or real(*a))
  cache = {}
  assert table.psnr_floors(args, {("mlp", "sgd"): [{"seed": 0}]}, cache) == [] and not loads  # no PSNR yet
  results = {("mlp", "sgd"): [{"seed": 0}], ("lenet5", "sgd"): [{"seed": 0, "psnr": 9.0}, {"seed": 1, "psnr": 9.1}]}
  images, _ = real("mnist_small", "test")
  centred = images[:1000] / 255.0 - np.array([0.1307])  # the floor's images: the PSNR model's (LeNet-5) inputs
  expected = np.mean(-10 * np.log10(np.mean(centred ** 2, axis=(1, 2, 3))))
  [(label, floor), second] = table.psnr_floors(args, results, cache)
  assert label == "lenet5 sgd" and floor == pytest.approx(expected, abs=1e-3) and second == (label, floor)
  assert table.psnr_floors(args, results, cache) == [(label, floor)] * 2 and len(loads) == 1
  results[("mlp", "sgd")] = [{"seed": 0, "psnr": 7.0, "psnr_floor": 3.0}]  # a record's own floor needs no load
  assert table.psnr_floors(args, results, cache)[0] == ("mlp sgd", 3.0) and len(loads) == 1


def test_rows_with_different_input_normalizations_state_each_floor():
  """One floor is stated while every row shares it; otherwise each floor names its rows (a --set normalize=False
  on one model must not leave the other model's floor standing for it)."""
  assert table_report.floor_text([("lenet5 sgd", 9.013), ("lenet5 bort_sgd", 9.0149)]) == "x̂ = 0 scores 9.01 dB"
  assert table_report.floor_text([("mlp sgd", 3.0), ("lenet5 sgd", 9.01), ("mlp sgd", 3.0)]) == (
      "x̂ = 0 scores 3.00 dB for mlp sgd; 9.01 dB for lenet5 sgd")


def test_benchmarks_read_the_data_dir_from_the_environment_else_beside_the_repository(monkeypatch, tmp_path):
  monkeypatch.setenv("BORT_DATA_DIR", str(tmp_path))
  assert paths.default_data_dir() == str(tmp_path) == table._parser().parse_args(["--out", "t.md"]).data_dir
  monkeypatch.delenv("BORT_DATA_DIR")
  assert paths.default_data_dir() == str(REPO.parent / "shared" / "data")


def test_first_format_runs_take_the_configs_epochs(tmp_path, monkeypatch):
  """Runs saved without "epochs" were made with the default epochs: the configs' num_epochs."""
  run = {"seed": 0, "test_accuracy": 0.9, "gap": 0.1, "seconds": 1.0, "settings": "learning_rate=0.05"}
  old = tmp_path / "old.json"
  old.write_text(json.dumps({"mlp/sgd": [run], "lenet5/sgd": [run]}))
  out = tmp_path / "table.md"
  _run(monkeypatch, "--dataset", "mnist", "--out", str(out), "--merge-from", str(old), "--models")
  epochs = [[c.strip() for c in row.split("|")[1:4]] for row in _rows(out)]
  assert epochs == [["mlp", "sgd", "15"], ["lenet5", "sgd", "10"]]


def test_a_table_is_in_progress_until_every_planned_row_has_its_seeds(tmp_path, monkeypatch):
  """--planned rows are kept in the .json: a table with a row short of seeds, or a planned row not run, is marked
  "in progress" and names them; a plan on a later command replaces it; a bad row is a ValueError naming it."""
  run = {"seed": 0, "test_accuracy": 0.5, "gap": 0.1, "seconds": 3600.0, "epochs": 10, "settings": "lr=0.1"}
  out = tmp_path / "cifar.md"
  out.with_suffix(".json").write_text(json.dumps({"commands": [], "runs": {"resnet20/sgd": [run]}}))
  _run(monkeypatch, "--out", str(out), "--merge", "--models", "--seeds", "0", "--planned", "resnet20/sgd",
       "vit_tiny/adamw", script=cifar_table)
  text = out.read_text()
  assert "(in progress)" in text
  assert "50.00 (in progress: 1 of 2 seeds)" in text
  assert "Planned rows not yet run (2 seeds each): vit_tiny adamw." in text
  assert json.loads(out.with_suffix(".json").read_text())["planned"] == {"cells": ["resnet20/sgd", "vit_tiny/adamw"],
                                                                         "seeds": 2}

  _run(monkeypatch, "--out", str(out), "--merge", "--models", "--seeds", "0", script=cifar_table)  # plan kept
  kept = out.read_text()
  assert _rows(out)[0].endswith("50.00 (in progress: 1 of 2 seeds) | lr=0.1 |") and "(in progress)" in kept
  assert "Planned rows not yet run (2 seeds each): vit_tiny adamw." in kept
  _run(monkeypatch, "--out", str(out), "--merge", "--models", script=cifar_table)  # a merge's seeds: the plan's
  assert "over seeds [0, 1] (in progress)" in out.read_text() and "(in progress: 1 of 2 seeds)" in out.read_text()
  no_plan = tmp_path / "no_plan.md"  # and without a plan, those run
  no_plan.with_suffix(".json").write_text(json.dumps({"commands": [], "runs": {"resnet20/sgd": [run]}}))
  _run(monkeypatch, "--out", str(no_plan), "--merge", "--models", script=cifar_table)
  assert "over seeds [0]\n" in no_plan.read_text() and "in progress" not in no_plan.read_text()
  merged = tmp_path / "merged.md"  # tables run in parallel keep their plans when merged
  _run(monkeypatch, "--out", str(merged), "--merge-from", str(out.with_suffix(".json")), "--models", "--seeds", "0",
       script=cifar_table)
  assert "Planned rows not yet run (2 seeds each): vit_tiny adamw." in merged.read_text()
  _run(monkeypatch, "--out", str(merged), "--merge", "--models", "--seeds", "0", "--planned-seeds", "3",
       script=cifar_table)  # alone, it changes the kept plan's seeds
  assert "Planned rows not yet run (3 seeds each): vit_tiny adamw." in merged.read_text()
  with pytest.raises(ValueError, match="--planned-seeds 0 are not accepted"):
    _run(monkeypatch, "--out", str(merged), "--merge", "--models", "--planned-seeds", "0", script=cifar_table)
  with pytest.raises(ValueError, match="--planned-seeds 3 has no rows"):
    _run(monkeypatch, "--out", str(tmp_path / "new.md"), "--models", "--planned-seeds", "3", script=cifar_table)
  _run(monkeypatch, "--out", str(out), "--merge", "--models", "--seeds", "0", "--planned", "resnet20/sgd",
       "--planned-seeds", "1", script=cifar_table)
  assert "in progress" not in out.read_text()
  with pytest.raises(ValueError, match="--planned \\['resnet20/lamb', 'mlp/sgd'\\]"):
    _run(monkeypatch, "--out", str(out), "--models", "--planned", "resnet20/lamb", "mlp/sgd", "vit_tiny/sgd",
         script=cifar_table)


def test_verdicts_compare_each_bort_row_with_its_baseline():
  """Difference of the means against twice its standard error: sd 1.41 pt per row of 2 seeds gives an error of
  1.41 pt, so +5 pt is 3.5 errors (above) and +1 pt is level; a row of 1 seed is not yet measured. Welch's p at
  2 degrees of freedom is 1 - t / sqrt(2 + t²): 0.07 at t = 5 / √2, 0.55 at t = 1 / √2."""
  runs = lambda *accs: [{"test_accuracy": a} for a in accs]
  results = {("resnet20", "sgd"): runs(0.50, 0.52), ("resnet20", "bort_sgd"): runs(0.55, 0.57),
             ("resnet20", "dbort_sgd"): runs(0.51, 0.53), ("vit_tiny", "adamw"): runs(0.4, 0.42),
             ("vit_tiny", "bort_adamw"): runs(0.3)}
  assert table_report.verdicts(results) == [
      "- resnet20 bort_sgd: above sgd (+5.00 pt, +3.5 standard errors of 1.41 pt, Welch p = 0.07); "
      "seeds: 2 bort_sgd, 2 sgd.",
      "- resnet20 dbort_sgd: level with sgd (+1.00 pt, +0.7 standard errors of 1.41 pt, Welch p = 0.55); "
      "seeds: 2 dbort_sgd, 2 sgd.",
      "- vit_tiny bort_adamw: not yet measured (fewer than 2 seeds); seeds: 1 bort_adamw, 2 adamw."]


def test_budget_counts_the_table_and_the_sweeps_beside_it(tmp_path):
  """Hours = the table's runs + every record of the sweeps of its models beside it (2 h + 1.5 h); over or within
  the budget said with the difference; the plan named only where it exists."""
  table_path = tmp_path / "cifar10_table.md"
  jsonl_records.append_record(tmp_path / "gamma_sweep_cifar10_resnet20.jsonl", {"key": "a", "seconds": 3600.0})
  jsonl_records.append_record(tmp_path / "gamma_sweep_cifar10_resnet20.jsonl", {"key": "b", "seconds": 1800.0})
  results = {("resnet20", "sgd"): [{"seconds": 3600.0}, {"seconds": 3600.0}]}
  recipes = {"resnet20": None, "vit_tiny": None}
  line = table_report.budget_line(str(table_path), "cifar10", results, recipes, 3.0)
  assert line == ("- Budget: 3 CPU-hours planned for this table and its γ sweeps; spent so far 2.0 h of training in "
                  "the table + 1.5 h in `gamma_sweep_cifar10_resnet20.jsonl` = 3.5 h, over the budget by 0.5 h.")
  (tmp_path / "cifar10_plan.md").write_text("plan")
  line = table_report.budget_line(str(table_path), "cifar10", results, recipes, 4.0)
  assert "sweeps (`cifar10_plan.md` beside this file);" in line and line.endswith("= 3.5 h, within the budget.")


def test_only_commands_that_made_a_recorded_seed_are_listed():
  """A command is listed while it covers a recorded (cell, seed) that no command covering more recorded ones
  covers, whatever the order of the list (tables merged from parallel runs come in any order)."""
  commands = ["--dataset mnist --out t.md --models lenet5 --optimizers sgd bort_sgd",
              "--dataset mnist --out t.md --models mlp",
              "--dataset mnist --out t.md --merge-from other.json --models",
              "--dataset mnist --out t.md --models lenet5 --optimizers bort_sgd --bad-option",
              "--dataset mnist --out t.md --merge --models lenet5 --optimizers sgd bort_sgd adamw",
              "--dataset mnist --out t.md --merge --models mlp --optimizers sgd"]
  seeds = [{"seed": s} for s in (0, 1, 2)]
  results = {("mlp", o): seeds for o in table.OPTIMIZERS} | {("lenet5", o): seeds for o in ("sgd", "bort_sgd", "adamw")}
  listed = lambda commands: mnist_table.current_commands(commands, mnist_table._parser(), results)
  assert listed(commands) == [commands[1], commands[3], commands[4], commands[5]]
  assert listed(commands[:3]) == commands[:3]
  one_seed = "--dataset mnist --out t.md --models lenet5 --optimizers sgd --seeds 0"
  both_seeds = "--dataset mnist --out t.md --models lenet5 --optimizers sgd --seeds 0 1"
  merge = "--dataset mnist --out t.md --models"
  assert listed([both_seeds, one_seed, merge]) == listed([one_seed, both_seeds, merge]) == [both_seeds, merge]


def test_merged_tables_join_seed_by_seed_and_a_command_keeps_the_seeds_it_does_not_list(tmp_path, monkeypatch,
                                                                                         capsys):
  """Two parallel tables holding one cell (one with seed 0, one with seeds 0 and 1) merge to seeds 0 and 1 in either
  order; the same seed recorded differently is a ValueError naming it. A command running seed 2 keeps seeds 0 and
  1 of its recipe and drops a seed recorded with other settings, saying so."""
  run = lambda seed, acc=0.5, settings="lr=0.1": {"seed": seed, "test_accuracy": acc, "gap": 0.1, "psnr": 12.0,
                                                  "seconds": 60.0, "epochs": 10, "settings": settings}
  stale, full = tmp_path / "stale.json", tmp_path / "full.json"
  stale.write_text(json.dumps({"commands": ["--out t.md --models resnet20 --optimizers sgd --seeds 0"],
                               "runs": {"resnet20/sgd": [run(0)]}}))
  full.write_text(json.dumps({"commands": ["--out t.md --models resnet20 --optimizers sgd --seeds 0 1"],
                              "runs": {"resnet20/sgd": [run(0), run(1, 0.6)]}}))
  for order in ((full, stale), (stale, full)):
    out = tmp_path / "merged.md"
    _run(monkeypatch, "--out", str(out), "--merge-from", *map(str, order), "--models", script=cifar_table)
    saved = json.loads(out.with_suffix(".json").read_text())
    assert [r["seed"] for r in saved["runs"]["resnet20/sgd"]] == [0, 1]
    assert saved["commands"][0].endswith("--seeds 0 1") and len(saved["commands"]) == 2
  other = tmp_path / "other.json"
  other.write_text(json.dumps({"commands": [], "runs": {"resnet20/sgd": [run(1, 0.7)]}}))
  with pytest.raises(ValueError, match="resnet20/sgd seed 1 is recorded differently"):
    _run(monkeypatch, "--out", str(out), "--merge-from", str(full), str(other), "--models", script=cifar_table)

  settings = table._settings(table.make_config("cifar10", "resnet20", "sgd", 10, table.resolve(
      table._parser("cifar10").parse_args(["--out", "t.md"]))))
  kept = tmp_path / "kept.md"
  kept.with_suffix(".json").write_text(json.dumps({"commands": [], "runs": {
      "resnet20/sgd": [run(0, settings=settings), run(1, settings="lr=0.2")]}}))
  trained = lambda dataset, model, optimizer, epochs, seed, args: run(seed, 0.8, settings)
  monkeypatch.setattr(table, "run_seed", trained)
  _run(monkeypatch, "--out", str(kept), "--merge", "--models", "resnet20", "--optimizers", "sgd", "--seeds", "2",
       script=cifar_table)
  runs = json.loads(kept.with_suffix(".json").read_text())["runs"]["resnet20/sgd"]
  assert [(r["seed"], r["test_accuracy"]) for r in runs] == [(0, 0.5), (2, 0.8)]
  assert "over seeds [0, 2]" in kept.read_text()
  assert "resnet20 sgd: seeds [1] dropped from the table: recorded with other epochs" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_cifar_cell(tmp_path_factory, data_dir):
  """A shrunken ResNet-20 Bort-SGD cell on 256 CIFAR-10 images, by a command cut after seed 0 of seeds 0 and 1:
  (the table's path, the command's arguments but --seeds); its runs are in `runs/` beside the table."""
  if not (data_dir / "cifar10.npz").exists():
    pytest.skip("cifar10.npz not found")
  tmp_path = tmp_path_factory.mktemp("cifar_table")
  out = tmp_path / "cifar.md"
  args = ["--out", str(out), "--models", "resnet20", "--optimizers", "bort_sgd", "--epochs", "1", "--train-limit",
          "256", "--timed-steps", "2", "--workdir", str(tmp_path / "runs"), "--data-dir",
          str(data_dir), "--budget-hours", "16", "--set", "model_kwargs={'stage_sizes': (1, 1), 'widths': (4, 8)}"]
  real = table.run_seed

  def cut_after_seed_0(dataset, model, optimizer, epochs, seed, args):
    if seed == 1:
      raise KeyboardInterrupt
    return real(dataset, model, optimizer, epochs, seed, args)

  with pytest.MonkeyPatch.context() as monkeypatch:
    monkeypatch.setattr(table, "run_seed", cut_after_seed_0)
    with pytest.raises(KeyboardInterrupt):
      _run(monkeypatch, *args, "--seeds", "0", "1", script=cifar_table)
  return out, args


def test_tiny_cifar_cell_measures_psnr_and_overhead_and_resumes(tiny_cifar_cell, monkeypatch, data_dir):
  """A shrunken ResNet-20 on 256 CIFAR-10 images: the record has PSNR and the Bort/baseline step times, the table the
  PSNR of x̂ = 0 (10 log10(1 / mean (x - mean)²) per image, averaged); a cut command leaves an "in progress" table,
  and the rerun reads the finished seed instead of training it."""
  out, args = tiny_cifar_cell
  text = out.read_text()
  centred = np.load(data_dir / "cifar10.npz")["x_test"][:1000] / 255.0 - np.array([0.4914, 0.4822, 0.4465])
  assert f"x̂ = 0 scores {np.mean(-10 * np.log10(np.mean(centred ** 2, axis=(1, 2, 3)))):.2f} dB" in text
  assert "(in progress)" in text and "in progress: 1 of 2 seeds" in text and "JPEG-compressed" in text
  assert "16 CPU-hours" in text
  [run] = json.loads(out.with_suffix(".json").read_text())["runs"]["resnet20/bort_sgd"]
  assert run["epochs"] == 1 and 0 <= run["test_accuracy"] <= 1 and run["gap"] > 0
  assert run["psnr"] > 0 and run["step_seconds"] > 0 and run["baseline_step_seconds"] > 0
  assert "gamma=" in run["settings"] and "×" in _rows(out)[0]

  monkeypatch.setattr(table.train, "train_and_evaluate", lambda *a, **k: pytest.fail("seed 0 was retrained"))
  _run(monkeypatch, *args, "--seeds", "0", script=cifar_table)
  assert "in progress" not in out.read_text()
  assert json.loads(out.with_suffix(".json").read_text())["runs"]["resnet20/bort_sgd"] == [run]


def test_cifar10_explain_draws_every_stage_of_the_finished_cells(tiny_cifar_cell, tmp_path, capsys):
  """benchmarks.cifar10_explain on the tiny cell's runs: the figure and the Markdown, finite PSNRs per stage (the
  last one the table's PSNR), the missing cells named with the command that trains them; no finished run: exit 1."""
  out, _ = tiny_cifar_cell
  runs, figure = out.parent / "runs", tmp_path / "explain.png"
  cifar10_explain.main(["--runs", str(runs), "--out", str(figure)])
  assert figure.stat().st_size > 10_000
  [header, _, row] = [line for line in figure.with_suffix(".md").read_text().splitlines() if line.startswith("|")]
  assert header.split("|")[4:-1] == [" stem ", " stage1 ", " features "]
  psnrs = [float(cell) for cell in row.split("|")[4:-1]]
  assert all(np.isfinite(psnrs)) and min(psnrs) > 0
  [run] = json.loads(out.with_suffix(".json").read_text())["runs"]["resnet20/bort_sgd"]
  assert psnrs[-1] == round(run["psnr"], 2)
  printed = capsys.readouterr().out
  assert f"vit_tiny adamw: no finished run in {runs / 'vit_tiny_adamw_seed0'}" in printed
  assert "--models vit_tiny --optimizers adamw bort_adamw --seeds 0 --workdir" in printed

  with pytest.raises(SystemExit, match="no finished CIFAR-10 table run of seed 1") as stop:
    cifar10_explain.main(["--runs", str(runs), "--out", str(figure), "--seed", "1"])
  assert "python -m benchmarks.cifar_table" in str(stop.value.code)


def test_kernel_spectra_of_the_tiny_cell_against_numpy(tiny_cifar_cell, tmp_path):
  """Every constrained kernel of the tiny ResNet-20 run has a row; the init spectra are NumPy's SVD of the kernels
  of the model rebuilt from the run's config (conv HWIO reshaped to (kh·kw·in, out)); training moved every kernel."""
  out, _ = tiny_cifar_cell
  workdir = out.parent / "runs" / "resnet20_bort_sgd_seed0"
  rows = kernel_spectra.run_rows(workdir)
  config, final = cifar10_explain.restore_final_state(workdir)
  params = cifar10_explain.initial_state(config).params
  kernels = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
             for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0] if path[-1].key == "kernel"}
  assert [r["path"] for r in rows] == sorted(kernels) and len(rows) > 4
  for row in rows:
    kernel = kernels[row["path"]]
    assert np.allclose(row["init"], np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False), atol=1e-5)
    assert row["moved"] > 0 and row["step"] == int(final.step) > 0
  kernel_spectra.main([str(workdir), "--out", str(tmp_path / "spectra.md")])
  assert (tmp_path / "spectra.md").read_text().count("| resnet20_bort_sgd_seed0 (") == len(rows)
  untrained = tmp_path / "untrained"  # a run folder with no checkpoint is an error naming it, not a crash on None
  untrained.mkdir()
  (untrained / "config.json").write_text((workdir / "config.json").read_text())
  with pytest.raises(ValueError, match="untrained has no checkpoint"):
    kernel_spectra.run_rows(untrained)


@pytest.mark.parametrize("override,models,message", [
    ("bort_sdg.gamma=0.1", ["resnet20"], "scope 'bort_sdg' is not accepted; accepted values: resnet20, vit_tiny, sgd"),
    ("vit_tiny.gamma=1", ["resnet20"], "applies to no cell this command runs"),
    ("gamma", ["resnet20"], "'gamma' is not accepted; accepted values: FIELD=VALUE")])
def test_a_set_override_that_reaches_no_cell_is_refused(override, models, message):
  args = table._parser("cifar10").parse_args(["--out", "t.md", "--models", *models, "--set", override])
  with pytest.raises(ValueError, match=message):
    table.resolve(args)
