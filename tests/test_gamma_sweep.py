"""benchmarks/gamma_sweep.py and gamma_sweep_report.py: the held-out validation split, selection on validation
numbers only, and a tiny end-to-end sweep (table, plot, resume) on a real MNIST slice."""

import importlib
import json

import numpy as np
import optax
import pytest

from benchmarks import gamma_sweep as gs
from benchmarks import gamma_sweep_report as report
from benchmarks import jsonl_records
from benchmarks import stage_reconstruction
from examples import data as data_lib
from examples import train
from examples.configs import mnist_mlp


def test_holdout_split_is_stratified_disjoint_and_last_per_class(data_dir):
  _, labels = data_lib.load_arrays("mnist", "train", data_dir)
  labels = labels[:2000]
  train_rows, holdout_rows = data_lib.holdout_split(labels)
  assert np.intersect1d(train_rows, holdout_rows).size == 0
  np.testing.assert_array_equal(np.union1d(train_rows, holdout_rows), np.arange(len(labels)))
  for c in range(10):
    rows = np.flatnonzero(labels == c)
    held = np.intersect1d(rows, holdout_rows)
    assert len(held) == round(0.1 * len(rows))  # stratified: 10% of every class
    np.testing.assert_array_equal(held, rows[len(rows) - len(held):])  # the class's last examples
  # class proportions of the holdout follow the split's within rounding
  np.testing.assert_allclose(np.bincount(labels[holdout_rows], minlength=10) / len(holdout_rows),
                             np.bincount(labels, minlength=10) / len(labels), atol=0.01)


def test_trainer_holdout_split_never_trains_on_validation_rows(data_dir):
  images, labels = data_lib.load_arrays("mnist", "train", data_dir)
  train_rows, holdout_rows = data_lib.holdout_split(labels)
  config = mnist_mlp.get_config("sgd")
  config.update(dict(eval_split="holdout", train_limit=300))
  (x_train, y_train), (x_val, y_val) = map(data_lib.as_arrays, train.load_splits(config, data_dir))
  used = train_rows[:300]
  assert np.intersect1d(used, holdout_rows).size == 0
  np.testing.assert_array_equal(x_train, images[used])
  np.testing.assert_array_equal(y_train, labels[used])
  np.testing.assert_array_equal(x_val, images[holdout_rows])
  np.testing.assert_array_equal(y_val, labels[holdout_rows])
  # the default split is unchanged: first N training rows, the test split for evaluation
  config.eval_split = "test"
  train_records, test_records = train.load_splits(config, data_dir)
  np.testing.assert_array_equal(data_lib.as_arrays(train_records)[0], images[:300])
  assert len(test_records) == len(data_lib.load_arrays("mnist", "test", data_dir)[1])


class _ValidationOnly(dict):
  """A record that fails the test if anything reads one of its test-split numbers."""

  def __getitem__(self, key):
    assert not key.startswith("test_"), f"selection read {key}"
    return super().__getitem__(key)

  def get(self, key, default=None):
    assert not key.startswith("test_"), f"selection read {key}"
    return super().get(key, default)


def _record(stage, optimizer, lr, wd, val_acc, test_acc, val_psnr=10.0, test_psnr=10.0, gamma=0.0,
            alpha="", mode="", gap=0.1):
  setting = gs.Setting(stage=stage, dataset="mnist", model="mlp", optimizer=optimizer, learning_rate=lr,
                       weight_decay=wd, gamma=gamma, alpha=alpha, mode=mode)
  return _ValidationOnly(vars(setting) | {
      "key": setting.key, "val_accuracy": val_acc, "val_count": 10000, "val_psnr": val_psnr,
      "val_psnr_fitted": val_psnr, "test_accuracy": test_acc, "test_psnr": test_psnr, "gap": gap})


