"""End to end on the demo task, shrunk: a two-stage cascade, its outputs, resume and eval."""

import json
import shutil

import pytest
from transformers import AutoModelForTokenClassification, AutoTokenizer

from cascade_kd.cascade import direct_spec, run_recipe
from tests.helpers import merge, tiny_recipe, write_recipe
from cascade_kd.cli.app import main
from cascade_kd.config.schema import StudentConfig, load_recipe

# 3-layer teacher, a 2-layer assistant and a 1-layer student (embeddings frozen), and the direct baseline
SMALL = tiny_recipe(
    data={"max_train_per_language": 500, "max_eval_per_language": 80},
    teacher={"config": {"num_hidden_layers": 3, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128},
             "train": {"epochs": 12, "lr": 2.0e-3}},
    train={"epochs": 3, "lr": 2.0e-3},
    cascade={"stages": [{"name": "ta", "student": {"layers": 2, "freeze_embeddings": True}},
                        {"name": "student", "student": {"layers": 1, "freeze_embeddings": True}}], "direct": True},
)


@pytest.fixture(scope="module")
def finished_run(demo_workspace, tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    for name in ("data", "tokenizer"):
        shutil.copytree(demo_workspace / name, root / name)
    write_recipe(root, SMALL)
    recipe = load_recipe(root / "recipe.yaml")
    metrics = run_recipe(recipe, root / "run", say=lambda m: None)
    return root, recipe, metrics


def test_outputs_and_metrics_schema(finished_run):
    root, _, metrics = finished_run
    run = root / "run"
    assert (run / "report.md").is_file() and (run / "manifest.json").is_file()
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["task"] == "token" and on_disk["metric"] == "f1" and on_disk["languages"] == ["en", "ru"]
    assert [m["name"] for m in on_disk["models"]] == ["teacher", "ta", "student", "direct"]
    assert [m["role"] for m in on_disk["models"]] == ["teacher", "assistant", "student", "direct"]
    for m in on_disk["models"]:
        assert set(m["per_language"]) == {"en", "ru"}
        assert m["average"] == pytest.approx(sum(m["per_language"].values()) / 2)
        assert m["worst"] == min(m["per_language"].values())
        assert m["params_total"] > m["params_embedding"] > 0
    layers = [m["layers"] for m in on_disk["models"]]
    assert layers == [3, 2, 1, 1]
    teacher = on_disk["models"][0]
    assert teacher["params_trainable"] == teacher["params_total"]  # the teacher trained everything
    assert on_disk["models"][1]["params_trainable"] < on_disk["models"][1]["params_total"]  # frozen embeddings
    assert teacher["retention"] == pytest.approx(1.0)
    student = on_disk["models"][2]
    expected = sum(student["per_language"][l] / teacher["per_language"][l] for l in ("en", "ru")) / 2
    assert student["retention"] == pytest.approx(expected)
    report = (run / "report.md").read_text()
    assert "| student | student | 1 |" in report and "test" in report


def test_the_teacher_learned_and_the_student_beats_the_same_student_untrained(finished_run):
    root, recipe, metrics = finished_run
    scores = {m["name"]: m["average"] for m in metrics["models"]}
    assert scores["teacher"] > 0.35
    # the same 1-layer shape, built from the teacher but not distilled
    from cascade_kd.cascade import prepare
    from cascade_kd.evaluation.scoring import evaluate_languages
    from cascade_kd.students import build_student

    job = prepare(recipe, root / "unused", say=lambda m: None)
    teacher = AutoModelForTokenClassification.from_pretrained(root / "run" / "teacher")
    untrained = build_student(teacher, StudentConfig(layers=1)).eval()
    per_lang = evaluate_languages(untrained, job.encoded["test"], "token", job.data.labels, pad_id=0)
    untrained_avg = sum(per_lang.values()) / len(per_lang)
    assert scores["student"] > untrained_avg + 0.05  # the untrained copy starts from teacher layers and head


def test_checkpoints_reload_in_plain_transformers_with_the_same_scores(finished_run):
    root, recipe, metrics = finished_run
    from cascade_kd.cascade import prepare
    from cascade_kd.evaluation.scoring import evaluate_languages

    job = prepare(recipe, root / "unused", say=lambda m: None)
    for row in metrics["models"]:
        directory = root / "run" / row["path"]
        model = AutoModelForTokenClassification.from_pretrained(directory).eval()  # no cascade_kd classes
        AutoTokenizer.from_pretrained(directory)
        assert model.config.num_hidden_layers == row["layers"]
        per_lang = evaluate_languages(model, job.encoded["test"], "token", job.data.labels, pad_id=0)
        assert per_lang == pytest.approx(row["per_language"])


def test_resume_does_not_redo_finished_models(finished_run, capsys):
    root, recipe, metrics = finished_run
    said = []
    before = (root / "run" / "stages" / "ta" / "model.safetensors").stat().st_mtime_ns
    # a kill between saving ta and removing its training state left that state behind
    (root / "run" / "state" / "ta").mkdir(parents=True)
    (root / "run" / "state" / "ta" / "progress.json").write_text("{}")
    # and a checkpoint write killed half-way, named as versions before pid@host named them
    (root / "run" / "state" / ".student.jqime6sf").mkdir()
    (root / "run" / "state" / ".student.jqime6sf" / "module.safetensors").write_bytes(b"x" * 100)
    again = run_recipe(recipe, root / "run", resume=True, say=said.append)
    assert sum("already" in s for s in said) == 4  # teacher, ta, student, direct
    assert not (root / "run" / "state").exists()  # the finished model superseded it
    assert (root / "run" / "stages" / "ta" / "model.safetensors").stat().st_mtime_ns == before
    for new, old in zip(again["models"], metrics["models"]):
        assert new["per_language"] == pytest.approx(old["per_language"])


def test_resume_on_data_edited_in_place_is_refused_and_names_the_file(finished_run, tmp_path, capsys):
    """The recipe is the same, a training file is not: finished models came from the old data."""
    root, _, _ = finished_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    shutil.copytree(root / "data", tmp_path / "data")
    shutil.copytree(root / "tokenizer", tmp_path / "tokenizer")
    write_recipe(tmp_path, SMALL, "r.yaml")
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["data_digests"]) == {"train", "dev", "test"}
    assert set(manifest["model_digests"]) == {"teacher.tokenizer"}  # the teacher is trained here: no teacher.model
    train_file = next(p for p in (tmp_path / "data" / "ru").iterdir() if p.name.startswith("train"))
    text = train_file.read_text(encoding="utf-8")
    train_file.write_text(text.replace("\n\n", "\n\nИван B-PER\n\n", 1), encoding="utf-8")  # one sentence more
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    rc = main(["run", str(tmp_path / "r.yaml"), "--out", str(run), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "data changed since this run started (train ru)" in err and str(train_file) in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    train_file.write_text(text, encoding="utf-8")  # put back
    vocab = next(p for p in (tmp_path / "tokenizer").iterdir() if p.suffix in (".json", ".txt") and p.is_file())
    original = vocab.read_bytes()
    vocab.write_bytes(original + b"\n")  # a tokenizer file edited in place
    rc = main(["run", str(tmp_path / "r.yaml"), "--out", str(run), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "the files of teacher.tokenizer changed since this run started" in err
    assert f"{tmp_path / 'r.yaml'}:" in err and "Traceback" not in err
    vocab.write_bytes(original)  # put back: the resume may go on
    from cascade_kd.cascade import prepare
    from cascade_kd.cascade.rundir import check_same_inputs, input_digests

    job = prepare(load_recipe(tmp_path / "r.yaml"), run, say=lambda m: None)
    check_same_inputs(job, input_digests(job))


def test_eval_command_rescored_without_training(finished_run, capsys):
    root, _, metrics = finished_run
    # the default recipe is the copy in RUN_DIR, whose paths were made absolute
    rc = main(["eval", str(root / "run"), "--split", "dev", "--out", str(root / "ev")])
    assert rc == 0
    ev = json.loads((root / "ev" / "metrics.json").read_text())
    assert ev["split"] == "dev"
    assert [m["name"] for m in ev["models"]] == [m["name"] for m in metrics["models"]]
    assert [m["average"] for m in ev["models"]] == pytest.approx([m["dev_average"] for m in metrics["models"]])


def test_direct_baseline_has_the_final_students_shape():
    from tests.helpers import tiny_bert

    teacher = tiny_bert(layers=4, hidden=32).config
    final = tiny_bert(layers=1, hidden=16, heads=2).config
    spec = direct_spec(StudentConfig(layers=1, init="random", hidden=16, embeddings="pca"), final, teacher)
    assert (spec.hidden, spec.heads, spec.init, spec.embeddings) == (16, 2, "random", "pca")
    same = direct_spec(StudentConfig(layers=1, init=[3]), tiny_bert(layers=1, hidden=32).config, teacher)
    assert same.init == "bottom" and same.hidden == 32


def test_a_direct_baseline_is_trained_only_beside_a_chain_of_stages():
    from cascade_kd.config.schema import CascadeConfig

    two = [{"name": "ta", "student": {"layers": 2}}, {"name": "s1", "student": {"layers": 1}}]
    assert CascadeConfig(stages=two).model_names() == ["teacher", "ta", "s1", "direct"]
    assert CascadeConfig(stages=two, direct=False).model_names() == ["teacher", "ta", "s1"]
    one = CascadeConfig(stages=two[1:])  # one stage is itself distilled straight from the teacher
    assert not one.trains_direct and one.model_names() == ["teacher", "s1"]
    assert CascadeConfig().model_names() == ["teacher"]
    # which model of the chain (0: the teacher) teaches each stage
    chain = CascadeConfig(stages=[*two, {"name": "s0", "student": {"layers": 1}, "teacher": "original"}])
    assert [chain.teacher_of(i) for i in range(3)] == [0, 1, 0]


def test_holdout_from_dev_is_fixed_disjoint_and_capped(demo_workspace, tmp_path):
    from cascade_kd.data.task import load_task_data

    for name in ("data", "tokenizer"):
        (tmp_path / name).symlink_to(demo_workspace / name)
    write_recipe(tmp_path, merge(SMALL, {"data": {"test": None, "holdout_from_dev": 0.4}}), "r.yaml")
    a = load_task_data(load_recipe(tmp_path / "r.yaml"))
    b = load_task_data(load_recipe(tmp_path / "r.yaml"))
    for lang in ("en", "ru"):
        dev = {e.source for e in a.splits["dev"][lang]}
        test = {e.source for e in a.splits["test"][lang]}
        assert dev and test and not dev & test
        assert len(test) == 60 and len(dev) == 80  # 40% of 150 held out; dev capped at 80
        assert test == {e.source for e in b.splits["test"][lang]}


def test_bench_measures_every_model_against_the_teacher(finished_run, tmp_path, capsys):
    root, _, metrics = finished_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    rc = main(["bench", str(run), "--batch-sizes", "1", "4", "--seq-lens", "16", "--repeats", "2"])
    assert rc == 0
    lat = json.loads((run / "metrics.json").read_text())["latency"]
    assert [m["name"] for m in lat["models"]] == [m["name"] for m in metrics["models"]]
    for m in lat["models"]:
        assert {"fp32/b1/s16", "fp32/b4/s16"} <= set(m["latency_ms"]) and all(v > 0 for v in m["latency_ms"].values())
        assert m["size_mb"] > 0
    assert lat["models"][0]["speedup_vs_teacher"]["fp32/b1/s16"] == pytest.approx(1.0)
    assert "## Latency" in (run / "report.md").read_text()
    # a --resume of the finished run scores it again, and keeps what bench measured
    run_recipe(finished_run[1], run, resume=True, say=lambda m: None)
    assert json.loads((run / "metrics.json").read_text())["latency"] == lat
    assert "## Latency" in (run / "report.md").read_text()


def test_a_run_killed_mid_stage_resumes_to_the_same_metrics(finished_run, tmp_path):
    """SIGKILL during the first assistant's training, then --resume: the same scores as the finished
    (uninterrupted) run. The run reads the finished run's fine-tuned teacher (it has the head, so it
    is not trained again): the stages draw their own random streams, so their scores equal the
    finished run's, and the test does not spend its time training the teacher a second time."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root, _, metrics = finished_run
    for name in ("data", "tokenizer"):
        (tmp_path / name).symlink_to(root / name)
    write_recipe(tmp_path, merge(SMALL, {"teacher": {"model": str(root / "run" / "teacher"), "config": None,
                                                      "train": None}}))
    command = [sys.executable, "-m", "cascade_kd", "run", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "run")]
    env = {**os.environ, "CASCADE_KD_QUIET": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp_path / "run" / "state" / "ta" / "progress.json"
    deadline = time.time() + 600  # generous: a loaded 2-core machine can take a minute to get there
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert marker.exists(), "the run never reached the first assistant's checkpoint"
    assert not (tmp_path / "run" / "metrics.json").exists()

    loud = {k: v for k, v in env.items() if k != "CASCADE_KD_QUIET"}
    done = subprocess.run(command + ["--resume"], env=loud, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming at step" in done.stdout and "teacher: already trained" in done.stdout
    assert json.loads((tmp_path / "run" / "teacher" / "stage.json").read_text())["trained"] is False  # read, not trained
    resumed = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [m["name"] for m in resumed["models"]] == [m["name"] for m in metrics["models"]]
    for new, old in zip(resumed["models"], metrics["models"]):
        assert new["per_language"] == old["per_language"], new["name"]
    assert not (tmp_path / "run" / "state" / "ta").exists()  # training state is removed once the model is saved


def test_resume_with_a_changed_recipe_names_the_keys_that_differ(finished_run, tmp_path, capsys):
    root, _, _ = finished_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    for name in ("data", "tokenizer"):
        (tmp_path / name).symlink_to(root / name)
    write_recipe(tmp_path, merge(SMALL, {"seed": 1, "train": {"epochs": 4}}), "r.yaml")
    rc = main(["run", str(tmp_path / "r.yaml"), "--out", str(run), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "recipe changed" in err and "seed" in err and "train.epochs" in err


def _edited_copy(finished_run, tmp_path, changes: dict, drop=()) -> tuple:
    """A copy of the finished run, the models in `drop` (and metrics.json, with them) removed as a
    kill before they were saved would leave it, and the recipe with `changes` as r.yaml."""
    root, _, _ = finished_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    for name in ("data", "tokenizer"):
        (tmp_path / name).symlink_to(root / name)
    for name in drop:
        shutil.rmtree(run / "stages" / name)
    if drop:
        (run / "metrics.json").unlink()
    return run, write_recipe(tmp_path, merge(SMALL, changes), "r.yaml")


def test_resume_with_an_edit_no_finished_model_reads_keeps_them_and_trains_the_rest(finished_run, tmp_path, monkeypatch):
    # killed after `ta`: the last stage's epochs edited, then resumed
    run, recipe = _edited_copy(finished_run, tmp_path, {"cascade": {"stages": {1: {"train": {"epochs": 1}}}}},
                               drop=("student", "direct"))
    kept = {name: (run / path / "stage.json").read_bytes() for name, path in [("teacher", "teacher"), ("ta", "stages/ta")]}
    (run / "state" / "student").mkdir(parents=True)  # what a kill in the edited stage left: not resumed from
    (run / "state" / "student" / "stale").write_text("state of the recipe before the edit")
    from cascade_kd.cascade import stages

    def train(task, data, cfg, **kwargs):  # every stage starts with no state of the earlier recipe
        assert not (run / "state" / "student" / "stale").exists()
        return real_train(task, data, cfg, **kwargs)

    real_train = stages.train
    monkeypatch.setattr(stages, "train", train)
    lines = []
    metrics = run_recipe(load_recipe(recipe), run, resume=True, say=lines.append)
    said = "\n".join(lines)
    assert "no finished model reads what changed: kept teacher, ta" in said and "cascade.stages.1.train" in said
    assert "teacher: already trained" in said and "ta: already distilled" in said
    for name, path in [("teacher", "teacher"), ("ta", "stages/ta")]:
        assert (run / path / "stage.json").read_bytes() == kept[name], name
    for name in ("student", "direct"):  # trained under the edited recipe
        info = json.loads((run / "stages" / name / "stage.json").read_text())
        assert info["epochs"] == 1 and info["model_key"], name
    assert metrics["recipe_fingerprint"] == load_recipe(recipe).fingerprint()
    assert json.loads((run / "manifest.json").read_text())["recipe_fingerprint"] == load_recipe(recipe).fingerprint()


def test_resume_with_an_edit_a_finished_model_reads_is_refused_naming_it(finished_run, tmp_path, capsys):
    run, recipe = _edited_copy(finished_run, tmp_path, {"cascade": {"stages": {1: {"train": {"epochs": 1}}}}})
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    rc = main(["run", str(recipe), "--out", str(run), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "cascade.stages.1.train" in err
    assert "changes the finished models student, direct, which a resume would replace" in err
    assert f"teacher section is {{model: {run / 'teacher'}}}" in err  # the teacher is unaffected: how to keep it
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_metrics_json_of_the_recipe_before_an_edit_does_not_finish_the_run(finished_run, tmp_path):
    from cascade_kd.cascade.rundir import finished_run as is_finished

    run, recipe = _edited_copy(finished_run, tmp_path, {"name": "renamed"})
    old = finished_run[1].fingerprint()
    assert is_finished(run, old) and not is_finished(run, load_recipe(recipe).fingerprint())
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["recipe_fingerprint"] = "0" * 16  # the scores of another recipe, the manifest of this one
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert not is_finished(run, old)


def test_a_run_saved_before_model_keys_resumes_an_edit_that_touches_none_of_its_models(finished_run, tmp_path):
    run, recipe = _edited_copy(finished_run, tmp_path, {"name": "renamed"})
    for marker in run.rglob("stage.json"):  # as a run of an earlier version wrote them
        info = json.loads(marker.read_text())
        del info["model_key"]
        marker.write_text(json.dumps(info))
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["model_keys"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "recipe.yaml").write_text("not read: the manifest's recipe is what made the models\n")
    lines = []
    run_recipe(load_recipe(recipe), run, resume=True, say=lines.append)
    said = "\n".join(lines)
    assert "kept teacher, ta, student, direct" in said and "train from the start" not in said
    assert "teacher: already trained" in said and "direct: already distilled" in said
    assert all(json.loads(m.read_text())["model_key"] for m in run.rglob("stage.json"))  # given their keys


def test_an_edit_that_drops_a_finished_model_is_refused_naming_its_folder(finished_run, tmp_path, capsys):
    run, recipe = _edited_copy(finished_run, tmp_path, {"cascade": {"direct": False}})
    rc = main(["run", str(recipe), "--out", str(run), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "cascade.direct" in err and f"move {run / 'stages' / 'direct'} away first" in err


def test_the_recipe_as_run_resumes_its_run(finished_run, tmp_path, capsys):
    # what not_finished's hint says to run: RUN_DIR/recipe.yaml, whose paths are absolute
    run, _ = _edited_copy(finished_run, tmp_path, {})
    assert main(["run", str(run / "recipe.yaml"), "--out", str(run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "no finished model reads what changed: kept teacher, ta, student, direct" in out
