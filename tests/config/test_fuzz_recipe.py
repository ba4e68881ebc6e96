"""Fuzzing the recipe loader and the CLI: whatever a recipe file holds, `load_recipe` returns a
Recipe or raises a `UserError` whose message is one printable line naming the file and the line
or key; `cascade-kd run` answers a bad recipe with exit code 2 and exactly one `error:` line.

Recipes are a valid recipe changed at a few keys (values of the wrong type, unknown and
non-string keys, deleted keys, deep nesting, path-like stage names), rendered as YAML in block or
flow style, then sometimes damaged as text (truncation, stray YAML syntax, anchors and aliases
including recursive ones and "billion laughs", BOMs, NULs, mixed line endings, invalid UTF-8), or
are random text outright. A recipe that loads must also be usable: it hashes, dumps, and its stage
names are plain directory names under RUN_DIR.

A few examples per target by default (seconds); `CASCADE_KD_FUZZ=N` runs N per loader target and
N/10 through the CLI (`scripts/fuzz_inputs.py`).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cascade_kd.errors import RecipeError, UserError
from cascade_kd.config.schema import Recipe, TrainConfig, load_recipe

FUZZ_CASES = int(os.environ.get("CASCADE_KD_FUZZ") or 0)
HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
          HealthCheck.filter_too_much]
FUZZ = settings(max_examples=FUZZ_CASES or 40, deadline=None, suppress_health_check=HEALTH)
# the CLI imports transformers and loads a tokenizer per case: a tenth as many
# (capsys and monkeypatch are function-scoped, but each case reads capsys afresh and patches nothing itself)
FUZZ_CLI = settings(max_examples=max(FUZZ_CASES // 10, 5), deadline=None,
                    suppress_health_check=HEALTH + [HealthCheck.function_scoped_fixture])

# A valid recipe (it loads; its files need not exist): every fuzz case starts from it.
BASE = {
    "name": "fuzz",
    "seed": 0,
    "task": {"type": "token", "max_length": 32, "labels": ["O", "B-PER", "I-PER"]},
    "data": {"languages": ["en", "de"], "format": "conll", "train": "data/{lang}/train.conll",
             "dev": "data/{lang}/dev.conll", "max_train_per_language": 20},
    "teacher": {"config": {"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 2,
                           "intermediate_size": 32, "max_position_embeddings": 64},
                "tokenizer": "tokenizer", "train": {"epochs": 1}},
    "train": {"batch_size": 8, "epochs": 1, "lr": 1.0e-3, "precision": "fp32"},
    "cascade": {"losses": {"kl": {"weight": 1.0, "temperature": 2.0}, "hidden_mse": {"weight": 1.0}},
                "stages": [{"name": "ta1", "student": {"layers": 1}, "train": {"epochs": 1}}], "direct": True},
}

# --- generated recipes ------------------------------------------------------------------------

# Strings a recipe value may hold: paths that leave the recipe's folder or RUN_DIR, home-relative
# paths of unknown users, names too long for a file system, control characters, YAML look-alikes.
ODD_STRINGS = st.sampled_from([
    "", " ", "..", ".", "../../x", "/etc/passwd", "/tmp", "a/b", "a\\b", "~", "~no_such_user_x/d", "x" * 300,
    "a/" * 2100, "{lang}", "{lang}/../../{lang}", "\x00", "a\nb", "\t", "\u2028", "\ufeff", "\ud800", "-", ".hidden",
    "teacher", "Direct", "ta1", "TA1", "yes", "null", "1e999", "0x10", "文字", "*a", "&a", "!!binary",
])
SCALARS = (st.none() | st.booleans() | st.integers(-3, 3) | st.integers() | st.sampled_from([2**64, -(2**70), 10**400])
           | st.floats() | st.text(max_size=8) | ODD_STRINGS)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    SCALARS.filter(lambda k: isinstance(k, (str, int, bool, type(None)))), inner, max_size=3), max_leaves=8)
SAME_TYPE = {
    bool: st.booleans(), int: st.integers(-2, 70), float: st.floats(-1, 10, allow_nan=False),
    str: st.sampled_from(["ta2", "a", "token", "sequence", "pair", "conll", "tsv", "jsonl", "hf", "bf16", "auto",
                          "uniform", "top_only", "x.tsv", "en", "dense", "mean"]) | ODD_STRINGS,
    list: st.lists(st.sampled_from(["en", "O", "B-PER", 1, 2, "last"]), max_size=4),
}
KEYS = st.sampled_from(["lerning_rate", "stagess", "layer", "epochs", "name", "x", "_base_dir", "model_config",
                        "__class__", "a\nb", "", "\ud800"]) | st.integers() | st.none() | st.booleans()


def paths_of(node, prefix=()) -> list[tuple]:
    """Every key path of a nested dict/list, the root included."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths_of(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths_of(v, prefix + (i,))
    return out