def test_psnrs_within_the_resolution_tie_and_the_smallest_gap_wins():
  """ResNet-20's last-stage PSNR did not tell γ apart (cifar10_plan.md, "Amendment"): ties go to the gap."""
  records = [_record("baselines", "sgd", 0.1, 1e-4, val_acc=0.58, test_acc=0.0),
             _record("bort", "bort_sgd", 0.1, 1e-4, 0.60, 0.0, val_psnr=12.8750, gamma=3e-3, gap=0.0024),
             _record("bort", "bort_sgd", 0.1, 1e-4, 0.59, 0.0, val_psnr=12.8745, gamma=3e-2, gap=0.0005),
             _record("bort", "bort_sgd", 0.1, 1e-4, 0.58, 0.0, val_psnr=12.70, gamma=1e-1, gap=0.0001),
             _record("bort", "bort_sgd", 0.1, 1e-4, 0.50, 0.0, val_psnr=12.88, gamma=1.0, gap=0.0)]  # not held
  assert report.select(records, "sgd", "psnr")["bort_max_psnr"]["gamma"] == 3e-3
  assert report.select(records, "sgd", "psnr", psnr_resolution=0.1)["bort_max_psnr"]["gamma"] == 3e-2
  with pytest.raises(ValueError, match="psnr_resolution"):
    report.select(records, "sgd", "psnr", psnr_resolution=-0.1)
  sweep = gs.sweep_from_args(gs.parse_args(["--dataset", "cifar10", "--model", "resnet20"]), "")
  assert sweep.psnr_resolution == gs.CIFAR_PSNR_RESOLUTION
  assert gs.sweep_from_args(gs.parse_args(["--dataset", "mnist", "--model", "mlp"]), "").psnr_resolution == 0.0


def test_selection_follows_validation_where_test_disagrees():
  records = [
      # baselines: validation prefers lr=0.05, test would prefer lr=0.1
      _record("baselines", "sgd", 0.1, 5e-4, val_acc=0.970, test_acc=0.990),
      _record("baselines", "sgd", 0.05, 5e-4, val_acc=0.980, test_acc=0.960),
      # Bort at the validation-best lr: validation prefers gamma=1e-3, test prefers gamma=1e-2
      _record("bort", "bort_sgd", 0.05, 5e-4, 0.982, 0.950, val_psnr=12.0, test_psnr=30.0, gamma=1e-3,
              alpha="1", mode="l2-full"),
      _record("bort", "bort_sgd", 0.05, 5e-4, 0.9785, 0.999, val_psnr=15.0, test_psnr=11.0, gamma=1e-2,
              alpha="1", mode="l2-full"),
      # highest validation PSNR but accuracy below baseline - tolerance: never "held"
      _record("bort", "bort_sgd", 0.05, 5e-4, 0.950, 0.999, val_psnr=25.0, test_psnr=40.0, gamma=1.0,
              alpha="1", mode="l2-full"),
      # at the test-best baseline's lr: must be ignored (Bort runs at the validation-selected lr/wd)
      _record("bort", "bort_sgd", 0.1, 5e-4, 0.999, 0.999, val_psnr=50.0, test_psnr=50.0, gamma=1e-3,
              alpha="1", mode="l2-full"),
  ]
  chosen = report.select(records, "sgd", "psnr", tolerance=0.002)
  assert chosen["baseline"]["learning_rate"] == 0.05
  assert chosen["bort_best_accuracy"]["gamma"] == 1e-3
  assert chosen["bort_max_psnr"]["gamma"] == 1e-2  # 0.9785 >= 0.980 - 0.002, PSNR 15 > 12
  # the default tolerance is one binomial standard error of the baseline (0.0014 here): gamma=1e-2 drops out
  assert report.select(records, "sgd", "psnr")["bort_max_psnr"]["gamma"] == 1e-3
  # the final stage re-runs exactly the validation-selected settings, on the test split
  sweep = gs.Sweep(dataset="mnist", cli_model="mlp", epochs=1, families=("sgd",), seeds=(0, 1),
                   grid={"sgd": {"learning_rate": (0.1, 0.05), "weight_decay": (5e-4,)}}, tolerance=0.002)
  finals = sweep.final_settings(records)
  assert {(s.optimizer, s.learning_rate, s.gamma, s.seed, s.split) for s in finals} == {
      (o, 0.05, g, seed, "test") for o, g in (("sgd", 0.0), ("bort_sgd", 1e-3), ("bort_sgd", 1e-2))
      for seed in (0, 1)}


