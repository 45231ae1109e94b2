"""benchmarks/mnist_table.py: a tiny cell through the example trainer, and merging of committed tables."""

import json
import pathlib
import sys

from benchmarks import mnist_table

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(monkeypatch, *args):
  monkeypatch.setattr(sys, "argv", ["mnist_table", *args])
  mnist_table.main()


def _rows(path) -> list[str]:
  return [line for line in pathlib.Path(path).read_text().splitlines() if line.startswith("| ")][1:]


def test_tiny_cell_trains_with_the_example_trainer(tmp_path, monkeypatch):
  out = tmp_path / "table.md"
  _run(monkeypatch, "--dataset", "mnist_small", "--out", str(out), "--models", "mlp", "--optimizers", "sgd",
       "--seeds", "0", "--mlp-epochs", "1", "--train-limit", "256", "--batch-size", "64",
       "--set", "learning_rate=0.1")
  [row] = _rows(out)
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[:3] == ["mlp", "sgd", "1"]
  assert cells[6] == "learning_rate=0.1, weight_decay=0.0005, momentum=0.9"
  [run] = json.loads(out.with_suffix(".json").read_text())["runs"]["mlp/sgd"]
  assert set(run) == {"seed", "test_accuracy", "gap", "seconds", "epochs", "settings"}
  assert run["test_accuracy"] > 0.2 and run["gap"] > 0  # chance: 0.1
  assert cells[3] == f"{100 * run['test_accuracy']:.2f} ± 0.00"


def test_committed_tables_merge_unchanged(tmp_path, monkeypatch):
  for name in ("mnist", "fashion_mnist"):
    committed = REPO / "benchmarks" / "results" / f"{name}_table.md"
    out = tmp_path / f"{name}.md"
    _run(monkeypatch, "--dataset", name, "--out", str(out), "--merge-from",
         str(committed.with_suffix(".json")), "--models")
    assert _rows(out) == _rows(committed)


def test_first_format_runs_take_the_configs_epochs(tmp_path, monkeypatch):
  """Runs saved without "epochs" were made with the default epochs: the configs' num_epochs."""
  run = {"seed": 0, "test_accuracy": 0.9, "gap": 0.1, "seconds": 1.0, "settings": "learning_rate=0.05"}
  old = tmp_path / "old.json"
  old.write_text(json.dumps({"mlp/sgd": [run], "lenet5/sgd": [run]}))
  out = tmp_path / "table.md"
  _run(monkeypatch, "--dataset", "mnist", "--out", str(out), "--merge-from", str(old), "--models")
  epochs = [[c.strip() for c in row.split("|")[1:4]] for row in _rows(out)]
  assert epochs == [["mlp", "sgd", "15"], ["lenet5", "sgd", "10"]]


def test_only_commands_that_still_own_a_cell_are_listed():
  commands = ["--dataset mnist --out t.md --models lenet5 --optimizers sgd bort_sgd",
              "--dataset mnist --out t.md --models mlp",
              "--dataset mnist --out t.md --merge-from other.json --models",
              "--dataset mnist --out t.md --models lenet5 --optimizers bort_sgd --bad-option",
              "--dataset mnist --out t.md --merge --models lenet5 --optimizers sgd bort_sgd adamw",
              "--dataset mnist --out t.md --merge --models mlp --optimizers sgd"]
  assert mnist_table.current_commands(commands, mnist_table._parser()) == [commands[1], commands[3], commands[4],
                                                                           commands[5]]
  assert mnist_table.current_commands(commands[:3], mnist_table._parser()) == commands[:3]