def nested(value, depth: int):
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def changed_recipe(draw) -> object:
    """BASE with a few keys changed, added or removed (or a top level that is not a mapping)."""
    recipe = copy.deepcopy(BASE)
    if draw(st.integers(0, 30)) == 0:
        return draw(VALUES)  # a list, a scalar, null...
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2, 3]))):
        paths = paths_of(recipe)
        path = paths[draw(st.integers(0, len(paths) - 1))]
        parent = recipe
        for k in path[:-1]:
            parent = parent[k]
        kind = draw(st.sampled_from(["same type"] * 4 + ["value", "value", "stage name", "unknown key", "delete",
                                                         "deep"]))
        if kind == "stage name":
            stages = recipe.get("cascade", {}).get("stages") if isinstance(recipe.get("cascade"), dict) else None
            if isinstance(stages, list) and stages and isinstance(stages[0], dict):
                stages[0]["name"] = draw(ODD_STRINGS | st.text(max_size=6))
        elif not path:
            continue
        elif kind == "same type":  # a value of the key's own type: in range or not
            old = parent[path[-1]]
            parent[path[-1]] = draw(SAME_TYPE.get(type(old), VALUES))
        elif kind == "value":
            parent[path[-1]] = draw(VALUES)
        elif kind == "unknown key" and isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(KEYS)] = draw(SCALARS)
        elif kind == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif kind == "deep":
            parent[path[-1]] = nested(parent[path[-1]], draw(st.sampled_from([5, 60, 120])))
    return recipe


# YAML a person (or an attacker) could add to any line.
SNIPPETS = st.sampled_from([
    "\t", "\x00", "\ufeff", "\r", "\r\n", "\x85", "\u2028", ": ", "- ", "? ", "{", "}", "[", "]", '"', "'", "#",
    "&a ", "*a", "*nope", "<<: *a\n", "!!binary ", "!!python/object:os.system ", "!!set ", "!!timestamp ", "!!int ",
    "!!bool ", "!!float ",
    "%YAML 1.1\n---\n", "---\n", "...\n", "  ", "\n  ", "@", "`", "|", ">",
])


@st.composite
def text_damage(draw):
    kind = draw(st.sampled_from(["snippet", "truncate", "indent", "duplicate line", "delete line", "line endings",
                                 "anchors", "recursive alias", "billion laughs", "deep brackets", "bom"]))
    at = draw(st.floats(0, 1))

    def cut(t):
        return int(len(t) * at)

    if kind == "snippet":
        s = draw(SNIPPETS)
        return lambda t: t[:cut(t)] + s + t[cut(t):]
    if kind == "truncate":
        return lambda t: t[:cut(t)]
    if kind in ("indent", "duplicate line", "delete line"):
        def edit(t):
            lines = t.split("\n")
            i = min(int(at * len(lines)), len(lines) - 1)
            if kind == "indent":
                lines[i] = " " * draw_spaces + lines[i]
            elif kind == "duplicate line":  # a duplicate key
                lines.insert(i, lines[i])
            else:
                del lines[i]
            return "\n".join(lines)
        draw_spaces = draw(st.integers(1, 3))
        return edit
    if kind == "line endings":
        style = draw(st.sampled_from(["\r\n", "\r", "mixed"]))
        if style == "mixed":
            return lambda t: "".join(line + ("\r\n" if i % 2 else "\n") for i, line in enumerate(t.split("\n")))
        return lambda t: t.replace("\n", style)
    if kind == "anchors":  # an anchor on a value, and aliases to it elsewhere
        return lambda t: re.sub(r"(epochs|layers|weight): ", lambda m: f"{m.group(1)}: *v ", t, count=1).replace(
            "seed: ", "seed: &v ", 1)
    if kind == "recursive alias":  # a collection that contains itself
        return lambda t: t + "\nx: &r [1, *r]\n"
    if kind == "billion laughs":
        levels = draw(st.integers(3, 9))
        bomb = "l0: &l0 [a, a, a, a, a, a, a, a, a, a]\n" + "".join(
            f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, levels))
        return lambda t: bomb + t
    if kind == "deep brackets":
        depth = draw(st.sampled_from([60, 400, 5_000]))
        return lambda t: t[:cut(t)] + "[" * depth + "]" * depth + t[cut(t):]
    return lambda t: "\ufeff" + t  # bom


