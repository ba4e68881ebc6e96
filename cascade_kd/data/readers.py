"""Readers: turn local data files into `Example`s.

Three formats:
- ``tsv``: tab-separated rows, for sequence and sentence-pair tasks (SIB-200, XNLI, PAWS-X);
- ``conll``: one ``token ... tag`` line per token, blank line between sentences, for token tasks
  (PAN-X, UD POS, CoNLL-2002);
- ``jsonl``: one JSON object per line, for every task.

Anything wrong with a file (missing, undecodable, a short row, bad JSON) raises a `DataError`
that names the file and line, so the user sees what to fix rather than a traceback. No other
exception escapes for any file content.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice

from cascade_kd.errors import DataError
from cascade_kd.fileio import read_input

FORMATS = ("tsv", "conll", "jsonl")
TASKS = ("sequence", "pair", "token")
# The tasks each format can hold.
_FORMAT_TASKS = {"tsv": ("sequence", "pair"), "conll": ("token",), "jsonl": TASKS}


@dataclass
class Example:
    lang: str
    source: str  # "path:line" of the example's first line, for error messages
    text: str | None = None  # sequence / sentence-pair tasks
    text_pair: str | None = None
    label: str | None = None  # sequence tasks (always str; ints in files are kept as their text)
    tokens: list[str] | None = None  # token tasks
    tags: list[str] | None = None  # token tasks, same length as tokens


def read_examples(
    path: str | os.PathLike,
    *,
    fmt: str,
    task: str,
    lang: str,
    text_column: str | int | None = None,
    text_pair_column: str | int | None = None,
    label_column: str | int | None = None,
    header: bool | None = None,
    quoting: str = "none",
    encoding: str = "utf-8",
    limit: int | None = None,
    keep: Callable[[Example], bool] | None = None,
) -> list[Example]:
    """Read the examples of one language from one file.

    `fmt` is "tsv", "conll" or "jsonl"; `task` is "sequence", "pair" or "token". Columns are
    names (tsv with a header, jsonl keys) or 0-based indexes (tsv without a header); see the
    format readers below for defaults. `quoting` ("none" or "csv", tsv only): see `_read_tsv`.
    `limit` keeps only the first `limit` examples (of those `keep` accepts, when given: then an
    empty result is returned, not raised; `keep` saw whether the file had any). Raises
    `DataError` for any problem with the arguments or the file.
    """
    where = str(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}", where=where, hint=f"use one of {', '.join(FORMATS)}")
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}", where=where, hint=f"use one of {', '.join(TASKS)}")
    if task not in _FORMAT_TASKS[fmt]:
        formats = [f for f, tasks in _FORMAT_TASKS.items() if task in tasks]
        raise DataError(
            f"format {fmt!r} cannot hold {task!r} examples", where=where, hint=f"use format {' or '.join(formats)}"
        )
    if not isinstance(lang, str) or not lang.strip():
        raise DataError(f"lang must be a non-empty string, got {lang!r}", where=where)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer, got {limit!r}", where=where)

    if quoting not in ("none", "csv") or (quoting == "csv" and fmt != "tsv"):
        raise DataError(f"quoting {quoting!r} does not apply to {fmt} files", where=where,
                        hint="quoting: csv is for tsv files whose fields are quoted as by the csv module; else none")
    lines = _read_lines(path, encoding)
    if fmt == "tsv":
        examples = _read_tsv(
            lines,
            where,
            task=task,
            lang=lang,
            text_column=text_column,
            text_pair_column=text_pair_column,
            label_column=label_column,
            header=header,
            quoting=quoting,
        )
    elif fmt == "conll":
        if any(c is not None for c in (text_column, text_pair_column, label_column)) or header:
            raise DataError(
                "conll files take no column or header settings",
                where=where,
                hint="the token is the first column and the tag the last",
            )
        examples = _read_conll(lines, where, lang=lang)
    else:
        if header:
            raise DataError("jsonl files have no header", where=where)
        examples = _read_jsonl(
            lines,
            where,
            task=task,
            lang=lang,
            text_column=text_column,
            text_pair_column=text_pair_column,
            label_column=label_column,
        )
    # The readers are generators: stopping at `limit` also stops parsing (and checking) rows there.
    result = list(islice(examples if keep is None else filter(keep, examples), limit))
    if not result and keep is None:
        raise DataError("no examples", where=where, hint="the file is empty or holds only blank or skipped lines")
    return result


def read_transfer_text(path: str | os.PathLike, *, task: str, lang: str, encoding: str = "utf-8",
                       limit: int | None = None, keep: Callable[[Example], bool] | None = None) -> list[Example]:
    """Unlabelled transfer text (XtremeDistil): one example per non-blank line, no labels.

    Token tasks: the line's whitespace-separated words; pair tasks: two texts separated by one tab;
    sequence tasks: the line. The teacher labels these examples (soft targets) during distillation.
    `limit` counts the examples `keep` accepts, when given.
    """
    where = str(path)
    out: list[Example] = []
    for number, line in enumerate(_read_lines(path, encoding), 1):
        if not line.strip():
            continue
        at = f"{where}:{number}"
        if task == "token":
            example = Example(lang=lang, source=at, tokens=line.split())
        elif task == "pair":
            parts = line.split("\t")
            if len(parts) != 2 or not all(part.strip() for part in parts):
                raise DataError(
                    f"a pair task's transfer line needs two texts separated by one tab, found {len(parts)} field(s)",
                    where=at, hint="write TEXT<TAB>TEXT_PAIR on each line",
                )
            example = Example(lang=lang, source=at, text=parts[0], text_pair=parts[1])
        else:
            example = Example(lang=lang, source=at, text=line)
        if keep is None or keep(example):
            out.append(example)
        if limit is not None and len(out) >= limit:
            break
    return out


def read_label_file(path: str | os.PathLike) -> list[str]:
    """Read a label list (e.g. SIB-200's labels.txt): one label per line, blank lines skipped."""
    where = str(path)
    labels: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(_read_lines(path, "utf-8"), 1):
        label = line.strip()
        if not label:
            continue
        if label in first_line:
            raise DataError(
                f"duplicate label {_excerpt(label)} (first on line {first_line[label]})", where=f"{where}:{lineno}"
            )
        first_line[label] = lineno
        labels.append(label)
    if not labels:
        raise DataError("no labels", where=where, hint="write one label per line")
    return labels


# --- reading the file ------------------------------------------------------------------------


def _read_lines(path: str | os.PathLike, encoding: str) -> list[str]:
    """The file's lines, decoded, without line endings ("\\n" or "\\r\\n") or a leading BOM."""
    where = str(path)
    if not isinstance(encoding, str):
        raise DataError(f"encoding must be a string, got {encoding!r}", where=where)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}", where=where, hint="e.g. utf-8 or latin-1") from None
    # a regular file only: a FIFO would block for ever, a character device (/dev/zero) never ends
    data = read_input(path, error=DataError, what="file")
    # Decode the whole file at once, so a bad byte's offset gives its line number.
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        lineno = _line_at(data, err.start, encoding)
        raise DataError(
            f"cannot decode byte(s) {data[err.start:err.end][:8]!r} as {encoding}",
            where=f"{where}:{lineno}",
            hint="set encoding: to the file's encoding, e.g. encoding: latin-1",
        ) from None
    except (UnicodeError, LookupError) as err:  # codecs that are not text encodings, or fail oddly
        raise DataError(f"cannot decode file as {encoding}: {err}", where=where) from None
    # Some codecs (utf-7, unicode_escape) decode to lone surrogates, which no UTF-8 writer or
    # tokenizer accepts: refuse them here, with their line, rather than crash later.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(
            f"the text decoded as {encoding} holds an invalid character {text[err.start]!r} (a lone surrogate)",
            where=f"{where}:{_lines_before(text[:err.start])}",
            hint="set encoding: to the file's encoding, e.g. encoding: utf-8",
        ) from None
    text = text.removeprefix("\ufeff")
    # Universal line ends ("\r\n", "\n", and a lone "\r" as old Mac and some spreadsheet exports
    # write), and only those: str.splitlines() would also split inside texts at \x1c, \x85, \u2028...
    return _LINE_END.split(text)


