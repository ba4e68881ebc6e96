"""train.report_to and license: validated, absent from old recipes' dumps, and outside the fingerprint
(adding a tracker or a licence to a run neither blocks its resume nor redoes a model)."""

from __future__ import annotations

import pytest

from cascade_kd.config.schema import Recipe
from cascade_kd.errors import RecipeError

BASE = """\
name: keys
task: {type: sequence, labels: [a, b]}
data: {languages: [en], train: t.tsv, dev: d.tsv}
teacher: {model: some/model}
"""


def test_defaults_are_absent_from_the_dump_and_the_fingerprint_ignores_presentation_keys():
    plain = Recipe.from_text(BASE)
    assert "report_to" not in plain.dump()["train"] and "license" not in plain.dump()
    shown = Recipe.from_text(BASE + "license: apache-2.0\ntrain: {report_to: [tensorboard, wandb]}\n")
    assert shown.dump()["license"] == "apache-2.0" and shown.dump()["train"]["report_to"] == ["tensorboard", "wandb"]
    assert shown.fingerprint() == plain.fingerprint()
    computing = Recipe.from_text(BASE + "train: {report_to: [tensorboard], lr: 1.0e-3}\n")
    assert computing.fingerprint() != plain.fingerprint()  # a key that changes the result still counts


def test_an_unknown_or_repeated_tracker_names_its_line():
    with pytest.raises(RecipeError) as err:
        Recipe.from_text(BASE + "train:\n  report_to: [tensorbord]\n", source="r.yaml")
    assert "r.yaml:6" in str(err.value) and "report_to" in str(err.value)
    with pytest.raises(RecipeError, match="at most once"):
        Recipe.from_text(BASE + "train: {report_to: [mlflow, mlflow]}\n")
