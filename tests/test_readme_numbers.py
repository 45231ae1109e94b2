"""The README's generated blocks match the committed result files (`benchmarks/readme_numbers.py`)."""

from benchmarks import readme_numbers


def test_readme_numbers_match_the_result_files(capsys):
  code = readme_numbers.main(["--check"])
  assert code == 0, "README.md differs from benchmarks/results; run python -m benchmarks.readme_numbers:\n" + (
      capsys.readouterr().out)


def test_check_fails_on_a_hand_edited_number_and_the_rewrite_restores_it(tmp_path, capsys):
  readme = tmp_path / "README.md"
  original = readme_numbers.README.read_text()
  cell = "| MNIST MLP, SGD | 98.51 ± 0.03 % |"
  assert cell in original
  readme.write_text(original.replace(cell, "| MNIST MLP, SGD | 98.61 ± 0.03 % |"))
  assert readme_numbers.main(["--check", "--readme", str(readme)]) == 1
  assert "-| MNIST MLP, SGD | 98.61" in capsys.readouterr().out
  assert readme_numbers.main(["--readme", str(readme)]) == 0
  assert readme.read_text() == original


def test_gamma_is_written_as_in_the_prose():
  assert [readme_numbers.gamma(g) for g in (3e-4, 1e-3, 0.003, 0.03, 0.5, 1.5, 50.0)] == [
      "3e-4", "1e-3", "3e-3", "0.03", "0.5", "1.5", "50"]
  assert readme_numbers.span([0.5, 1.5, 0.5]) == "0.5–1.5"
  assert readme_numbers.number(-2.16, 1) == "−2.2"