_LINE_END = re.compile(r"\r\n|\r|\n")


def _line_at(data: bytes, offset: int, encoding: str) -> int:
    """The 1-based line of byte `offset`: counted on the decoded text before it, since in UTF-16
    or UTF-32 a 0x0A byte is not always a line break."""
    try:
        return _lines_before(data[:offset].decode(encoding, errors="replace"))
    except (UnicodeError, LookupError, TypeError):  # a codec that cannot replace: bytes are close enough
        return len(re.split(rb"\r\n|\r|\n", data[:offset]))


def _lines_before(text: str) -> int:
    """The 1-based line on which the end of `text` lies (line ends as `_read_lines` splits them)."""
    return len(_LINE_END.split(text))


# --- tsv ------------------------------------------------------------------------------------


def _read_tsv(
    lines: list[str],
    where: str,
    *,
    task: str,
    lang: str,
    text_column: str | int | None,
    text_pair_column: str | int | None,
    label_column: str | int | None,
    header: bool | None,
    quoting: str = "none",
) -> Iterator[Example]:
    """Tab-separated rows. Columns are names with a header, 0-based indexes without one.

    `quoting="csv"`: a field that starts and ends with a double quote is CSV-quoted (the csv
    module's default dialect with a tab delimiter): the outer quotes go and each "" inside becomes ".
    A quoted field with a lone quote inside is an error (file:line). Fields stay one per line.

    Defaults (by position, with or without a header): sequence -> text 0, label 1; pair -> text 0,
    text_pair 1, label 2. `header=None` means: a header if any column is given by name.
    """
    pair = task == "pair"
    if not pair and text_pair_column is not None:
        raise DataError("text_pair_column is only used by task 'pair'", where=where)
    columns = {"text_column": text_column, "label_column": label_column}
    if pair:
        columns["text_pair_column"] = text_pair_column
    for key, value in columns.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, int) and value < 0):
            raise DataError(f"{key} must be a column name or a 0-based index, got {value!r}", where=where)
    if header is None:
        header = any(isinstance(value, str) for value in columns.values())
    elif not isinstance(header, bool):
        raise DataError(f"header must be true, false or unset, got {header!r}", where=where)
    if not header:
        named = [key for key, value in columns.items() if isinstance(value, str)]
        if named:
            raise DataError(
                f"{named[0]}={columns[named[0]]!r} is a column name but header is false",
                where=where,
                hint="set header: true, or give 0-based column indexes",
            )
    defaults = {"text_column": 0, "text_pair_column": 1, "label_column": 2 if pair else 1}
    columns = {key: defaults[key] if value is None else value for key, value in columns.items()}

    start = 0
    names: list[str] = []
    if header:
        # An empty file has no header line either: let the caller report "no examples".
        if not any(line.strip() for line in lines):
            return
        names = [name.strip() for name in lines[0].split("\t")]
        start = 1
        for key, value in columns.items():
            if isinstance(value, str):
                if value not in names:
                    shown = ", ".join(_excerpt(name) for name in names[:20])
                    raise DataError(
                        f"{key}: no column {value!r} in the header",
                        where=f"{where}:1",
                        hint=f"header columns: {shown}",
                    )
                columns[key] = names.index(value)  # the first one, if a name repeats

    text_i, label_i = columns["text_column"], columns["label_column"]
    pair_i = columns.get("text_pair_column")
    needed = max(columns.values()) + 1

    def describe(index: int) -> str:
        # the header's name, shortened: a header line can be any length
        return f"column {index + 1} ({_excerpt(names[index])})" if index < len(names) else f"column {index + 1}"

    blank_at = None  # first of a run of blank lines: fine at the end of the file, not before a row
    for lineno, line in enumerate(lines[start:], start + 1):
        if not line.strip():
            blank_at = blank_at or lineno
            continue
        if blank_at is not None:
            raise DataError(
                f"blank line inside the file: expected {needed} tab-separated columns, found 0",
                where=f"{where}:{blank_at}",
                hint="remove blank lines between rows",
            )
        at = f"{where}:{lineno}"
        # A plain split on tabs is what csv does with QUOTE_NONE (quotes in texts stay as they are),
        # without csv's 131,072-character field limit and its errors on a stray "\r".
        fields = line.split("\t")
        if quoting == "csv":
            fields = [_unquote(field, at) for field in fields]
        if len(fields) < needed:
            raise DataError(
                f"expected {needed} tab-separated columns, found {len(fields)}",
                where=at,
                hint="columns must be separated by tabs; texts must not contain tabs or line breaks",
            )
        text = fields[text_i]
        if not text.strip():
            raise DataError(f"empty text in {describe(text_i)}", where=at)
        text_pair = None
        if pair_i is not None:
            text_pair = fields[pair_i]
            if not text_pair.strip():
                raise DataError(f"empty text_pair in {describe(pair_i)}", where=at)
        label = fields[label_i].strip()
        if not label:
            raise DataError(f"empty label in {describe(label_i)}", where=at)
        yield Example(lang=lang, source=at, text=text, text_pair=text_pair, label=label)


