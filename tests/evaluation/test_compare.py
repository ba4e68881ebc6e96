"""Comparisons of finished runs (evaluation/compare.py, `cascade-kd compare`, `cascade-kd report`):
seeds of one recipe become one variant with mean ± sd, pairs are matched by seed and count wins;
bad input is one line and exit code 2. Runs are written by hand here (metrics.json, manifest.json):
what is compared is the arithmetic, not training."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest

from cascade_kd.errors import UserError
from cascade_kd.evaluation.compare import compare_runs

LANGS = ["en", "de", "ar"]


def fake_run(root: Path, seed: int, *, lr: float = 1e-3, languages=LANGS, metric="f1", name="demo", rng=None) -> Path:
    """A finished run's files with random scores: teacher, student, direct."""
    rng = rng or random.Random(f"{seed}-{lr}")
    run = root / f"{name}-lr{lr}-seed{seed}"
    teacher = {lang: 0.8 + 0.1 * rng.random() for lang in languages}
    rows = []
    for model, role in (("teacher", "teacher"), ("student", "student"), ("direct", "direct")):
        scores = teacher if role == "teacher" else {lang: teacher[lang] - 0.2 * rng.random() for lang in languages}
        rows.append({"name": model, "role": role, "path": "teacher" if role == "teacher" else f"stages/{model}",
                     "per_language": scores, "average": sum(scores.values()) / len(scores),
                     "retention_per_language": {l: scores[l] / teacher[l] for l in languages},
                     "params_total": 1000 if role == "teacher" else 400, "params_embedding": 100})
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"name": name, "task": "token", "metric": metric, "split": "test",
                                                  "languages": languages, "models": rows}))
    recipe = {"name": name, "seed": seed, "train": {"lr": lr}, "cascade": {"stages": [{"name": "student"}]}}
    (run / "manifest.json").write_text(json.dumps({"seed": seed, "recipe": recipe, "recipe_fingerprint": "x"}))
    return run


def test_seeds_of_one_recipe_are_one_variant_with_mean_sd_and_seed_matched_wins(tmp_path):
    runs = [fake_run(tmp_path, s) for s in (0, 1, 2)]
    agg = compare_runs(runs, tmp_path / "out")
    assert len(agg["variants"]) == 1 and agg["variants"][0]["seeds"] == [0, 1, 2]
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    student = next(m for m in agg["variants"][0]["models"] if m["name"] == "student")
    for lang in LANGS:
        values = [next(r for r in m["models"] if r["name"] == "student")["per_language"][lang] for m in metrics]
        assert student["per_language"][lang]["mean"] == pytest.approx(statistics.fmean(values))
        assert student["per_language"][lang]["sd"] == pytest.approx(statistics.stdev(values))
    (pair,) = agg["pairs"]
    diffs = [100 * (next(r for r in m["models"] if r["role"] == "student")["average"]
                    - next(r for r in m["models"] if r["role"] == "direct")["average"]) for m in metrics]
    assert list(pair["average"]["per_seed"].values()) == pytest.approx(diffs)
    assert pair["average"]["mean"] == pytest.approx(statistics.fmean(diffs))
    assert pair["average"]["a_wins"] == sum(d > 0 for d in diffs) and pair["average"]["b_wins"] == sum(d < 0 for d in diffs)
    written = json.loads((tmp_path / "out" / "aggregate.json").read_text())
    assert written["pairs"][0]["average"]["per_seed"] == pytest.approx(pair["average"]["per_seed"])
    assert "± " in (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "report.html").read_text().count("data:image/svg+xml;base64,") >= 3