def test_records_merge_and_survive_a_cut_line(tmp_path):
  a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
  jsonl_records.append_record(a, {"key": "x", "v": 1})
  jsonl_records.append_record(b, {"key": "x", "v": 2})
  jsonl_records.append_record(b, {"key": "y", "v": 3})
  with open(a, "a") as f:
    f.write('{"key": "z", "v"')  # a line cut short by a kill
  assert [r["key"] for r in jsonl_records.read_records(a)] == ["x"]
  assert jsonl_records.merge_records(a, [b]) == 1
  assert {r["key"]: r["v"] for r in jsonl_records.read_records(a)} == {"x": 1, "y": 3}


def test_tiny_sweep_writes_table_and_plot_and_resumes(data_dir, tmp_path, monkeypatch):
  calls = []
  real = train.train_and_evaluate

  def counting(config, workdir, **kwargs):
    calls.append((config.optimizer, config.gamma, config.eval_split, config.seed))
    return real(config, workdir, **kwargs)

  monkeypatch.setattr(gs.train, "train_and_evaluate", counting)
  argv = ["--dataset", "mnist", "--model", "mlp", "--epochs", "1", "--train-limit", "256", "--families", "sgd",
          "--sgd-lrs", "0.05", "--sgd-wds", "5e-4", "--sgd-gammas", "1e-3", "1e-1", "--alphas", "adaptive",
          "--modes", "l2-full", "--seeds", "0", "1", "--out", str(tmp_path), "--workdir", str(tmp_path / "runs"),
          "--data-dir", str(data_dir)]
  gs.main(argv)
  sweep_calls = [c for c in calls if c[2] == "holdout"]
  final_calls = [c for c in calls if c[2] == "test"]
  assert len(sweep_calls) == 3  # 1 baseline + 2 gammas, on the validation split
  assert final_calls and len(final_calls) % 2 == 0  # each selected setting with 2 seeds, on the test split
  lines = (tmp_path / "gamma_sweep_mnist_mlp.jsonl").read_text().splitlines()
  assert len(lines) == len(calls)
  records = [json.loads(line) for line in lines]
  assert all("test_accuracy" not in r for r in records if r["stage"] != "final")
  assert all(r["seconds"] > 0 for r in records)  # the trainer's epoch seconds
  assert not any((tmp_path / "runs").rglob("metrics.jsonl"))  # run folders go once their record is written
  assert all(np.isfinite(r["gap"]) and np.isfinite(r.get("val_psnr", r.get("test_psnr"))) for r in records)
  md = (tmp_path / "gamma_sweep_mnist_mlp.md").read_text()
  assert "## Selected settings (train → test)" in md and "tuned baseline" in md
  assert "python -m benchmarks.gamma_sweep --dataset mnist --model mlp --epochs 1" in md
  assert (tmp_path / "gamma_sweep_mnist_mlp.png").stat().st_size > 1000

  calls.clear()
  gs.main(argv)  # everything finished: nothing is retrained
  assert calls == []
  # a setting whose record was lost (killed before it was written) is the only one run again
  (tmp_path / "gamma_sweep_mnist_mlp.jsonl").write_text("\n".join(lines[:-1]) + "\n")
  gs.main(argv)
  assert len(calls) == 1
  calls.clear()
  gs.main(argv[:4] + ["--stage", "report"] + argv[4:])
  assert calls == []


@pytest.mark.parametrize("model,family,module", [("resnet20", "sgd", "cifar10_resnet20"),
                                                 ("vit_tiny", "adamw", "cifar10_vit_tiny")])
