"""General (task-agnostic) distillation end to end: `cascade-kd pretrain` trains a masked-LM teacher,
a cascade of masked-LM stages distils it (language sampling, teacher cache, MiniLMv2 relations, kl
on masked-LM logits), any model of the chain is then fine-tuned on a task by a recipe without
stages, and `cascade-kd eval --parallel` measures cross-lingual retrieval."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForMaskedLM

from cascade_kd.cascade import prepare, run_recipe
from cascade_kd.cli.app import main
from cascade_kd.data.encode import IGNORE
from cascade_kd.data.sampling import language_quotas
from cascade_kd.errors import RecipeError, UserError
from cascade_kd.config.schema import Recipe, parse_recipe
from tests.helpers import merge, tiny_recipe, write_recipe

SIZES = {"en": 500, "ru": 200, "el": 100}  # unequal on purpose: language_alpha evens them out

GENERAL = """\
name: general
seed: 0
task: {type: mlm, max_length: 64, masking: static}
data:
  languages: [en, ru, el]
  format: text
  train: text/train-{lang}.txt
  dev: text/dev-{lang}.txt
  language_alpha: 0.5
teacher: {model: pre/teacher}
train: {batch_size: 32, epochs: 6, lr: 1.0e-3, precision: fp32}
cascade:
  stages:
    - {name: ta2, student: {layers: 2}, train: {teacher_cache: bf16}, losses: {hidden_mse: {}, attention_mse: {}}}
    - name: s1
      student: {layers: 1}
      losses: {relation_kl: {relation_heads: 4}, kl: {temperature: 1.0}}
  direct: true
"""

# the general student fine-tuned on the demo's NER data: a recipe without a cascade section
FINETUNE = tiny_recipe(
    "ws", name="finetune-general-student", seed=None,
    task={"max_length": 64},
    data={"test": None, "max_train_per_language": 300, "max_eval_per_language": 80},
    teacher={"model": "gen/stages/s1", "config": None, "tokenizer": None, "train": None},
    train={"epochs": 4, "lr": 2.0e-3},
    cascade=None,
)


def _write_text(demo_workspace: Path, root: Path) -> None:
    """Plain text from the demo's NER sentences: one sentence per line."""
    for lang, n in SIZES.items():
        for split, cap in (("train", n), ("dev", 60)):
            sentences = (demo_workspace / "data" / lang / f"{split}.conll").read_text().strip().split("\n\n")[:cap]
            lines = [" ".join(row.split("\t")[0] for row in s.splitlines()) for s in sentences]
            path = root / "text" / f"{split}-{lang}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def general(demo_workspace, tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("general")
    shutil.copytree(demo_workspace / "tokenizer", root / "ws" / "tokenizer")
    shutil.copytree(demo_workspace / "data", root / "ws" / "data")
    _write_text(demo_workspace, root)
    monkeypatch_module.chdir(root)
    assert main(["pretrain", "--text", "text/train-{lang}.txt", "--dev", "text/dev-{lang}.txt", "--languages", "en", "ru",
                 "el", "--tokenizer", "ws/tokenizer", "--layers", "3", "--hidden", "64", "--heads", "4", "--epochs", "20",
                 "--lr", "1e-3", "--max-length", "64", "--out", "pre"]) == 0
    (root / "general.yaml").write_text(GENERAL)
    recipe = parse_recipe(GENERAL, source="general.yaml", base_dir=root)
    metrics = run_recipe(recipe, root / "gen", say=lambda m: None)
    return root, recipe, metrics


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_pretrain_trains_a_masked_lm_teacher_that_learns(general):
    root, _, _ = general
    metrics = json.loads((root / "pre" / "metrics.json").read_text())
    teacher = metrics["models"][0]
    assert metrics["task"] == "mlm" and metrics["metric"] == "mlm_accuracy" and len(metrics["models"]) == 1
    assert AutoConfig.from_pretrained(root / "pre" / "teacher").architectures == ["BertForMaskedLM"]
    # chance is 1 in 800 pieces; predicting the most frequent piece everywhere gives about 1%
    assert teacher["average"] > 0.025, teacher["per_language"]
    first = json.loads((root / "pre" / "teacher" / "stage.json").read_text())["history"][0]["dev"]
    assert teacher["dev_average"] > 2 * first  # it kept learning after the first epoch
    recipe = (root / "pre" / "recipe.yaml").read_text()  # the recipe as run: cascade-kd run repeats it
    assert "type: mlm" in recipe and "format: text" in recipe