@st.composite
def recipe_bytes(draw) -> bytes:
    """A recipe file: changed, rendered, sometimes damaged as text or bytes, or random outright."""
    choice = draw(st.sampled_from(["changed"] * 6 + ["damaged"] * 4 + ["random text", "random bytes", "empty"]))
    if choice == "random bytes":
        return draw(st.binary(max_size=300))
    if choice == "random text":
        return draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")
    if choice == "empty":
        return draw(st.sampled_from([b"", b"\n", b"# only a comment\n", b"---\n", b"\xef\xbb\xbf"]))
    text = yaml.safe_dump(draw(changed_recipe()), default_flow_style=draw(st.booleans()), sort_keys=False)
    if choice == "damaged":
        for damage in draw(st.lists(text_damage(), min_size=1, max_size=3)):
            text = damage(text)
    data = text.encode("utf-8", "surrogatepass")
    if choice == "damaged" and draw(st.integers(0, 5)) == 0:  # invalid UTF-8, or another encoding
        data = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + data if draw(st.booleans()) \
            else text.encode("utf-16", "surrogatepass")
    return data


# --- the contract -----------------------------------------------------------------------------

YAML_BREAKS = re.compile("\r\n|[\n\r\x85\u2028\u2029]")
# Problems of the whole file, which have no line or key to point at.
FILE_LEVEL = ("not valid YAML", "a recipe is a YAML mapping", "nested more than", "more than 100,000 values",
              "recipe file not found", "cannot read the recipe")


def check_error(err: UserError, path: Path, data: bytes) -> None:
    """One printable line: `PATH:LINE: [key: ]what`, or `PATH: key: what`, or a whole-file problem."""
    msg = str(err)
    assert msg.isprintable(), f"not one printable line: {msg!r}"
    assert len(msg) < len(str(path)) + 2_000, f"message of {len(msg)} characters"
    m = re.match(re.escape(str(path)) + r"(?::(\d+))?: (.+)", msg)
    assert m, f"no 'PATH[:LINE]: what' in {msg!r}"
    line, what = m.group(1), m.group(2)
    if line:
        text = data.decode("utf-8", "replace")
        assert 1 <= int(line) <= len(YAML_BREAKS.split(text)), f"line {line} is past the file's end: {msg}"
    else:  # no line: a key path must say where, unless the problem is the whole file
        assert what.startswith(FILE_LEVEL) or re.match(r"[^ ]+: ", what), f"says neither line nor key: {msg}"


def check_recipe(recipe: Recipe) -> None:
    """A recipe that loads is usable: it hashes and dumps (manifest.json, recipe.yaml), its train
    settings resolve, model paths resolve, and stage names stay one directory under RUN_DIR."""
    recipe.fingerprint()
    dump = recipe.dump()
    # as manifest.json, metrics.json (ensure_ascii=False) and RUN_DIR/recipe.yaml are written: UTF-8
    json.dumps(dump, ensure_ascii=False).encode("utf-8")
    yaml.safe_dump(dump, allow_unicode=True).encode("utf-8")
    assert 0 <= recipe.seed < 2**32
    sections = [(recipe.teacher.train, "teacher.train")] + [
        (s.train, f"cascade.stages[{i}].train") for i, s in enumerate(recipe.cascade.stages)]
    for overrides, where in sections:
        try:
            cfg = recipe.train_for(overrides, where)
        except RecipeError as err:
            assert str(err).isprintable() and where.split(".")[0] in str(err)
            continue
        assert isinstance(cfg, TrainConfig)
        assert all(math.isfinite(v) for v in cfg.model_dump().values() if isinstance(v, float))
    for name in (recipe.teacher.model, recipe.teacher.tokenizer):
        recipe.model_path(name)
    run_dir = Path("/run_dir")
    names = [s.name for s in recipe.cascade.stages]
    assert len({n.casefold() for n in names} | {"teacher", "direct"}) == len(names) + 2
    for name in names:
        assert not name.startswith(".") and "/" not in name and "\\" not in name and "\x00" not in name
        for sub in ("stages", "state"):
            assert (run_dir / sub / name).resolve().parent == run_dir / sub


