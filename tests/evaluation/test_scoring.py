"""Per-language summaries: averages, worst language, retention against the teacher."""

import json

import pytest

from cascade_kd.evaluation.scoring import summarise


def test_retention_is_the_mean_of_per_language_ratios_and_undefined_where_the_teacher_scores_zero():
    teacher = {"en": 0.8, "de": 0.5, "zh": 0.0}
    out = summarise({"en": 0.4, "de": 0.5, "zh": 0.1}, teacher)
    assert out["retention_per_language"] == {"en": 0.5, "de": 1.0, "zh": None}
    assert out["retention"] == pytest.approx(0.75)
    assert out["worst_language"] == "zh" and out["average"] == pytest.approx(1.0 / 3)
    json.dumps(out, allow_nan=False)  # valid JSON: no NaN tokens in metrics.json
    assert summarise({"zh": 0.3}, {"zh": 0.0})["retention"] is None
