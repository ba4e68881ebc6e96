"""Unlabelled transfer text (XtremeDistil): read per line, encoded without gold labels, added to
the distillation stages' training data (never the teacher's), and refused clearly when malformed."""

import json
import shutil

import pytest
import torch

from cascade_kd.data.encode import IGNORE, UNLABELLED, encode
from cascade_kd.data.readers import read_transfer_text
from cascade_kd.errors import DataError
from cascade_kd.losses.base import LossTerm, TeacherFeatures
from cascade_kd.losses.logits import HardLabelCE, SoftLogitKL
from cascade_kd.students.features import Features
from cascade_kd.training.task import weighted_losses
from tests.helpers import tiny_recipe, write_recipe

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


def test_lines_become_examples_per_task(tmp_path):
    path = tmp_path / "en.txt"
    path.write_text("Anna lives in Paris .\n\n  \nBerlin is big\tit is\n", encoding="utf-8")
    token = read_transfer_text(path, task="token", lang="en")
    assert [ex.tokens for ex in token] == [["Anna", "lives", "in", "Paris", "."], ["Berlin", "is", "big", "it", "is"]]
    assert token[1].source == f"{path}:4" and token[0].tags is None
    assert [ex.text for ex in read_transfer_text(path, task="sequence", lang="en")][1] == "Berlin is big\tit is"
    assert len(read_transfer_text(path, task="token", lang="en", limit=1)) == 1
    with pytest.raises(DataError) as err:
        read_transfer_text(path, task="pair", lang="en")
    assert f"{path}:1" in str(err.value) and "two texts separated by one tab" in str(err.value)


def test_unlabelled_words_mark_first_subwords_and_sequences_are_ignored(tokenizer, tmp_path):
    path = tmp_path / "en.txt"
    path.write_text("Anna lives in Paris\n", encoding="utf-8")
    examples = read_transfer_text(path, task="token", lang="en")
    (enc,) = encode(examples, tokenizer, task="token", label2id={l: i for i, l in enumerate(LABELS)}, max_length=32)
    first = [i for i, w in enumerate(enc.word_ids) if w is not None and (i == 0 or enc.word_ids[i - 1] != w)]
    assert [i for i, label in enumerate(enc.label) if label == UNLABELLED] == first
    assert all(label == IGNORE for i, label in enumerate(enc.label) if i not in first)
    (seq,) = encode(read_transfer_text(path, task="sequence", lang="en"), tokenizer, task="sequence",
                    label2id={"a": 0}, max_length=32)
    assert seq.label == IGNORE


def test_soft_targets_count_at_unlabelled_positions_and_gold_labels_do_not():
    torch.manual_seed(0)
    labels = torch.tensor([[IGNORE, 2, IGNORE, 0], [IGNORE, UNLABELLED, UNLABELLED, IGNORE]])
    mask = torch.ones(2, 4, dtype=torch.bool)
    s = Features(logits=torch.randn(2, 4, 7), hidden_states=None, attentions=None, attention_mask=mask)
    t = Features(logits=torch.randn(2, 4, 7), hidden_states=None, attentions=None, attention_mask=mask)
    batch = {"labels": labels, "attention_mask": mask.long()}
    kl = LossTerm(1.0, SoftLogitKL(positions="labelled"))
    ce = LossTerm(1.0, HardLabelCE())
    parts = weighted_losses([kl, ce], s, TeacherFeatures(t), batch)
    at = labels != IGNORE  # both gold and unlabelled first sub-words
    torch.testing.assert_close(parts["kl"], SoftLogitKL()(s.logits, t.logits, at))
    gold = labels.masked_fill(labels == UNLABELLED, IGNORE)
    torch.testing.assert_close(parts["ce"], torch.nn.functional.cross_entropy(s.logits.reshape(-1, 7), gold.reshape(-1)))
    assert kl.loss.units(batch).item() == 4 and ce.loss.units(batch).item() == 2