def test_general_cascade_scores_every_model_on_masked_pieces(general):
    root, _, metrics = general
    rows = {m["name"]: m for m in metrics["models"]}
    assert list(rows) == ["teacher", "ta2", "s1", "direct"]
    for name, layers in (("ta2", 2), ("s1", 1), ("direct", 1)):
        model = AutoModelForMaskedLM.from_pretrained(root / "gen" / "stages" / name)
        assert type(model).__name__ == "BertForMaskedLM" and model.config.num_hidden_layers == layers
        assert set(rows[name]["per_language"]) == set(SIZES) and rows[name]["retention"] is not None
    # distilled top layers keep the teacher's masked-LM head useful: well above the 1% of a constant guess
    assert rows["ta2"]["average"] > 0.5 * rows["teacher"]["average"]
    report = (root / "gen" / "report.md").read_text()
    assert "masked-token accuracy" in report and "masked-LM (general distillation)" in report
    # ta2 has no logit loss: the last epoch is kept; s1 (kl on masked-LM logits) is selected on dev
    assert json.loads((root / "gen" / "stages" / "ta2" / "stage.json").read_text())["dev"] is None
    assert json.loads((root / "gen" / "stages" / "s1" / "stage.json").read_text())["dev"] is not None
    assert any((root / "gen" / "cache").iterdir())  # ta2's hidden states and attentions came from the cache


def test_dev_masks_are_drawn_once_and_train_masks_follow_the_masking_key(general):
    root, recipe, _ = general
    job = prepare(recipe, root / "unused", say=lambda m: None)
    again = prepare(recipe, root / "unused", say=lambda m: None)
    dev = job.encoded["dev"]["en"][1]
    assert [x.label for x in dev] == [x.label for x in again.encoded["dev"]["en"][1]]
    assert all(any(l != IGNORE for l in x.label) for x in dev)
    assert all(any(l != IGNORE for l in x.label) for x in job.encoded["train"]["en"][1])  # static: masked at encode
    dynamic = parse_recipe(GENERAL.replace("masking: static", "masking: dynamic").replace(
        ", train: {teacher_cache: bf16}", ""), source="general.yaml", base_dir=root)
    job = prepare(dynamic, root / "unused", say=lambda m: None)
    assert all(l == IGNORE for x in job.encoded["train"]["en"][1] for l in x.label)  # masked per batch instead
    data, blocks = job.training_data()
    stage_data = job.stage_data(data, blocks, seed=1)
    assert job.masked_lm and stage_data.batch_transform is not None and stage_data.epoch_draw is not None
    draw = stage_data.epoch_draw(0)  # blocks in order: en 0-499, ru 500-699, el 700-799
    counts = {"en": sum(i < 500 for i in draw), "ru": sum(500 <= i < 700 for i in draw), "el": sum(i >= 700 for i in draw)}
    assert counts == language_quotas(SIZES, 0.5) and counts["el"] > SIZES["el"]  # el drawn more often than it occurs


def test_a_general_student_fine_tunes_on_a_task_with_a_recipe_without_stages(general):
    root, _, _ = general
    write_recipe(root, FINETUNE, "finetune.yaml")
    assert main(["run", "finetune.yaml", "--out", "ft"]) == 0
    metrics = json.loads((root / "ft" / "metrics.json").read_text())
    (row,) = metrics["models"]
    assert row["role"] == "teacher" and row["layers"] == 1 and metrics["metric"] == "f1"
    assert row["average"] > 0.1  # a fresh head on the general student's one layer learns the task
    assert AutoConfig.from_pretrained(root / "ft" / "teacher").architectures == ["BertForTokenClassification"]
    # the encoder started from the general student, not from scratch
    general_emb = AutoModelForMaskedLM.from_pretrained(root / "gen" / "stages" / "s1").bert.embeddings.position_embeddings.weight
    from transformers import AutoModelForTokenClassification

    tuned = AutoModelForTokenClassification.from_pretrained(root / "ft" / "teacher").bert.embeddings.position_embeddings.weight
    assert torch.corrcoef(torch.stack([general_emb.flatten(), tuned.flatten()]))[0, 1] > 0.5


