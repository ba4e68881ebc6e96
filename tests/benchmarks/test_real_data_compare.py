"""benchmarks/real_data.py compares its runs with the product's comparison (compare_runs): the
pairs it reports are the per-seed differences of the named models, from the runs' metrics.json."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

from tests.evaluation.test_compare import fake_run

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def real_data(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import real_data

    yield real_data
    sys.modules.pop("real_data", None)


def test_the_benchmark_pairs_come_from_compare_runs(real_data, tmp_path, monkeypatch):
    out = tmp_path / "panx"
    seeds = (0, 1, 2)
    for seed in seeds:  # the layout real_data writes: OUT/<task>/seed<S>/<run>/
        for name, stage in (("cascade", "s2"), ("direct-2L", "d2")):
            run = fake_run(out / f"seed{seed}", seed, name=name)
            metrics = json.loads((run / "metrics.json").read_text())
            metrics["models"][1]["name"] = stage  # the row's model name in that run
            (run / "metrics.json").write_text(json.dumps(metrics))
            run.rename(out / f"seed{seed}" / name)
    runs = [real_data.Run(name, seed, {}, False, "") for seed in seeds for name in ("cascade", "direct-2L")]
    monkeypatch.setattr(real_data, "task_plan", lambda *a: (runs, None, None))
    rows = [real_data.Row("cascade-2L", "", "cascade", "s2", "", "cascade"),
            real_data.Row("direct-2L", "", "direct-2L", "d2", "", "direct")]
    compared = real_data.compare_task("panx", out, real_data.Sizes(None, None, None, 1, 1), tmp_path,
                                      rows, [("2 layers", "cascade-2L", "direct-2L")])
    (pair,) = compared["pairs"]
    averages = {(seed, name): next(m["average"] for m in json.loads((out / f"seed{seed}" / name / "metrics.json")
                                                                     .read_text())["models"] if m["name"] == model)
                for seed in seeds for name, model in (("cascade", "s2"), ("direct-2L", "d2"))}
    diffs = [100 * (averages[(s, "cascade")] - averages[(s, "direct-2L")]) for s in seeds]
    assert list(pair["average"]["per_seed"].values()) == pytest.approx(diffs)
    assert pair["average"]["sd"] == pytest.approx(statistics.stdev(diffs))
    assert (out / "comparison" / "report.html").is_file()
