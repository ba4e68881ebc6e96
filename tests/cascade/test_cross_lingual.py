"""Cross-lingual transfer (docs/cross-lingual.md): train on some languages (data.train_languages),
evaluate on more (data.languages), select on the training languages' dev sets unless
data.select_on: all, and report the seen and zero-shot languages apart."""

from __future__ import annotations

import json
import shutil

import pytest

from cascade_kd.config.schema import Recipe, load_recipe
from tests.helpers import merge, shared_data, tiny_recipe, write_recipe

# the tiny run's recipe, trained on English only and evaluated on English, Russian and "xx": the demo's
# languages share no words, so a zero-shot score is 0 in each of them; xx's dev set is English test
# data (other sentences of English's distribution), so that zero-shot scores are not all 0 either
PLAIN = tiny_recipe(name="tiny-run", data={"test": None})
ZERO_SHOT = merge(PLAIN, {"name": "tiny-zero-shot", "data": {"languages": ["en", "ru", "xx"], "train_languages": ["en"]}})


@pytest.fixture(scope="module")
def zero_shot_run(demo_workspace, tmp_path_factory):
    """A finished English-only run, with spies on what each training saw and on every dev selection."""
    import cascade_kd.cascade.job as job_module
    import cascade_kd.cascade.stages as stages
    from cascade_kd.cascade import run_recipe

    root = tmp_path_factory.mktemp("zero_shot")
    for name in ("data", "tokenizer"):
        shutil.copytree(demo_workspace / name, root / name)
    (root / "data" / "ru" / "train.conll").unlink()  # a zero-shot language needs no training file
    (root / "data" / "xx").mkdir()
    shutil.copy(root / "data" / "en" / "test.conll", root / "data" / "xx" / "dev.conll")
    write_recipe(root, ZERO_SHOT)

    trainings, selections = [], []
    real_train, real_evaluate = stages.train, job_module.evaluate_languages

    def spy_train(model, train_data, cfg, **kwargs):
        trainings.append((kwargs["desc"], len(train_data)))
        return real_train(model, train_data, cfg, **kwargs)

    def spy_evaluate(model, split, *args, **kwargs):  # only Job.dev_score calls job.py's evaluate_languages
        selections.append(sorted(split))
        return real_evaluate(model, split, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stages, "train", spy_train)
        mp.setattr(job_module, "evaluate_languages", spy_evaluate)
        metrics = run_recipe(load_recipe(root / "recipe.yaml"), root / "run", say=lambda m: None)
    return root, metrics, trainings, selections


def test_trains_on_the_training_languages_only(zero_shot_run):
    root, metrics, trainings, _ = zero_shot_run
    manifest = json.loads((root / "run" / "manifest.json").read_text())
    assert manifest["data_sizes"]["train"] == {"en": 200}  # max_train_per_language: 200 of en's 500
    assert set(manifest["data_sizes"]["dev"]) == {"en", "ru", "xx"}
    # the teacher's fine-tuning and the stage saw the 200 English sentences and nothing else
    assert trainings == [("teacher", 200), ("student", 200)]
    history = json.loads((root / "run" / "teacher" / "stage.json").read_text())["history"]
    assert len(history) == 5  # teacher.train epochs: 5, one dev evaluation each


def test_selects_on_the_training_languages_dev_sets_only(zero_shot_run):
    _, metrics, _, selections = zero_shot_run
    assert len(selections) == 5 + 1  # every epoch of the teacher (5) and of the student (1)
    assert all(langs == ["en"] for langs in selections), selections
    assert metrics["select_on"] == "train_languages" and metrics["selection_languages"] == ["en"]
    assert metrics["split"] == "dev"  # no test files: the report split is dev, of every language
    for m in metrics["models"]:  # dev_average is what selection used: English dev alone
        assert m["dev_average"] == pytest.approx(m["per_language"]["en"])


