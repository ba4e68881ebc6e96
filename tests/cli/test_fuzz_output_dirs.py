"""Fuzzing the output rule of every command that writes (run, export, trim, eval): whatever the
output path is (a directory, a symbolic link to one, a dangling link, a file, a path under a file,
the command's own input) and whatever it holds (a user's files and hidden files, links out of it,
files named like cascade-kd's, a valid marker of this or another command, an edited or damaged
one, a run's manifest, nested outputs with their own markers), the command either refuses with a
UserError, changing nothing, or goes ahead and changes only what it may:
- never an entry the directory's marker (or, for directories written before markers, its
  legacy content) does not give to this command; never anything under a nested output that has
  its own marker; never anything a symbolic link points to;
- afterwards the directory holds a valid marker of this command.
Any other exception is a bug. The test draws the tree and knows, independently of the code under
test, which markers it wrote valid.

A few examples per command by default; `CASCADE_KD_FUZZ=N` runs N per command (scripts/fuzz_inputs.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cascade_kd.errors import UserError
from cascade_kd.outdir import LOCK, MARKER, make_marker, read_marker
from tests.helpers import snapshot

FUZZ_CASES = int(os.environ.get("CASCADE_KD_FUZZ") or 0)
FUZZ = settings(max_examples=FUZZ_CASES or 25, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
COMMANDS = ["run", "export", "trim", "eval"]

RECIPE = {
    "name": "fuzz", "seed": 0, "task": {"type": "token", "max_length": 32, "labels": ["O", "B-PER"]},
    "data": {"languages": ["en"], "format": "conll", "train": "train.conll", "dev": "dev.conll"},
    "teacher": {"config": {"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 2,
                           "intermediate_size": 32, "max_position_embeddings": 64}, "tokenizer": "tokenizer"},
    "train": {"batch_size": 8, "epochs": 1},
    "cascade": {"stages": [{"name": "s", "student": {"layers": 1}}]},
}

# names a user's folder might hold, and names cascade-kd writes (in runs, exports, trims, evals)
NAMES = st.sampled_from([
    "manifest.json", MARKER, LOCK, "teacher", "stages", "state", "cache", "metrics.json", "report.md",
    "recipe.yaml", "model.onnx", "model.int8.onnx", "export.json", "trim.json", "config.json",
    "model.safetensors", "tokenizer.json", "stage.json", "eval-dev", "onnx", "notes.txt", ".ssh",
    ".hidden", "photos", "authorized_keys", ".manifest.json.x1",
])


@st.composite
def contents(draw, command_markers: bool = True):
    """File contents: bytes, a run's manifest, outputs' info files, markers valid or not."""
    kind = draw(st.sampled_from(["bytes", "manifest", "empty-json", "export-info", "trim-info", "metrics",
                                 "marker", "marker", "edited-marker", "bad-marker"]))
    if kind == "bytes":
        return draw(st.binary(max_size=24)), None
    if kind == "manifest":
        return json.dumps({"recipe_fingerprint": draw(st.sampled_from(["x" * 16, "other"])), "recipe": {}}).encode(), None
    if kind == "empty-json":
        return b"{}", None
    if kind == "export-info":
        return b'{"opset": 17}', None
    if kind == "trim-info":
        return b'{"vocab_after": 10}', None
    if kind == "metrics":
        return b'{"models": [{"name": "teacher", "role": "teacher", "path": "teacher"}]}', None
    command = draw(st.sampled_from(COMMANDS))
    entries = draw(st.lists(NAMES, max_size=4))
    marker = make_marker(command, entries, **({"recipe_fingerprint": "f"} if command == "run" else {}))
    if kind == "edited-marker":
        marker["entries"] = marker["entries"] + ["notes.txt"]
        return json.dumps(marker).encode(), None
    if kind == "bad-marker":
        return json.dumps(marker).encode()[: draw(st.integers(0, 40))], None
    return json.dumps(marker).encode(), marker


@st.composite
def trees(draw, depth: int = 2):
    """{name: ("file", bytes, marker|None) | ("link", target) | ("dir", tree)}."""
    tree = {}
    for name in draw(st.lists(NAMES, max_size=6, unique=True)):
        kind = draw(st.sampled_from(["file", "file", "dir", "link"] if depth else ["file", "link"]))
        if kind == "file":
            data, marker = draw(contents()) if name == MARKER else (draw(st.binary(max_size=16)), None)
            if name != MARKER and draw(st.booleans()):
                data, _ = draw(contents())
            tree[name] = ("file", data, marker)
        elif kind == "dir":
            tree[name] = ("dir", draw(trees(depth - 1)))
        else:
            tree[name] = ("link", draw(st.sampled_from(["OUTSIDE", "OUTSIDE/precious.txt", "notes.txt", "nowhere"])))
    return tree


def build(root: Path, tree: dict, outside: Path) -> list[Path]:
    """Write `tree` under root; returns the directories that hold a marker the test wrote valid."""
    root.mkdir(parents=True, exist_ok=True)
    marked = []
    for name, node in tree.items():
        path = root / name
        if node[0] == "file":
            path.write_bytes(node[1])
            if name == MARKER and node[2] is not None:
                marked.append(root)
        elif node[0] == "dir":
            marked += build(path, node[1], outside)
        else:
            target = node[1].replace("OUTSIDE", str(outside))
            os.symlink(target, path)
    return marked


def legacy(command: str, tree: dict) -> bool:
    """Whether the root holds content only `command` writes, written before markers (the test's own
    reading of the rule in cascade_kd/outdir.py and rundir.py)."""
    def json_of(name):
        node = tree.get(name)
        if not node or node[0] != "file":
            return None
        try:
            return json.loads(node[1])
        except (ValueError, UnicodeDecodeError):
            return None

    if command == "run":
        m = json_of("manifest.json")
        return isinstance(m, dict) and isinstance(m.get("recipe_fingerprint"), str)
    if command == "export":
        return isinstance(json_of("export.json"), dict) and "opset" in json_of("export.json")
    if command == "trim":
        return isinstance(json_of("trim.json"), dict) and "vocab_after" in json_of("trim.json")
    entries = set(tree)
    metrics = json_of("metrics.json")
    return (entries <= {"metrics.json", "report.md"} and isinstance(metrics, dict)
            and isinstance(metrics.get("models"), list))


def act(command: str, flags: dict, out: Path, model: Path) -> None:
    """The command's own output handling (what it does before and instead of its real work)."""
    from cascade_kd.config.schema import Recipe

    if command == "run":
        from cascade_kd.cascade.rundir import open_run_dir

        recipe = Recipe.from_dict(RECIPE, base_dir=model)
        with open_run_dir(recipe, out, resume=flags["resume"], overwrite=flags["overwrite"], say=lambda m: None):
            pass
    elif command in ("export", "trim"):
        from cascade_kd.deploy.export import _export_file, claim_export_dir
        from cascade_kd.deploy.trim import _trim_file, claim_trim_dir
        from cascade_kd.outdir import replace_output

        claim, owned = (claim_export_dir, _export_file) if command == "export" else (claim_trim_dir, _trim_file)
        found = claim(model, out, overwrite=flags["overwrite"])
        with replace_output(found, command, owned) as tmp:
            (tmp / ("model.onnx" if command == "export" else "model.safetensors")).write_bytes(b"new")
            (tmp / "config.json").write_text("{}")
    else:
        from cascade_kd.cascade.run import claim_eval_dir, write_eval

        with mock.patch("cascade_kd.evaluation.report.render_report", lambda metrics, *args, **kwargs: "# report\n"):
            write_eval(claim_eval_dir(model, out), {"models": []})


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-outdirs")