def test_cifar_sweeps_take_the_standard_baseline_and_four_gammas_around_the_config(model, family, module):
  """CIFAR families: the config's standard baseline recipe (one point, on the holdout split), 4 γ values that
  bracket the config's predicted γ, the MNIST sweeps' mode and α; a CIFAR model needs --dataset cifar10."""
  recipes = importlib.import_module(f"examples.configs.{module}").RECIPES
  sweep = gs.sweep_from_args(gs.parse_args(["--dataset", "cifar10", "--model", model]), "")
  assert sweep.families == (family,) and sweep.epochs == gs.EPOCHS[model]
  [baseline] = sweep.baseline_settings()
  assert (baseline.learning_rate, baseline.weight_decay, baseline.split) == (
      recipes[family]["learning_rate"], recipes[family]["weight_decay"], "holdout")
  gammas = sweep.gammas[family]
  assert len(gammas) == 4 and min(gammas) < recipes[f"bort_{family}"]["gamma"] < max(gammas)
  assert (sweep.alphas, sweep.modes) == (("1",), ("l1-full",))
  config = gs.make_config(baseline, model)
  assert (config.dataset, config.model, config.eval_split, config.augment) == ("cifar10", model, "holdout", "cifar")
  with pytest.raises(SystemExit, match="not accepted with --dataset mnist"):
    gs.sweep_from_args(gs.parse_args(["--dataset", "mnist", "--model", model]), "")


def test_cifar_sweeps_have_no_test_split_stage(monkeypatch, tmp_path):
  """A CIFAR model's `all` runs the validation stages and the report only; `final` is refused, naming the table."""
  ran = []
  monkeypatch.setattr(gs.Sweep, "run_all", lambda self, settings: ran.append([s.stage for s in settings]))
  monkeypatch.setattr(gs.Sweep, "bort_settings", lambda self, records: [])
  monkeypatch.setattr(gs.report, "write_report", lambda sweep: None)
  argv = ["--dataset", "cifar10", "--model", "resnet20", "--out", str(tmp_path), "--workdir", str(tmp_path)]
  gs.main(argv)
  assert ran == [["baselines"], []]  # baselines and bort (stubbed empty), no final
  with pytest.raises(SystemExit, match="--stage final is not accepted for --model resnet20.*cifar_table"):
    gs.main(argv + ["--stage", "final"])


@pytest.mark.parametrize("model,kwargs,stages", [
    ("resnet20", {"stage_sizes": (1, 1), "widths": (4, 8)}, ["stem", "stage1", "features"]),
    ("vit_tiny", {"dim": 12, "depth": 1}, ["embedding", "features"])])
def test_reconstruction_psnr_of_every_feature_stage_of_cifar_models(model, kwargs, stages):
  """Finite PSNR from every stage of a tiny ResNet / ViT on real-shaped RGB images, in [0, 1] pixel space, the last
  being `features` (the stage the sweep and the table score)."""
  config = gs.make_config(gs.Sweep("cifar10", model, epochs=1).setting("baselines", "sgd", 0.1, 1e-4), model)
  config.model_kwargs = kwargs
  state, _ = train.create_train_state(train.create_model(config, 10), optax.sgd(0.1))
  images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  metrics = stage_reconstruction.reconstruction_metrics(config, state, images)
  assert list(metrics) == stages
  assert all(np.isfinite(m["psnr_fitted"]) and m["psnr_fitted"] > 0 for m in metrics.values())


@pytest.mark.parametrize("normalize", [True, False])
def test_reconstruction_sees_the_inputs_of_training(normalize):
  """The reconstruction feeds the model the inputs it was trained on: normalized by the dataset's statistics, or
  x / 255 (std 1) with `normalize=False`."""
  config = gs.make_config(gs.Sweep("cifar10", "resnet20", epochs=1).setting("baselines", "sgd", 0.1, 1e-4), "resnet20")
  config.model_kwargs, config.normalize = {"stage_sizes": (1,), "widths": (4,)}, normalize
  state, _ = train.create_train_state(train.create_model(config, 10), optax.sgd(0.1))
  std = stage_reconstruction.feature_reconstruction(config, state)[3]
  np.testing.assert_allclose(std, train.input_normalization(config).std if normalize else np.ones(3), rtol=1e-6)
