"""cascade_kd.data.task: how the per-language caps choose examples (`data.cap`), and the warning a
cap on the first rows of a label-sorted file gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade_kd.data.task import load_task_data
from cascade_kd.config.schema import load_recipe
from tests.helpers import line_of, tiny_recipe, write_recipe

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

def _recipe(max_eval: int, **data) -> dict:
    """A sequence task on one language (`data` changes the data section), its files beside the
    recipe; only the data are read (the teacher, training and cascade are the tiny recipe's)."""
    return tiny_recipe(task={"type": "sequence", "max_length": None},
                       data={"languages": ["xx"], "format": "tsv", "train": "train.tsv", "dev": "dev.tsv",
                             "test": "test.tsv", "max_train_per_language": None, "max_eval_per_language": max_eval, **data})


def _write(tmp_path: Path, max_eval: int, **data) -> Path:
    # test.tsv is sorted by label, like SIB-200's: 20 A rows, then 20 B, then 20 C
    rows = [f"text {label} {i}\t{label}" for label in "ABC" for i in range(20)]
    (tmp_path / "test.tsv").write_text("\n".join(rows) + "\n")
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / name).write_text("".join(f"t{i}\t{'ABC'[i % 3]}\n" for i in range(30)))
    return write_recipe(tmp_path, _recipe(max_eval, **data), "r.yaml")


def test_cap_first_keeps_the_first_rows_and_warns_about_the_classes_it_leaves_out(tmp_path):
    path = _write(tmp_path, 25)
    data = load_task_data(load_recipe(path))
    test = data.splits["test"]["xx"]
    assert [e.text for e in test] == [f"text A {i}" for i in range(20)] + [f"text B {i}" for i in range(5)]
    assert len(data.warnings) == 1
    warning = data.warnings[0]
    line = line_of(path, "max_eval_per_language")
    assert f"r.yaml:{line}: data.max_eval_per_language" in warning and "'C'" in warning and "data.cap: sample" in warning
    assert "'A'" not in warning and "'B'" not in warning


def test_cap_sample_draws_a_fixed_sample_in_file_order_with_every_class(tmp_path):
    path = _write(tmp_path, 25, cap="sample")
    a, b = load_task_data(load_recipe(path)), load_task_data(load_recipe(path))
    test = a.splits["test"]["xx"]
    assert len(test) == 25 and not a.warnings
    assert {e.label for e in test} == {"A", "B", "C"}
    lines = [int(e.source.rpartition(":")[2]) for e in test]
    assert lines == sorted(lines)  # file order kept
    assert [e.source for e in test] == [e.source for e in b.splits["test"]["xx"]]  # the same on every run
    assert len(a.splits["dev"]["xx"]) == 25  # dev (30 rows, unsorted) is capped too, without a warning


def test_a_class_with_one_row_at_the_end_is_still_named(tmp_path):
    path = _write(tmp_path, 25)
    rows = [f"text {label} {i}\t{label}" for label in "AB" for i in range(200)] + ["text C last\tC"]
    (tmp_path / "test.tsv").write_text("\n".join(rows) + "\n")
    (warning,) = load_task_data(load_recipe(path)).warnings
    assert "'C'" in warning  # the whole file is read for the check, not a sample of it


def test_a_cap_that_keeps_every_class_gives_no_warning(tmp_path):
    data = load_task_data(load_recipe(_write(tmp_path, 45)))
    assert len(data.splits["test"]["xx"]) == 45 and not data.warnings


def test_sib200_test_file_is_sorted_by_category_and_cap_sample_keeps_its_classes(tmp_path):
    root = SHARED_DATA / "sib200"
    if not (root / "eng_Latn" / "test.tsv").is_file():
        pytest.skip(f"real-data test: {root} not found (shared data lives in ../shared/data next to the project)")
    sib200 = {"languages": ["eng_Latn"], "header": True, "quoting": "csv", "text_column": "text",
              "label_column": "category", "train": f"{root}/{{lang}}/train.tsv", "dev": f"{root}/{{lang}}/dev.tsv",
              "test": f"{root}/{{lang}}/test.tsv"}
    classes = {}
    for cap in ("first", "sample"):
        path = write_recipe(tmp_path, _recipe(100, **sib200, cap=cap), f"{cap}.yaml")
        data = load_task_data(load_recipe(path))
        classes[cap] = {e.label for e in data.splits["test"]["eng_Latn"]}
        assert bool(data.warnings) == (cap == "first")
    assert len(classes["first"]) <= 3  # the first 100 of 204 rows hold only a few of the 7 categories
    assert len(classes["sample"]) == 7
