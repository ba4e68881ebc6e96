"""Nothing a user has is lost or overwritten: every command that writes (run, pretrain, eval,
export, trim) writes only into a new or empty directory or into one it can prove it wrote (its
.cascade-kd.json marker), replaces or deletes only what it wrote there, and never writes into its
own input. Each case puts a user's files (hidden ones too: .ssh/authorized_keys) where the command
writes and checks them byte for byte afterwards; a refusal is one `error:` line, exit code 2.

The cases of an independent hostile-user probe that destroyed files are here by name:
`run --overwrite` on a folder holding a file named manifest.json, `run --resume` into a folder
that is not a run, `export --out MODEL_DIR`, and `--overwrite` through a symbolic link.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cascade_kd.cascade.rundir import read_stage_info
from cascade_kd.cli.app import main
from cascade_kd.errors import OutputError, UserError
from cascade_kd.outdir import MARKER, make_marker, read_marker
from tests.helpers import refuse_training, snapshot

# --- a user's files, and checking them ---------------------------------------------------------


def user_files(directory: Path) -> dict[str, object]:
    """Put a user's files into `directory` (made if missing): documents, hidden files, a nested
    folder, a symbolic link; returns their snapshot."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "thesis.tex").write_text("\\chapter{Mine}\n")
    (directory / ".ssh").mkdir(exist_ok=True)
    (directory / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAA user@host\n")
    (directory / ".hidden").write_bytes(b"\x00secret")
    (directory / "photos" / "2024").mkdir(parents=True, exist_ok=True)
    (directory / "photos" / "2024" / "a.jpg").write_bytes(os.urandom(64))
    os.symlink("thesis.tex", directory / "latest")
    return snapshot(directory)


def kept(before: dict, directory: Path, under: str = "") -> None:
    """Every entry of `before` is still under directory/under, unchanged."""
    after = snapshot(directory)
    prefix = f"{under}/" if under else ""
    for rel, what in before.items():
        assert after.get(prefix + rel) == what, f"{prefix + rel} lost or changed"


def refused(capsys, argv: list[str], *needles: str) -> str:
    """The CLI exits 2 with one `error:` line holding every needle; returns that line."""
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def no_training(monkeypatch):
    """A run must be refused before any model trains."""
    refuse_training(monkeypatch, teacher_only=True)


@pytest.fixture
def stub_run(monkeypatch):
    """Everything of `run` up to and including RUN_DIR's handling, without training (the models,
    scores and report are not what these tests are about)."""
    import cascade_kd.cascade.run as run

    monkeypatch.setattr(run, "_run", lambda job, run_set=None, until=None: {"name": job.recipe.name, "models": []})
    monkeypatch.setattr("cascade_kd.evaluation.report.report_table", lambda metrics: "")


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of a finished tiny run (its recipe next to it, as the fixture wrote it)."""
    shutil.copytree(tiny_run.parent / "data", tmp_path / "data")
    shutil.copytree(tiny_run.parent / "tokenizer", tmp_path / "tokenizer")
    shutil.copy(tiny_run.parent / "recipe.yaml", tmp_path / "recipe.yaml")
    shutil.copytree(tiny_run, tmp_path / "run", symlinks=True)
    return tmp_path / "run"


# --- run: never into a directory that is not a run ---------------------------------------------


LEGACY_MANIFEST = {"recipe_fingerprint": "0123456789abcdef", "cascade_kd": "0.1.0", "recipe": {}}


@pytest.mark.parametrize("manifest", [json.dumps(LEGACY_MANIFEST), "{}", "not json", ""],
                         ids=["run-manifest", "empty-object", "garbage", "empty-file"])
def test_overwrite_keeps_a_folder_that_merely_holds_a_manifest_json(capsys, ws, no_training, manifest):
    # the probe: a folder with documents, .ssh/authorized_keys and a file named manifest.json lost them all
    out = ws / "mine"
    before = user_files(out)
    (out / "manifest.json").write_text(manifest)
    before = snapshot(out)
    refused(capsys, ["run", str(ws / "recipe.yaml"), "--out", str(out), "--overwrite"], str(out))
    kept(before, out)


@pytest.mark.parametrize("flags", [["--resume"], [], ["--resume", "--overwrite"]], ids=["resume", "plain", "both"])
def test_a_folder_that_is_not_a_run_is_never_written(capsys, ws, no_training, flags):
    out = ws / "mine"
    before = user_files(out)
    msg = refused(capsys, ["run", str(ws / "recipe.yaml"), "--out", str(out), *flags], str(out))
    # both flags at once are refused before the folder is even looked at
    assert ("choose one" if len(flags) == 2 else "choose a new or empty --out") in msg
    kept(before, out)
    assert not (out / MARKER).exists() and not (out / ".cascade-kd.lock").exists()


def test_a_forged_or_edited_marker_proves_nothing(capsys, ws, no_training):
    out = ws / "mine"
    before = user_files(out)
    marker = make_marker("run", ["thesis.tex", ".ssh", "photos"], recipe_fingerprint="x")
    marker["entries"].append("latest")  # edited after it was written: the fingerprint no longer matches
    (out / MARKER).write_text(json.dumps(marker))
    before = snapshot(out)
    msg = refused(capsys, ["run", str(ws / "recipe.yaml"), "--out", str(out), "--overwrite"], "cannot be trusted")
    assert "fingerprint" in msg
    kept(before, out)


def test_overwrite_deletes_only_what_the_run_wrote(capsys, run_copy, stub_run):
    """A user's files next to the run, inside its model directories, and another command's output
    (an export inside the teacher's directory, with its marker) survive --overwrite."""
    mine = user_files(run_copy / "notes")
    inside = user_files(run_copy / "teacher" / "my-notes")
    (run_copy / "teacher" / "README.txt").write_text("my notes about this teacher\n")
    export = run_copy / "teacher" / "onnx"
    export.mkdir()
    (export / "model.onnx").write_bytes(b"onnx bytes")
    (export / MARKER).write_text(json.dumps(make_marker("export", ["model.onnx"])))
    theirs = snapshot(export)
    # a model of the user's own saved among the run's stages: not a stage of the run, no marker
    own_model = run_copy / "stages" / "my-ft"
    own_model.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (own_model / name).write_text(f"my {name}")
    own = snapshot(own_model)
    card = run_copy / "stages" / "student" / "README.md"  # a card the user edited: theirs now
    card.write_text(card.read_text().replace("## How to use", "Licence: ours, see LICENSE.\n\n## How to use"))
    edited = card.read_text()
    rc = main(["run", str(run_copy.parent / "recipe.yaml"), "--out", str(run_copy), "--overwrite"])
    assert rc == 0, capsys.readouterr().err
    kept(mine, run_copy, "notes")
    kept(inside, run_copy, "teacher/my-notes")
    kept(theirs, run_copy, "teacher/onnx")
    assert (run_copy / "teacher" / "README.txt").read_text() == "my notes about this teacher\n"
    kept(own, run_copy, "stages/my-ft")
    assert card.read_text() == edited and sorted(p.name for p in card.parent.iterdir()) == ["README.md"]
    # the run's own files are gone: its checkpoints, metrics and stages
    assert not (run_copy / "teacher" / "model.safetensors").exists()
    assert sorted(p.name for p in (run_copy / "stages").iterdir()) == ["my-ft", "student"]
    assert not (run_copy / "metrics.json").exists()
    assert read_marker(run_copy)[0]["command"] == "run"
    assert "kept" in capsys.readouterr().out


def test_overwrite_through_a_symbolic_link(capsys, run_copy, stub_run, tmp_path):
    # the probe: --overwrite through a symlinked RUN_DIR ended in a traceback (rmtree on a link)
    link = tmp_path / "link-to-run"
    link.symlink_to(run_copy, target_is_directory=True)
    mine = user_files(run_copy / "notes")
    assert main(["run", str(run_copy.parent / "recipe.yaml"), "--out", str(link), "--overwrite"]) == 0
    assert link.is_symlink() and os.readlink(link) == str(run_copy)
    kept(mine, run_copy, "notes")
    assert not (run_copy / "metrics.json").exists() and read_marker(run_copy)[0]["command"] == "run"


def test_a_run_written_before_markers_resumes_and_is_adopted(capsys, run_copy, stub_run):
    (run_copy / MARKER).unlink()  # as runs were written before this version
    before = snapshot(run_copy)
    assert main(["run", str(run_copy.parent / "recipe.yaml"), "--out", str(run_copy), "--resume"]) == 0
    # manifest.json and recipe.yaml (the recipe as run, with absolute paths) are written again
    kept({k: v for k, v in before.items() if k not in ("manifest.json", "recipe.yaml")}, run_copy)
    assert read_marker(run_copy)[0]["recipe_fingerprint"] == json.loads((run_copy / "manifest.json").read_text())[
        "recipe_fingerprint"]


def test_a_run_written_before_markers_is_overwritten_only_when_it_holds_nothing_else(capsys, run_copy, stub_run):
    (run_copy / MARKER).unlink()
    mine = user_files(run_copy / "notes")
    before = snapshot(run_copy)
    refused(capsys, ["run", str(run_copy.parent / "recipe.yaml"), "--out", str(run_copy), "--overwrite"],
            "notes", "deletes nothing it cannot prove it wrote")
    kept(before, run_copy)
    shutil.rmtree(run_copy / "notes")
    assert main(["run", str(run_copy.parent / "recipe.yaml"), "--out", str(run_copy), "--overwrite"]) == 0
    assert not (run_copy / "teacher").exists() and read_marker(run_copy)[0] is not None
    del mine


def test_resume_refuses_another_recipe_of_a_marked_run(capsys, run_copy, no_training):
    recipe = run_copy.parent / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("seed: 0", "seed: 1"))
    before = snapshot(run_copy)
    refused(capsys, ["run", str(recipe), "--out", str(run_copy), "--resume"], "recipe changed", "seed")
    kept(before, run_copy)


# --- run: RUN_DIR paths -----------------------------------------------------------------------


def _bad_path(ws: Path, kind: str) -> tuple[Path, str]:
    if kind == "parent-is-a-file":
        (ws / "afile").write_text("x")
        return ws / "afile" / "run", "is a file, not a directory"
    if kind == "dangling-link":
        (ws / "link").symlink_to(ws / "nowhere")
        return ws / "link", "which does not exist"
    if kind == "link-loop":
        (ws / "a").symlink_to(ws / "b")
        (ws / "b").symlink_to(ws / "a")
        return ws / "a", "loop"
    if kind == "name-too-long":
        return ws / ("r" * 300), "too long"
    if kind == "a-file":
        (ws / "afile").write_text("x")
        return ws / "afile", "not a directory"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["parent-is-a-file", "dangling-link", "link-loop", "name-too-long", "a-file"])
