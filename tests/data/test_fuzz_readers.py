"""Fuzzing every data reader: whatever a file holds, and whatever reader settings a recipe can
give, `read_examples` / `read_label_file` either return well-formed examples or raise a
`UserError` whose message is one printable line naming the file (and the line, where there is
one). Any other exception is a bug.

Files are generated as a nearly valid file of the format, then damaged by a few byte-level
mutations (truncation, random or invalid UTF-8 bytes, NULs, BOMs, mixed line endings, huge fields,
deep JSON, lone-surrogate escapes, wrong column counts), or are random bytes outright.

A few examples per target by default (a few seconds); `CASCADE_KD_FUZZ=N` runs N per target
(`scripts/fuzz_inputs.py` runs 2,000 and prints the counts).
"""

from __future__ import annotations

import codecs
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cascade_kd.data.readers import Example, read_examples, read_label_file
from cascade_kd.errors import UserError

FUZZ_CASES = int(os.environ.get("CASCADE_KD_FUZZ") or 0)
FUZZ = settings(
    max_examples=FUZZ_CASES or 30,  # 7 targets x 30: about 5 s on 2 cores
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

TARGETS = {
    "tsv-sequence": {"fmt": "tsv", "task": "sequence"},
    "tsv-pair": {"fmt": "tsv", "task": "pair"},
    "conll-token": {"fmt": "conll", "task": "token"},
    "jsonl-sequence": {"fmt": "jsonl", "task": "sequence"},
    "jsonl-pair": {"fmt": "jsonl", "task": "pair"},
    "jsonl-token": {"fmt": "jsonl", "task": "token"},
}

# --- generated files ------------------------------------------------------------------------

# Characters that trip readers: NUL, quotes, separators other than "\n" that str.splitlines()
# would split on (\x1c, \x85, \u2028), a BOM mid-file, an astral character, a lone surrogate.
TRICKY = 'ab é文𝄞 \x00"\'\\\x1c\x85\u2028\ufeff\ud800{}[]:,'
PLAIN = st.sampled_from(["a", "bc", "Ωμέγα", "文字", "O", "B-PER", "I-LOC", "en:x", "1"])
ODD = st.text(st.sampled_from(TRICKY), min_size=1, max_size=5) | st.sampled_from(
    ["-DOCSTART-", "", " ", "true", "null"])
WORDS = st.one_of(PLAIN, PLAIN, ODD)  # mostly plain, so that many files parse and the success path is checked too
ROWS = st.lists(st.lists(WORDS, min_size=0, max_size=5), max_size=8)  # any column count, blank rows too


@st.composite
def separated(draw, sep: st.SearchStrategy[str]) -> str:
    """Rows of words joined by `sep` (tabs, spaces or a mix), one row per line."""
    return "\n".join(draw(sep).join(row) for row in draw(ROWS))


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | WORDS
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(WORDS, inner, max_size=3), max_leaves=6
)


def json_file(keys: dict) -> st.SearchStrategy[str]:
    """Lines of objects with the task's keys (values mostly of the right type, some keys missing or
    extra), or any other JSON value; non-ASCII escaped or not (surrogates become \\ud800 escapes)."""
    value = {k: st.one_of(v, v, v, JSON_VALUES) for k, v in keys.items()}
    objects = st.fixed_dictionaries(value, optional={"x": JSON_VALUES}) | st.fixed_dictionaries({}, optional=value)
    line = st.tuples(st.one_of(objects, objects, objects, JSON_VALUES), st.booleans()).map(
        lambda v: json.dumps(v[0], ensure_ascii=v[1] or any("\ud800" <= c <= "\udfff" for c in str(v[0])))
    )
    return st.lists(line, max_size=4).map("\n".join)


TAG_LIST = st.lists(WORDS, min_size=2, max_size=2) | st.lists(WORDS, max_size=3)  # mostly as long as the tokens
LABEL = WORDS | st.integers() | st.booleans()


def valid_rows(columns: int, sep: str = "\t", blank_between: bool = False) -> st.SearchStrategy[str]:
    """A well-formed file: rows of `columns` plain words (sentences split by blank lines for CoNLL)."""
    row = st.lists(PLAIN, min_size=columns, max_size=columns).map(sep.join)
    rows = st.lists(row, min_size=1, max_size=6).map("\n".join)
    return st.lists(rows, min_size=1, max_size=3).map(("\n\n" if blank_between else "\n").join)


def valid_json(keys: dict) -> st.SearchStrategy[str]:
    return st.lists(st.fixed_dictionaries(keys).map(json.dumps), min_size=1, max_size=5).map("\n".join)


