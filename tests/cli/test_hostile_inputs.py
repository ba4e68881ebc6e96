"""What a careless or hostile user tried and got a traceback (exit code 1) or a wrong result for:
now one `error:` line naming the key or file with a fix, exit code 2, before any training.

Teacher configs (zero heads, an unknown activation, a size of the wrong type, a model type that is
not a text encoder, sizes that cannot fit in memory), layer maps that name no layer, inputs that are not regular files (a FIFO blocked for ever, /dev/zero ran
out of memory), a 50 MB recipe, a disk that fills while saving, SIGTERM.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import helpers

from cascade_kd.cli.app import main
from tests.helpers import edit_recipe, fails, line_of

TEACHER = "config: {model_type: bert, num_hidden_layers: 4, hidden_size: 128, num_attention_heads: 4,"


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    helpers.refuse_training(monkeypatch)


# --- teacher configs ----------------------------------------------------------------------------


@pytest.mark.parametrize("new,key,needle", [
    (TEACHER.replace("num_attention_heads: 4", "num_attention_heads: 0"), "teacher.config.num_attention_heads",
     "must be a positive integer, not 0"),
    (TEACHER.replace("model_type: bert,", "model_type: bert, hidden_act: swishy,"), "teacher.config.hidden_act",
     "unknown activation 'swishy'"),
    (TEACHER.replace("hidden_size: 128", "hidden_size: '128'"), "teacher.config.hidden_size", "not '128'"),
    (TEACHER.replace("hidden_size: 128", "hidden_size: 128.5"), "teacher.config.hidden_size", "not 128.5"),
    (TEACHER.replace("num_hidden_layers: 4", "num_hidden_layers: [4]"), "teacher.config.num_hidden_layers", "not [4]"),
    (TEACHER.replace("model_type: bert,", "model_type: bert, hidden_dropout_prob: high,"),
     "teacher.config.hidden_dropout_prob", "hidden_dropout_prob"),
    (TEACHER.replace("model_type: bert", "model_type: vit"), "teacher.config", "not a text encoder"),
    (TEACHER.replace("model_type: bert", "model_type: whisper"), "teacher.config", "not a text encoder"),
    (TEACHER.replace("model_type: bert", "model_type: bertt"), "teacher.config.model_type", "did you mean 'bert'"),
    (TEACHER.replace("num_hidden_layers: 4, hidden_size: 128", "num_hidden_layers: 4000, hidden_size: 65536"),
     "teacher.config", "GiB"),
], ids=["zero-heads", "activation", "size-str", "size-float", "size-list", "dropout-str", "vit", "whisper",
        "model-type-typo", "too-big-for-memory"])
def test_teacher_config_problems_are_one_line_before_training(capsys, ws, new, key, needle):
    recipe = edit_recipe(ws, TEACHER, new)
    started = time.perf_counter()
    msg = fails(capsys, ws)
    assert f"{recipe}:{line_of(recipe, 'config: {model_type')}: {key}" in msg and needle in msg, msg
    assert time.perf_counter() - started < 60  # nothing of the huge model is allocated


# --- layer maps -------------------------------------------------------------


@pytest.mark.parametrize("old,new,needle", [
    ("kl: {weight: 1.0, temperature: 2.0}", "kl: {weight: 1.0, temperature: 2.0, layer_map: [[layer7, 1]]}",
     "kl compares logits, not layers"),
    ("hidden_mse: {weight: 1.0, layer_map: top_only}", "hidden_mse: {weight: 0.0, layer_map: [[layer7, 1]]}",
     "unknown layer reference 'layer7'"),
    ("hidden_mse: {weight: 1.0, layer_map: top_only}", "hidden_mse: {weight: 1.0, layer_map: [[yes, 1]]}",
     "is a boolean"),
], ids=["layer-map-on-kl", "weight-0", "yaml-boolean"])
def test_layer_maps_that_name_no_layer(capsys, ws, old, new, needle):
    recipe = edit_recipe(ws, old, new)
    msg = fails(capsys, ws)
    assert f"{recipe}:" in msg and "layer_map" in msg and needle in msg, msg


@pytest.mark.parametrize("old,new,key,needle", [
    ("hidden_mse: {weight: 1.0, layer_map: top_only}", "hidden_mse: {weight: 1.0, layer_map: top_only, temperature: 3}",
     "hidden_mse.temperature", "temperature does not apply to hidden_mse, which takes layer_map"),
    ("kl: {weight: 1.0, temperature: 2.0}", "kl: {weight: 1.0, temperature: 2.0, head_reduction: mean}",
     "kl.head_reduction", "head_reduction does not apply to kl, which takes temperature, positions"),
], ids=["temperature-on-hidden", "heads-on-kl"])
def test_an_option_the_loss_does_not_read_is_refused_at_its_line(capsys, ws, old, new, key, needle):
    recipe = edit_recipe(ws, old, new)
    msg = fails(capsys, ws)
    assert f"{recipe}:{line_of(recipe, new.split(':')[0])}: cascade.losses.{key}" in msg and needle in msg, msg


# --- inputs that are not regular files ------------------------------------------------------------


def test_a_character_device_as_data_file(capsys, ws):
    path = ws / "data" / "de" / "dev.conll"
    path.unlink()
    path.symlink_to("/dev/zero")
    msg = fails(capsys, ws)
    assert str(path) in msg and "character device" in msg


def _real_cli(ws: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "cascade_kd", *args], capture_output=True, text=True, env=env,
                          cwd=ws, timeout=timeout)


@pytest.mark.parametrize("which", ["data", "recipe"])
def test_a_fifo_is_refused_not_read(ws, which):
    """A FIFO as a data file blocked for ever; now it is refused without opening it."""
    path = ws / "data" / "de" / "dev.conll" if which == "data" else ws / "fifo.yaml"
    if which == "data":
        path.unlink()
    os.mkfifo(path)
    recipe = ws / "recipe.yaml" if which == "data" else path
    proc = _real_cli(ws, "run", str(recipe), "--out", str(ws / "run"))  # a hang fails by the timeout
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "named pipe (FIFO)" in proc.stderr


def test_a_huge_recipe_is_refused_before_parsing(capsys, ws):
    recipe = ws / "huge.yaml"
    with open(recipe, "w") as handle:
        handle.write((ws / "recipe.yaml").read_text())
        handle.write("# padding\n" * 5_000_000)  # 50 MB
    started = time.perf_counter()
    msg = fails(capsys, ws, recipe=recipe)
    assert time.perf_counter() - started < 10
    assert str(recipe) in msg and "more than the 1,048,576 a recipe may have" in msg


def test_data_files_with_old_mac_line_ends_read_as_lines(ws, capsys):
    """CR-only line ends (old Mac, some spreadsheet exports): read as line ends, as by Python's text
    mode, csv and YAML. Before, a CR-only TSV with a header ended in "no examples" and one without
    read as ONE example; with a BOM, CRLF and an extra column they read as before."""
    from cascade_kd.data.readers import read_examples

    rows = ["text\tlabel\textra", "a good day\tpos\tx", "a bad day\tneg\ty"]
    for eol, bom in (("\r", ""), ("\r", "\ufeff"), ("\r\n", "\ufeff"), ("\n", "")):
        path = ws / "f.tsv"
        path.write_bytes((bom + eol.join(rows) + eol).encode("utf-8"))
        examples = read_examples(path, fmt="tsv", task="sequence", lang="en", header=True, text_column="text",
                                 label_column="label")
        assert [(e.text, e.label, e.source) for e in examples] == [
            ("a good day", "pos", f"{path}:2"), ("a bad day", "neg", f"{path}:3")], repr(eol)
    conll = ws / "data" / "de" / "dev.conll"
    text = conll.read_text(encoding="utf-8")
    n = len(read_examples(conll, fmt="conll", task="token", lang="de"))
    conll.write_bytes(("\ufeff" + text.replace("\n", "\r")).encode("utf-8"))
    assert len(read_examples(conll, fmt="conll", task="token", lang="de")) == n


# --- the disk fills, the process is told to stop ------------------------------------------------


def test_disk_full_while_saving_is_one_line(capsys, ws, monkeypatch):
    import cascade_kd.cascade.run as run

    def full(job):
        raise OSError(errno.ENOSPC, "No space left on device", str(job.out / "teacher"))

    monkeypatch.setattr(run, "get_teacher", full)
    rc = main(["run", str(ws / "recipe.yaml"), "--out", str(ws / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "no space left on the device" in err and "--resume" in err


def test_disk_full_inside_an_atomic_write_is_an_output_error(tmp_path, monkeypatch):
    from cascade_kd.errors import OutputError
    from cascade_kd.fileio import atomic_directory, atomic_write

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match="no space left on the device"):
        atomic_write(tmp_path / "metrics.json", "{}")
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind
    monkeypatch.undo()
    # inside a directory swap: what was carried over goes back where it was
    target = tmp_path / "model"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    (target / "config.json").write_text("old")

    with pytest.raises(OutputError):
        with atomic_directory(target, keep=["notes.txt"]) as tmp:
            (tmp / "config.json").write_text("new")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (target / "notes.txt").read_text() == "mine" and (target / "config.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    # safetensors reports a full disk in its own error type, by message
    with pytest.raises(OutputError):
        with atomic_directory(target, keep=["notes.txt"]) as tmp:
            raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                               "message: \"No space left on device\" })")
    with atomic_directory(target, keep=["notes.txt"]) as tmp:
        (tmp / "config.json").write_text("new")
    assert (target / "notes.txt").read_text() == "mine" and (target / "config.json").read_text() == "new"


def test_sigterm_prints_the_resume_line(ws):
    """SIGTERM exited 143 without the line SIGINT prints; now both say finished models are kept."""
    edit_recipe(ws, "  train: {epochs: 10, lr: 1.0e-3}", "  train: {epochs: 500, lr: 1.0e-3}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "cascade_kd", "run", str(ws / "recipe.yaml"), "--out",
                             str(ws / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ws)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (ws / "run" / "manifest.json").exists():
            time.sleep(0.2)
        time.sleep(2)  # in the teacher's training
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "terminated: finished models are kept; continue with --resume"


def test_torch_save_on_a_full_disk_is_an_output_error(tmp_path, monkeypatch):
    """torch.save's writer reports a full disk without an errno ("unexpected pos 162304 vs 162196",
    measured on a full 400 KiB tmpfs): a write that fails while the file system is (nearly) full is
    reported as a full disk; on a disk with room, the error is left as it is."""
    import cascade_kd.fileio as fileio
    from cascade_kd.errors import OutputError

    def torch_save_on_full_disk(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 162304 vs 162196")

    monkeypatch.setattr(fileio, "_nearly_full", lambda path, margin=1 << 20: True)
    with pytest.raises(OutputError, match="no space left on the device"):
        with fileio.atomic_directory(tmp_path / "state") as tmp:
            torch_save_on_full_disk(tmp)
    monkeypatch.setattr(fileio, "_nearly_full", lambda path, margin=1 << 20: False)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        with fileio.atomic_directory(tmp_path / "state") as tmp:
            torch_save_on_full_disk(tmp)
    assert list(tmp_path.iterdir()) == []
