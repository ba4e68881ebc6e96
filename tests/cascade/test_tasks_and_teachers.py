"""Every task type and every teacher source through the same pipeline, on tiny generated data."""

import json
import os
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForTokenClassification, BertModel

from cascade_kd.cascade import get_teacher, prepare, run_recipe
from cascade_kd.config.schema import load_recipe
from cascade_kd.students.hub import link_identical_weights, load_checkpoint
from tests.helpers import merge, tiny_recipe, write_recipe

WORDS = "ba be bi bo ka ke ko ri ra ro ta te to na ne no la le lo ma".split()


def _sentence(rng, with_trigger):
    words = [rng.choice(WORDS) + rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
    if with_trigger:
        words.insert(rng.randrange(len(words)), "zuzu")
    return " ".join(words)


def _write_classification(root, fmt):
    rng = random.Random(0)
    for lang in ("aa", "bb"):
        for split, n in (("train", 60), ("dev", 20)):
            rows = []
            for _ in range(n):
                label = rng.random() < 0.5
                a = _sentence(rng, label)
                if fmt == "jsonl":
                    rows.append(json.dumps({"text": a, "label": "yes" if label else "no"}))
                else:  # pair task, header-less TSV: premise, hypothesis, label
                    b = _sentence(rng, False)
                    rows.append(f"{a}\t{b}\t{int(label)}")
            (root / f"{split}-{lang}.{fmt}").write_text("\n".join(rows) + "\n")


def classification_recipe(task: str, fmt: str, tokenizer: Path) -> dict:
    """The tiny recipe on the two made-up languages of `_write_classification` (files beside the
    recipe, no caps), 2 teacher epochs, batches of 16."""
    return tiny_recipe(
        name=None, seed=None,
        task={"type": task, "max_length": 32},
        data={"languages": ["aa", "bb"], "format": fmt, "train": f"train-{{lang}}.{fmt}", "dev": f"dev-{{lang}}.{fmt}",
              "test": None, "max_train_per_language": None, "max_eval_per_language": None},
        teacher={"tokenizer": str(tokenizer), "train": None},
        train={"epochs": 2, "batch_size": 16, "lr": None},
        cascade={"stages": [{"name": "s1", "student": {"layers": 1}}], "direct": None},
    )


@pytest.mark.parametrize("task,fmt", [("sequence", "jsonl"), ("pair", "tsv")])
def test_sequence_and_pair_tasks_run_end_to_end(task, fmt, tmp_path, demo_workspace):
    _write_classification(tmp_path, fmt)
    recipe = load_recipe(write_recipe(tmp_path, classification_recipe(task, fmt, demo_workspace / "tokenizer"), "r.yaml"))
    job = prepare(recipe, tmp_path / "run", say=lambda m: None)
    first = job.encoded["train"]["aa"][1][0]
    if task == "pair":  # both segments are encoded, the second with token type 1
        assert first.token_type_ids.count(1) > 1
    metrics = run_recipe(recipe, tmp_path / "run", say=lambda m: None)
    assert metrics["metric"] == "accuracy" and metrics["task"] == task and metrics["split"] == "dev"
    assert [m["role"] for m in metrics["models"]] == ["teacher", "student"]
    assert sorted(metrics["labels"]) == (["no", "yes"] if task == "sequence" else ["0", "1"])


def _token_recipe(tmp_path, demo_workspace, teacher_block):
    text = (demo_workspace / "recipe.yaml").read_text()
    start, end = text.index("teacher:"), text.index("train:\n")
    text = text[:start] + teacher_block + text[end:]
    for name in ("data", "tokenizer"):
        (tmp_path / name).symlink_to(demo_workspace / name)
    (tmp_path / "r.yaml").write_text(text.replace("languages: [en, de, ru, el]", "languages: [en]"))
    return load_recipe(tmp_path / "r.yaml")


LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


def test_an_already_fine_tuned_teacher_is_not_trained_again(tmp_path, demo_workspace, tokenizer):
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=64, num_labels=7, id2label=dict(enumerate(LABELS)))
    saved = BertForTokenClassification(config)
    saved.save_pretrained(tmp_path / "ft")
    tokenizer.save_pretrained(tmp_path / "ft")
    recipe = _token_recipe(tmp_path, demo_workspace, f"teacher:\n  model: {tmp_path / 'ft'}\n")
    job = prepare(recipe, tmp_path / "run", say=lambda m: None)
    job.out.mkdir()
    teacher, info = get_teacher(job)
    assert info["trained"] is False
    assert job.data.labels == LABELS  # the data follow the checkpoint's label order, not the inferred one
    assert torch.equal(teacher.classifier.weight, saved.classifier.weight)
    # a user's own model directory is copied, never linked
    weights, source = tmp_path / "run" / "teacher" / "model.safetensors", tmp_path / "ft" / "model.safetensors"
    assert source.stat().st_nlink == 1 and weights.stat().st_nlink == 1
    # a finished teacher of a run, loaded and saved unchanged by another run: a hard link, not a second copy
    (tmp_path / "second").mkdir()
    again = _token_recipe(tmp_path / "second", demo_workspace, f"teacher:\n  model: {tmp_path / 'run' / 'teacher'}\n")
    job = prepare(again, tmp_path / "second" / "run", say=lambda m: None)
    job.out.mkdir()
    get_teacher(job)
    linked = tmp_path / "second" / "run" / "teacher" / "model.safetensors"
    assert linked.stat().st_ino == weights.stat().st_ino and weights.stat().st_nlink == 2
    assert torch.equal(load_checkpoint(linked.parent, "token").classifier.weight, saved.classifier.weight)


