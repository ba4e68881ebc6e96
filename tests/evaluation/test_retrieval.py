"""Cross-lingual retrieval: accuracy on constructed cases, pooling that ignores padding, the
Tatoeba reader's errors, and (where present) the real Tatoeba files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cascade_kd.errors import DataError, UserError
from cascade_kd.evaluation.retrieval import (
    evaluate_retrieval,
    markdown_table,
    read_parallel,
    retention_table,
    retrieval_accuracy,
    sentence_embeddings,
    tatoeba_pairs,
)

TATOEBA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tatoeba"
WORDS = ["the", "cat", "dog", "sat", "on", "mat", "le", "chat", "chien", "tapis", "der", "hund", "katze", "a", "b"]


@pytest.fixture(scope="module")
def tiny():
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS)}
    tokenizer = BertTokenizer(vocab=vocab)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    return BertModel(config), tokenizer


# --- accuracy -------------------------------------------------------------------------------


def test_accuracy_three_of_four():
    src, tgt = torch.eye(4), torch.eye(4)
    src[3] = torch.tensor([0.0, 0.0, 0.3, 1.0])
    tgt[3] = torch.tensor([0.0, 0.0, 0.5, -1.0])  # source 3's nearest target is now row 2
    assert retrieval_accuracy(src, tgt) == 0.75
    # the other direction: target 3 finds source 2, the rest their own
    assert retrieval_accuracy(tgt, src) == 0.75


def test_accuracy_directions_differ():
    # every target row is nearest to source 0 (a hub), but each source finds its own target
    src = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    tgt = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.6, 0.6], [0.6, 1.0, 0.6]])
    assert retrieval_accuracy(src, tgt) == 1.0
    assert retrieval_accuracy(tgt, src) == pytest.approx(1 / 3)


def test_accuracy_identical_and_permuted():
    torch.manual_seed(0)
    x = torch.randn(50, 8)
    assert retrieval_accuracy(x, x.clone()) == 1.0
    assert retrieval_accuracy(x, 3 * x) == 1.0  # cosine: scale does not matter
    shift = torch.roll(torch.arange(50), 1)  # a permutation with no fixed point
    assert retrieval_accuracy(x, x[shift]) == 0.0


def test_accuracy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        retrieval_accuracy(torch.randn(3, 4), torch.randn(4, 4))


# --- embeddings -----------------------------------------------------------------------------


def test_mean_pooling_ignores_padding(tiny):
    model, tokenizer = tiny
    alone = sentence_embeddings(model, tokenizer, ["the cat"])
    long = " ".join(WORDS * 3)
    batched = sentence_embeddings(model, tokenizer, ["the cat", long], batch_size=2)
    assert alone.dtype == torch.float32 and batched.shape == (2, 16)
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batched[0], batched[1])


def test_order_restored_after_length_sorting(tiny):
    model, tokenizer = tiny
    texts = [" ".join(WORDS[: n]) for n in (9, 1, 5, 12, 3, 7, 2)]  # lengths out of order
    together = sentence_embeddings(model, tokenizer, texts, batch_size=3)
    one_by_one = torch.cat([sentence_embeddings(model, tokenizer, [t]) for t in texts])
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=1e-5)


def test_layer_and_training_mode(tiny):
    model, tokenizer = tiny
    model.train()
    first = sentence_embeddings(model, tokenizer, ["the cat sat"], layer=0)
    assert model.training  # restored
    assert not torch.allclose(first, sentence_embeddings(model, tokenizer, ["the cat sat"]))
    with pytest.raises(ValueError, match="out of range"):
        sentence_embeddings(model, tokenizer, ["the cat"], layer=9)
    model.eval()


def test_heads_and_recursive_models(tiny):
    """Task heads and the package's recursive model return hidden_states too."""
    from transformers import BertConfig, BertForMaskedLM, BertForTokenClassification

    from cascade_kd.students.recursive import RecursiveConfig, RecursiveForSequenceClassification

    _, tokenizer = tiny
    small = {"vocab_size": len(tokenizer), "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 32, "max_position_embeddings": 64}
    models = [BertForMaskedLM(BertConfig(**small)), BertForTokenClassification(BertConfig(**small)),
              RecursiveForSequenceClassification(RecursiveConfig(embedding_size=8, **small))]
    for model in models:
        emb = sentence_embeddings(model, tokenizer, ["the cat", "der hund sat on a mat"])
        assert emb.shape == (2, 16) and torch.isfinite(emb).all()


def test_evaluate_and_tables(tiny):
    model, tokenizer = tiny
    pairs = {"fra": (["le chat", "le chien", "le tapis"], ["the cat", "the dog", "the mat"]),
             "deu": (["der hund", "der katze"], ["the dog", "the cat"])}
    results = evaluate_retrieval(model, tokenizer, pairs, batch_size=2)
    assert set(results) == {"fra", "deu"} and results["fra"]["pairs"] == 3
    for r in results.values():
        assert r["accuracy"] == pytest.approx((r["xx_to_en"] + r["en_to_xx"]) / 2)

    teacher = {"fra": {"accuracy": 0.8}, "deu": {"accuracy": 0.0}}
    student = {"fra": {"accuracy": 0.4}, "deu": {"accuracy": 0.5}}
    table = retention_table({"teacher": teacher, "student": student}, "teacher")
    assert table["student"]["languages"]["fra"] == {"accuracy": 0.4, "retention": 0.5}
    assert table["student"]["languages"]["deu"]["retention"] is None  # the teacher scores 0
    assert table["student"]["retention"] == 0.5 and table["student"]["accuracy"] == pytest.approx(0.45)
    assert table["student"]["worst_language"] == "fra"
    text = markdown_table(table)
    assert "| student | 45.0 | 50.0 | fra (40.0) |" in text
    assert "| deu | 0.0 | 50.0 |" in text
    with pytest.raises(UserError, match="'big'"):
        retention_table({"teacher": teacher}, "big")


# --- reading --------------------------------------------------------------------------------


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_read_parallel(tmp_path):
    a = _write(tmp_path / "a.txt", "eins\r\nzwei \u2028drei\n\nvier\n")
    b = _write(tmp_path / "b.txt", "one\ntwo three\n\nfour")
    assert read_parallel(a, b) == (["eins", "zwei \u2028drei", "", "vier"], ["one", "two three", "", "four"])
    assert read_parallel(a, b, limit=2) == (["eins", "zwei \u2028drei"], ["one", "two three"])


def test_read_parallel_errors(tmp_path):
    a = _write(tmp_path / "a.deu", "eins\nzwei\n")
    b = _write(tmp_path / "b.eng", "one\n")
    with pytest.raises(DataError, match="line counts differ") as err:
        read_parallel(a, b)
    assert str(a) in str(err.value) and str(b) in str(err.value)
    with pytest.raises(DataError, match="not found"):
        read_parallel(a, tmp_path / "missing.eng")
    bad = _write(tmp_path / "bad.eng", b"one\ntw\xffo\n")
    with pytest.raises(DataError, match="UTF-8") as err:
        read_parallel(a, bad)
    assert f"{bad}:2" in str(err.value)
    with pytest.raises(DataError, match="empty"):
        read_parallel(a, _write(tmp_path / "empty.eng", ""))


def test_tatoeba_pairs_languages(tmp_path):
    for lang, text in (("deu", "Hallo\n"), ("fra", "Bonjour\n")):
        _write(tmp_path / f"tatoeba.{lang}-eng.{lang}", text)
        _write(tmp_path / f"tatoeba.{lang}-eng.eng", "Hello\n")
    _write(tmp_path / "README", "not a language")
    assert tatoeba_pairs(tmp_path) == {"deu": (["Hallo"], ["Hello"]), "fra": (["Bonjour"], ["Hello"])}
    assert list(tatoeba_pairs(tmp_path, "fra")) == ["fra"]
    with pytest.raises(DataError, match="did you mean 'fra'") as err:
        tatoeba_pairs(tmp_path, ["fre"])
    assert "deu, fra" in str(err.value)
    with pytest.raises(DataError, match="directory not found"):
        tatoeba_pairs(tmp_path / "nowhere")


def test_real_tatoeba():
    if not TATOEBA.exists():
        pytest.skip(f"real data not available here: {TATOEBA} is missing")
    pairs = tatoeba_pairs(TATOEBA, ["deu", "fra"], limit=50)
    assert set(pairs) == {"deu", "fra"}
    for xx, en in pairs.values():
        assert len(xx) == len(en) == 50
        assert all(s.strip() for s in en) and all(s.strip() for s in xx)