def test_metrics_hold_the_seen_and_zero_shot_summaries(zero_shot_run):
    root, _, _, _ = zero_shot_run
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert metrics["languages"] == ["en", "ru", "xx"]
    assert metrics["train_languages"] == ["en"] and metrics["zero_shot_languages"] == ["ru", "xx"]
    teacher, student = metrics["models"]
    t = teacher["per_language"]
    for m in (teacher, student):
        s = m["per_language"]
        assert set(s) == {"en", "ru", "xx"}
        # recomputed by hand from per_language: seen = en; zero-shot = ru, xx
        assert m["average_seen"] == pytest.approx(s["en"])
        assert m["worst_seen"] == pytest.approx(s["en"]) and m["worst_language_seen"] == "en"
        assert m["retention_seen"] == pytest.approx(s["en"] / t["en"])
        assert m["average_zero_shot"] == pytest.approx((s["ru"] + s["xx"]) / 2)
        assert m["worst_zero_shot"] == pytest.approx(min(s["ru"], s["xx"]))
        assert m["worst_language_zero_shot"] == min(("ru", "xx"), key=s.get)
        # the teacher scores 0 on ru: its ratio is undefined and left out, as in the overall retention
        assert t["ru"] == 0 and m["retention_per_language"]["ru"] is None
        assert m["retention_zero_shot"] == pytest.approx(s["xx"] / t["xx"])
        assert m["average"] == pytest.approx((s["en"] + s["ru"] + s["xx"]) / 3)  # the overall keys stay
    assert t["en"] > 0.1 and t["xx"] > 0.1  # the teacher learned English: the zero-shot figures are not all 0
    assert student["retention_zero_shot"] != pytest.approx(student["retention_seen"])


