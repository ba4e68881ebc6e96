"""Tests for cascade_kd.data.readers: real shared data, malformed small files, and fuzzing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cascade_kd.data.readers import Example, read_examples, read_label_file
from cascade_kd.errors import DataError

# ../shared/data relative to the project root; not part of the project, so tests skip without it.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

NER_TAGS = {"O"} | {f"{p}-{t}" for p in "BI" for t in ("PER", "ORG", "LOC")}
UPOS = set(
    "ADJ ADP ADV AUX CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SCONJ SYM VERB X".split()
)


def shared(relpath: str) -> Path:
    path = SHARED_DATA / relpath
    if not path.exists():
        pytest.skip(f"real-data test: {path} not found (shared data lives in ../shared/data next to the project)")
    return path


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def raises_at(path: Path, line: int | None, **kwargs) -> DataError:
    """Read `path`, expect a DataError whose text names the file (and the line, if given)."""
    with pytest.raises(DataError) as info:
        read_examples(path, **kwargs)
    text = str(info.value)
    assert str(path) in text
    if line is not None:
        assert f"{path}:{line}:" in text, text
    return info.value


TSV_SEQ = {"fmt": "tsv", "task": "sequence", "lang": "en"}
TSV_PAIR = {"fmt": "tsv", "task": "pair", "lang": "en"}
CONLL = {"fmt": "conll", "task": "token", "lang": "en"}
JSONL_SEQ = {"fmt": "jsonl", "task": "sequence", "lang": "en"}
JSONL_PAIR = {"fmt": "jsonl", "task": "pair", "lang": "en"}
JSONL_TOKEN = {"fmt": "jsonl", "task": "token", "lang": "en"}


# --- real data ------------------------------------------------------------------------------


def test_sib200_train_with_header_and_named_columns():
    path = shared("sib200/eng_Latn/train.tsv")
    labels = read_label_file(shared("sib200/labels.txt"))
    assert len(labels) == 7
    examples = read_examples(
        path, fmt="tsv", task="sequence", lang="eng_Latn", text_column="text", label_column="category"
    )
    assert len(examples) == 701
    assert {e.label for e in examples} <= set(labels)
    assert examples[0].source == f"{path}:2"  # line 1 is the header
    assert examples[0].text.startswith("Turkey is encircled")
    assert all(e.lang == "eng_Latn" and e.tokens is None for e in examples)


def test_sib200_quoted_texts_read_as_the_csv_module_reads_them():
    # SIB-200's files are written by a csv writer: texts with quotes are wrapped in quotes, inner
    # quotes doubled. quoting: csv must give exactly what csv.DictReader gives; none keeps them raw.
    import csv

    path = shared("sib200/afr_Latn/train.tsv")
    with open(path, encoding="utf-8", newline="") as handle:
        want = [row["text"] for row in csv.DictReader(handle, delimiter="\t")]
    columns = {"text_column": "text", "label_column": "category"}
    quoted = read_examples(path, fmt="tsv", task="sequence", lang="afr_Latn", quoting="csv", **columns)
    raw = read_examples(path, fmt="tsv", task="sequence", lang="afr_Latn", **columns)
    assert [e.text for e in quoted] == want
    changed = [(r.text, q.text) for r, q in zip(raw, quoted) if r.text != q.text]
    assert changed and all(r.startswith('"') and '""' in r or r == f'"{q}"' for r, q in changed)


def test_tsv_csv_quoting_unquotes_and_refuses_a_lone_quote(tmp_path):
    path = write(tmp_path, "q.tsv", 'text\tlabel\n"say ""hi"" now"\tA\nplain "x" y\tB\n"ab"\t"C"\n')
    got = read_examples(path, **TSV_SEQ, header=True, quoting="csv")
    assert [(e.text, e.label) for e in got] == [('say "hi" now', "A"), ('plain "x" y', "B"), ("ab", "C")]
    bad = write(tmp_path, "bad.tsv", 'text\tlabel\n"fine"\tA\n"a "b" c"\tB\n')
    err = raises_at(bad, 3, **TSV_SEQ, header=True, quoting="csv")
    assert "lone double quote" in err.message
    raises_at(bad, None, fmt="conll", task="token", lang="en", quoting="csv")


@pytest.mark.parametrize("lang", ["en", "de", "ru", "zh"])
def test_panx_dev(lang):
    path = shared(f"panx/dev-{lang}.tsv")
    examples = read_examples(path, fmt="conll", task="token", lang=lang)
    assert len(examples) == 10_000  # XTREME PAN-X dev size for these languages
    for e in examples:
        assert len(e.tokens) == len(e.tags) > 0
        assert set(e.tags) <= NER_TAGS
        assert all(t and not t.startswith(f"{lang}:") for t in e.tokens)


def test_panx_limit_keeps_first_sentences():
    path = shared("panx/dev-en.tsv")
    examples = read_examples(path, fmt="conll", task="token", lang="en", limit=3)
    assert len(examples) == 3
    assert examples[0].source == f"{path}:1"
    assert examples[0].tokens[:3] == ["Sioux", "Falls", "Arena"]


def test_xnli_dev_pairs_without_header():
    path = shared("xnli/dev-en.tsv")
    examples = read_examples(path, fmt="tsv", task="pair", lang="en")
    assert len(examples) == 2490
    assert {e.label for e in examples} == {"entailment", "neutral", "contradiction"}
    first = examples[0]
    assert first.text == "And he said, Mama, I'm home."
    assert first.text_pair == "He called his mom as soon as the school bus dropped him off."


def test_pawsx_dev_has_no_header():
    path = shared("pawsx/dev-en.tsv")
    examples = read_examples(path, fmt="tsv", task="pair", lang="en")
    assert len(examples) == 2000
    assert {e.label for e in examples} == {"0", "1"}
    assert examples[0].source == f"{path}:1"


def test_conll2002_spanish_latin1():
    path = shared("conll2002/esp.train")
    examples = read_examples(path, fmt="conll", task="token", lang="es", encoding="latin-1")
    tokens = {t for e in examples for t in e.tokens}
    assert {"señaló", "compañía"} <= tokens
    assert not any("Ã" in t for t in tokens)  # no UTF-8 read as Latin-1 (mojibake)
    assert examples[0].tokens[:3] == ["Melbourne", "(", "Australia"]
    assert examples[0].tags[:3] == ["B-LOC", "O", "B-LOC"]


def test_conll2002_spanish_as_utf8_points_at_encoding():
    path = shared("conll2002/esp.train")
    err = raises_at(path, None, fmt="conll", task="token", lang="es")
    assert "latin-1" in str(err)
    assert f"{path}:" in str(err)


def test_conll2002_dutch_skips_docstart():
    path = shared("conll2002/ned.train")
    examples = read_examples(path, fmt="conll", task="token", lang="nl", encoding="latin-1")
    assert len(examples) > 10_000
    assert not any("-DOCSTART-" in e.tokens for e in examples)
    # Three columns (token, POS, NER): the tag is the last one.
    assert examples[0].tokens[:2] == ["De", "tekst"]
    assert {t for e in examples for t in e.tags} <= NER_TAGS | {"B-MISC", "I-MISC"}


def test_udpos_dev():
    path = shared("udpos/dev-en.tsv")
    examples = read_examples(path, fmt="conll", task="token", lang="en")
    assert len(examples) > 1000
    assert {t for e in examples for t in e.tags} <= UPOS


# --- small files: well-formed ---------------------------------------------------------------


def test_tsv_sequence_defaults_quotes_crlf_and_trailing_blank_lines(tmp_path):
    path = write(tmp_path, "a.tsv", 'He said "hi\t1\r\nbye "there\t0\r\n\r\n\n')
    examples = read_examples(path, **TSV_SEQ)
    assert [(e.text, e.label) for e in examples] == [('He said "hi', "1"), ('bye "there', "0")]
    assert [e.source for e in examples] == [f"{path}:1", f"{path}:2"]


def test_tsv_header_names_and_indexes(tmp_path):
    path = write(tmp_path, "h.tsv", "id\tlabel\ttext\n7\tsports\tA goal.\n")
    by_name = read_examples(path, **TSV_SEQ, text_column="text", label_column="label")
    assert by_name == [Example(lang="en", source=f"{path}:2", text="A goal.", label="sports")]
    by_index = read_examples(path, **TSV_SEQ, text_column=2, label_column=1, header=True)
    assert by_index == by_name


def test_tsv_pair_header_true_with_default_positions(tmp_path):
    path = write(tmp_path, "p.tsv", "sentence1\tsentence2\tlabel\nA\tB\t1\n")
    [e] = read_examples(path, **TSV_PAIR, header=True)
    assert (e.text, e.text_pair, e.label, e.source) == ("A", "B", "1", f"{path}:2")


def test_tsv_keeps_nul_and_bom_is_dropped(tmp_path):
    path = write(tmp_path, "n.tsv", "\ufeffa\x00b\tx\n")
    [e] = read_examples(path, **TSV_SEQ)
    assert (e.text, e.label) == ("a\x00b", "x")


def test_huge_fields_are_read(tmp_path):
    # Larger than csv's default field limit (131,072 characters).
    text = "x" * 300_000
    path = write(tmp_path, "big.tsv", f"{text}\t1\n")
    [e] = read_examples(path, **TSV_SEQ)
    assert e.text == text
    path = write(tmp_path, "big.jsonl", json.dumps({"text": text, "label": 0}) + "\n")
    [e] = read_examples(path, **JSONL_SEQ)
    assert (e.text, e.label) == (text, "0")


def test_conll_tab_and_space_columns(tmp_path):
    path = write(tmp_path, "c.txt", "-DOCSTART- O\n\nNew York\tB-LOC\nis\tO\n\n\nAda NNP B-PER\n")
    examples = read_examples(path, **CONLL)
    assert [(e.tokens, e.tags) for e in examples] == [(["New York", "is"], ["B-LOC", "O"]), (["Ada"], ["B-PER"])]
    assert [e.source for e in examples] == [f"{path}:3", f"{path}:7"]


def test_conll_strips_language_prefix_of_raw_xtreme_files(tmp_path):
    path = write(tmp_path, "raw.tsv", "en:Paris\tB-LOC\nen:is\tO\n")
    [e] = read_examples(path, **CONLL)
    assert e.tokens == ["Paris", "is"]
    # Another language's prefix, or a file whose first token has none, is left alone.
    [e] = read_examples(path, fmt="conll", task="token", lang="de")
    assert e.tokens == ["en:Paris", "en:is"]


def test_jsonl_all_tasks(tmp_path):
    seq = write(tmp_path, "s.jsonl", '{"text": "hi", "label": 1}\n\n{"text": "yo", "label": true}\n')
    assert [(e.text, e.label) for e in read_examples(seq, **JSONL_SEQ)] == [("hi", "1"), ("yo", "true")]
    pair = write(tmp_path, "p.jsonl", json.dumps({"premise": "a", "hypothesis": "b", "y": "n"}) + "\n")
    [e] = read_examples(pair, **JSONL_PAIR, text_column="premise", text_pair_column="hypothesis", label_column="y")
    assert (e.text, e.text_pair, e.label) == ("a", "b", "n")
    tok = write(tmp_path, "t.jsonl", json.dumps({"tokens": ["a", "b"], "tags": ["O", "B-PER"]}) + "\n")
    [e] = read_examples(tok, **JSONL_TOKEN)
    assert (e.tokens, e.tags, e.source) == (["a", "b"], ["O", "B-PER"], f"{tok}:1")


def test_limit(tmp_path):
    path = write(tmp_path, "l.tsv", "".join(f"t{i}\tx\n" for i in range(10)) + "broken\n")
    assert [e.text for e in read_examples(path, **TSV_SEQ, limit=3)] == ["t0", "t1", "t2"]


def test_read_label_file(tmp_path):
    path = write(tmp_path, "labels.txt", "a\r\n\nb\n")
    assert read_label_file(path) == ["a", "b"]
    dup = write(tmp_path, "dup.txt", "a\nb\na\n")
    with pytest.raises(DataError, match=r"dup\.txt:3: duplicate label 'a' \(first on line 1\)"):
        read_label_file(dup)
    with pytest.raises(DataError, match="no labels"):
        read_label_file(write(tmp_path, "empty.txt", "\n"))


# --- small files: malformed -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "kwargs", "line", "words"),
    [
        ("a\t1\nshort\n", TSV_SEQ, 2, "expected 2 tab-separated columns, found 1"),
        ("a\tb\t1\na\tb\n", TSV_PAIR, 2, "expected 3 tab-separated columns, found 2"),
        ("a\t1\n \t1\n", TSV_SEQ, 2, "empty text"),
        ("a\t1\nb\t \n", TSV_SEQ, 2, "empty label"),
        ("a\t1\n\nb\t1\n", TSV_SEQ, 2, "blank line"),
        ("text\tlabel\n", {**TSV_SEQ, "text_column": "sentence"}, 1, "no column 'sentence'"),
        ("tok\tO\nlonely\n", CONLL, 2, "expected a token and a tag, found 1 column"),
        ("tok\tO\n\tO\n", CONLL, 2, "empty token"),
        ("tok\tO\ntok\t\n", CONLL, 2, "empty tag"),
        ('{"text": "a", "label": "x"}\n{"text": "a", \n', JSONL_SEQ, 2, "invalid JSON"),
        ("[1, 2]\n", JSONL_SEQ, 1, "expected a JSON object"),
        ('{"text": "a"}\n', JSONL_SEQ, 1, "missing key 'label'"),
        ('{"text": 3, "label": "x"}\n', JSONL_SEQ, 1, "'text' must be a string"),
        ('{"text": "a", "label": 1.5}\n', JSONL_SEQ, 1, "'label' must be a string, an integer or a boolean"),
        ('{"text": "a", "label": "x"}\n', JSONL_PAIR, 1, "missing key 'text_pair'"),
        ('{"tokens": ["a", "b"], "tags": ["O"]}\n', JSONL_TOKEN, 1, "'tokens' has 2 items but 'tags' has 1"),
        ('{"tokens": ["a", 1], "tags": ["O", "O"]}\n', JSONL_TOKEN, 1, "'tokens'[1] must be a string"),
        ("[" * 100_000 + "\n", JSONL_SEQ, 1, "invalid JSON"),
    ],
)
def test_malformed_content(tmp_path, content, kwargs, line, words):
    path = write(tmp_path, "bad.txt", content)
    err = raises_at(path, line, **kwargs)
    assert words in str(err)


def test_wrong_encoding_names_line_and_suggests_latin1(tmp_path):
    path = write(tmp_path, "latin.tsv", "ok\t1\n".encode() + "señal\t1\n".encode("latin-1"))
    err = raises_at(path, 2, **TSV_SEQ)
    assert "encoding" in str(err) and "latin-1" in str(err)
    [_, e] = read_examples(path, **TSV_SEQ, encoding="latin-1")
    assert e.text == "señal"


def test_missing_file_directory_and_empty_file(tmp_path):
    err = raises_at(tmp_path / "nope.tsv", None, **TSV_SEQ)
    assert "file not found" in str(err)
    err = raises_at(tmp_path, None, **TSV_SEQ)
    assert "directory" in str(err)
    for kwargs in (TSV_SEQ, CONLL, JSONL_SEQ):
        err = raises_at(write(tmp_path, "empty.txt", "\n\n"), None, **kwargs)
        assert "no examples" in str(err)
    err = raises_at(write(tmp_path, "docs.txt", "-DOCSTART- O\n"), None, **CONLL)
    assert "no examples" in str(err)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fmt": "csv", "task": "sequence"},
        {"fmt": "tsv", "task": "ner"},
        {"fmt": "tsv", "task": "token"},
        {"fmt": "conll", "task": "sequence"},
        {"fmt": "tsv", "task": "sequence", "limit": 0},
        {"fmt": "tsv", "task": "sequence", "encoding": "no-such-codec"},
        {"fmt": "tsv", "task": "sequence", "text_column": "text", "header": False},
        {"fmt": "tsv", "task": "sequence", "text_pair_column": 1},
        {"fmt": "jsonl", "task": "sequence", "text_column": 0},
    ],
)
def test_bad_arguments_are_data_errors(tmp_path, kwargs):
    path = write(tmp_path, "a.tsv", "a\t1\n")
    with pytest.raises(DataError) as info:
        read_examples(path, lang="en", **kwargs)
    assert str(path) in str(info.value)


# --- fuzzing: any content gives examples or a DataError, nothing else -------------------------

# Random bytes and text, plus nearly well-formed files, so that the fuzzing reaches both the
# error paths and the paths that return examples.
PIECES = st.sampled_from(
    ["\t", "\n", "\r\n", "\r", " ", "\x00", '"', "'", "a", "é", "文", "O", "B-PER", "1", "-DOCSTART-", "en:",
     "{", "}", "[", "]", ",", ":", '"text"', '"label"', '"text_pair"', '"tokens"', '"tags"', "true", "null"]
)
WORDS = st.text(st.sampled_from('ab é"\'\x00\r\x85文'), min_size=1, max_size=4) | st.sampled_from(
    ["O", "B-PER", "en:x", ""]
)
ROWS = st.lists(st.lists(WORDS, min_size=1, max_size=4), max_size=8)
TSV_TEXT = ROWS.map(lambda rows: "\n".join("\t".join(row) for row in rows))
CONLL_TEXT = ROWS.map(lambda rows: "\n".join(" ".join(row) if row[0] == "a" else "\t".join(row) for row in rows))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def json_lines(required: dict) -> st.SearchStrategy[str]:
    """Lines of objects with the task's keys (values mostly of the right type), or other JSON."""
    objects = st.fixed_dictionaries(
        {key: st.one_of(value, value, value, JSON_VALUES) for key, value in required.items()},
        optional={"x": JSON_VALUES},
    )
    lines = st.one_of(objects, objects, objects, JSON_VALUES)
    return st.lists(lines, max_size=3).map(lambda vs: "\n".join(json.dumps(v) for v in vs))


