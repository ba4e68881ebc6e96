"""YAML read safely and with line numbers: limits checked before the document is walked, every key
path mapped to its line, so that errors can say `recipe.yaml:12: cascade.stages.0.student`."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from cascade_kd.config.messages import short
from cascade_kd.errors import RecipeError
from cascade_kd.fileio import read_input

# Limits on the composed YAML document, checked before anything walks it recursively: recipes nest
# a few levels and hold hundreds of values, while aliases can expand a short file exponentially
# ("billion laughs") or point back at their own anchor (an infinite structure).
MAX_DEPTH = 50
MAX_VALUES = 100_000


def _check_depth(text: str, source: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH from the parser's events, which come without recursion:
    the composer would overflow Python's stack on thousands of "[" (slowly: seconds)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1
                raise RecipeError(f"nested more than {MAX_DEPTH} levels deep", where=f"{source}:{line}")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1



def _check_size(node, source: str) -> None:
    """Refuse a document too deep, too large once aliases are expanded, or with a recursive alias;
    and, while walking it, a repeated key or a string that is not valid Unicode."""
    visits = 0
    stack = [(node, 1, frozenset())]  # node, depth, ids of the collections enclosing it
    loader = yaml.SafeLoader("")  # to construct tagged scalars one by one
    while stack:
        node, depth, enclosing = stack.pop()
        visits += 1
        line = node.start_mark.line + 1
        if id(node) in enclosing:
            raise RecipeError("a YAML alias refers to a collection that contains it (an infinite structure)",
                              where=f"{source}:{line}", hint="aliases may only repeat finished sections")
        if depth > MAX_DEPTH:
            raise RecipeError(f"nested more than {MAX_DEPTH} levels deep", where=f"{source}:{line}")
        if visits > MAX_VALUES:
            raise RecipeError(f"more than {MAX_VALUES:,} values once YAML aliases are expanded", where=source,
                              hint="a recipe needs far fewer: check anchors (&) and aliases (*)")
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
            _unique_keys(node, source)
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            try:  # a "\ud800" escape is a lone surrogate: no UTF-8 file (metrics.json, recipe.yaml) can hold it
                node.value.encode("utf-8")
            except UnicodeEncodeError:
                raise RecipeError(f"{short(node.value)} is not valid Unicode (a lone surrogate)",
                                  where=f"{source}:{line}", hint="write the character itself") from None
            if node.tag != "tag:yaml.org,2002:str":
                # an explicit tag on a value that does not fit it (`!!int abc`, `!!timestamp x`) makes
                # safe_load raise ValueError, KeyError or AttributeError, without a line
                try:
                    loader.construct_object(node)
                except yaml.YAMLError:
                    pass  # an unknown tag: safe_load reports it, with its line
                except Exception:  # noqa: BLE001 - whatever the constructor raises, the value is at fault
                    kind = node.tag.rsplit(":", 1)[-1]
                    raise RecipeError(f"{short(node.value)} is not a valid {kind}", where=f"{source}:{line}",
                                      hint=f"remove the !!{kind} tag or fix the value") from None
            continue
        inside = enclosing | {id(node)}
        stack.extend((child, depth + 1, inside) for child in children)



def _unique_keys(node: yaml.MappingNode, source: str) -> None:
    """YAML loaders keep the last of two equal keys without a word: a recipe edited in one place and
    overridden further down. Refuse the repeat (merge keys `<<` may repeat, as YAML allows)."""
    seen: dict[tuple, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = (key_node.tag, key_node.value)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise RecipeError(f"key {short(key_node.value)} appears twice in one section",
                              where=f"{source}:{line}", hint=f"the first is on line {seen[key]}; keep one")
        seen[key] = line



def _line_map(node, path=(), out=None) -> dict[tuple, int]:
    """Map every key path of a composed YAML document to its 1-based line number."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[path + (key,)] = key_node.start_mark.line + 1
            _line_map(value_node, path + (key,), out)
            out[path + (key,)] = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:str":
                # pydantic names a key such as `7:` or `~:` as 7 or 'None': its line, under those too
                value = yaml.SafeLoader("").construct_object(key_node)
                for alias in (value, str(value)):
                    if isinstance(alias, (str, int, float)):
                        out.setdefault(path + (alias,), key_node.start_mark.line + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, path + (i,), out)
    return out



MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page or two: a larger file is not one (and YAML parsing is slow)


def read_text(path: str | Path) -> str:
    """A recipe file's text (UTF-8; any line ends), or a RecipeError that says why it cannot be read:
    not found, not a regular file (a FIFO would block), more than MAX_RECIPE_BYTES."""
    path = Path(path)
    try:
        os.lstat(path)
    except FileNotFoundError:
        raise RecipeError("recipe file not found", where=str(path), hint="check the path") from None
    except (OSError, ValueError):  # e.g. a name too long for the file system: reading says why
        pass
    data = read_input(path, limit=MAX_RECIPE_BYTES, error=RecipeError, what="recipe")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RecipeError(f"cannot decode byte(s) {data[exc.start:exc.end][:8]!r} as UTF-8",
                          where=f"{path}:{line}", hint="save the recipe as UTF-8") from None
    # the universal newlines of read_text(): a lone "\r" ends a line, as it does for YAML
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def parse_yaml(text: str, source: str = "<recipe>") -> tuple[object, dict[tuple, int]]:
    """The document's data and the line of every key path; a RecipeError with the line otherwise."""
    try:
        _check_depth(text, source)  # before compose, which recurses once per level
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _check_size(node, source)  # before safe_load and _line_map walk it
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is None and isinstance(getattr(exc, "position", None), int):  # a ReaderError: a bad character
            mark = yaml.Mark(source, exc.position, text.count("\n", 0, exc.position), 0, None, None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        hint = None
        if problem == "second occurrence" and context and start:  # context: "found duplicate anchor 'a'; first ..."
            problem, hint = context.split(";")[0], f"the first is on line {start.line + 1}"
        elif "<block" in problem:  # e.g. a key indented by one space too many or too few
            hint = "check the indentation: the keys of one section line up, nested keys are indented more"
        elif context and start and mark and start.line != mark.line:  # e.g. an unclosed [ or " further up
            hint = f"{context} that starts on line {start.line + 1}"
        raise RecipeError(f"not valid YAML: {problem}", where=where, hint=hint) from None
    except RecursionError:  # the composer recurses per level: hundreds of [ or { in a row
        raise RecipeError(f"nested more than {MAX_DEPTH} levels deep", where=source) from None
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:  # a constructor's own error
        raise RecipeError(f"not valid YAML: a value does not fit its tag ({type(exc).__name__}: {exc})",
                          where=source) from None
    return data, (_line_map(node) if node is not None else {})