def attempt(tally, target: str, path: Path, data: bytes):
    tally[target]["cases"] += 1
    try:
        recipe = load_recipe(path)
    except UserError as err:
        tally[target]["UserError"] += 1
        check_error(err, path, data)
        return None
    except Exception:
        tally[target]["other exception"] += 1
        raise
    tally[target]["parsed"] += 1
    check_recipe(recipe)
    return recipe


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-recipe")


# --- the properties ---------------------------------------------------------------------------


@FUZZ
@given(data=recipe_bytes())
def test_recipe_loads_or_raises_one_line_user_error(fuzz_tally, work, data):
    path = work / "recipe.yaml"
    path.write_bytes(data)
    attempt(fuzz_tally, "recipe", path, data)


STAGE_NAMES = st.text(st.sampled_from("aZ09_-./\\ ~\x00\n文"), min_size=0, max_size=8) | ODD_STRINGS


@FUZZ
@given(name=STAGE_NAMES, second=st.sampled_from([None, "ta2", "TA2", "direct"]))
def test_stage_names_cannot_leave_run_dir(fuzz_tally, work, name, second):
    recipe = copy.deepcopy(BASE)
    recipe["cascade"]["stages"][0]["name"] = name
    if second:
        recipe["cascade"]["stages"].append({"name": second, "student": {"layers": 1}})
    path = work / "names.yaml"
    data = yaml.safe_dump(recipe, sort_keys=False).encode("utf-8", "surrogatepass")
    path.write_bytes(data)
    loaded = attempt(fuzz_tally, "recipe stage names", path, data)
    plain = re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", name) and name.casefold() not in ("teacher", "direct")
    assert (loaded is not None) == bool(plain and second != "direct" and (second or "").casefold() != name.casefold())


# --- the path guarantee, by example -------------------------------------------------------------

STAGE_LINE = 'stages: [{name: "ta1", student: {layers: 1}}]'


@pytest.mark.parametrize("name", ["..", ".", "../../outside", "/tmp/abs", "a/b", "a\\\\b", ".hidden", "~", "",
                                  "a\\x00b", "Direct", "TEACHER"])
def test_stage_name_that_is_not_one_plain_directory_is_refused(tmp_path, name):
    text = yaml.safe_dump(BASE, sort_keys=False).replace("name: ta1", f'name: "{name}"')
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    line = next(n for n, t in enumerate(text.split("\n"), 1) if "- name:" in t)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line}: cascade.stages.0") and msg.isprintable()
    assert "stage name" in msg


def test_stage_names_that_differ_only_in_case_are_refused(tmp_path):
    # on macOS and Windows RUN_DIR/stages/TA1 and RUN_DIR/stages/ta1 are the same directory
    recipe = copy.deepcopy(BASE)
    recipe["cascade"]["stages"].append({"name": "TA1", "student": {"layers": 1}})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    with pytest.raises(RecipeError, match="stage names must be unique: TA1, ta1 repeated"):
        load_recipe(path)


