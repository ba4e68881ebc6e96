"""Training only the word-embedding rows the data uses (cascade_kd/students/embedding_rows.py): the same
forward pass, the same weights as dense training without weight decay, unused rows untouched,
and a plain model again after training, however training ends."""

import pytest
import torch
from tests.helpers import tiny_bert
from torch import nn

from cascade_kd.data.encode import encode
from cascade_kd.data.readers import read_examples
from cascade_kd.students.embedding_rows import (
    SeenRowsEmbedding,
    merge_seen_rows,
    restrict_to_seen_rows,
)
from cascade_kd.losses.base import LossTerm
from cascade_kd.losses.logits import HardLabelCE
from cascade_kd.training.data import StageData
from cascade_kd.training.loop import TrainingError, train
from cascade_kd.training.task import DistillationTask
from cascade_kd.students import build_student
from cascade_kd.config.schema import StudentConfig, TrainConfig

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
CE = [LossTerm(1.0, HardLabelCE())]


@pytest.fixture(scope="module")
def train_data(demo_workspace, tokenizer):
    examples = read_examples(demo_workspace / "data" / "en" / "train.conll", fmt="conll", task="token", lang="en", limit=48)
    return encode(examples, tokenizer, task="token", label2id={l: i for i, l in enumerate(LABELS)}, max_length=64)


def _cfg(**kw):
    return TrainConfig(**{"epochs": 2, "batch_size": 16, "lr": 1e-2, "precision": "fp32", "warmup_ratio": 0.0, **kw})


def test_the_restricted_table_reads_like_the_original_and_trains_only_its_rows():
    table = nn.Embedding(10, 4)
    restricted = SeenRowsEmbedding(table, torch.tensor([2, 5, 7]))
    ids = torch.tensor([[0, 2, 5], [7, 9, 2]])
    torch.testing.assert_close(restricted(ids), table.weight[ids].detach(), rtol=0, atol=0)
    restricted(ids).sum().backward()
    assert table.weight.grad is None  # the full table is frozen
    # d(sum)/d(row) = number of occurrences: id 2 twice, 5 once, 7 once
    torch.testing.assert_close(restricted.trained.grad, torch.tensor([2.0, 1.0, 1.0])[:, None].expand(3, 4))


def test_seen_rows_train_to_the_dense_weights_without_weight_decay(train_data):
    teacher = tiny_bert(layers=2)
    dense = build_student(teacher, StudentConfig(layers=2))
    sparse = build_student(teacher, StudentConfig(layers=2))
    for model, rows in ((dense, "all"), (sparse, "seen")):
        torch.manual_seed(0)  # the same dropout draws (the engine leaves the global RNG to its caller)
        train(DistillationTask(model, CE), StageData(train_data), _cfg(weight_decay=0.0, embedding_rows=rows))
    assert type(sparse.get_input_embeddings()) is nn.Embedding  # merged back: a plain model
    before = teacher.bert.embeddings.word_embeddings.weight
    assert not torch.equal(dense.bert.embeddings.word_embeddings.weight, before)  # the rows did train
    for (name, a), b in zip(dense.state_dict().items(), sparse.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_unused_rows_keep_their_values_exactly_where_dense_training_decays_them(train_data):
    teacher = tiny_bert(layers=2)
    used = sorted({i for x in train_data for i in x.input_ids})
    unused = torch.ones(teacher.config.vocab_size, dtype=torch.bool)
    unused[used] = False
    before = teacher.bert.embeddings.word_embeddings.weight.detach().clone()
    for rows, unchanged in (("seen", True), ("all", False)):
        student = build_student(teacher, StudentConfig(layers=2))
        train(DistillationTask(student, CE), StageData(train_data), _cfg(weight_decay=0.1, embedding_rows=rows))
        after = student.bert.embeddings.word_embeddings.weight.detach()
        assert torch.equal(after[unused], before[unused]) is unchanged, rows
        assert not torch.equal(after[used], before[used])


def test_frozen_or_tied_embeddings_are_left_alone():
    student = build_student(tiny_bert(layers=2), StudentConfig(layers=1, freeze_embeddings=True))
    assert restrict_to_seen_rows(student, [[1, 2, 3]]) is None  # frozen: no row is trained
    assert type(student.get_input_embeddings()) is nn.Embedding
    from transformers import BertConfig, BertForMaskedLM

    mlm = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, tie_word_embeddings=True))
    assert restrict_to_seen_rows(mlm, [[1, 2]]) == "the word embeddings are tied to the output layer"
    assert not merge_seen_rows(mlm)


def test_a_failed_stage_still_leaves_a_plain_model(train_data):
    class Exploding(HardLabelCE):
        def forward(self, logits, labels):
            return logits.sum() * float("inf")

    student = build_student(tiny_bert(layers=2), StudentConfig(layers=1))
    with pytest.raises(TrainingError):
        train(DistillationTask(student, [LossTerm(1.0, Exploding())]), StageData(train_data), _cfg())
    assert type(student.get_input_embeddings()) is nn.Embedding
    assert student.bert.embeddings.word_embeddings.weight.requires_grad