@pytest.mark.parametrize("command", COMMANDS)
@FUZZ
@given(data=st.data())
def test_a_command_never_changes_what_is_not_its_own(fuzz_tally, work, command, data):
    tree = data.draw(trees(), label="tree")
    if data.draw(st.integers(0, 2), label="own marker") == 0:  # a third of the cases: the command's own output
        from cascade_kd.config.schema import Recipe

        entries = data.draw(st.lists(st.sampled_from(sorted(tree) or ["x"]), max_size=4), label="entries")
        extra = {"recipe_fingerprint": Recipe.from_dict(RECIPE).fingerprint()} if command == "run" else {}
        marker = make_marker(command, entries, **extra)
        tree[MARKER] = ("file", json.dumps(marker).encode(), marker)
    where = data.draw(st.sampled_from(["dir"] * 6 + ["link", "new", "file", "under-file", "dangling", "input",
                                                     "holds-input"]), label="out")
    flags = {"overwrite": data.draw(st.booleans(), label="overwrite"),
             "resume": command == "run" and data.draw(st.booleans(), label="resume")}
    case = Path(tempfile.mkdtemp(dir=work))
    try:
        outside = case / "outside"  # a user's folder that links point into
        outside.mkdir()
        (outside / "precious.txt").write_text("never touched")
        root = case / "out"
        marked = build(root, tree, outside)
        model = case / "model"  # the command's input (model or run directory)
        model.mkdir()
        (model / "model.safetensors").write_bytes(b"weights")
        out = {"dir": root, "link": case / "link", "new": case / "fresh" / "out", "file": root / "x.file",
               "under-file": root / "x.file" / "out", "dangling": case / "dangling", "input": model,
               "holds-input": case}[where]
        if where == "link":
            os.symlink(root, out)
        elif where == "dangling":
            os.symlink(case / "nowhere", out)
        elif where in ("file", "under-file"):
            (root / "x.file").write_bytes(b"a file")
        before = {"root": snapshot(root), "outside": snapshot(outside), "model": snapshot(model),
                  "marked": {m: snapshot(m) for m in marked if m != root}}
        # an empty lock file (what a run leaves) is no content; a folder or a file with bytes of that name is
        lock_only = {LOCK} if tree.get(LOCK, ("",))[0] == "file" and tree[LOCK][1] == b"" else set()
        own = tree.get(MARKER, (None, None, None))
        own_marker = own[2] if own[0] == "file" and own[2] is not None and own[2]["command"] == command else None
        fuzz_tally[f"outdir-{command}"]["cases"] += 1
        try:
            act(command, flags, out, model)
        except UserError as err:
            fuzz_tally[f"outdir-{command}"]["UserError"] += 1
            assert str(err).isprintable() and len(str(err)) < 2000
            assert snapshot(root) == before["root"], "refused, yet the directory changed"
            assert snapshot(model) == before["model"] and snapshot(outside) == before["outside"]
            return
        except Exception:
            fuzz_tally[f"outdir-{command}"]["other exception"] += 1
            raise
        fuzz_tally[f"outdir-{command}"]["parsed"] += 1  # "parsed": the command went ahead
        assert snapshot(outside) == before["outside"], "a file a link points to changed"
        assert snapshot(model) == before["model"] or where == "holds-input", "the command's input changed"
        for directory, content in before["marked"].items():  # nested outputs of other commands
            assert snapshot(directory) == content, f"a nested output changed: {directory}"
        target = Path(os.path.realpath(out))
        assert read_marker(target)[0]["command"] == command
        if target != root.resolve():
            assert snapshot(root) == before["root"] or where in ("file", "under-file"), "another directory changed"
            return
        # what the command could own at the root: its valid marker's entries, or its legacy content
        if command == "run" and flags["resume"]:
            allowed = {MARKER, LOCK}
        elif own_marker is not None:
            allowed = set(own_marker["entries"]) | {MARKER, LOCK}
        elif legacy(command, tree):
            allowed = {"run": {"manifest.json", "recipe.yaml", "teacher", "stages", "state", "cache", "metrics.json",
                               "report.md", ".manifest.json.x1"},
                       "export": {"model.onnx", "model.int8.onnx", "export.json", "config.json", "model.safetensors",
                                  "tokenizer.json", "stage.json"},
                       "trim": {"trim.json", "config.json", "model.safetensors", "tokenizer.json", "stage.json"},
                       "eval": {"metrics.json", "report.md"}}[command] | {MARKER, LOCK}
        else:
            assert not (set(tree) - lock_only), "went ahead in a folder that was not its own"
            allowed = {MARKER, LOCK}
        if command == "run" and not flags["resume"] and not flags["overwrite"]:
            assert not (set(tree) - lock_only), "a plain run went ahead in a folder that was not empty"
        after = snapshot(root)
        for rel, what in before["root"].items():
            top = rel.split("/", 1)[0]
            if top not in allowed:
                assert after.get(rel) == what, f"{rel} is not the command's, yet it changed"
    finally:
        shutil.rmtree(case, ignore_errors=True)
