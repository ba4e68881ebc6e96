"""Model files that cannot be loaded as saved are one clear error naming the file, never a
traceback: a truncated safetensors file, a garbage header, weights that do not fit config.json,
a config.json that is not JSON. Weights only in a pickle format (pytorch_model.bin) are refused,
with the command that converts them; a pickled optimiser state that torch.load(weights_only=True)
refuses is one line too. Each case also goes through the CLI where a user meets it."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cascade_kd.errors import RecipeError, UserError
from cascade_kd.students.hub import checkpoint_problem, load_checkpoint, load_model, safetensors_problem, save_checkpoint
from tests.helpers import edit_recipe, tiny_bert

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


@pytest.fixture
def saved(tmp_path, tokenizer) -> Path:
    """A saved tiny token classifier (the demo tokenizer's vocabulary, the demo's labels)."""
    from cascade_kd.students.hub import label_config

    model = tiny_bert(layers=2, vocab=len(tokenizer))
    model.config.update(label_config(LABELS))
    save_checkpoint(model, tokenizer, tmp_path / "model")
    return tmp_path / "model"


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


DAMAGE = {
    "truncated-half": (lambda d: _truncate(d / "model.safetensors", 0.5), "truncated"),
    "truncated-in-header": (lambda d: _truncate(d / "model.safetensors", 0.0005), "model.safetensors"),
    "garbage-header": (lambda d: (d / "model.safetensors").write_bytes(
        (40).to_bytes(8, "little") + b"\xff" * 40 + (d / "model.safetensors").read_bytes()[48:]), "not valid JSON"),
    "header-length-huge": (lambda d: (d / "model.safetensors").write_bytes(
        (2**60).to_bytes(8, "little") + (d / "model.safetensors").read_bytes()[8:]), "header length"),
    "empty-weights": (lambda d: (d / "model.safetensors").write_bytes(b""), "0 bytes"),
    "config-not-json": (lambda d: (d / "config.json").write_text("{hidden_size: 32"), "config.json"),
    "config-a-list": (lambda d: (d / "config.json").write_text("[1, 2]"), "not a JSON object"),
    "config-wider-than-weights": (lambda d: (d / "config.json").write_text(json.dumps(
        {**json.loads((d / "config.json").read_text()), "hidden_size": 64, "intermediate_size": 128})), "does not match"),
    "config-deeper-than-weights": (lambda d: (d / "config.json").write_text(json.dumps(
        {**json.loads((d / "config.json").read_text()), "num_hidden_layers": 3})), "does not match"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_model_directory_is_one_user_error_naming_the_file(saved, damage):
    breaks, needle = DAMAGE[damage]
    breaks(saved)
    with pytest.raises(UserError) as info:
        load_checkpoint(saved, "token")
    msg = str(info.value)
    assert msg.isprintable() and needle in msg and str(saved) in msg, msg


@pytest.mark.parametrize("damage,needle,early", [
    ("truncated-half", "truncated", True), ("garbage-header", "not valid JSON", True),
    ("config-not-json", "config.json", True),
    # found when the weights are read into the model (after RUN_DIR is made, before any training)
    ("config-wider-than-weights", "weights", False), ("config-deeper-than-weights", "weights", False),
])
def test_a_damaged_teacher_is_refused_before_training(capsys, ws, saved, damage, needle, early, monkeypatch):
    from tests.helpers import fails

    DAMAGE[damage][0](saved)
    _use_teacher(ws, saved, monkeypatch)
    msg = fails(capsys, ws, run_dir_untouched=early)
    assert "teacher.model" in msg and needle in msg


def _use_teacher(ws: Path, model_dir: Path, monkeypatch) -> None:
    """The demo recipe with teacher.model = model_dir; training patched to fail the test."""
    import cascade_kd.cascade.stages as stages

    edit_recipe(ws, "  config: {model_type: bert, num_hidden_layers: 4, hidden_size: 128, num_attention_heads: 4,\n"
                    "           intermediate_size: 256, max_position_embeddings: 64}\n",
                f"  model: {model_dir}\n")
    edit_recipe(ws, "    - name: ta3\n      student: {layers: 3, init: bottom, freeze_embeddings: true}\n", "")
    edit_recipe(ws, "    - name: ta2\n      student: {layers: 2, init: bottom, freeze_embeddings: true}\n", "")

    def refuse(*args, **kwargs):
        raise AssertionError("training started: this case must be refused first")

    monkeypatch.setattr(stages, "train", refuse)


def test_a_damaged_teacher_is_found_when_the_run_loads_it(saved):
    DAMAGE["truncated-half"][0](saved)
    with pytest.raises(RecipeError, match="truncated"):
        load_model(str(saved), "token", LABELS)


def _pickle_only(saved: Path) -> Path:
    """The saved model with its weights as pytorch_model.bin only (a pickle), as older tools write."""
    from safetensors.torch import load_file

    torch.save(load_file(saved / "model.safetensors"), saved / "pytorch_model.bin")
    (saved / "model.safetensors").unlink()
    return saved


def test_pickled_weights_are_refused_with_the_command_that_converts_them(saved):
    _pickle_only(saved)
    assert checkpoint_problem(saved)[1] == "PICKLED"
    with pytest.raises(RecipeError) as info:
        load_model(str(saved), "token", LABELS)
    msg = str(info.value)
    assert "pytorch_model.bin" in msg and "pickle" in msg and "safetensors only" in msg and "save_pretrained" in msg
    with pytest.raises(UserError, match="pickle"):
        load_checkpoint(saved, "token")
    # the hint's command, run as given, writes model.safetensors; then the model loads
    command = msg.split("convert it once, where you trust the file: ", 1)[1].rsplit(" writes model.safetensors", 1)[0]
    assert command.startswith("python -c ")
    command = f"{sys.executable} {command.removeprefix('python ')}"  # the python that has transformers here
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(command, shell=True, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model, has_head = load_model(str(saved), "token", LABELS)
    assert has_head and (saved / "model.safetensors").is_file()


def test_pickled_teacher_through_the_cli(capsys, ws, saved, monkeypatch):
    from tests.helpers import fails

    _pickle_only(saved)
    _use_teacher(ws, saved, monkeypatch)
    msg = fails(capsys, ws)
    assert "teacher.model" in msg and "pytorch_model.bin" in msg and "pickle" in msg


class _Payload:  # what a pickle may carry besides tensors (here harmless)
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_a_pickled_optimiser_state_is_refused_in_one_line(tmp_path, train_state):
    from cascade_kd.training.state import load_state

    directory, module, optimizer, scheduler = train_state
    with open(directory / "optimizer.pt", "wb") as handle:
        pickle.dump({"state": {}, "param_groups": [], "x": _Payload()}, handle, protocol=2)  # torch.save's protocol
    with pytest.raises(UserError) as info:
        load_state(directory, module, optimizer, scheduler)
    msg = str(info.value)
    assert "optimizer.pt" in msg and "pickled objects" in msg and "delete" in msg and msg.isprintable()


@pytest.mark.parametrize("name", ["module.safetensors", "progress.json", "optimizer.pt", "rng.safetensors"])
def test_a_damaged_training_state_restores_nothing(tmp_path, train_state, name):
    from cascade_kd.training.state import DamagedState, load_state

    directory, module, optimizer, scheduler = train_state
    before = {k: v.clone() for k, v in module.state_dict().items()}
    _truncate(directory / name, 0.5)
    with pytest.raises(DamagedState, match=name):
        load_state(directory, module, optimizer, scheduler)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.fixture
def train_state(tmp_path):
    """A stage's training state written by save_state, and a fresh module/optimiser/scheduler to load it."""
    from cascade_kd.training.state import Progress, save_state

    def parts():
        torch.manual_seed(0)
        module = torch.nn.Linear(4, 3)
        optimizer = torch.optim.AdamW(module.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        return module, optimizer, scheduler

    module, optimizer, scheduler = parts()
    module(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    save_state(tmp_path / "state", module, optimizer, scheduler, Progress(step=1), None)
    return (tmp_path / "state", *parts())


def test_safetensors_problem_accepts_what_safetensors_writes(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(3, 2), "b": torch.ones(5)}, str(tmp_path / "w.safetensors"))
    assert safetensors_problem(tmp_path / "w.safetensors") is None
    with open(tmp_path / "w.safetensors", "ab") as handle:
        handle.write(b"extra")
    assert "longer than" in safetensors_problem(tmp_path / "w.safetensors")


def test_resume_makes_a_damaged_finished_model_again(tmp_path, tiny_run):
    """--resume over a run whose finished student has a truncated model.safetensors, or a damaged
    stage.json: the damaged file is named, that model is made again, the sound teacher is kept."""
    import shutil

    from cascade_kd.cascade import run_recipe
    from cascade_kd.config.schema import load_recipe

    for name in ("data", "tokenizer"):
        shutil.copytree(tiny_run.parent / name, tmp_path / name)
    shutil.copy(tiny_run.parent / "recipe.yaml", tmp_path / "recipe.yaml")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    teacher_weights = (run / "teacher" / "model.safetensors").read_bytes()
    student_weights = (run / "stages" / "student" / "model.safetensors").read_bytes()
    _truncate(run / "stages" / "student" / "model.safetensors", 0.6)
    (run / "manifest.json").write_text("{damaged")
    lines = []
    metrics = run_recipe(load_recipe(tmp_path / "recipe.yaml"), run, resume=True, say=lines.append)
    assert any("manifest.json is damaged" in line for line in lines)
    assert any("stages/student/model.safetensors" in line and "made again" in line for line in lines)
    assert "teacher: already trained, loading it (resume)" in lines
    assert (run / "teacher" / "model.safetensors").read_bytes() == teacher_weights
    # made again from the same teacher and seed: the same weights on the CPU
    assert (run / "stages" / "student" / "model.safetensors").read_bytes() == student_weights
    assert json.loads((run / "manifest.json").read_text())["recipe_fingerprint"]
    assert [m["name"] for m in metrics["models"]] == ["teacher", "student"]
    # a damaged stage.json: named, the model made again
    (run / "stages" / "student" / "stage.json").write_text("[")
    lines.clear()
    run_recipe(load_recipe(tmp_path / "recipe.yaml"), run, resume=True, say=lines.append)
    assert any("stage.json is damaged" in line for line in lines)


def test_cli_damaged_model_for_export_and_eval(capsys, tmp_path, tiny_run):
    import shutil

    from cascade_kd.cli.app import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _truncate(run / "stages" / "student" / "model.safetensors", 0.5)
    for argv in (["export", str(run / "stages" / "student"), "--onnx"], ["eval", str(run), "--split", "dev"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "truncated" in err and "model.safetensors" in err, err
        assert len(err.strip().splitlines()) == 1


def test_real_process_truncated_teacher_exits_2_without_traceback(ws, saved):
    _truncate(saved / "model.safetensors", 0.5)
    recipe = ws / "recipe.yaml"
    text = recipe.read_text()
    text = text.replace("  config: {model_type: bert, num_hidden_layers: 4, hidden_size: 128, num_attention_heads: 4,\n"
                        "           intermediate_size: 256, max_position_embeddings: 64}\n", f"  model: {saved}\n")
    recipe.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "cascade_kd", "run", str(recipe), "--out", str(ws / "run")],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "truncated" in proc.stderr


def test_a_masked_lm_checkpoint_gets_a_fresh_pooler_for_a_sentence_task_but_no_other_missing_weight(tmp_path, tokenizer):
    """A masked-LM checkpoint (`cascade-kd pretrain`'s, a general student) has no pooler; fine-tuning
    it on a sentence task trains a new one with the head. Any other missing encoder weight is refused."""
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    save_checkpoint(BertForMaskedLM(config), tokenizer, tmp_path / "mlm")
    weights = load_file(tmp_path / "mlm" / "model.safetensors")
    assert not any(".pooler." in k for k in weights)  # what makes this case
    model, has_head = load_model(str(tmp_path / "mlm"), "sequence", ["a", "b", "c"])
    assert model.bert.pooler is not None and not has_head  # pooler and head are new, and trained
    loaded = model.bert.encoder.layer[1].output.dense.weight
    assert torch.equal(loaded, weights["bert.encoder.layer.1.output.dense.weight"])  # the encoder is the checkpoint's
    del weights["bert.encoder.layer.1.output.dense.weight"]
    save_file(weights, tmp_path / "mlm" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RecipeError, match=r"do not fit its config.json: 1 encoder weight\(s\).*layer.1.output.dense.weight"):
        load_model(str(tmp_path / "mlm"), "sequence", ["a", "b", "c"])


@pytest.mark.parametrize("name, missing", [
    ("intfloat/multilingual-e5-small", False), ("bert-base-multilingual-cased", False), ("pre/teacher", False),
    ("/no/such/model", True), ("./no/model", True), ("../no", True), ("~no_such_user_x/tok", True),
    ("a/b/c", True), ("C:\\models\\bert", True), ("..\\models", True), ("a\x00b", False), ("x" * 5000, False),
])
def test_only_what_can_only_be_a_missing_local_path_is_refused_before_the_hub_is_asked(name, missing):
    """Hub ids are 'name' or 'owner/name'; anything else that names no file is a local path that is not there."""
    from cascade_kd.students.hub import local_path_missing

    assert local_path_missing(name) is missing