def _unquote(field: str, at: str) -> str:
    """A CSV-quoted field without its quotes ("a ""b"" c" -> a "b" c); other fields as they are."""
    if len(field) < 2 or field[0] != '"' or field[-1] != '"':
        return field
    inner = field[1:-1]
    if '"' in inner.replace('""', ""):
        raise DataError(f"a quoted field has a lone double quote inside: {_excerpt(field)}", where=at,
                        hint='with quoting: csv, quotes inside a quoted field are doubled (""); or use quoting: none')
    return inner.replace('""', '"')


# --- conll ----------------------------------------------------------------------------------


def _read_conll(lines: list[str], where: str, *, lang: str) -> Iterator[Example]:
    """One token per line (token first column, tag last), blank line between sentences.

    Columns are split on tabs when the line has one (tokens may then hold spaces), else on
    whitespace (CoNLL-2002). `-DOCSTART-` lines end a sentence and are skipped. Raw XTREME PAN-X
    files prefix every token with "<lang>:"; when the file's first token carries the prefix of
    `lang`, it is stripped from every token (the processed files in shared/data have none).
    """
    prefix = f"{lang}:"
    strip_prefix: bool | None = None  # decided on the file's first token
    tokens: list[str] = []
    tags: list[str] = []
    first = 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                yield Example(lang=lang, source=f"{where}:{first}", tokens=tokens, tags=tags)
                tokens, tags = [], []
            continue
        at = f"{where}:{lineno}"
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2:
            raise DataError(
                "expected a token and a tag, found 1 column",
                where=at,
                hint="separate the token and its tag (the last column) by a tab or spaces",
            )
        token, tag = parts[0].strip(), parts[-1].strip()
        if not token:
            raise DataError("empty token in column 1", where=at)
        if not tag:
            raise DataError(f"empty tag in column {len(parts)}", where=at)
        if strip_prefix is None:
            strip_prefix = token.startswith(prefix) and len(token) > len(prefix)
        if strip_prefix and token.startswith(prefix) and len(token) > len(prefix):
            token = token[len(prefix) :]
        if not tokens:
            first = lineno
        tokens.append(token)
        tags.append(tag)
    if tokens:
        yield Example(lang=lang, source=f"{where}:{first}", tokens=tokens, tags=tags)


