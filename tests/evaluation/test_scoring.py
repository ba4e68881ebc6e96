"""Per-language summaries: averages, worst language, retention against the teacher, over all languages
and over the seen and zero-shot groups; the report columns that show them."""

import json

import pytest

from cascade_kd.evaluation.scoring import summarise, summarise_groups


def test_retention_is_the_mean_of_per_language_ratios_and_undefined_where_the_teacher_scores_zero():
    teacher = {"en": 0.8, "de": 0.5, "zh": 0.0}
    out = summarise({"en": 0.4, "de": 0.5, "zh": 0.1}, teacher)
    assert out["retention_per_language"] == {"en": 0.5, "de": 1.0, "zh": None}
    assert out["retention"] == pytest.approx(0.75)
    assert out["worst_language"] == "zh" and out["average"] == pytest.approx(1.0 / 3)
    json.dumps(out, allow_nan=False)  # valid JSON: no NaN tokens in metrics.json
    assert summarise({"zh": 0.3}, {"zh": 0.0})["retention"] is None


def test_group_summaries_of_seen_and_zero_shot_languages():
    teacher = {"en": 0.8, "de": 0.6, "ru": 0.5, "zh": 0.0}
    student = {"en": 0.4, "de": 0.6, "ru": 0.25, "zh": 0.1}
    out = summarise_groups(student, teacher, seen=["en", "de"], zero_shot=["ru", "zh"])
    assert out["average_seen"] == pytest.approx(0.5) and out["worst_seen"] == 0.4 and out["worst_language_seen"] == "en"
    assert out["retention_seen"] == pytest.approx((0.5 + 1.0) / 2)  # mean of ratios, as summarise
    assert out["average_zero_shot"] == pytest.approx(0.175) and out["worst_zero_shot"] == 0.1
    assert out["worst_language_zero_shot"] == "zh"
    assert out["retention_zero_shot"] == pytest.approx(0.5)  # zh's ratio is undefined (teacher 0): left out
    # an empty group: every key null; no teacher yet: no retention
    every = summarise_groups(student, None, seen=list(student), zero_shot=[])
    assert {k: v for k, v in every.items() if k.endswith("_zero_shot")} == dict.fromkeys(
        ["average_zero_shot", "worst_zero_shot", "worst_language_zero_shot", "retention_zero_shot"])
    assert every["average_seen"] == pytest.approx(summarise(student)["average"]) and every["retention_seen"] is None
    json.dumps(out, allow_nan=False)


def test_report_marks_zero_shot_columns_only_in_a_cross_lingual_run():
    from cascade_kd.evaluation.report import render_report, report_table

    row = {"name": "teacher", "role": "teacher", "layers": 2, "hidden": 32, "params_total": 50_000,
           "params_embedding": 20_000, "per_language": {"en": 0.8, "ru": 0.4}, "average": 0.6, "worst": 0.4,
           "worst_language": "ru", "retention": 1.0}
    old = {"name": "r", "task": "token", "metric": "f1", "split": "test", "languages": ["en", "ru"], "models": [row]}
    assert report_table(old).splitlines()[0].endswith("| retention | en | ru |")  # metrics of older runs
    assert "dev sets of all 2 languages" in render_report(old)
    zero_shot = {**old, "train_languages": ["en"], "zero_shot_languages": ["ru"], "select_on": "all",
                 "selection_languages": ["en", "ru"],
                 "models": [{**row, "average_seen": 0.8, "retention_seen": 1.0, "average_zero_shot": 0.4,
                             "retention_zero_shot": 1.0, "worst_seen": 0.8, "worst_zero_shot": 0.4}]}
    head, _, line = report_table(zero_shot).splitlines()
    assert head.endswith("| avg seen | avg zero-shot | retention seen | retention zero-shot | en | ru† |")
    assert line.endswith("| 80.0 | 40.0 | 100.0 | 100.0 | 80.0 | 40.0 |")
    assert "zero-shot ones included (data.select_on: all)" in render_report(zero_shot)
