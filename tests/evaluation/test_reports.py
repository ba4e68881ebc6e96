"""report.html and the model cards of a finished run (evaluation/html_report.py, model_card.py):
self-contained, built from metrics.json, rebuilt by `cascade-kd report`; card metadata that the
Hugging Face Hub's own parser reads and that matches metrics.json."""

from __future__ import annotations

import base64
import json
import re
import shutil
import xml.etree.ElementTree as ET

import pytest

from cascade_kd.evaluation.model_card import iso_languages, render_model_card
from cascade_kd.evaluation.run_files import read_run


def _images(page: str) -> list[str]:
    return re.findall(r'<img src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', page)


def test_the_run_writes_a_self_contained_report_with_every_figure(cascade_run):
    page = (cascade_run / "report.html").read_text(encoding="utf-8")
    # nothing to fetch: every src is a data: URI, no stylesheet, script or font from elsewhere
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', page))
    assert not re.search(r"<script|<link|@import|url\(|https?://", page)
    images = _images(page)
    assert len(images) == 4  # cascade vs direct, retention heatmap, score vs size, training curves (no latency yet)
    for data in images:
        svg = ET.fromstring(base64.b64decode(data))
        assert svg.tag.endswith("svg")
    metrics = json.loads((cascade_run / "metrics.json").read_text())
    for m in metrics["models"]:
        assert f"<td>{m['name']}</td>" in page and f"{100 * m['average']:.1f}" in page
    assert "No latency yet" in page and "cascade-kd bench" in page
    assert "cascade-kd trim" in page  # 800-piece vocabulary, embeddings over half of each student
    assert "`cascade-kd trim RUN_DIR/stages/student` (RUN_DIR: the run's folder)" in (cascade_run / "report.md").read_text()
    assert str(cascade_run) not in (cascade_run / "stages" / "student" / "README.md").read_text()  # cards travel
    for model in ("teacher", "ta2", "student", "direct"):  # curves came with the markers and went to TensorBoard
        marker = json.loads((cascade_run / read_run(cascade_run).model(model)["path"] / "stage.json").read_text())
        assert marker["curve"] and marker["curve"][-1]["step"] == marker["steps"]
        assert list((cascade_run / "logs" / model).glob("events.out.tfevents.*"))


def test_model_cards_parse_as_the_hub_reads_them_and_match_metrics(cascade_run):
    from huggingface_hub import ModelCard

    metrics = json.loads((cascade_run / "metrics.json").read_text())
    assert metrics["split"] == "test"
    for row in metrics["models"]:
        card = ModelCard.load(cascade_run / row["path"] / "README.md")
        data = card.data
        assert data.language == ["en", "ru"] and data.license == "unknown" and data.library_name == "transformers"
        assert data.pipeline_tag == "token-classification" and "distillation" in data.tags
        assert data.base_model is None  # a teacher trained from a config has no hub name
        results = {(r.dataset_config, r.dataset_split): r for r in data.eval_results}
        assert len(results) == 2 * len(metrics["languages"])  # one per language and split
        for lang in metrics["languages"]:
            assert results[(lang, "test")].metric_value == pytest.approx(100 * row["per_language"][lang], abs=0.006)
            assert results[(lang, "dev")].metric_value == pytest.approx(100 * row["dev_per_language"][lang], abs=0.006)
            assert results[(lang, "test")].metric_type == "f1"
        text = card.text
        assert "**Licence: unknown.**" in text and "## How to use" in text and "AutoModelForTokenClassification" in text
        assert "import cascade_kd" not in text  # BERT models: plain transformers loads them
        assert json.loads((cascade_run / "manifest.json").read_text())["recipe_fingerprint"] in text
        # the lowest retention (ties, as on the teacher, by the lower score); the lowest score where
        # the teacher scored 0 (no retention)
        kept, scores = row["retention_per_language"], row["per_language"]
        defined = all(kept[l] is not None for l in kept)
        by = (lambda l: (kept[l], scores[l])) if defined else scores.__getitem__
        weakest = ("**Weakest languages** (lowest share of the teacher's score kept, then lowest score): " if defined
                   else "**Weakest languages** (lowest score): ")
        assert f"{weakest}{min(metrics['languages'], key=by)} " in text
    student = (cascade_run / "stages" / "student" / "README.md").read_text()
    assert "teacher -> ta2 -> student" in student and "`kl` x 1" in student


def test_cascade_kd_report_rebuilds_html_and_cards(cascade_run, tmp_path):
    from cascade_kd.cli.app import main

    copy = tmp_path / "run"
    shutil.copytree(cascade_run, copy)
    before = (copy / "report.html").read_text()
    (copy / "report.html").unlink()
    (copy / "stages" / "ta2" / "README.md").unlink()
    assert main(["report", str(copy)]) == 0
    assert (copy / "report.html").read_text() == before.replace(str(cascade_run), str(copy))  # same data, same page
    card = (copy / "stages" / "ta2" / "README.md").read_text()
    from cascade_kd.errors import UserError
    from cascade_kd.evaluation.model_card import write_model_card

    assert write_model_card(copy, "ta2").read_text() == card
    with pytest.raises(UserError, match="no saved model 'ta9'"):
        write_model_card(copy, "ta9")