# --- jsonl ----------------------------------------------------------------------------------


def _read_jsonl(
    lines: list[str],
    where: str,
    *,
    task: str,
    lang: str,
    text_column: str | int | None,
    text_pair_column: str | int | None,
    label_column: str | int | None,
) -> Iterator[Example]:
    """One JSON object per line; blank lines are skipped.

    Keys: sequence `text`, `label`; pair `text`, `text_pair`, `label`; token `tokens`, `tags`.
    `text_column` / `text_pair_column` / `label_column` rename them (for token tasks,
    `text_column` names the tokens and `label_column` the tags). Labels may be strings, ints or
    booleans; ints and booleans keep their JSON text ("1", "true").
    """
    if task != "pair" and text_pair_column is not None:
        raise DataError("text_pair_column is only used by task 'pair'", where=where)
    columns = {"text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column}
    for key, value in columns.items():
        if value is not None and not isinstance(value, str):
            raise DataError(f"{key} must be a JSON key (a string) for jsonl files, got {value!r}", where=where)
    if task == "token":
        keys = {"tokens": text_column or "tokens", "tags": label_column or "tags"}
    else:
        keys = {"text": text_column or "text", "label": label_column or "label"}
        if task == "pair":
            keys["text_pair"] = text_pair_column or "text_pair"
    expected = ", ".join(repr(k) for k in keys.values())

    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        at = f"{where}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"invalid JSON ({err.msg} at column {err.colno})",
                where=at,
                hint="each line must hold one JSON object",
            ) from None
        except (ValueError, RecursionError) as err:  # e.g. a too long integer, too deep nesting
            raise DataError(f"invalid JSON ({type(err).__name__})", where=at) from None
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object with keys {expected}, found {_json_type(obj)}", where=at)
        for key in keys.values():
            if key not in obj:
                raise DataError(f"missing key {key!r}", where=at, hint=f"expected keys: {expected}")
        if task == "token":
            tokens = _string_list(obj, keys["tokens"], at)
            tags = _string_list(obj, keys["tags"], at)
            if len(tokens) != len(tags):
                raise DataError(
                    f"{keys['tokens']!r} has {len(tokens)} items but {keys['tags']!r} has {len(tags)}",
                    where=at,
                    hint="give one tag per token",
                )
            yield Example(lang=lang, source=at, tokens=tokens, tags=tags)
        else:
            text = _text(obj, keys["text"], at)
            text_pair = _text(obj, keys["text_pair"], at) if task == "pair" else None
            label = _label(obj, keys["label"], at)
            yield Example(lang=lang, source=at, text=text, text_pair=text_pair, label=label)