def test_report_marks_zero_shot_columns_and_states_the_selection(zero_shot_run):
    root, metrics, _, _ = zero_shot_run
    report = (root / "run" / "report.md").read_text(encoding="utf-8")
    header = next(line for line in report.splitlines() if line.startswith("| model"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[-3:] == ["en", "ru†", "xx†"]
    assert {"avg seen", "avg zero-shot", "retention seen", "retention zero-shot"} <= set(cells)
    assert "labelled training data in en only" in report
    assert "selected on the dev sets of en only" in report and "XTREME" in report
    student_row = next(line for line in report.splitlines() if line.startswith("| student"))
    row = [c.strip() for c in student_row.strip("|").split("|")]
    student = metrics["models"][1]
    assert row[cells.index("avg zero-shot")] == f"{100 * student['average_zero_shot']:.1f}"
    assert row[cells.index("avg seen")] == f"{100 * student['average_seen']:.1f}"


def test_eval_and_trim_work_on_a_zero_shot_run(zero_shot_run, tmp_path):
    from cascade_kd.cascade import evaluate_run
    from cascade_kd.deploy.trim import trim_model_dir

    root, metrics, _, _ = zero_shot_run
    run = root / "run"
    recipe = load_recipe(run / "recipe.yaml")  # as written back into RUN_DIR: train_languages kept
    assert recipe.data.train_languages == ["en"]
    again = evaluate_run(recipe, run, split="dev", out=tmp_path / "eval", say=lambda m: None)
    assert again["zero_shot_languages"] == ["ru", "xx"]
    for before, after in zip(metrics["models"], again["models"]):
        assert after["dev_average"] == pytest.approx(before["dev_average"])
        assert after["average_seen"] == pytest.approx(after["dev_average"])  # split dev: seen = en dev
    said = []
    report = trim_model_dir(run / "stages" / "student", tmp_path / "trimmed", score=False, say=said.append)
    assert report["languages"] == ["en"]  # default: the training languages, the only ones with training text
    assert any("2 zero-shot language(s)" in line and "ru, xx" in line for line in said), said


# --- selection by construction, without training ---------------------------------------------


@pytest.mark.parametrize("select_on,expected", [(None, 0.9), ("train_languages", 0.9), ("all", 0.4)])
def test_dev_score_averages_the_selection_languages(ws, monkeypatch, select_on, expected):
    import cascade_kd.cascade.job as job_module
    from cascade_kd.cascade import prepare

    text = (ws / "recipe.yaml").read_text().replace(
        "  languages: [en, de, ru, el]\n", "  languages: [en, de, ru, el]\n  train_languages: [en, de]\n"
        + (f"  select_on: {select_on}\n" if select_on else ""))
    (ws / "recipe.yaml").write_text(text)
    job = prepare(load_recipe(ws / "recipe.yaml"), ws / "unused", say=lambda m: None)
    assert set(job.encoded["train"]) == {"en", "de"} and set(job.encoded["dev"]) == {"en", "de", "ru", "el"}
    scored = []
    fixed = {"en": 1.0, "de": 0.8, "ru": 0.0, "el": -0.2}  # made-up scores: which ones are averaged shows

    def fake_scores(model, split, *args, **kwargs):
        scored.append(sorted(split))
        return {lang: fixed[lang] for lang in split}

    monkeypatch.setattr(job_module, "evaluate_languages", fake_scores)
    assert job.dev_score(None, job.recipe.train) == pytest.approx(expected)
    assert scored == [["de", "el", "en", "ru"] if select_on == "all" else ["de", "en"]]


# --- the recipe keys ------------------------------------------------------------------------


def test_new_keys_at_their_defaults_leave_the_fingerprint_alone():
    plain = Recipe.from_dict(PLAIN)
    assert "train_languages" not in plain.dump()["data"] and "select_on" not in plain.dump()["data"]
    explicit = Recipe.from_dict(merge(PLAIN, {"data": {"select_on": "train_languages"}}))
    assert explicit.fingerprint() == plain.fingerprint()
    assert plain.data.training_languages == plain.data.selection_languages == ["en", "ru"]
    assert plain.data.zero_shot_languages == []
    zero_shot = Recipe.from_dict(ZERO_SHOT)
    assert zero_shot.dump()["data"]["train_languages"] == ["en"] and zero_shot.fingerprint() != plain.fingerprint()
    every = Recipe.from_dict(merge(ZERO_SHOT, {"data": {"select_on": "all"}}))
    assert every.dump()["data"]["select_on"] == "all" and every.data.selection_languages == ["en", "ru", "xx"]


def test_training_languages_follow_the_order_of_data_languages():
    recipe = Recipe.from_dict(merge(ZERO_SHOT, {"data": {"train_languages": ["xx", "en"]}}))
    assert recipe.data.training_languages == ["en", "xx"] and recipe.data.zero_shot_languages == ["ru"]


def test_a_single_train_file_needs_no_placeholder_when_one_language_trains(ws):
    """data.train without {lang} is fine when train_languages has one language, whatever data.languages lists."""
    from cascade_kd.data.task import load_task_data

    text = (ws / "recipe.yaml").read_text().replace("  train: data/{lang}/train.conll\n", "  train: data/en/train.conll\n")
    (ws / "recipe.yaml").write_text(text.replace("  languages: [en, de, ru, el]\n",
                                                 "  languages: [en, de, ru, el]\n  train_languages: [en]\n"))
    data = load_task_data(load_recipe(ws / "recipe.yaml"))
    assert list(data.splits["train"]) == ["en"] and data.zero_shot_languages == ["de", "ru", "el"]


# --- real data: English PAN-X, 40 evaluation languages, planning only --------------------------


def test_panx_english_training_with_40_evaluation_languages_loads_and_plans(tmp_path):
    from cascade_kd.cascade import prepare

    panx = shared_data("panx")
    tokenizer = shared_data("tokenizers", "mbert-cased")
    languages = sorted(p.name[len("dev-"):-len(".tsv")] for p in panx.glob("dev-*.tsv"))
    assert len(languages) >= 40, languages
    recipe_path = tmp_path / "panx.yaml"
    recipe_path.write_text(f"""\
task: {{type: token, max_length: 64}}
data:
  languages: [{', '.join(languages)}]
  train_languages: [en]
  format: conll
  train: {{en: {panx}/train-en.tsv}}  # a mapping: reading another language's training file would fail
  dev: {panx}/dev-{{lang}}.tsv
  holdout_from_dev: 0.5
  max_train_per_language: 100
  max_eval_per_language: 20
teacher:
  tokenizer: {tokenizer}
  config: {{model_type: bert, num_hidden_layers: 2, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64,
            max_position_embeddings: 64}}
cascade:
  stages: [{{name: student, student: {{layers: 1}}}}]
""")
    said = []
    job = prepare(load_recipe(recipe_path), tmp_path / "unused", say=said.append)
    assert list(job.encoded["train"]) == ["en"] and len(job.training_data()[0]) == 100
    assert set(job.encoded["dev"]) == set(job.encoded["test"]) == set(languages)
    assert job.data.zero_shot_languages == [l for l in languages if l != "en"]
    assert list(job.selection_dev) == ["en"]
    assert job.data.labels == ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"]
    assert any(f"{len(languages) - 1} zero-shot language(s)" in line for line in said), said