@pytest.mark.parametrize("measured", ["interleaved", "before the interleaving"])
def test_latency_and_onnx_reach_the_report_and_the_card(cascade_run, tmp_path, measured):
    from cascade_kd.cli.app import main

    copy = tmp_path / "run"
    shutil.copytree(cascade_run, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    base = {"teacher": 4.0, "ta2": 3.0, "student": 2.0, "direct": 2.1}
    metrics["latency"] = {"device": "cpu", "threads": 1, "repeats": 3, "input": "x", "models": [
        {"name": n, "size_mb": 1.0, "latency_ms": {"fp32/b1/s32": v, "fp32/b1/s128": 2 * v},
         "speedup_vs_teacher": {"fp32/b1/s32": 4.0 / v, "fp32/b1/s128": 4.0 / v}} for n, v in base.items()]}
    for row in metrics["latency"]["models"] if measured == "interleaved" else []:  # as best_backends writes it
        v = base[row["name"]]
        row["best"] = {"b1/s32": {"backend": "fp32", "latency_ms": v, "teacher_backend": "fp32", "teacher_latency_ms": 4.0,
                                  "speedup_vs_teacher_best": 4.0 / v, "speedup_quartiles": [4.0 / v - 0.1, 4.0 / v + 0.1]}}
    (copy / "metrics.json").write_text(json.dumps(metrics))
    (copy / "stages" / "student" / "onnx").mkdir()
    (copy / "stages" / "student" / "onnx" / "model.onnx").write_bytes(b"")
    # an export from before export.json recorded its source weights: taken as the model's
    (copy / "stages" / "student" / "onnx" / "export.json").write_text(json.dumps({"opset": 17, "inputs": ["input_ids"]}))
    assert main(["report", str(copy)]) == 0
    page = (copy / "report.html").read_text()
    assert len(_images(page)) == 5 and "No latency yet" not in page and "Latency table" in page
    card = (copy / "stages" / "student" / "README.md").read_text()
    assert "fp32/b1/s128 4.00 ms (2.0x the teacher's speed)" in card and "onnx/model.onnx" in card
    if measured == "interleaved":
        assert "timed side by side): b1/s32 fp32 2.00 ms, 2.00x the teacher's fp32 4.00 ms." in card
        assert "fastest backend against the teacher" in page and "<strong>2.00x</strong> (1.90-2.10)" in page
    else:  # a metrics.json from before: no fastest-backend line or table, nothing broken
        assert "Fastest backend" not in card and "fastest backend against the teacher" not in page


def test_card_metadata_of_a_hub_teacher_hub_data_and_flores_codes(tmp_path):
    from huggingface_hub import ModelCard

    from tests.evaluation.test_compare import fake_run

    run = fake_run(tmp_path, 0, languages=["eng_Latn", "zho_Hans", "zho_Hant", "x-klingon"])
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["recipe"].update(license="apache-2.0", teacher={"model": "bert-base-multilingual-cased"},
                              data={"format": "hf", "hf": {"path": "Davlan/sib200"}})
    (run / "manifest.json").write_text(json.dumps(manifest))
    files = read_run(run)
    card = ModelCard(render_model_card(files, files.model("student")))
    assert card.data.language == ["eng", "zho"] and card.data.license == "apache-2.0"
    assert card.data.base_model == "bert-base-multilingual-cased" and card.data.datasets == ["Davlan/sib200"]
    assert "x-klingon" in card.text and "Licence: apache-2.0" in card.text
    assert iso_languages(["en", "deu", "zho_Hans"]) == (["en", "deu", "zho"], [])


def test_weakest_languages_rank_by_retention_then_by_score():
    from cascade_kd.evaluation.findings import worst_languages

    teacher = {"per_language": {"en": 0.9, "de": 0.5, "el": 0.7}, "retention_per_language": {"en": 1.0, "de": 1.0, "el": 1.0}}
    assert [lang for lang, _, _ in worst_languages(teacher, 2)] == ["de", "el"]  # ties: the lower score first
    student = {"per_language": {"en": 0.8, "de": 0.45, "el": 0.35}, "retention_per_language": {"en": 0.89, "de": 0.9, "el": 0.5}}
    assert worst_languages(student, 3) == [("el", 0.35, 0.5), ("en", 0.8, 0.89), ("de", 0.45, 0.9)]
    no_teacher = {"per_language": {"en": 0.8, "de": 0.45}, "retention_per_language": {"en": None, "de": 0.9}}
    assert worst_languages(no_teacher, 1) == [("de", 0.45, 0.9)]  # a retention missing: lowest score


def test_a_cards_initialisation_is_the_spec_that_built_the_model(cascade_run, tmp_path):
    """The direct baseline is built from a spec derived from the final stage's (direct_spec: a layer
    list becomes bottom layers, another width random layers and PCA embeddings): its marker records
    that spec, and the card describes it, not the final stage's."""
    from cascade_kd.cli.app import main

    markers = {m: json.loads((cascade_run / read_run(cascade_run).model(m)["path"] / "stage.json").read_text())
               for m in ("ta2", "student", "direct")}
    assert markers["ta2"]["student"]["layers"] == 2 and markers["ta2"]["student"]["freeze_embeddings"] is True
    assert markers["student"]["student"]["init"] == [2]  # the final stage's spec, as the recipe gives it
    assert markers["direct"]["student"]["layers"] == 1 and markers["direct"]["student"]["init"] == "bottom"
    copy = tmp_path / "run"
    shutil.copytree(cascade_run, copy)
    marker = copy / "stages" / "direct" / "stage.json"
    data = json.loads(marker.read_text())
    data["student"].update(init="random", embeddings="pca")  # what direct_spec builds for another width
    marker.write_text(json.dumps(data))
    assert main(["report", str(copy)]) == 0
    card = (copy / "stages" / "direct" / "README.md").read_text()
    assert "- Initialisation: random layers (init: random); embeddings: pca" in card
    assert "- Initialisation: from its teacher's layers 2; embeddings: copy" in (
        copy / "stages" / "student" / "README.md").read_text()
    assert "- Initialisation: its teacher's bottom layers (init: bottom)" in (cascade_run / "stages" / "direct" / "README.md").read_text()


def test_a_card_edited_by_hand_is_kept_and_the_new_one_written_beside_it(cascade_run, tmp_path, capsys):
    from cascade_kd.cli.app import main
    from cascade_kd.evaluation.run_files import card_edited

    copy = tmp_path / "run"
    shutil.copytree(cascade_run, copy)
    card = copy / "stages" / "student" / "README.md"
    assert not card_edited(card) and "<!-- cascade-kd model card, sha256 " in card.read_text()
    card.write_text(card.read_text().rstrip("\n"))  # an editor that drops the final newline edits nothing
    assert not card_edited(card)
    card.write_text(card.read_text().replace("## How to use", "Licence: ours.\n\n## How to use"))
    edited = card.read_text()
    (copy / "stages" / "ta2" / "README.md").unlink()
    assert main(["report", str(copy)]) == 0
    assert card.read_text() == edited and card_edited(card)
    assert "was edited after cascade-kd wrote it: kept" in capsys.readouterr().out
    new = (copy / "stages" / "student" / "README.cascade-kd.md").read_text()
    assert "Licence: ours." not in new and "## How to use" in new
    assert not card_edited(copy / "stages" / "ta2" / "README.md")  # an unedited card is simply written again
    assert not (copy / "stages" / "ta2" / "README.cascade-kd.md").exists()


@pytest.mark.parametrize("edit", ["appended below the hash line", "hash line deleted", "no hash line at all"])
def test_a_card_edited_below_or_in_its_hash_line_is_the_users_too(cascade_run, tmp_path, edit):
    """Appending to README.md (`>>`) or deleting the odd HTML comment at its end is an edit too; a
    README.md without the line (a user's own, or a card from before signing) is kept likewise."""
    from cascade_kd.cli.app import main
    from cascade_kd.evaluation.run_files import card_edited

    copy = tmp_path / "run"
    shutil.copytree(cascade_run, copy)
    card = copy / "stages" / "ta2" / "README.md"
    text = card.read_text()
    body = text[: text.rindex("\n<!-- cascade-kd model card")]
    card.write_text({"appended below the hash line": text + "\n## License\nMIT, approved by legal.\n",
                     "hash line deleted": body.replace("license: unknown", "license: mit") + "\n",
                     "no hash line at all": "# Our model\n\nWritten by us.\n"}[edit])
    edited = card.read_text()
    assert card_edited(card)
    assert main(["report", str(copy)]) == 0
    assert card.read_text() == edited
    assert not card_edited(copy / "stages" / "ta2" / "README.cascade-kd.md")  # the new card, beside it


@pytest.mark.parametrize("config,imports,extra", [
    ({"model_type": "bert"}, [], ""),  # transformers' own
    ({"model_type": "cascade_kd_recursive"}, ["import cascade_kd.students"], ""),  # a built-in family's
    ({"model_type": "toy_bert"}, ["from cascade_kd.plugins import load_plugins", "load_plugins()"], ""),  # a plugin's
    ({"model_type": "custom", "auto_map": {"AutoConfig": "x.Cfg"}}, [], ", trust_remote_code=True"),  # remote code
])
def test_a_cards_usage_code_loads_what_the_model_type_needs(tmp_path, config, imports, extra):
    from types import SimpleNamespace

    from cascade_kd.evaluation.model_card import _registering_imports

    (tmp_path / "config.json").write_text(json.dumps(config))
    lines, _, args = _registering_imports(SimpleNamespace(model_dir=lambda row: tmp_path), {})
    assert [line.split("  #")[0] for line in lines if line] == imports and args == extra