PAIR_OF_PLAIN = st.lists(PLAIN, min_size=2, max_size=2)
# Well-formed files of each target, read with default settings: the success path, and the start
# point of most damaged files.
VALID_TEXT = {
    "tsv-sequence": valid_rows(2),
    "tsv-pair": valid_rows(3),
    "conll-token": valid_rows(2, sep="\t", blank_between=True) | valid_rows(3, sep=" ", blank_between=True),
    "jsonl-sequence": valid_json({"text": PLAIN, "label": PLAIN | st.integers() | st.booleans()}),
    "jsonl-pair": valid_json({"text": PLAIN, "text_pair": PLAIN, "label": PLAIN}),
    "jsonl-token": valid_json({"tokens": PAIR_OF_PLAIN, "tags": PAIR_OF_PLAIN}),
    "labels": st.lists(PLAIN, min_size=1, max_size=9, unique=True).map("\n".join),
}
# Nearly valid files: odd words, wrong column counts, missing keys, values of the wrong JSON type.
BASE_TEXT = {
    "tsv-sequence": separated(st.just("\t")),
    "tsv-pair": separated(st.just("\t")),
    "conll-token": separated(st.sampled_from(["\t", " ", "  ", " \t"])),
    "jsonl-sequence": json_file({"text": WORDS, "label": LABEL}),
    "jsonl-pair": json_file({"text": WORDS, "text_pair": WORDS, "label": LABEL}),
    "jsonl-token": json_file({"tokens": TAG_LIST, "tags": TAG_LIST}),
    "labels": separated(st.sampled_from(["", " ", "\t"])),
}

# Byte strings a damaged or foreign file may hold at any point.
SPECIAL_BYTES = [
    b"\x00", b"\xff", b"\xfe", b"\xc3", b"\xe6\x96", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x85",
    b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\r", b"\r\n", b"\n", b"\n\n", b"\t", b" ", b'"', b"\\",
    b"\\ud800", b"\\udc00", b"\\u0000", b"{", b"}", b"[", b"]", b",", b":", b"1e999", b"-DOCSTART-",
    "\u2028".encode(), "\x85".encode(), b"\x1c",
]


@st.composite
def mutation(draw):
    """One way to damage a file, as a function of its bytes."""
    kind = draw(st.sampled_from(["truncate", "insert", "special", "delete", "line_endings", "bom", "huge",
                                 "deep_json", "duplicate_line"]))
    at = draw(st.floats(0, 1))  # a relative position, so it applies to any length
    if kind == "truncate":
        return lambda b: b[: int(len(b) * at)]
    if kind == "insert":
        junk = draw(st.binary(min_size=1, max_size=16))
        return lambda b: b[: int(len(b) * at)] + junk + b[int(len(b) * at):]
    if kind == "special":
        junk = draw(st.sampled_from(SPECIAL_BYTES))
        return lambda b: b[: int(len(b) * at)] + junk + b[int(len(b) * at):]
    if kind == "delete":
        n = draw(st.integers(1, 8))
        return lambda b: b[: int(len(b) * at)] + b[int(len(b) * at) + n:]
    if kind == "line_endings":  # all CRLF, all CR, or mixed
        style = draw(st.sampled_from([b"\r\n", b"\r", b"mixed"]))
        if style == b"mixed":
            return lambda b: b"".join(p + (b"\r\n" if i % 2 else b"\n") for i, p in enumerate(b.split(b"\n")))[:-1]
        return lambda b: b.replace(b"\n", style)
    if kind == "bom":
        bom = draw(st.sampled_from([codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE]))
        return lambda b: bom + b
    if kind == "huge":  # a field past csv's 131,072-character limit, rarely (it costs time)
        size = draw(st.sampled_from([1_000, 10_000, 10_000, 200_000]))
        return lambda b: b[: int(len(b) * at)] + b"x" * size + b[int(len(b) * at):]
    if kind == "deep_json":  # past json's recursion limit
        depth = draw(st.sampled_from([100, 5_000, 100_000]))
        return lambda b: b[: int(len(b) * at)] + b"[" * depth + b[int(len(b) * at):]
    # duplicate_line: a row repeated (a duplicate label, a second header...)
    return lambda b: b + b"\n" + (b.split(b"\n") or [b""])[min(int(at * 3), len(b.split(b"\n")) - 1)]


WRITTEN_AS = ["utf-8"] * 6 + ["latin-1", "utf-16", "utf-16-le", "utf-7"]