def test_a_stage_trains_on_train_plus_transfer_and_the_teacher_on_train_only(demo_workspace, tmp_path):
    from cascade_kd.cascade import MARKER, run_recipe
    from cascade_kd.config.schema import load_recipe

    for name in ("data", "tokenizer"):
        shutil.copytree(demo_workspace / name, tmp_path / name)
    # the test split's sentences, without their tags, as transfer text
    for lang in ("en", "ru"):
        sentences = (tmp_path / "data" / lang / "test.conll").read_text(encoding="utf-8").strip().split("\n\n")
        lines = [" ".join(row.split("\t")[0] for row in block.splitlines()) for block in sentences[:50]]
        (tmp_path / f"transfer-{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_recipe(tmp_path, tiny_recipe(data={"test": None, "transfer": "transfer-{lang}.txt", "max_transfer_per_language": 40}))
    log = []
    run_recipe(load_recipe(tmp_path / "recipe.yaml"), tmp_path / "run", say=log.append)
    text = "\n".join(log)
    assert "transfer 80" in text  # the data line counts it
    assert "student: + 80 unlabelled transfer examples (en, ru), labelled by the teacher" in text
    assert "teacher: training 2 layers x 32 for 5 epochs on 400 examples" in text  # gold data only
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["data_sizes"]["transfer"] == {"en": 40, "ru": 40}
    card = (tmp_path / "run" / "stages" / "student" / "README.md").read_text(encoding="utf-8")
    assert "Also 80 unlabelled transfer sentences in 2 language(s), labelled by the teacher" in card
    # 400 + 80 examples at batch 32 for 1 epoch: 15 steps (400 alone would be 13)
    stage = json.loads((tmp_path / "run" / "stages" / "student" / MARKER).read_text())
    assert stage["steps"] == 15 and stage["with_transfer"] is True
    # a stage on the labels alone reads no transfer text, and its card does not claim any
    from cascade_kd.evaluation.model_card import write_model_card

    (tmp_path / "run" / "stages" / "student" / MARKER).write_text(json.dumps({**stage, "with_transfer": False}))
    assert "unlabelled transfer sentences" not in write_model_card(tmp_path / "run", "student").read_text()


def test_a_missing_transfer_file_is_a_clear_error(demo_workspace, tmp_path):
    from cascade_kd.cascade import prepare
    from cascade_kd.config.schema import load_recipe

    for name in ("data", "tokenizer"):
        shutil.copytree(demo_workspace / name, tmp_path / name)
    write_recipe(tmp_path, tiny_recipe(data={"test": None, "transfer": {"en": "nowhere.txt"}}))
    with pytest.raises(DataError) as err:
        prepare(load_recipe(tmp_path / "recipe.yaml"), tmp_path / "run", say=lambda m: None)
    assert "transfer file of 'en' not found" in str(err.value) and "nowhere.txt" in str(err.value)


# --- which transfer sentences are kept -----------------------------------------------------------


def _conll(path, sentences):
    """A CoNLL file of `sentences` (words split on spaces), the first word tagged B-PER, the rest O."""
    path.write_text("\n\n".join("\n".join(f"{w}\t{'O' if i else 'B-PER'}" for i, w in enumerate(s.split()))
                                for s in sentences) + "\n", encoding="utf-8")


def _zero_shot_task(tmp_path, **data):
    """en labelled, de zero-shot: each with dev and test sentences of its own."""
    from cascade_kd.config.schema import load_recipe

    _conll(tmp_path / "train-en.conll", ["Anna lives in Paris", "Bob works at Acme"])
    for lang in ("en", "de"):
        _conll(tmp_path / f"dev-{lang}.conll", [f"dev one {lang}", f"dev two {lang}"])
        _conll(tmp_path / f"test-{lang}.conll", [f"test one {lang}", "Berlin"])
    recipe = {"name": "t", "task": {"type": "token"}, "teacher": {"model": "x"},
              "data": {"languages": ["en", "de"], "train_languages": ["en"], "format": "conll",
                       "train": "train-{lang}.conll", "dev": "dev-{lang}.conll", "test": "test-{lang}.conll",
                       "transfer": "transfer-{lang}.txt", **data},
              "cascade": {"stages": [{"name": "s", "student": {"layers": 1}}]}}
    write_recipe(tmp_path, recipe)
    return load_recipe(tmp_path / "recipe.yaml")


def test_a_sentence_met_before_in_its_language_is_left_out_and_the_cap_counts_those_kept(tmp_path):
    from cascade_kd.data.task import load_task_data

    (tmp_path / "transfer-en.txt").write_text(
        "Anna lives in Paris\nnew en one\ndev one en\nnew  en one\ntest one en\nnew en two\nnew en three\n",
        encoding="utf-8")
    # de's text holds en's dev sentence and a test sentence of both: only its own dev/test count
    (tmp_path / "transfer-de.txt").write_text("dev one en\nBerlin\nneu eins\n", encoding="utf-8")
    data = load_task_data(_zero_shot_task(tmp_path, max_transfer_per_language=2))
    assert [ex.tokens for ex in data.transfer["en"]] == [["new", "en", "one"], ["new", "en", "two"]]
    assert [ex.tokens for ex in data.transfer["de"]] == [["dev", "one", "en"], ["neu", "eins"]]
    # en: 3 met (its train, dev and test sentences) and a repeat (spacing aside); de: its own test's "Berlin"
    assert data.notes == ["transfer: kept 4 sentence(s) in 2 language(s); left out 4 already among their "
                          "language's labelled training, dev or test examples and 1 repeated"]
    assert data.transfer["en"][1].source.endswith("transfer-en.txt:6")  # the line it came from


def test_labelled_files_serve_as_transfer_text_without_their_labels(tmp_path):
    """transfer_format: conll reads e.g. every language's train file; English's sentences are all
    labelled training examples, so English gets none (and no error)."""
    from cascade_kd.data.task import load_task_data

    _conll(tmp_path / "train-de.conll", ["Anna wohnt in Paris", "dev one de", "Anna wohnt in Paris", "Bob"])
    data = load_task_data(_zero_shot_task(tmp_path, transfer="train-{lang}.conll", transfer_format="conll"))
    assert list(data.transfer) == ["de"]
    assert [ex.tokens for ex in data.transfer["de"]] == [["Anna", "wohnt", "in", "Paris"], ["Bob"]]
    assert all(ex.tags is None and ex.label is None for ex in data.transfer["de"])
    assert "train" not in {split for split, per_lang in data.splits.items() if "de" in per_lang}  # still zero-shot
    assert data.notes == ["transfer: kept 2 sentence(s) in 1 language(s); left out 3 already among their "
                          "language's labelled training, dev or test examples and 1 repeated; none left in en"]


def test_transfer_format_without_transfer_text_and_an_empty_transfer_file_are_clear_errors(tmp_path):
    from cascade_kd.data.task import load_task_data
    from cascade_kd.errors import RecipeError

    for lang in ("en", "de"):
        (tmp_path / f"transfer-{lang}.txt").write_text("x y\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="data.transfer_format is set but there is no data.transfer"):
        load_task_data(_zero_shot_task(tmp_path, transfer=None, transfer_format="conll"))
    (tmp_path / "transfer-de.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="the transfer file of 'de' has no text"):
        load_task_data(_zero_shot_task(tmp_path))


def test_a_transfer_that_leaves_nothing_is_an_error_and_the_default_format_leaves_the_fingerprint_alone(tmp_path):
    from cascade_kd.data.task import load_task_data

    for lang in ("en", "de"):  # every line is a dev sentence of its own language
        (tmp_path / f"transfer-{lang}.txt").write_text(f"dev one {lang}\ndev two {lang}\n", encoding="utf-8")
    recipe = _zero_shot_task(tmp_path)
    with pytest.raises(DataError, match="every transfer sentence is already a labelled training, dev or test") as err:
        load_task_data(recipe)
    assert "data.transfer" in str(err.value)
    # recipes written before transfer_format hash as before; a set format is part of the recipe
    assert "transfer_format" not in recipe.dump()["data"]
    assert _zero_shot_task(tmp_path, transfer_format="conll").dump()["data"]["transfer_format"] == "conll"
    assert _zero_shot_task(tmp_path, transfer_format="conll").fingerprint() != recipe.fingerprint()


def test_jsonl_transfer_files_beside_tsv_data_are_read_with_jsonl_defaults_and_need_their_label(tmp_path):
    """A sequence task in tsv files with a header; the transfer files are jsonl: the tsv settings
    (header, columns) do not apply to them, and a file without its label column says what to do."""
    from cascade_kd.config.schema import load_recipe
    from cascade_kd.data.task import load_task_data

    for split in ("train", "dev", "test"):
        for lang in ("en", "de"):
            rows = [f"{split} {lang} {i}\t{'ab'[i % 2]}" for i in range(4)]
            (tmp_path / f"{split}-{lang}.tsv").write_text("sentence\ttopic\n" + "\n".join(rows) + "\n",
                                                          encoding="utf-8")
    lines = ['{"text": "neu eins", "label": "a"}', '{"text": "dev  de 1", "label": "b"}', '{"text": "neu zwei"}']
    (tmp_path / "transfer-de.jsonl").write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")
    recipe = {"name": "t", "task": {"type": "sequence"}, "teacher": {"model": "x"},
              "data": {"languages": ["en", "de"], "train_languages": ["en"], "format": "tsv", "header": True,
                       "text_column": "sentence", "label_column": "topic", "train": "train-{lang}.tsv",
                       "dev": "dev-{lang}.tsv", "test": "test-{lang}.tsv", "transfer": {"de": "transfer-de.jsonl"},
                       "transfer_format": "jsonl"},
              "cascade": {"stages": [{"name": "s", "student": {"layers": 1}}]}}
    write_recipe(tmp_path, recipe)
    data = load_task_data(load_recipe(tmp_path / "recipe.yaml"))
    # "dev  de 1" is de's dev sentence, spacing aside
    assert [(ex.text, ex.label) for ex in data.transfer["de"]] == [("neu eins", None)]
    (tmp_path / "transfer-de.jsonl").write_text(lines[2] + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_task_data(load_recipe(tmp_path / "recipe.yaml"))
    assert "transfer-de.jsonl:1" in str(err.value)
    assert "for text without labels use transfer_format: text" in str(err.value)
