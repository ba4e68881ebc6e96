"""Vocabulary trimming: kept rows and ids, unchanged tokenisation and logits on kept text, the
rebuilt fast tokenizer (read back with the tokenizers library), MLM output layers, coverage figures
on a constructed case, the loud report, and `trim_model_dir` on a saved model of a run."""

import json
from pathlib import Path

import pytest
import torch
from tests.helpers import merge, shared_data, tiny_bert, tiny_recipe, write_recipe
from tokenizers import Tokenizer

from cascade_kd.errors import UserError
from cascade_kd.students import build_student
from cascade_kd.students.hub import save_checkpoint
from cascade_kd.config.schema import StudentConfig
from cascade_kd.cli.app import main as cli_main
from cascade_kd.deploy.trim import coverage, kept_ids, trim_model_dir, trim_vocabulary


def _sentences(workspace, lang, split, n=None):
    blocks = (workspace / "data" / lang / f"{split}.conll").read_text(encoding="utf-8").strip().split("\n\n")
    return [[line.split("\t")[0] for line in block.splitlines()] for block in blocks[:n]]


def _quiet(_message):
    pass


@pytest.mark.parametrize("kind", ["bert", "bilstm"])
def test_kept_rows_ids_tokenisation_and_logits(demo_workspace, tokenizer, tmp_path, kind):
    model = tiny_bert(vocab=len(tokenizer)).eval()
    if kind == "bilstm":
        model = build_student(model, StudentConfig(kind="bilstm", hidden=8, embedding_size=16)).eval()
    train = {"en": _sentences(demo_workspace, "en", "train", 120), "de": _sentences(demo_workspace, "de", "train", 120)}
    new_model, new_tok, report = trim_vocabulary(model, tokenizer, train, say=_quiet)
    kept = kept_ids(tokenizer, train)
    assert report["vocab_after"] == len(kept) == len(new_tok) < len(tokenizer)
    assert set(tokenizer.all_special_ids) <= set(kept)
    # the rows of kept pieces are the original rows, in the new id order (the original order, renumbered)
    old_rows, new_rows = model.get_input_embeddings().weight, new_model.get_input_embeddings().weight
    assert new_rows.shape[0] == len(kept) and new_model.config.vocab_size == len(kept)
    id2token = {i: t for t, i in tokenizer.get_vocab().items()}
    for new, old in enumerate(kept):
        assert torch.equal(new_rows[new], old_rows[old])
        assert new_tok.convert_ids_to_tokens(new) == id2token[old]
    assert new_model.config.pad_token_id == new_tok.pad_token_id == kept.index(tokenizer.pad_token_id)
    # kept text: the same pieces under the new ids, and the same logits, on a padded batch
    old2new = {old: new for new, old in enumerate(kept)}
    words = train["de"][:8]
    before = tokenizer(words, is_split_into_words=True, padding=True, return_tensors="pt")
    after = new_tok(words, is_split_into_words=True, padding=True, return_tensors="pt")
    assert after["input_ids"].tolist() == [[old2new[i] for i in row] for row in before["input_ids"].tolist()]
    assert [new_tok.tokenize(" ".join(w)) for w in words] == [tokenizer.tokenize(" ".join(w)) for w in words]
    with torch.no_grad():
        assert torch.equal(new_model(**after).logits, model(**before).logits)
    # the saved tokenizer.json, read by the tokenizers library itself, is the same working tokenizer
    save_checkpoint(new_model, new_tok, tmp_path / "trimmed")
    fast = Tokenizer.from_file(str(tmp_path / "trimmed" / "tokenizer.json"))
    for w in words:
        assert fast.encode(w, is_pretokenized=True).ids == [old2new[i] for i in tokenizer(w, is_split_into_words=True)["input_ids"]]
    assert fast.get_vocab_size() == len(kept)
    # a word none of whose pieces can be formed from the kept ones is [UNK]
    assert new_tok.tokenize("Ωμέγα") == ["[UNK]"] and fast.encode("Ωμέγα").tokens == ["[CLS]", "[UNK]", "[SEP]"]


def _toy_tokenizer():
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "ab", "##b", "x", "y", "##y", "z"]
    return BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=False)