@st.composite
def file_bytes(draw, target: str) -> bytes:
    """A nearly valid file of the target's format, damaged a little; or random bytes; or empty."""
    choice = draw(st.sampled_from(
        ["valid"] * 3 + ["nearly valid"] * 2 + ["damaged"] * 6 + ["random", "empty", "blank"]))
    if choice == "random":
        return draw(st.binary(max_size=400))
    if choice == "empty":
        return b""
    if choice == "blank":
        return draw(st.sampled_from([b"\n", b"\r\n\r\n", b" \t \n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\n"]))
    text = draw(VALID_TEXT[target] if choice == "valid" or draw(st.booleans()) else BASE_TEXT[target])
    if choice == "valid":
        return text.encode("utf-8")
    written_as = draw(st.sampled_from(WRITTEN_AS))
    # lone surrogates: as their (invalid) UTF-8/16 bytes where the codec can, else "?"
    data = text.encode(written_as, "surrogatepass" if written_as in ("utf-8", "utf-16", "utf-16-le") else "replace")
    for damage in draw(st.lists(mutation(), min_size=choice == "damaged", max_size=3)):
        data = damage(data)
    return data


# Encodings a recipe can name: text codecs (some decode anything, some produce lone surrogates),
# codecs that are not text encodings, and names that are no codec at all.
ENCODINGS = st.sampled_from(
    ["utf-8"] * 20
    + ["latin-1", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "cp1252", "ascii", "utf-7", "unicode_escape",
       "raw_unicode_escape", "punycode", "idna", "rot13", "base64", "hex", "zlib", "UTF8", "", "no-such-codec"]
)
COLUMN_NAMES = st.sampled_from(
    ["text", "label", "text_pair", "tokens", "tags", "sentence", "premise", "", "a b", "文"])
# mostly unset (the defaults), else any value a recipe's text_column / label_column can hold
TSV_COLUMN = st.one_of([st.none()] * 6 + [st.integers(0, 4), st.integers(-2, 10**20), COLUMN_NAMES])
JSON_COLUMN = st.one_of([st.none()] * 6 + [COLUMN_NAMES, st.integers(0, 2)])


# --- the contract -----------------------------------------------------------------------------


def line_count(data: bytes, encoding: str) -> int:
    """An upper bound on the number of lines a reader can see in `data` (line ends: \n, \r\n, \r)."""
    counts = [data.count(b"\n") + data.count(b"\r") + 1]
    try:
        text = data.decode(encoding, errors="replace")
        counts.append(text.count("\n") + text.count("\r") + 1)
    except (LookupError, UnicodeError, TypeError, ValueError):
        pass
    return max(counts)


def check_error(err: UserError, path: Path, data: bytes, encoding: str) -> None:
    """One printable line: `PATH: what` or `PATH:LINE: what`, the line within the file."""
    msg = str(err)
    assert msg.isprintable(), f"not one printable line: {msg!r}"  # no newline, tab, control character
    assert len(msg) < len(str(path)) + 2_000, f"message of {len(msg)} characters"
    assert msg.startswith(f"{path}:"), msg
    m = re.match(re.escape(str(path)) + r"(?::(\d+))?: (.+)", msg)
    assert m, f"no 'PATH[:LINE]: what' in {msg!r}"
    if m.group(1):
        assert 1 <= int(m.group(1)) <= line_count(data, encoding), f"line {m.group(1)} is past the file's end: {msg}"


def check_examples(examples: list[Example], path: Path, data: bytes, encoding: str, task: str, limit) -> None:
    assert examples and (limit is None or len(examples) <= limit)
    for e in examples:
        m = re.fullmatch(re.escape(str(path)) + r":(\d+)", e.source)
        assert m and 1 <= int(m.group(1)) <= line_count(data, encoding), e.source
        if task == "token":
            assert e.tokens and len(e.tokens) == len(e.tags) and e.text is None
            strings = e.tokens + e.tags
        else:
            assert e.text.strip() and e.label.strip() and (e.text_pair is not None) == (task == "pair")
            strings = [e.text, e.label] + ([e.text_pair] if task == "pair" else [])
        assert all(isinstance(s, str) and s.strip() for s in strings)
        for s in strings:  # texts go to the tokenizer and labels into metrics.json: both need valid UTF-8
            s.encode("utf-8")


