"""`cascade-kd run RECIPE --dry-run` / `ckd.dry_run`: the checks a run makes before training, and
its plan, with nothing written. The plan's parameter counts are those the finished run reports."""

from __future__ import annotations

import json

import pytest

from cascade_kd.cli.app import main
from tests.helpers import snapshot


def test_the_plan_matches_the_run_it_describes_and_nothing_is_written(cascade_run, capsys):
    import cascade_kd as ckd

    metrics = json.loads((cascade_run / "metrics.json").read_text())
    before = snapshot(cascade_run.parent)
    rows = ckd.dry_run(cascade_run / "recipe.yaml", say=lambda m: None)  # the recipe as run
    assert [r["name"] for r in rows] == [m["name"] for m in metrics["models"]]
    for row, model in zip(rows, metrics["models"]):
        assert (row["params_total"], row["params_embedding"]) == (model["params_total"], model["params_embedding"])
        assert row["role"] == model["role"] and row["layers"] == model["layers"]
    assert [r["learns_from"] for r in rows[1:]] == ["teacher", "ta2", "teacher"]  # ta2, student, direct
    assert snapshot(cascade_run.parent) == before  # not a file added, changed or removed
    assert main(["run", str(cascade_run / "recipe.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "| student | student | ta2 | transformer |" in out and "nothing was written" in out


def test_a_dry_run_refuses_what_a_run_refuses_and_run_needs_out(cascade_run, tmp_path, capsys):
    recipe = (cascade_run / "recipe.yaml").read_text().replace("layers: 1", "layers: 9", 1)
    (tmp_path / "deep.yaml").write_text(recipe)
    assert main(["run", str(tmp_path / "deep.yaml"), "--dry-run"]) == 2
    assert "more than its teacher's" in capsys.readouterr().err
    assert main(["run", str(cascade_run / "recipe.yaml")]) == 2
    assert "run needs --out RUN_DIR" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "deep.yaml"]


def _with_teacher(cascade_run, teacher, **teacher_keys):
    import cascade_kd as ckd

    data = ckd.Recipe.from_yaml(cascade_run / "recipe.yaml").dump()
    data["teacher"] = {"model": str(teacher), **teacher_keys}
    return ckd.Recipe.from_dict(data)


def test_a_saved_teacher_is_planned_as_the_run_uses_it(cascade_run, tmp_path):
    """Its head kept when it fits the labels (no training); else counted and trained with a head
    for the data's labels, as the run loads it; `finetune: never` without such a head is refused."""
    import shutil

    import cascade_kd as ckd

    metrics = {m["name"]: m for m in json.loads((cascade_run / "metrics.json").read_text())["models"]}
    teacher = tmp_path / "teacher"
    shutil.copytree(cascade_run / "teacher", teacher)
    rows = ckd.dry_run(_with_teacher(cascade_run, teacher), say=lambda m: None)
    assert rows[0]["epochs"] is None and "as it is" in rows[0]["learns_from"]  # its head fits: not trained
    config = json.loads((teacher / "config.json").read_text())
    labels = [*config["id2label"].values(), "B-X", "I-X"]  # a head for two more labels than the data's
    config.update(id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
    (teacher / "config.json").write_text(json.dumps(config))
    rows = ckd.dry_run(_with_teacher(cascade_run, teacher), say=lambda m: None)
    assert rows[0]["epochs"] is not None and rows[0]["learns_from"].endswith("fine-tuned")
    for row in rows:  # the data's labels, not the checkpoint's: the counts of the run
        assert row["params_total"] == metrics[row["name"]]["params_total"], row["name"]
    with pytest.raises(ckd.RecipeError, match="finetune: never uses the teacher as it is, but .* has no "
                                              "token-classification head for the data's"):
        ckd.dry_run(_with_teacher(cascade_run, teacher, finetune="never"), say=lambda m: None)


def test_a_dry_run_with_out_checks_run_dir_as_the_run_would(cascade_run, capsys):
    recipe = str(cascade_run / "recipe.yaml")
    assert main(["run", recipe, "--dry-run", "--out", str(cascade_run)]) == 2  # a finished run: not empty
    assert "--resume" in capsys.readouterr().err
    assert main(["run", recipe, "--dry-run", "--out", str(cascade_run), "--resume"]) == 0
    assert "Run it with --out " + str(cascade_run) + " --resume." in capsys.readouterr().out
    assert main(["run", recipe, "--dry-run", "--seeds", "0", "1"]) == 2
    assert "leave --seeds out" in capsys.readouterr().err