LABELS = WORDS | st.integers() | st.booleans()
TAG_LISTS = st.lists(WORDS, min_size=2, max_size=2)  # tokens and tags of the same length, mostly
NEAR_VALID = {
    "tsv": TSV_TEXT,
    "conll": CONLL_TEXT,
    "sequence": json_lines({"text": WORDS, "label": LABELS}),
    "pair": json_lines({"text": WORDS, "text_pair": WORDS, "label": LABELS}),
    "token": json_lines({"tokens": TAG_LISTS, "tags": TAG_LISTS}),
}
ANY_TEXT = st.text(max_size=300) | st.lists(PIECES, max_size=60).map("".join)
COMBOS = [TSV_SEQ, TSV_PAIR, CONLL, JSONL_SEQ, JSONL_PAIR, JSONL_TOKEN]


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: f"{c['fmt']}-{c['task']}")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]),
    written_as=st.sampled_from([None, None, None, "utf-8", "latin-1"]),  # None: the encoding read with
    header=st.sampled_from([None, True, False]),
    limit=st.sampled_from([None, None, 1, 3]),
)
def test_any_content_gives_examples_or_data_error(tmp_path, combo, data, encoding, written_as, header, limit):
    near_valid = NEAR_VALID[combo["task"] if combo["fmt"] == "jsonl" else combo["fmt"]]
    content = data.draw(st.one_of(st.binary(max_size=300), ANY_TEXT, near_valid, near_valid), label="content")
    path = tmp_path / "fuzz.txt"
    if isinstance(content, str):
        content = content.encode(written_as or encoding, "replace")
    path.write_bytes(content)
    if combo["fmt"] != "tsv":
        header = None if header is None else False  # header=True is an argument error there
    try:
        examples = read_examples(path, **combo, encoding=encoding, header=header, limit=limit)
    except DataError as err:
        assert str(path) in str(err)
        event("DataError")
        return
    event("examples")
    assert examples and all(isinstance(e, Example) for e in examples)
    assert limit is None or len(examples) <= limit
    for e in examples:
        assert e.source.startswith(f"{path}:")
        if combo["task"] == "token":
            assert e.tokens and len(e.tokens) == len(e.tags)
        else:
            assert e.text and e.label and (e.text_pair is not None) == (combo["task"] == "pair")