def attempt(tally, target: str, read, check_ok, path: Path, data: bytes, encoding: str) -> None:
    """Run one case: a result is checked by `check_ok`, a UserError by the message contract, and
    any other exception is counted (for scripts/fuzz_inputs.py) and fails the test."""
    tally[target]["cases"] += 1
    try:
        result = read()
    except UserError as err:
        tally[target]["UserError"] += 1
        check_error(err, path, data, encoding)
        return
    except Exception:
        tally[target]["other exception"] += 1
        raise
    tally[target]["parsed"] += 1
    check_ok(result)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-readers")


# --- the properties ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # unicode_escape warns on "\\é" and decodes it
@pytest.mark.parametrize("target", list(TARGETS))
@FUZZ
@given(data=st.data())
def test_reader_parses_or_raises_one_line_user_error(fuzz_tally, work, target, data):
    fmt, task = TARGETS[target]["fmt"], TARGETS[target]["task"]
    content = data.draw(file_bytes(target), label="content")
    encoding = data.draw(ENCODINGS, label="encoding")
    kwargs = {"limit": data.draw(st.sampled_from([None, None, None, 1, 3]), label="limit")}
    if fmt == "tsv":  # columns by index or name, header or not, as a recipe may say
        kwargs["header"] = data.draw(st.sampled_from([None, None, True, False]), label="header")
        kwargs["text_column"] = data.draw(TSV_COLUMN, label="text_column")
        kwargs["label_column"] = data.draw(TSV_COLUMN, label="label_column")
        if task == "pair":
            kwargs["text_pair_column"] = data.draw(TSV_COLUMN, label="text_pair_column")
    elif fmt == "jsonl":
        kwargs["text_column"] = data.draw(JSON_COLUMN, label="text_column")
        kwargs["label_column"] = data.draw(JSON_COLUMN, label="label_column")
        if task == "pair":
            kwargs["text_pair_column"] = data.draw(JSON_COLUMN, label="text_pair_column")
    path = work / f"{target}.txt"
    path.write_bytes(content)
    attempt(
        fuzz_tally, target,
        lambda: read_examples(path, fmt=fmt, task=task, lang="en", encoding=encoding, **kwargs),
        lambda examples: check_examples(examples, path, content, encoding, task, kwargs["limit"]),
        path, content, encoding,
    )


@FUZZ
@given(content=file_bytes("labels"))
def test_label_file_parses_or_raises_one_line_user_error(fuzz_tally, work, content):
    path = work / "labels.txt"
    path.write_bytes(content)

    def check_labels(labels):
        assert labels and len(set(labels)) == len(labels)
        assert all(label and label == label.strip() for label in labels)
        for label in labels:
            label.encode("utf-8")

    attempt(fuzz_tally, "labels", lambda: read_label_file(path), check_labels, path, content, "utf-8")


# --- paths, rather than contents ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["x" * 300, "a/" * 3000 + "b", "missing/dir/file.tsv", "."])
def test_unreadable_paths_are_user_errors(tmp_path, name):
    # a name longer than the file system allows made Path.is_dir() raise OSError (ENAMETOOLONG)
    path = tmp_path / name
    for read in (lambda: read_examples(path, fmt="tsv", task="sequence", lang="en"), lambda: read_label_file(path)):
        with pytest.raises(UserError) as info:
            read()
        check_error(info.value, path, b"", "utf-8")


@pytest.mark.parametrize(
    ("content", "encoding", "line", "words"),
    [
        # json's \ud800 escapes and the utf-7 / unicode_escape codecs spell lone surrogates, which the
        # tokenizer (TypeError) and the UTF-8 writes of metrics.json would refuse much later
        (b'{"text": "a", "label": "x"}\n{"text": "\\ud800", "label": "x"}\n', "utf-8", 2, "lone surrogate"),
        (b'{"tokens": ["a", "b"], "tags": ["O", "\\udc00"]}\n', "utf-8", 1, "lone surrogate"),
        (b"a\t1\nb\t+2AA-\n", "utf-7", 2, "lone surrogate"),
        # a decoding error's line is counted in characters: in UTF-16 a 0x0A byte is not always "\n"
        ("\u0a0a\t1\n\u0a0a\t2\n".encode("utf-16-le") + b"\x00\xd8", "utf-16-le", 3, "cannot decode"),
    ],
)
def test_found_by_fuzzing(tmp_path, content, encoding, line, words):
    fmt = "jsonl" if content.startswith(b"{") else "tsv"
    task = "token" if b"tokens" in content else "sequence"
    path = tmp_path / "f.txt"
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        read_examples(path, fmt=fmt, task=task, lang="en", encoding=encoding)
    assert str(info.value).startswith(f"{path}:{line}: ") and words in str(info.value)