def test_zero_shot_runs_get_the_difference_over_seen_and_over_zero_shot_languages(tmp_path):
    """Runs trained on en only (metrics.json's train_languages): each pair also averages each seed's
    per-language differences over the seen and over the zero-shot languages, computed by hand here."""
    runs = [fake_run(tmp_path, s) for s in (0, 1, 2)]
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        (run / "metrics.json").write_text(json.dumps({**metrics, "train_languages": ["en"]}))
    agg = compare_runs(runs, tmp_path / "out")
    assert agg["seen_languages"] == ["en"] and agg["zero_shot_languages"] == ["de", "ar"]
    (pair,) = agg["pairs"]
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]

    def diff(m, lang):
        rows = {r["role"]: r["per_language"][lang] for r in m["models"]}
        return 100 * (rows["student"] - rows["direct"])

    zero = [(diff(m, "de") + diff(m, "ar")) / 2 for m in metrics]
    assert list(pair["zero_shot"]["per_seed"].values()) == pytest.approx(zero)
    assert pair["zero_shot"]["mean"] == pytest.approx(statistics.fmean(zero))
    assert pair["zero_shot"]["sd"] == pytest.approx(statistics.stdev(zero))
    assert pair["zero_shot"]["a_wins"] == sum(d > 0 for d in zero)
    assert list(pair["seen"]["per_seed"].values()) == pytest.approx([diff(m, "en") for m in metrics])
    # each model's averages over the seen and over the zero-shot languages, mean and sd over seeds
    student = next(m for m in agg["variants"][0]["models"] if m["role"] == "student")
    rows = [next(r for r in m["models"] if r["role"] == "student") for m in metrics]
    zero_avg = [(r["per_language"]["de"] + r["per_language"]["ar"]) / 2 for r in rows]
    assert student["average_zero_shot"]["mean"] == pytest.approx(statistics.fmean(zero_avg))
    assert student["average_zero_shot"]["sd"] == pytest.approx(statistics.stdev(zero_avg))
    assert student["average_seen"]["values"] == pytest.approx([r["per_language"]["en"] for r in rows])
    zero_kept = [(r["retention_per_language"]["de"] + r["retention_per_language"]["ar"]) / 2 for r in rows]
    assert student["retention_zero_shot"]["mean"] == pytest.approx(statistics.fmean(zero_kept))
    report = (tmp_path / "out" / "report.md").read_text()
    assert "zero-shot languages: A − B" in report and "zero-shot: de, ar" in report
    assert "| avg seen | avg zero-shot | retention seen | retention zero-shot | en | de† | ar† |" in report
    # runs trained on every language they are scored on: nothing to split
    plain = compare_runs([fake_run(tmp_path / "plain", s) for s in (0, 1)])
    assert plain["zero_shot_languages"] is None and "zero_shot" not in plain["pairs"][0]


def test_two_recipes_that_differ_in_one_choice_are_compared_seed_by_seed(tmp_path):
    a = [fake_run(tmp_path, s, lr=1e-3) for s in (0, 1)]
    b = [fake_run(tmp_path, s, lr=5e-4) for s in (1, 2)]
    agg = compare_runs(a + b)
    assert [len(v["runs"]) for v in agg["variants"]] == [2, 2]
    assert agg["variants"][1]["differs_from_first_in"] == ["train.lr"]
    # a licence or a tracker says how results are published, not what was computed: not a difference
    for run in b:
        manifest = json.loads((run / "manifest.json").read_text())
        manifest["recipe"].update(license="mit", train={"lr": 5e-4, "report_to": ["tensorboard"]})
        (run / "manifest.json").write_text(json.dumps(manifest))
    assert compare_runs(a + b)["variants"][1]["differs_from_first_in"] == ["train.lr"]
    across = next(p for p in agg["pairs"] if p["what"].endswith(": student") and "against" in p["what"])
    assert across["seeds"] == [1]  # matched by seed: only seed 1 is in both
    assert across["average"]["n"] == 1 and across["average"]["sd"] is None


def test_a_pair_without_retention_has_no_retention_difference(tmp_path):
    runs = [fake_run(tmp_path, s) for s in (0, 1)]
    for run in runs:  # a teacher that scored 0: no retention anywhere
        metrics = json.loads((run / "metrics.json").read_text())
        for row in metrics["models"]:
            row["retention_per_language"] = {lang: None for lang in LANGS}
        (run / "metrics.json").write_text(json.dumps(metrics))
    (pair,) = compare_runs(runs)["pairs"]
    assert pair["retention"]["mean"] is None and pair["retention"]["per_seed"] == {"0": None, "1": None}
    assert pair["average"]["n"] == 2 and pair["retention"]["a_wins"] == 0