@pytest.mark.parametrize(("text", "line", "words"), [
    # recursion: the composer, _line_map and json.dumps (the fingerprint) overflowed or never ended
    ("x: &r [1, *r]\n", 1, "refers to a collection that contains it"),
    ("name: a\nteacher: &t {config: {model_type: bert, self: *t}}\n", 2, "contains it"),
    ("a: " + "[" * 3000 + "]" * 3000 + "\n", 1, "nested more than 50 levels"),
    ("a: " + "[" * 60 + "]" * 60 + "\n", 1, "nested more than 50 levels"),
    # "billion laughs": 10^8 values once aliases are expanded took minutes; now refused at once
    ("l0: &l0 [a, a, a, a, a, a, a, a, a, a]\n" + "".join(
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9)), None, "more than 100,000 values"),
    # a NUL character: the line is now given
    ("name: a\nseed: \x00\n", 2, "unacceptable character #x0000"),
    ("a: &x 1\nb: &x 2\n", 2, "found duplicate anchor 'x' (the first is on line 1)"),
    # the last of two equal keys silently won
    ("name: a\nseed: 1\nseed: 2\n", 3, "key 'seed' appears twice in one section (the first is on line 2"),
    # a key with a "[" was taken for one of pydantic's union tags and dropped: IndexError
    ("name: a\ntas[[x]]k: 1\n", 2, "tas[[x]]k: unknown key 'tas[[x]]k'"),
    # an explicit tag the value does not fit: ValueError, KeyError, AttributeError from PyYAML
    ("name: a\nseed: !!int abc\n", 2, "'abc' is not a valid int"),
    ("name: a\nseed: !!timestamp null\n", 2, "'null' is not a valid timestamp"),
    ("name: a\nseed: !!bool maybe\n", 2, "'maybe' is not a valid bool"),
    # a "\ud800" escape: a lone surrogate, which no UTF-8 file (metrics.json, recipe.yaml) can hold
    ('name: "\\ud800"\n', 1, "is not valid Unicode"),
])
def test_found_by_fuzzing_in_the_yaml(tmp_path, text, line, words):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line}: " if line else f"{path}: "), msg
    assert words in msg and msg.isprintable(), msg


def _set(keys: tuple, value):
    def edit(recipe):
        node = recipe
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return edit


@pytest.mark.parametrize(("edit", "needle", "words"), [
    # a quoted key with a newline split the error message over two lines
    (_set(("train", "a\nb"), 1), "? 'a", "train.'a\\nb': unknown key 'a\\nb'"),
    # a key that is not a string raised TypeError in Recipe(**data) ("keywords must be strings")
    (_set((7,), 2), "7: 2", "7: unknown key 7"),
    # .inf passed gt=0 and crashed the step count (math.ceil) when training started
    (_set(("train", "epochs"), float("inf")), ".inf", "train.epochs: Input should be a finite number"),
    # torch.manual_seed refuses seeds past 64 bits
    (_set(("seed",), 10**20), "seed:", "seed: Input should be less than 4294967296"),
    (_set(("seed",), -1), "seed:", "seed: Input should be greater than or equal to 0"),
    # a huge value was quoted whole in the message
    (_set(("train", "precision"), "x" * 100_000), "precision:", "(got 'xxxxxxxx"),
])
def test_found_by_fuzzing_in_the_values(tmp_path, edit, needle, words):
    recipe = copy.deepcopy(BASE)
    edit(recipe)
    text = yaml.safe_dump(recipe, sort_keys=False)
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    line = next(n for n, t in enumerate(text.split("\n"), 1) if needle in t)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line}: ") and words in msg and msg.isprintable(), msg
    assert len(msg) < len(str(path)) + 300


