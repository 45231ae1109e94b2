"""The generated blocks of README.md and docs/gamma.md match the committed result files
(`benchmarks/readme_numbers.py`)."""

import pytest

from benchmarks import readme_numbers


def test_generated_blocks_match_the_result_files(capsys):
  code = readme_numbers.main(["--check"])
  assert code == 0, "a file differs from benchmarks/results; run python -m benchmarks.readme_numbers:\n" + (
      capsys.readouterr().out)


def test_every_block_is_rendered_in_some_file():
  names = {m["name"] for path in readme_numbers.FILES for m in readme_numbers.BLOCK.finditer(path.read_text())}
  assert names == set(readme_numbers.BLOCKS)


@pytest.mark.parametrize("name, number, edited", [
    ("README.md", "| MNIST MLP, SGD | 98.51 ± 0.03 % |", "| MNIST MLP, SGD | 98.61 ± 0.03 % |"),
    ("gamma.md", "0.25 pt above on Fashion MLP", "0.35 pt above on Fashion MLP"),
])
def test_check_fails_on_a_hand_edited_number_and_the_rewrite_restores_it(tmp_path, capsys, name, number, edited):
  [source] = [path for path in readme_numbers.FILES if path.name == name]
  copy = tmp_path / name
  original = source.read_text()
  assert original.count(number) == 1
  copy.write_text(original.replace(number, edited))
  assert readme_numbers.main(["--check", str(copy)]) == 1
  diff = capsys.readouterr().out.splitlines()
  assert any(line.startswith("-") and edited in line for line in diff)
  assert any(line.startswith("+") and number in line for line in diff)
  assert readme_numbers.main([str(copy)]) == 0
  assert copy.read_text() == original


def test_a_file_without_generated_blocks_is_an_error(tmp_path):
  path = tmp_path / "notes.md"
  path.write_text("# no blocks\n")
  with pytest.raises(ValueError, match="no generated block"):
    readme_numbers.main(["--check", str(path)])


def test_gamma_is_written_as_in_the_prose():
  assert [readme_numbers.gamma(g) for g in (3e-4, 1e-3, 0.003, 0.03, 0.5, 1.5, 50.0)] == [
      "3e-4", "1e-3", "3e-3", "0.03", "0.5", "1.5", "50"]
  assert readme_numbers.span([0.5, 1.5, 0.5]) == "0.5–1.5"
  assert readme_numbers.number(-2.16, 1) == "−2.2"