def test_only_shared_languages_are_compared_and_bad_input_is_one_line(tmp_path, capsys):
    from cascade_kd.cli.app import main

    wide = fake_run(tmp_path, 0, languages=["en", "de", "ar", "sw"])
    narrow = fake_run(tmp_path, 1, languages=["en", "de", "ar"])
    agg = compare_runs([wide, narrow])
    assert agg["languages"] == LANGS and agg["languages_left_out"] == ["sw"]

    def one_line(*argv):
        rc = main(list(argv))
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        return err

    other = fake_run(tmp_path, 2, languages=["fi"], name="other")
    assert "share no language" in one_line("compare", str(wide), str(other), "--out", str(tmp_path / "o1"))
    acc = fake_run(tmp_path, 3, metric="accuracy", name="acc")
    assert "do not share a metric" in one_line("compare", str(wide), str(acc), "--out", str(tmp_path / "o2"))
    assert "no such run directory" in one_line("compare", str(wide), str(tmp_path / "nope"), "--out", str(tmp_path / "o3"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("{not json")
    assert "cannot read metrics.json" in one_line("compare", str(wide), str(tmp_path / "broken"), "--out", str(tmp_path / "o4"))
    assert "run directory" in one_line("compare", str(wide), str(narrow), "--out", str(wide))  # never over a run's report
    assert "no such run directory" in one_line("report", str(tmp_path / "nope"))
    assert "cannot read metrics.json" in one_line("report", str(tmp_path / "broken"))
    with pytest.raises(UserError):
        compare_runs([])


def test_report_rebuilds_a_comparison_from_its_directory(tmp_path, capsys):
    from cascade_kd.cli.app import main

    runs = [fake_run(tmp_path, s) for s in (0, 1)]
    assert main(["compare", *map(str, runs), "--out", str(tmp_path / "cmp")]) == 0
    before = json.loads((tmp_path / "cmp" / "aggregate.json").read_text())
    assert before["variants"][0]["runs"][0]["path"].startswith("..")  # relative: the folder can move with its runs
    (tmp_path / "cmp" / "report.html").unlink()
    assert main(["report", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "report.html").is_file()
    assert json.loads((tmp_path / "cmp" / "aggregate.json").read_text()) == before


def test_eval_folders_are_the_seeds_of_their_runs_and_unknown_seeds_are_never_matched(tmp_path):
    """`cascade-kd eval` output has no manifest: compare reads the evaluated run's (its seed and
    recipe). Runs whose seed is unknown are variants of their own, never paired as one seed."""
    evals = []
    for seed in (0, 1):
        run = fake_run(tmp_path, seed)
        out = run / "eval-dev"
        out.mkdir()
        metrics = json.loads((run / "metrics.json").read_text())
        (out / "metrics.json").write_text(json.dumps({**metrics, "split": "dev", "evaluated_run": "..",
                                                      "evaluated_with": "f"}))
        evals.append(out)
    agg = compare_runs(evals, tmp_path / "out")
    assert [v["seeds"] for v in agg["variants"]] == [[0, 1]] and agg["pairs"][0]["average"]["paired"] is True
    assert agg["variants"][0]["label"] == "demo (eval, dev)"
    # a run beside its own eval (of the same split): two variants, not two runs of seed 0 in one
    again = evals[0].parent / "eval-test"
    again.mkdir()
    metrics = json.loads((evals[0].parent / "metrics.json").read_text())
    (again / "metrics.json").write_text(json.dumps({**metrics, "evaluated_run": "..", "evaluated_with": "f"}))
    both = compare_runs([evals[0].parent, again], tmp_path / "out1")
    assert [v["seeds"] for v in both["variants"]] == [[0], [0]]
    for path in evals:  # without the link to their run: two variants of unknown seed
        metrics = json.loads((path / "metrics.json").read_text())
        del metrics["evaluated_run"]
        (path / "metrics.json").write_text(json.dumps(metrics))
    agg = compare_runs(evals, tmp_path / "out2")
    assert [v["seeds"] for v in agg["variants"]] == [[None], [None]]
    assert agg["pairs"] and all(p["seeds"] == [] and p["average"]["paired"] is False for p in agg["pairs"])


def test_the_out_of_run_seeds_is_refused_with_its_seed_folders_named(tmp_path):
    out = tmp_path / "seeds"
    out.mkdir()
    for seed in (0, 1):
        fake_run(tmp_path, seed).rename(out / f"seed{seed}")
    (out / "seeds.json").write_text("{}")
    with pytest.raises(UserError, match="the OUT of `run --seeds`") as err:
        compare_runs([out])
    assert err.value.hint == f"give those: {out / 'seed<S>'}"  # seeds.json unreadable: the pattern
    (out / "seeds.json").write_text(json.dumps({"seeds": [0, 1], "runs": {"0": "seed0", "1": "seed1"}}))
    with pytest.raises(UserError) as err:
        compare_runs([out])
    assert err.value.hint == f"give those: {out / 'seed0'} {out / 'seed1'}"


def test_the_comparison_replaces_only_an_earlier_comparison(tmp_path):
    from cascade_kd.errors import UserError

    runs = [fake_run(tmp_path / "runs", s) for s in (0, 1)]
    out = tmp_path / "out"
    compare_runs(runs, out)
    compare_runs(runs, out)  # an earlier comparison: replaced
    for name, content, why in (("aggregate.json", '{"my": "numbers"}', "not a comparison's"),
                               ("report.md", "# my notes", "a report that is not a comparison"),
                               ("metrics.json", "{}", "this is a run directory")):
        mine = tmp_path / f"mine-{name}"
        mine.mkdir()
        (mine / name).write_text(content)
        with pytest.raises(UserError, match=why):
            compare_runs(runs, mine)
        assert [p.name for p in mine.iterdir()] == [name] and (mine / name).read_text() == content


def test_recipes_sharing_a_name_get_distinct_labels_and_report_keeps_them_and_the_named_pairs(tmp_path, capsys):
    """Three recipes named alike in one folder were labelled "demo (FOLDER)" twice and "demo": the
    rebuilt report then merged two of them. And `report` replaced the pairs a user had named with
    the default ones."""
    from cascade_kd.cli.app import main

    runs = [fake_run(tmp_path, 0, lr=lr) for lr in (1e-3, 5e-4, 2e-4)]
    agg = compare_runs(runs)
    labels = [v["label"] for v in agg["variants"]]
    assert len(set(labels)) == 3 and all(label.startswith("demo (") for label in labels), labels
    assert labels[0] == f"demo ({runs[0].name})"
    assert main(["compare", *map(str, runs), "--out", str(tmp_path / "cmp")]) == 0
    assert main(["report", str(tmp_path / "cmp")]) == 0
    rebuilt = json.loads((tmp_path / "cmp" / "aggregate.json").read_text())
    assert [v["label"] for v in rebuilt["variants"]] == labels

    named = [("lower lr", f"{labels[1]}/student", f"{labels[0]}/student")]
    compare_runs(runs, tmp_path / "named", pairs=named)
    assert main(["report", str(tmp_path / "named")]) == 0
    pairs = json.loads((tmp_path / "named" / "aggregate.json").read_text())["pairs"]
    assert [(p["what"], p["a"], p["b"]) for p in pairs] == named

    # a comparison written before labels were distinct: report keeps every variant
    stored = json.loads((tmp_path / "cmp" / "aggregate.json").read_text())
    for variant in stored["variants"]:
        variant["label"] = "demo"
    for pair in stored["pairs"]:  # as that version stored them: both sides named alike
        pair.update(a="demo/student", b="demo/student")
    (tmp_path / "cmp" / "aggregate.json").write_text(json.dumps(stored))
    assert main(["report", str(tmp_path / "cmp")]) == 0
    rebuilt = json.loads((tmp_path / "cmp" / "aggregate.json").read_text())
    assert len(rebuilt["variants"]) == 3
    assert all(p["a"] != p["b"] for p in rebuilt["pairs"])  # the default pairs again, not a variant against itself