def _text(obj: dict, key: str, at: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(f"{key!r} must be a string, found {_json_type(value)}", where=at)
    if not value.strip():
        raise DataError(f"empty {key!r}", where=at)
    return _valid_unicode(value, repr(key), at)


def _label(obj: dict, key: str, at: str) -> str:
    value = obj[key]
    if isinstance(value, bool):  # before int: bool is an int in Python
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"{key!r} must be a string, an integer or a boolean, found {_json_type(value)}", where=at)
    if not value.strip():
        raise DataError(f"empty {key!r}", where=at)
    return _valid_unicode(value.strip(), repr(key), at)


def _string_list(obj: dict, key: str, at: str) -> list[str]:
    value = obj[key]
    if not isinstance(value, list):
        raise DataError(f"{key!r} must be a list of strings, found {_json_type(value)}", where=at)
    if not value:
        raise DataError(f"empty {key!r}", where=at)
    items = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise DataError(f"{key!r}[{i}] must be a string, found {_json_type(item)}", where=at)
        if not item.strip():
            raise DataError(f"empty string at {key!r}[{i}]", where=at)
        items.append(_valid_unicode(item.strip(), f"{key!r}[{i}]", at))
    return items


def _valid_unicode(value: str, what: str, at: str) -> str:
    """JSON's \\ud800-style escapes can spell lone surrogates, which the tokenizer and every UTF-8
    write (metrics.json, report.md) reject: refuse them while the line is known."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(
            f"{what} holds a lone surrogate {value[err.start]!r}, which is not valid Unicode",
            where=at,
            hint="a character outside the BMP is written as a \\uD8xx\\uDCxx pair or as itself",
        ) from None
    return value


# --- messages -------------------------------------------------------------------------------


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _excerpt(text: str, width: int = 40) -> str:
    """A short repr of possibly huge text, for messages."""
    return repr(text if len(text) <= width else text[:width] + "...")
