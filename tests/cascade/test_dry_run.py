"""`cascade-kd run RECIPE --dry-run` / `ckd.dry_run`: the checks a run makes before training, and
its plan, with nothing written. The plan's parameter counts are those the finished run reports."""

from __future__ import annotations

import json

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