def test_coverage_figures_and_the_loud_report_on_a_constructed_case():
    tok = _toy_tokenizer()
    assert tok.tokenize("ab xy z") == ["ab", "x", "##y", "z"]
    model = tiny_bert(vocab=len(tok), hidden=8, heads=2, layers=1).eval()
    train = {"en": ["ab a", "ab"], "xx": ["x"]}  # keeps ab, a, x and the 5 specials
    heldout = {"en": ["ab a ab"], "xx": ["x xy"], "zz": ["z y"]}
    lines = []
    _, new_tok, report = trim_vocabulary(model, tok, train, heldout_by_language=heldout, say=lines.append)
    assert new_tok.get_vocab() == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "a": 5, "ab": 6, "x": 7}
    cov = report["coverage"]
    # en: every piece kept, no [UNK] before or after
    assert cov["en"] == {"chosen": True, "pieces_before": 3, "pieces_after": 3, "unk_share_before": 0.0,
                         "unk_share_after": 0.0, "unk_increase_pp": 0.0, "dropped_share": 0.0, "hurt": False}
    # xx: "x xy" was x, x, ##y; ##y is dropped, so "xy" cannot be formed: x, [UNK] -> 1 of 2 pieces
    assert (cov["xx"]["pieces_before"], cov["xx"]["pieces_after"]) == (3, 2)
    assert cov["xx"]["dropped_share"] == pytest.approx(1 / 3) and cov["xx"]["unk_share_after"] == pytest.approx(0.5)
    assert cov["xx"]["unk_increase_pp"] == pytest.approx(50.0) and cov["xx"]["hurt"]
    # zz was not chosen: reported, never a warning
    assert cov["zz"]["unk_share_after"] == 1.0 and not cov["zz"]["chosen"] and not cov["zz"]["hurt"]
    assert len(report["warnings"]) == 1 and "xx" in report["warnings"][0]
    assert [line for line in lines if line.startswith("WARNING")] == [f"WARNING: {report['warnings'][0]}"]
    assert "+50.00 points" in report["warnings"][0]
    # the threshold is what decides: 60 points allowed, no warning
    _, _, lenient = trim_vocabulary(model, tok, train, heldout_by_language=heldout, max_unk_increase=60, say=_quiet)
    assert not lenient["warnings"] and not lenient["coverage"]["xx"]["hurt"]
    # min_count: pieces seen fewer times are dropped too
    assert kept_ids(tok, train, min_count=2) == [0, 1, 2, 3, 4, 7]  # only ab is seen twice
    # parameters: 13 -> 8 rows of 8
    assert report["params_before"] - report["params_after"] == (13 - 8) * 8
    # a word WordPiece cannot finish ("zz": z, then no ##z) is one [UNK], before any trimming
    assert coverage(tok, ["ab zz"]) == {"pieces": 2, "unk": 1, "unk_share": 0.5}


def test_an_mlm_output_layer_is_trimmed_with_the_embeddings(tokenizer, demo_workspace):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=64)).eval()
    with torch.no_grad():
        model.cls.predictions.bias.normal_()
    train = {"ru": _sentences(demo_workspace, "ru", "train", 60)}
    new_model, new_tok, _ = trim_vocabulary(model, tokenizer, train, say=_quiet)
    kept = kept_ids(tokenizer, train)
    assert new_model.cls.predictions.decoder.weight is new_model.bert.embeddings.word_embeddings.weight  # still tied
    words = train["ru"][:4]
    with torch.no_grad():
        before = model(**tokenizer(words, is_split_into_words=True, padding=True, return_tensors="pt")).logits
        after = new_model(**new_tok(words, is_split_into_words=True, padding=True, return_tensors="pt")).logits
    assert torch.allclose(after, before[..., kept], atol=1e-6)


