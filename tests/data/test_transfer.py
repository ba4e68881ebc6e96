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
    # 400 + 80 examples at batch 32 for 1 epoch: 15 steps (400 alone would be 13)
    stage = json.loads((tmp_path / "run" / "stages" / "student" / MARKER).read_text())
    assert stage["steps"] == 15


def test_a_missing_transfer_file_is_a_clear_error(demo_workspace, tmp_path):
    from cascade_kd.cascade import prepare
    from cascade_kd.config.schema import load_recipe

    for name in ("data", "tokenizer"):
        shutil.copytree(demo_workspace / name, tmp_path / name)
    write_recipe(tmp_path, tiny_recipe(data={"test": None, "transfer": {"en": "nowhere.txt"}}))
    with pytest.raises(DataError) as err:
        prepare(load_recipe(tmp_path / "recipe.yaml"), tmp_path / "run", say=lambda m: None)
    assert "transfer file of 'en' not found" in str(err.value) and "nowhere.txt" in str(err.value)