def test_invalid_utf8_recipe_names_the_line(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(b"name: a\nseed: \xff\n")
    with pytest.raises(RecipeError, match=re.escape(f"{path}:2: cannot decode byte(s) b'\\xff' as UTF-8")):
        load_recipe(path)


def test_recipe_path_too_long_for_the_file_system(tmp_path):
    path = tmp_path / ("x" * 300)  # Path.is_file() raised OSError (ENAMETOOLONG)
    with pytest.raises(RecipeError, match="cannot read the recipe: File name too long"):
        load_recipe(path)


# --- through the CLI ----------------------------------------------------------------------------


@pytest.fixture(autouse=False)
def no_training(monkeypatch):
    """Reaching training means every check passed: the test stops there (nothing is trained)."""
    import cascade_kd.cascade.run as cascade
    import cascade_kd.cascade.stages as stages

    class Reached(Exception):
        pass

    def refuse(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(stages, "train", refuse)
    monkeypatch.setattr(cascade, "get_teacher", refuse)
    return Reached


def run_cli(capsys, recipe: Path, out: Path) -> tuple[int, str]:
    from cascade_kd.cli.app import main

    rc = main(["run", str(recipe), "--out", str(out)])
    return rc, capsys.readouterr().err


def check_cli_error(rc: int, err: str, out: Path) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one 'error:' line, got {err!r}"
    assert not out.exists() or not any(out.iterdir()), "RUN_DIR was written before the checks"


@FUZZ_CLI
@given(data=recipe_bytes())
def test_cli_answers_a_bad_recipe_with_one_error_line(fuzz_tally, work, capsys, data):
    path = work / "cli-recipe.yaml"
    path.write_bytes(data)
    try:
        load_recipe(path)
        assume(False)  # the CLI cases are the recipes that do not load
    except UserError:
        pass
    fuzz_tally["cli: malformed recipe"]["cases"] += 1
    try:
        rc, err = run_cli(capsys, path, work / "run")
    except Exception:
        fuzz_tally["cli: malformed recipe"]["other exception"] += 1
        raise
    check_cli_error(rc, err, work / "run")
    fuzz_tally["cli: malformed recipe"]["UserError"] += 1  # exit 2, one error line


# Values for the recipe keys that name files to read: missing, outside the recipe's folder,
# directories, unknown users' homes, names too long, NULs.
PATHS = st.sampled_from([
    "data/{lang}.conll", "data/{lang}.conll", "data/missing-{lang}.conll", "data", "..", "/", "/etc/passwd",
    "~no_such_user_x/{lang}", "~/{lang}", "x" * 300 + "{lang}", "a/" * 2100 + "{lang}", "data/\x00{lang}", "",
    "data/en.conll", "data/{lang}/../{lang}.conll", "data/bad-{lang}.conll", "data/labels.txt",
])
GOOD_OR_ODD = {"train": st.just("data/{lang}.conll") | PATHS, "dev": st.just("data/{lang}.conll") | PATHS,
               "labels_file": st.none() | st.just("data/labels.txt") | PATHS}  # half of the cases pass each key


@FUZZ_CLI
@given(**GOOD_OR_ODD, tokenizer=st.sampled_from(["TOKENIZER"] * 5 + [
    "~no_such_user_x/tok", "x" * 300, "/nonexistent/tok", "data", "\x00"]), languages=st.sampled_from(
    [["en", "de"]] * 3 + [["en"], ["../en"], ["en", "en"], ["", "de"], ["e\nn"]]))
def test_cli_checks_recipe_paths_before_writing(fuzz_tally, work, capsys, no_training, demo_workspace,
                                                train, dev, labels_file, tokenizer, languages):
    """Through `cascade-kd run` up to training (patched out): the files a recipe names are read with
    UserErrors for every problem; nothing in RUN_DIR is written before they all pass."""
    data_dir = work / "data"
    data_dir.mkdir(exist_ok=True)
    for lang in ("en", "de"):
        (data_dir / f"{lang}.conll").write_text("Ada\tB-PER\nsaw\tO\n\nBo\tB-PER\nran\tO\n", encoding="utf-8")
        (data_dir / f"bad-{lang}.conll").write_bytes(b"Ada\n\xff\tO\n")
    (data_dir / "labels.txt").write_text("O\nB-PER\n", encoding="utf-8")
    recipe = copy.deepcopy(BASE)
    recipe["data"].update(train=train, dev=dev, languages=languages)
    recipe["task"].pop("labels")
    if labels_file is not None:
        recipe["task"]["labels_file"] = labels_file
    recipe["teacher"]["tokenizer"] = str(demo_workspace / "tokenizer") if tokenizer == "TOKENIZER" else tokenizer
    path = work / "paths.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    fuzz_tally["cli: recipe paths"]["cases"] += 1
    out = work / f"run-paths-{fuzz_tally['cli: recipe paths']['cases']}"  # a new RUN_DIR per case
    try:
        rc, err = run_cli(capsys, path, out)
    except no_training:
        fuzz_tally["cli: recipe paths"]["parsed"] += 1  # every check passed: training would start
        return
    except Exception:
        fuzz_tally["cli: recipe paths"]["other exception"] += 1
        raise
    check_cli_error(rc, err, out)
    fuzz_tally["cli: recipe paths"]["UserError"] += 1  # exit 2, one error line