def test_the_real_mbert_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(shared_data("tokenizers", "mbert-cased"))
    model = tiny_bert(vocab=len(tok), hidden=8, heads=2, layers=1).eval()
    train = {"en": ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France."],
             "de": ["Der schnelle braune Fuchs springt über den faulen Hund.", "Berlin ist die Hauptstadt Deutschlands."]}
    heldout = {"de": ["Der Hund springt über den Fuchs."], "el": ["Η Αθήνα είναι η πρωτεύουσα της Ελλάδας."]}
    new_model, new_tok, report = trim_vocabulary(model, tok, train, heldout_by_language=heldout, say=_quiet)
    assert len(new_tok) == report["vocab_after"] < 100 and report["params_saved_share"] > 0.99
    kept = kept_ids(tok, train)
    old2new = {old: new for new, old in enumerate(kept)}
    text = "Der Hund springt über Paris."  # kept pieces only (spring ##t: a sub-word split)
    assert new_tok.tokenize(text) == tok.tokenize(text) == ["Der", "Hund", "spring", "##t", "über", "Paris", "."]
    assert new_tok(text)["input_ids"] == [old2new[i] for i in tok(text)["input_ids"]]
    save_checkpoint(new_model, new_tok, tmp_path / "m")
    fast = Tokenizer.from_file(str(tmp_path / "m" / "tokenizer.json"))
    assert fast.encode(text).ids == new_tok(text)["input_ids"]
    enc_old, enc_new = tok(text, return_tensors="pt"), new_tok(text, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(new_model(**enc_new).logits, model(**enc_old).logits)
    assert report["coverage"]["de"]["unk_increase_pp"] == 0 and not report["warnings"]
    assert report["coverage"]["el"]["unk_share_after"] > 0.5  # not chosen: reported


def test_a_unigram_tokenizer(tmp_path):
    from tokenizers import SentencePieceUnigramTokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    corpus = ["the quick brown fox jumps over the lazy dog", "der schnelle braune fuchs springt über den hund",
              "paris is the capital of france", "berlin ist die hauptstadt"] * 10
    sp = SentencePieceUnigramTokenizer()
    sp.train_from_iterator(corpus, vocab_size=60, special_tokens=["<pad>", "<unk>", "<s>", "</s>"], unk_token="<unk>")
    sp.post_processor = TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    PreTrainedTokenizerFast(tokenizer_object=sp._tokenizer, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(tmp_path / "sp")
    tok = AutoTokenizer.from_pretrained(tmp_path / "sp")
    model = tiny_bert(vocab=len(tok), hidden=8, heads=2, layers=1).eval()
    train = {"en": corpus[:1] + corpus[2:3]}
    new_model, new_tok, _ = trim_vocabulary(model, tok, train, say=_quiet)
    assert len(new_tok) < len(tok)
    old2new = {old: new for new, old in enumerate(kept_ids(tok, train))}
    text = "the lazy dog is the capital"
    assert new_tok.tokenize(text) == tok.tokenize(text)
    assert new_tok(text)["input_ids"] == [old2new[i] for i in tok(text)["input_ids"]]
    with torch.no_grad():
        assert torch.equal(new_model(**new_tok(text, return_tensors="pt")).logits, model(**tok(text, return_tensors="pt")).logits)


def trim_recipe(root: Path, **changes) -> dict:
    """The recipe of the saved run that is trimmed (its data is the demo's, under `root`): only its
    data and labels are read, so the teacher is a 1-layer config and there is no train section."""
    return tiny_recipe(root, name="trim", seed=None, **merge({
        "data": {"max_train_per_language": 150, "max_eval_per_language": 40},
        "teacher": {"config": {"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": None,
                               "max_position_embeddings": None}, "train": None},
        "train": None,
        "cascade": {"stages": [{"name": "s", "student": {"layers": 1}}], "direct": None},
    }, changes))


def _saved_run(tmp_path: Path, recipe: dict, tokenizer) -> Path:
    """A run directory with `recipe` and a tiny untrained model of its labels at stages/s."""
    from cascade_kd.data.task import load_task_data
    from cascade_kd.students.hub import label_config
    from cascade_kd.config.schema import load_recipe

    run = tmp_path / "run"
    run.mkdir()
    write_recipe(run, recipe)
    (run / "manifest.json").write_text("{}")
    labels = load_task_data(load_recipe(run / "recipe.yaml")).labels
    model = tiny_bert(vocab=len(tokenizer), num_labels=len(labels))
    model.config.update(label_config(labels))
    save_checkpoint(model, tokenizer, run / "stages" / "s")
    return run


def test_trim_a_saved_model_of_a_run(demo_workspace, tokenizer, tmp_path, capsys):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    run = _saved_run(tmp_path, trim_recipe(demo_workspace), tokenizer)
    lines = []
    report = trim_model_dir(run / "stages" / "s", languages=["en"], say=lines.append)
    out = run / "stages" / "s" / "trimmed"
    assert json.loads((out / "trim.json").read_text()) == report
    assert report["heldout_split"] == "test" and report["languages"] == ["en"]
    assert report["size_saved_share"] > 0.2 and report["params_after"] < report["params_before"]
    # ru was not chosen: it loses its pieces (reported, no warning); en's coverage decides the warning
    assert report["coverage"]["ru"]["unk_share_after"] > 0.5 and not report["coverage"]["ru"]["hurt"]
    assert bool(report["warnings"]) == (report["coverage"]["en"]["unk_increase_pp"] > 1.0)
    # the trimmed directory stands alone: Auto classes, and scored by the run's evaluation code
    trimmed = AutoModelForTokenClassification.from_pretrained(out)
    assert trimmed.config.vocab_size == len(AutoTokenizer.from_pretrained(out)) == report["vocab_after"]
    for lang in ("en", "ru"):
        assert 0 <= report["scores_after"][lang] <= 1
    if report["coverage"]["en"]["dropped_share"] == 0:
        assert report["scores_after"]["en"] == report["scores_before"]["en"]
    assert any(line.startswith("trim: en test score") for line in lines)
    # the Python API takes the recipe as an object or a dict as well as a path: the same trim
    import cascade_kd as ckd

    for name, recipe in (("object", ckd.Recipe.from_yaml(run / "recipe.yaml")), ("dict", trim_recipe(demo_workspace))):
        again = ckd.trim(run / "stages" / "s", tmp_path / name, recipe=recipe, languages=["en"], say=_quiet)
        assert again["vocab_after"] == report["vocab_after"] and again["scores_after"] == report["scores_after"]
    # refusals: an existing output, --strict on a hurt language (nothing written), a missing directory
    with pytest.raises(UserError, match="already exists"):
        trim_model_dir(run / "stages" / "s", languages=["en"], say=_quiet)
    with pytest.raises(UserError, match="hurts"):
        trim_model_dir(run / "stages" / "s", tmp_path / "strict", languages=["en"], max_unk_increase=-1, strict=True,
                       score=False, say=_quiet)
    assert not (tmp_path / "strict").exists()
    with pytest.raises(UserError, match="no training data for xx"):
        trim_model_dir(run / "stages" / "s", tmp_path / "x", languages=["xx"], say=_quiet)
    assert cli_main(["trim", str(tmp_path / "missing")]) == 2 and "no such model directory" in capsys.readouterr().err


def test_trim_keeps_the_pieces_of_the_transfer_text_unless_told_not_to(demo_workspace, tokenizer, tmp_path):
    # XtremeDistil students train their embeddings on the unlabelled transfer text as well: trimming to
    # the labelled text alone would throw away rows the student learned
    ru_words = [line.split("\t")[0] for line in (demo_workspace / "data" / "ru" / "train.conll").read_text().splitlines()
                if line.strip()]
    (tmp_path / "transfer-en.txt").write_text(" ".join(ru_words[:400]) + "\n")  # en transfer text in other words
    recipe = trim_recipe(demo_workspace, data={"transfer": {"en": str(tmp_path / "transfer-en.txt")}})
    run = _saved_run(tmp_path, recipe, tokenizer)
    lines = []
    both = trim_model_dir(run / "stages" / "s", tmp_path / "both", languages=["en"], score=False, say=lines.append)
    gold = trim_model_dir(run / "stages" / "s", tmp_path / "gold", languages=["en"], score=False, with_transfer=False,
                          say=_quiet)
    assert both["transfer_included"] == ["en"] and gold["transfer_included"] == []
    assert any("transfer text (en)" in line for line in lines)
    assert both["vocab_after"] > gold["vocab_after"]
    from transformers import AutoTokenizer

    text = " ".join(ru_words[:400])
    original = tokenizer(text, add_special_tokens=False)["input_ids"]
    for out, unk_free in ((tmp_path / "both", True), (tmp_path / "gold", False)):
        trimmed = AutoTokenizer.from_pretrained(out)
        pieces = trimmed(text, add_special_tokens=False)["input_ids"]
        unknown = pieces.count(trimmed.unk_token_id)
        # with the transfer pieces kept, the transfer text tokenises as before, [UNK]-free where it was
        assert (unknown == original.count(tokenizer.unk_token_id)) == unk_free, (out, unknown)


def test_the_trim_subcommand_of_the_cli(tmp_path, capsys):
    assert cli_main(["trim", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such model directory" in err and "Traceback" not in err
