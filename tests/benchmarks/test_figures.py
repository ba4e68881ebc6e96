"""benchmarks/figures.py: the language order, the retention and difference values it draws
(against values computed by hand on a made-up results entry, and a comparison's differences read
as the benchmark's `ckd.compare` wrote them), what it does with models, comparisons or files the
results lack, and the committed results drawn end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import figures  # noqa: E402


def seed(per_language: dict, teacher: dict) -> dict:
    return {"per_language": per_language, "retention_per_language": {k: v / teacher[k] for k, v in per_language.items()}}


@pytest.fixture
def entry() -> dict:
    """English seen; de, ru, zh zero-shot with the teacher best in ru, worst in zh."""
    teacher = {"en": 0.9, "de": 0.6, "ru": 0.8, "zh": 0.4}
    return {
        "languages": ["en", "de", "ru", "zh"], "train_languages": ["en"],
        "models": {
            "teacher": {"per_language": {k: {"mean": v} for k, v in teacher.items()},
                        "seeds": {"0": seed(teacher, teacher)}},
            "cascade": {"seeds": {"0": seed({"en": 0.09, "de": 0.3, "ru": 0.8, "zh": 0.1}, teacher),
                                  "1": seed({"en": 0.09, "de": 0.6, "ru": 0.4, "zh": 0.3}, teacher)}},
            "direct": {"seeds": {"0": seed({"en": 0.8, "de": 0.3, "ru": 0.6, "zh": 0.2}, teacher),
                                 "2": seed({"en": 0.1, "de": 0.1, "ru": 0.1, "zh": 0.1}, teacher)}},
        },
        # as benchmarks/xlingual.py keeps a comparison: points per language and seed; deliberately
        # not what the models above give (there is no cascade seed 2): the figure must draw the
        # comparison's own values, never compute them again
        "pairs": [{"what": "cascade against direct", "seeds": [0, 2],
                   "per_language": {"en": {"0": -71.0, "2": -1.0}, "de": {"0": 0.0, "2": 3.0},
                                    "ru": {"0": 20.0, "2": None}, "zh": {"0": -10.0, "2": -12.0}}}],
    }


def test_training_languages_first_then_zero_shot_by_the_teachers_score(entry):
    assert figures.language_order(entry) == ["en", "ru", "de", "zh"]


def test_retention_is_the_mean_over_seeds_and_the_worst_cell_a_zero_shot_one(entry):
    shown, langs, values, worst = figures.retention_rows(entry, ["cascade", "not trained yet"])
    assert shown == ["cascade"] and langs == ["en", "ru", "de", "zh"]
    # en: 0.09 / 0.9 on both seeds; ru: (1.0 + 0.5) / 2; de: (0.5 + 1.0) / 2; zh: (0.25 + 0.75) / 2
    assert values[0] == pytest.approx([0.1, 0.75, 0.75, 0.5])
    assert worst == [3]  # zh; English is never the outlined cell, even where it is lowest


def test_differences_are_the_comparisons_own_in_the_language_order(entry):
    seeds, langs, per_seed = figures.difference_values(entry, "cascade against direct")
    assert seeds == ["0", "2"] and langs == ["en", "ru", "de", "zh"]
    assert per_seed == [[-71.0, -1.0], [20.0], [0.0, 3.0], [-10.0, -12.0]]  # ru: seed 2 has no value


def test_a_difference_figure_says_whose_difference_it_draws(entry):
    pytest.importorskip("matplotlib")
    svg = figures.difference(entry, "Task", "cascade against direct")
    assert svg.startswith("<svg") and "cascade minus direct" in svg and "seeds 0, 2" in svg


def test_a_results_file_from_before_per_language_differences_is_said(entry):
    del entry["pairs"][0]["per_language"]
    with pytest.raises(figures.NotTrained, match="--collect-only adds them"):
        figures.difference_values(entry, "cascade against direct")


def test_a_comparison_without_a_paired_seed_draws_nothing(entry):
    entry["pairs"][0].update(seeds=[], per_language={lang: {} for lang in entry["languages"]})
    with pytest.raises(figures.NotTrained, match="seed on which both sides"):
        figures.difference_values(entry, "cascade against direct")


def test_a_row_without_zero_shot_values_outlines_nothing(entry):
    entry["models"]["cascade"]["seeds"] = {"0": {"per_language": {}, "retention_per_language": {"en": 1.0}}}
    _, _, values, worst = figures.retention_rows(entry, ["cascade"])
    assert values == [[1.0, None, None, None]] and worst == [None]


def test_missing_files_and_models_are_said_not_drawn(tmp_path, capsys):
    assert figures.main(["--results", str(tmp_path / "none"), "--out", str(tmp_path / "img")]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped, no ") == len(figures.HEATMAPS) + len(figures.DIFFERENCES)
    assert not list((tmp_path / "img").iterdir())


def test_the_committed_results_draw(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert figures.main(["--out", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.glob("*.svg"))
    assert written == sorted([*figures.HEATMAPS, *figures.DIFFERENCES])
    heat = (tmp_path / "xlingual-panx-zero-shot-retention.svg").read_text(encoding="utf-8")
    assert heat.startswith("<svg") and "</svg>" in heat
    assert not list(tmp_path.glob("*.tmp"))


def test_a_comparison_not_made_yet_is_skipped_and_said(tmp_path, entry, monkeypatch, capsys):
    monkeypatch.setattr(figures, "load", lambda file, setting, results: entry)
    monkeypatch.setattr(figures, "HEATMAPS", {})
    monkeypatch.setattr(figures, "DIFFERENCES", {"d.svg": ("f.json", "s", "task", "cascade against unpaired")})
    assert figures.main(["--out", str(tmp_path)]) == 0
    assert "d.svg: skipped, 's': no comparison 'cascade against unpaired' yet (it needs two or more finished" \
        in capsys.readouterr().out
    assert not (tmp_path / "d.svg").exists()