@pytest.mark.parametrize("flags", [[], ["--overwrite"], ["--resume"]], ids=["plain", "overwrite", "resume"])
def test_run_dir_paths_that_cannot_be_a_directory(capsys, ws, no_training, kind, flags):
    out, needle = _bad_path(ws, kind)
    before = snapshot(ws)
    refused(capsys, ["run", str(ws / "recipe.yaml"), "--out", str(out), *flags], needle)
    assert snapshot(ws) == before


def test_run_dir_in_a_read_only_location(capsys, ws, no_training):
    locked = ws / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):  # root writes anywhere: use a place the kernel refuses
            pytest.skip("running as root: a chmod 555 folder is writable (see the /sys case below)")
        refused(capsys, ["run", str(ws / "recipe.yaml"), "--out", str(locked / "run")], "read-only")
    finally:
        locked.chmod(0o755)


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux's /sys")
def test_run_dir_where_the_kernel_refuses_writes(capsys, ws, no_training):
    out = Path("/sys/kernel/cascade-kd-test-run")
    refused(capsys, ["run", str(ws / "recipe.yaml"), "--out", str(out)], str(out))


# --- run: one process at a time ----------------------------------------------------------------


def test_a_second_run_on_a_locked_run_dir_is_refused(capsys, run_copy, no_training):
    """Two `run --resume` at once on one RUN_DIR both ran; now the second is refused at once."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from filelock import FileLock
        lock = FileLock({str(run_copy / '.cascade-kd.lock')!r}, timeout=0)
        lock.acquire()
        print("locked", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run_copy)
        refused(capsys, ["run", str(run_copy.parent / "recipe.yaml"), "--out", str(run_copy), "--resume"],
                "another cascade-kd process is working in RUN_DIR")
        assert snapshot(run_copy) == before
    finally:
        holder.kill()
        holder.wait()


# --- eval --------------------------------------------------------------------------------------


def test_eval_never_writes_into_a_folder_that_is_not_an_eval(capsys, run_copy):
    recipe = str(run_copy / "recipe.yaml")
    mine = run_copy.parent / "mine"
    before = user_files(mine)
    (mine / "metrics.json").write_text('{"my": "numbers"}')
    before = snapshot(mine)
    refused(capsys, ["eval", str(run_copy), "--recipe", recipe, "--split", "dev", "--out", str(mine)], "not empty")
    kept(before, mine)
    # nor into a model directory of the run (its input), nor into the run itself
    teacher = snapshot(run_copy / "teacher")
    refused(capsys, ["eval", str(run_copy), "--split", "dev", "--out", str(run_copy / "teacher")], "teacher")
    kept(teacher, run_copy / "teacher")
    refused(capsys, ["eval", str(run_copy), "--split", "dev", "--out", str(run_copy)], "overwrite the run's own")
    refused(capsys, ["eval", str(run_copy), "--split", "dev", "--out", str(run_copy.parent)], "run directory it reads")


def test_eval_again_replaces_its_own_two_files_only(capsys, run_copy):
    out = run_copy / "eval-dev"
    capsys.readouterr()
    assert main(["eval", str(run_copy), "--split", "dev"]) == 0
    assert read_marker(out)[0]["command"] == "eval" and "earlier eval" not in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["evaluated_run"] == ".."  # the run, relative to it
    mine = user_files(out / "notes")
    first = (out / "metrics.json").read_bytes()
    (out / "metrics.json").write_text("{}")
    capsys.readouterr()
    assert main(["eval", str(run_copy), "--split", "dev"]) == 0
    assert "holds an earlier eval, which this one replaces" in capsys.readouterr().out  # said, not silent
    assert (out / "metrics.json").read_bytes() == first  # scored again, the same
    kept(mine, out, "notes")


# --- export and trim ----------------------------------------------------------------------------


def test_export_into_its_own_model_directory_is_refused(capsys, run_copy):
    # the probe: `export --out MODEL_DIR` deleted that model's weights
    model = run_copy / "stages" / "student"
    before = snapshot(model)
    for flags in ([], ["--overwrite"]):
        refused(capsys, ["export", str(model), "--onnx", "--out", str(model), *flags], "model directory it reads")
        refused(capsys, ["export", str(model), "--onnx", "--out", str(run_copy), *flags], str(run_copy))
    kept(before, model)


@pytest.mark.parametrize("command", ["export", "trim"])
@pytest.mark.parametrize("flags", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_export_and_trim_never_write_over_a_users_folder(capsys, run_copy, command, flags):
    model = run_copy / "stages" / "student"
    out = run_copy.parent / "mine"
    before = user_files(out)
    (out / "model.onnx").write_text("my own model")
    (out / "config.json").write_text("{}")
    before = snapshot(out)
    argv = [command, str(model), *(["--onnx"] if command == "export" else []), "--out", str(out), *flags]
    refused(capsys, argv, "not empty", "was not written by cascade-kd")
    kept(before, out)
    # nor over another command's output (a run, an eval)
    refused(capsys, [command, str(model), *(["--onnx"] if command == "export" else []), "--out",
                     str(run_copy / "teacher"), *flags], str(run_copy / "teacher"))


def test_export_overwrite_replaces_its_own_files_and_keeps_the_rest(capsys, run_copy):
    pytest.importorskip("onnxruntime")
    model = run_copy / "stages" / "student"
    out = model / "onnx"
    assert main(["export", str(model), "--onnx", "--int8", "--check-examples", "16"]) == 0
    assert read_marker(out)[0]["command"] == "export"
    mine = user_files(out / "deploy-notes")
    (out / "README.md").write_text("how we serve it")
    assert main(["export", str(model), "--onnx", "--check-examples", "16"]) == 2  # exists: needs --overwrite
    capsys.readouterr()
    assert main(["export", str(model), "--onnx", "--overwrite", "--check-examples", "16"]) == 0
    assert (out / "model.onnx").is_file() and not (out / "model.int8.onnx").exists()  # its own files replaced
    kept(mine, out, "deploy-notes")
    assert (out / "README.md").read_text() == "how we serve it"
    assert not [p for p in model.iterdir() if p.name.startswith(".onnx")]


# --- the marker itself ---------------------------------------------------------------------------


def test_markers_are_checked_for_schema_tool_entries_and_fingerprint(tmp_path):
    good = make_marker("export", ["model.onnx"])
    cases = {
        "valid": (good, None),
        "not json": ("{", "not JSON"),
        "another tool": ({**good, "tool": "other"}, "not a cascade-kd marker"),
        "newer schema": ({**good, "schema": 99}, "schema"),
        "path entry": ({**good, "entries": ["../x"]}, "malformed"),
        "edited": ({**good, "command": "run"}, "fingerprint"),
    }
    for name, (content, problem) in cases.items():
        d = tmp_path / name.replace(" ", "-")
        d.mkdir()
        (d / MARKER).write_text(content if isinstance(content, str) else json.dumps(content))
        marker, why = read_marker(d)
        assert (marker is not None) == (problem is None), name
        assert problem is None or problem in why, (name, why)


def test_finished_models_list_their_files(run_copy):
    info, _ = read_stage_info(run_copy / "teacher")
    assert "model.safetensors" in info["files"] and "stage.json" in info["files"]
    # every file of the directory, but the model card, written after the marker from metrics.json
    assert set(info["files"]) | {"README.md"} == {p.name for p in (run_copy / "teacher").iterdir()}


def test_output_errors_are_user_errors():
    assert issubclass(OutputError, UserError)


# --- pretrain, bench, demo ------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--resume"], ["--overwrite"]], ids=["plain", "resume", "overwrite"])
def test_pretrain_never_writes_into_a_users_folder(capsys, ws, no_training, flags):
    for split in ("train", "dev"):
        (ws / f"{split}-en.txt").write_text("a few words\nof plain text\n" * 4)
    out = ws / "mine"
    before = user_files(out)
    (out / "manifest.json").write_text("{}")
    before = snapshot(out)
    refused(capsys, ["pretrain", "--text", str(ws / "train-{lang}.txt"), "--dev", str(ws / "dev-{lang}.txt"),
                     "--languages", "en", "--tokenizer", str(ws / "tokenizer"), "--layers", "1", "--hidden", "16",
                     "--heads", "2", "--max-length", "16", "--out", str(out), *flags], str(out))
    kept(before, out)


def test_bench_writes_only_into_a_run(capsys, tmp_path):
    mine = tmp_path / "mine"
    before = user_files(mine)
    (mine / "metrics.json").write_text('{"models": []}')
    before = snapshot(mine)
    refused(capsys, ["bench", str(mine), "--backends", "fp32"], "not a finished cascade-kd run")
    kept(before, mine)


def test_demo_picks_a_free_folder_next_to_a_users_one(tmp_path):
    from cascade_kd.cli.demo import free_directory

    user_files(tmp_path / "demo")
    (tmp_path / "demo-2").write_text("a file where a folder would go")
    assert free_directory(tmp_path / "demo") == tmp_path / "demo-3"
    assert free_directory(tmp_path / "fresh") == tmp_path / "fresh"


def test_the_closing_line_names_only_what_the_run_holds(tmp_path):
    from cascade_kd.cli.app import _run_files

    for name in ("report.html", "report.md", "metrics.json"):
        (tmp_path / name).write_text("x")
    (tmp_path / "teacher").mkdir()
    assert _run_files(tmp_path) == "report.html, report.md, metrics.json, teacher/"  # a teacher-only run
    (tmp_path / "stages").mkdir()
    assert _run_files(tmp_path).endswith("teacher/, stages/")