def test_eval_measures_cross_lingual_retrieval_with_retention(general, capsys):
    root, _, _ = general
    parallel = root / "parallel"
    parallel.mkdir()
    ru = (root / "text" / "dev-ru.txt").read_text().splitlines()[:40]
    el = (root / "text" / "dev-el.txt").read_text().splitlines()[:40]
    # "translations" that are the sentences themselves (retrieval is perfect) or in reversed order (always wrong)
    (parallel / "tatoeba.rus-eng.rus").write_text("\n".join(ru) + "\n")
    (parallel / "tatoeba.rus-eng.eng").write_text("\n".join(ru) + "\n")
    (parallel / "tatoeba.ell-eng.ell").write_text("\n".join(el) + "\n")
    (parallel / "tatoeba.ell-eng.eng").write_text("\n".join(reversed(el)) + "\n")
    assert main(["eval", "gen", "--split", "dev", "--parallel", "parallel"]) == 0
    metrics = json.loads((root / "gen" / "eval-dev" / "metrics.json").read_text())
    per_model = metrics["retrieval"]["per_model"]
    assert set(per_model) == {"teacher", "ta2", "s1", "direct"}
    distinct = len(set(ru)) / len(ru)
    for name, langs in per_model.items():
        assert langs["rus"]["accuracy"] >= distinct - 1e-9 and langs["ell"]["accuracy"] == 0.0
        assert langs["rus"]["pairs"] == 40
    summary = metrics["retrieval"]["summary"]
    assert summary["s1"]["retention"] == pytest.approx(1.0)  # rus only: ell's teacher score is 0 (undefined)
    report = (root / "gen" / "eval-dev" / "report.md").read_text()
    assert "Cross-lingual sentence retrieval" in report and "Each language has 40 sentence pairs" in report
    assert "(chance under 2.5%)" in report  # 1 in 40
    assert "| rus |" in capsys.readouterr().out
    assert main(["eval", "gen", "--split", "dev", "--parallel", "parallel", "--parallel-languages", "deu"]) == 2
    assert "deu" in capsys.readouterr().err


RECURSIVE = """\
name: general-recursive
seed: 0
task: {type: mlm, max_length: 64}
data:
  languages: [en, ru, el]
  format: text
  train: text/train-{lang}.txt
  dev: text/dev-{lang}.txt
teacher: {model: pre/teacher}
train: {batch_size: 32, epochs: 4, lr: 1.0e-3, precision: fp32}
cascade:
  stages:
    # MiniALBERT in general distillation: one shared layer (the mean of the teacher's 3) applied 3 times
    - name: rec
      student: {kind: recursive, recursions: 3, init: mean}
      losses: {hidden_mse: {layer_map: uniform}, kl: {temperature: 1.0}}
"""


def test_a_recursive_student_is_distilled_on_masked_lm_text_and_fine_tunes_on_a_task(general):
    from transformers import AutoModelForTokenClassification

    root, _, _ = general
    (root / "recursive.yaml").write_text(RECURSIVE)
    assert main(["run", "recursive.yaml", "--out", "gen-rec"]) == 0
    rows = {m["name"]: m for m in json.loads((root / "gen-rec" / "metrics.json").read_text())["models"]}
    model = AutoModelForMaskedLM.from_pretrained(root / "gen-rec" / "stages" / "rec")
    assert type(model).__name__ == "RecursiveForMaskedLM"
    assert model.lm_head.decoder.weight is model.recursive.embeddings.word_embeddings.weight  # tied, as BERT's
    teacher = AutoModelForMaskedLM.from_pretrained(root / "pre" / "teacher")
    # unique parameters: one shared layer (+ adapters) where the teacher has 3 layers
    assert rows["rec"]["params_total"] < rows["teacher"]["params_total"] < rows["rec"]["params_unrolled"] + rows["rec"]["params_embedding"]
    # the masked-LM head (transform and per-piece bias) started from the teacher's and kept it useful
    assert rows["rec"]["average"] > 0.5 * rows["teacher"]["average"], (rows["rec"]["average"], rows["teacher"]["average"])
    assert teacher.cls.predictions.bias.shape == model.lm_head.bias.shape
    # then a task: the recursive encoder gets a token-classification head and is fine-tuned
    write_recipe(root, merge(FINETUNE, {"teacher": {"model": "gen-rec/stages/rec"}}), "finetune-rec.yaml")
    assert main(["run", "finetune-rec.yaml", "--out", "ft-rec"]) == 0
    (row,) = json.loads((root / "ft-rec" / "metrics.json").read_text())["models"]
    assert row["average"] > 0.1
    tuned = AutoModelForTokenClassification.from_pretrained(root / "ft-rec" / "teacher")
    assert type(tuned).__name__ == "RecursiveForTokenClassification"