def test_only_identical_weight_files_are_linked(tmp_path):
    """link_identical_weights links a weight file only where its bytes equal the source's; a later
    rewrite of the source (by rename, as every write here is) leaves the linked copy as it was."""
    source, saved = tmp_path / "source", tmp_path / "saved"
    for d in (source, saved):
        d.mkdir()
    save_file({"w": torch.arange(6.0)}, str(source / "model.safetensors"))
    save_file({"w": torch.arange(6.0)}, str(saved / "model.safetensors"))
    save_file({"p": torch.ones(2)}, str(source / "projections.safetensors"))
    save_file({"p": torch.zeros(2)}, str(saved / "projections.safetensors"))  # same size, other bytes
    (source / "config.json").write_text("{}")
    (saved / "config.json").write_text("{}")  # equal, but not a weight file: never linked
    assert link_identical_weights(saved, [tmp_path / "absent", source]) == ["model.safetensors"]
    assert (saved / "model.safetensors").stat().st_ino == (source / "model.safetensors").stat().st_ino
    assert (saved / "projections.safetensors").stat().st_nlink == 1 and (saved / "config.json").stat().st_nlink == 1
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model.safetensors", "projections.safetensors"]
    save_file({"w": torch.zeros(6)}, str(tmp_path / "new"))
    os.replace(tmp_path / "new", source / "model.safetensors")
    assert torch.equal(load_file(str(saved / "model.safetensors"))["w"], torch.arange(6.0))


def test_a_pretrained_encoder_gets_a_head_and_is_fine_tuned(tmp_path, demo_workspace, tokenizer):
    encoder = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4,
                                   num_attention_heads=2, intermediate_size=64))
    encoder.save_pretrained(tmp_path / "enc")
    recipe = _token_recipe(tmp_path, demo_workspace,
                           f"teacher:\n  model: {tmp_path / 'enc'}\n  tokenizer: tokenizer\n  train: {{epochs: 1}}\n")
    job = prepare(recipe, tmp_path / "run", say=lambda m: None)
    job.out.mkdir()
    teacher, info = get_teacher(job)
    assert info["trained"] is True and info["dev"] is not None
    assert teacher.config.num_labels == 7 and (tmp_path / "run" / "teacher" / "model.safetensors").is_file()
    # the pretrained encoder's layers were the starting point
    assert teacher.bert.embeddings.word_embeddings.weight.shape == encoder.embeddings.word_embeddings.weight.shape


def test_hugging_face_dataset_format(tmp_path, demo_workspace):
    """format: hf goes through datasets.load_dataset; offline with the json builder."""
    pytest.importorskip("datasets", reason="the hub extra (datasets) is not installed")
    _write_classification(tmp_path, "jsonl")
    hf = {"format": "hf", "train": None, "dev": None,
          "hf": {"path": "json", "data_files": {"train": "train-{lang}.jsonl", "dev": "dev-{lang}.jsonl"},
                 "splits": {"train": "train", "dev": "dev"}}}
    recipe = merge(classification_recipe("sequence", "jsonl", demo_workspace / "tokenizer"), {"data": hf})
    job = prepare(load_recipe(write_recipe(tmp_path, recipe, "r.yaml")), tmp_path / "run", say=lambda m: None)
    assert {lang: len(x) for lang, (x, _) in job.encoded["train"].items()} == {"aa": 60, "bb": 60}
    assert sorted(job.data.labels) == ["no", "yes"]


@pytest.mark.parametrize("teacher_block, where_key, message", [
    ("teacher:\n  model: /no/such/model\n", "teacher.model", "no teacher at '/no/such/model': no such directory"),
    ("teacher:\n  model: ./no/such/model\n", "teacher.model", "no teacher at './no/such/model'"),
    # the tokenizer is the model's unless named: a missing tokenizer is placed at its own key
    ("teacher:\n  tokenizer: /no/tok\n  config: {model_type: bert, num_hidden_layers: 2, hidden_size: 32, num_attention_heads: 2}\n",
     "teacher.tokenizer", "no tokenizer at '/no/tok'"),
])
def test_a_teacher_that_is_not_there_is_refused_at_its_recipe_line(tmp_path, demo_workspace, teacher_block,
                                                                   where_key, message):
    """Not the hub's complaint about a repo id, and not a bare key: the file, the line, the key the user wrote."""
    from cascade_kd.errors import RecipeError

    recipe = _token_recipe(tmp_path, demo_workspace, teacher_block)
    line = 1 + (tmp_path / "r.yaml").read_text().splitlines().index(teacher_block.splitlines()[1])
    with pytest.raises(RecipeError, match=message) as err:
        prepare(recipe, tmp_path / "run", say=lambda m: None)
    assert err.value.where == f"{tmp_path / 'r.yaml'}:{line}: {where_key}"
    assert not (tmp_path / "run").exists()