@pytest.mark.parametrize("change, message", [
    (("format: text", "format: conll"), "task type mlm reads plain text"),
    (("masking: static", "masking: dynamic"), "masking: dynamic draws new masks"),
    (("{hidden_mse: {}, attention_mse: {}}", "{hidden_mse: {}, kl: {}}"), "does not hold masked-LM logits"),
    (("student: {layers: 2}", "student: {kind: bilstm}"), "not bilstm"),
    (("relation_heads: 4", "relation_heads: 5"), "not a multiple of 5"),
    (("kl: {temperature: 1.0}", "kl: {temperature: 1.0, positions: tokens}"), "at the masked positions only"),
    (("relation_heads: 4}", "relation_heads: 4, relations: [key, key]}"), "at most once"),
])
def test_general_recipe_mistakes_are_refused_before_training(general, change, message):
    root, _, _ = general
    text = GENERAL.replace(*change)
    assert text != GENERAL
    with pytest.raises(UserError, match=message) as err:
        prepare(parse_recipe(text, source="general.yaml", base_dir=root), root / "unused", say=lambda m: None)
    assert err.value.where.startswith("general.yaml:")


@pytest.mark.parametrize("flags, message", [
    (["--hidden", "64", "--heads", "3"], "not a multiple of --heads 3"),
    (["--layers", "0"], "--layers 0 is not a positive number"),
    (["--lr", "-1"], "error: --lr: Input should be greater than 0"),
    (["--mask-probability", "1.5"], "error: --mask-probability: "),
    (["--languages", "en", "xx"], "train file of 'xx' not found (check --text; relative paths start from {root})"),
    (["--tokenizer", "/no/such/tokenizer"], "error: --tokenizer: no tokenizer at '/no/such/tokenizer'"),
    (["--model-type", "gpt2"], "error: --model-type/--layers/--hidden/--heads/--intermediate: model type 'gpt2'"),
])
def test_pretrain_flags_are_checked_before_anything_runs(general, flags, message, capsys):
    """Errors name the flag, not a line of the recipe the flags became, nor recipe keys no flag sets."""
    root, _, _ = general
    base = ["pretrain", "--text", "text/train-{lang}.txt", "--dev", "text/dev-{lang}.txt", "--languages", "en",
            "--tokenizer", "ws/tokenizer", "--out", "never"]
    assert main(base + flags) == 2
    err = capsys.readouterr().err
    assert message.format(root=root.resolve()) in err and not (root / "never").exists()
    assert "(flags)" not in err and "train_languages" not in err and len(err.strip().splitlines()) == 1


def test_text_format_needs_task_mlm(general):
    root, _, _ = general
    recipe = Recipe.from_dict(merge(FINETUNE, {"data": {"format": "text"}}), source="f.yaml", base_dir=root)
    with pytest.raises(RecipeError, match="for task type mlm"):
        prepare(recipe, root / "unused", say=lambda m: None)


def test_a_masked_lm_model_loads_and_trims_and_export_says_it_takes_classifiers_only(general, tmp_path, capsys):
    """load_model and trim take every saved model of a run, masked-LM ones included (the trimmed
    student scored with the run's own dev masks); ONNX export takes classifiers and says so."""
    import cascade_kd as ckd

    root, _, metrics = general
    student = root / "gen" / "stages" / "s1"
    model, tokenizer = ckd.load_model(student)
    assert type(model).__name__ == "BertForMaskedLM" and not model.training and len(tokenizer) == model.config.vocab_size
    report = ckd.trim(student, tmp_path / "trimmed", say=lambda m: None)
    run_scores = {m["name"]: m for m in metrics["models"]}["s1"]["per_language"]
    assert report["scores_before"] == pytest.approx(run_scores, abs=1e-12)  # the run's own masks and scoring
    assert set(report["scores_after"]) == set(SIZES) and report["vocab_after"] < report["vocab_before"]
    trimmed, _ = ckd.load_model(tmp_path / "trimmed")
    assert type(trimmed).__name__ == "BertForMaskedLM" and trimmed.config.vocab_size == report["vocab_after"]
    with pytest.raises(UserError, match="the model is a masked-LM model and the recipe's task is token"):
        ckd.trim(student, tmp_path / "wrong", recipe=Recipe.from_dict(FINETUNE, base_dir=root), say=lambda m: None)
    assert main(["export", "--onnx", str(student), "--out", str(tmp_path / "onnx")]) == 2
    assert "export cannot take a model whose config.json architectures are ['BertForMaskedLM']" in capsys.readouterr().err
