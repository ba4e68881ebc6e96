"""benchmarks/runner.py: grids of tiny recipes run in dependency order, skipped when finished with the
same recipe, refused when RUN_DIR holds another recipe's run, post steps run once; and the mean ± sd
over seeds that the benchmark tables print, against values worked out by hand."""

from __future__ import annotations

import functools
import json
import shutil
import sys
from pathlib import Path

import pytest

import cascade_kd
from cascade_kd.errors import UserError
from tests.helpers import merge, tiny_recipe

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import runner
from runner import Job, run_grid

FAST = {"teacher": {"train": {"epochs": 1}},
        "data": {"languages": ["en"], "max_train_per_language": 32, "max_eval_per_language": 8}}


def fast_recipe(root: Path, **changes) -> dict:
    """The tiny recipe on one language, 32 sentences, one teacher epoch: a run in a few seconds."""
    return merge(tiny_recipe(root, **FAST), changes)


def loaded_teacher(out: Path, job: str) -> dict:
    return {"teacher": {"model": str(out / job / "teacher"), "finetune": "never", "config": None, "tokenizer": None,
                        "train": None}}


def note(path: Path, run_dir: Path, tag: str = "") -> None:
    """A post step that only says it ran (a module-level function: pickles, and describes itself)."""
    with open(path, "a") as handle:
        handle.write(f"{run_dir.name} {tag}\n")


@pytest.fixture(scope="module")
def finished_grid(demo_workspace, tmp_path_factory):
    """A two-job grid, run once: `teacher` trains the teacher, `student` loads it (listed first, so
    the runner must reorder them)."""
    out = tmp_path_factory.mktemp("grid")
    notes = out.parent / f"{out.name}-notes.txt"
    jobs = [Job("seed0/student", fast_recipe(demo_workspace, **loaded_teacher(out, "seed0/teacher")), seed=0,
                depends_on=["seed0/teacher"], config="student"),
            Job("seed0/teacher", fast_recipe(demo_workspace), seed=0, config="teacher",
                after=functools.partial(note, notes, tag="v1"))]
    lines = []
    grid = run_grid(jobs, out, say=lines.append)
    return out, jobs, grid, lines, notes


def test_jobs_run_after_the_jobs_they_depend_on(finished_grid):
    out, _, grid, lines, _ = finished_grid
    starts = [line for line in lines if "[grid]" in line and "starting" in line]
    assert [s.split("] ")[1].split(":")[0] for s in starts] == ["seed0/teacher", "seed0/student"]
    assert {name: r["status"] for name, r in grid["jobs"].items()} == {"seed0/teacher": "done", "seed0/student": "done"}
    for name in ("seed0/teacher", "seed0/student"):
        assert (out / name / "metrics.json").is_file()
        assert grid["jobs"][name]["wall_s"] > 0
    # every line the runs said is in grid.log, with the job's name
    log = (out / "grid.log").read_text()
    assert "[seed0/student] " in log and "[seed0/teacher] " in log
    assert json.loads((out / "grid.json").read_text())["jobs"] == grid["jobs"]


def test_a_finished_job_is_skipped_by_its_recipe_fingerprint(finished_grid, monkeypatch):
    out, jobs, first, _, notes = finished_grid
    calls = []
    monkeypatch.setattr(cascade_kd, "run", lambda *a, **k: calls.append(a) or {}, raising=False)
    lines = []
    grid = run_grid(jobs, out, say=lines.append)
    assert calls == []
    assert sum("done before, skipped" in line for line in lines) == 2
    # the wall times measured when they ran are kept, not replaced
    assert {k: v["wall_s"] for k, v in grid["jobs"].items()} == {k: v["wall_s"] for k, v in first["jobs"].items()}
    # the post step ran once, with the first grid; a changed step runs again, an unchanged one does not
    assert notes.read_text() == "teacher v1\n"
    jobs[1].after = functools.partial(note, notes, tag="v2")
    run_grid(jobs, out, say=lines.append)
    run_grid(jobs, out, say=lines.append)
    assert notes.read_text() == "teacher v1\nteacher v2\n"
    run_grid(jobs, out, say=lines.append, rerun_after=True)
    assert notes.read_text() == "teacher v1\nteacher v2\nteacher v2\n"
    assert calls == []


def test_a_queued_job_no_longer_in_the_grid_is_forgotten_and_other_calls_jobs_kept(finished_grid, monkeypatch):
    out, jobs, _, _, _ = finished_grid
    grid = json.loads((out / "grid.json").read_text())
    grid["jobs"]["seed0/renamed"] = {"status": "pending"}  # queued by an earlier grid, never run
    grid["jobs"]["other/job"] = {"status": "done", "wall_s": 1.0}  # another call's (--settings) finished job
    grid["jobs"]["other/queued"] = {"status": "failed", "error": "x"}
    (out / "grid.json").write_text(json.dumps(grid))
    monkeypatch.setattr(cascade_kd, "run", lambda *a, **k: pytest.fail("nothing should train"), raising=False)
    after = run_grid(jobs, out, say=lambda m: None)
    assert "seed0/renamed" not in after["jobs"]
    assert after["jobs"]["other/job"] == {"status": "done", "wall_s": 1.0} and "other/queued" in after["jobs"]


def test_post_steps_only_trains_nothing_and_runs_the_done_jobs_steps(demo_workspace, tmp_path, monkeypatch):
    out, notes = tmp_path / "out", tmp_path / "notes.txt"
    teacher = Job("seed0/teacher", fast_recipe(demo_workspace), seed=0, after=functools.partial(note, notes, tag="t"))
    run_grid([teacher], out, say=lambda m: None, train=True)
    notes.write_text("")
    student = Job("seed0/student", fast_recipe(demo_workspace, **loaded_teacher(out, "seed0/teacher")), seed=0,
                  depends_on=["seed0/teacher"], after=functools.partial(note, notes, tag="s"))
    monkeypatch.setattr(cascade_kd, "run", lambda *a, **k: pytest.fail("nothing should train"), raising=False)
    lines = []
    grid = run_grid([teacher, student], out, say=lines.append, train=False, rerun_after=True)
    assert notes.read_text() == "teacher t\n"  # the done job's step ran; the untrained job's did not
    assert grid["jobs"]["seed0/student"]["status"] == "pending" and not (out / "seed0/student").exists()
    assert any("1 job(s) left as they are (post steps only)" in line for line in lines)


def test_a_changed_recipe_in_the_same_run_dir_is_refused_before_anything_trains(finished_grid, demo_workspace,
                                                                                 monkeypatch):
    out = finished_grid[0]
    calls = []
    monkeypatch.setattr(cascade_kd, "run", lambda *a, **k: calls.append(a) or {}, raising=False)
    changed = [Job("seed0/new", fast_recipe(demo_workspace), seed=0),  # would be trainable: it must not start
               Job("seed0/teacher", fast_recipe(demo_workspace, train={"lr": 1e-3}), seed=0)]
    with pytest.raises(UserError, match=r"another recipe.*seed0/teacher.*train\.lr.*differ"):
        run_grid(changed, out, say=lambda m: None)
    assert calls == [] and not (out / "seed0/new").exists()
    # a folder with files that are no run is refused too
    (out / "stray").mkdir()
    (out / "stray" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="no manifest.json"):
        run_grid([Job("stray", fast_recipe(demo_workspace))], out, say=lambda m: None)
    assert (out / "stray" / "notes.txt").read_text() == "mine"


def test_a_failed_job_blocks_the_jobs_that_need_it_and_is_reported(demo_workspace, tmp_path):
    broken = fast_recipe(demo_workspace, data={"train": str(tmp_path / "missing" / "{lang}.conll")})
    jobs = [Job("bad", broken), Job("needs-bad", fast_recipe(demo_workspace), depends_on=["bad"])]
    grid = run_grid(jobs, tmp_path / "out", say=lambda m: None)
    assert grid["jobs"]["bad"]["status"] == "failed" and "missing" in grid["jobs"]["bad"]["error"]
    assert grid["jobs"]["needs-bad"] == {**grid["jobs"]["needs-bad"], "status": "blocked",
                                         "error": "not started: bad did not finish"}
    assert set(runner.failures(grid)) == {"bad", "needs-bad"}
    assert not (tmp_path / "out" / "needs-bad").exists()


@pytest.mark.slow  # four tiny runs, in spawned processes that import torch each
def test_parallel_jobs_train_in_spawned_processes_and_a_fixed_failure_runs_on_the_next_call(demo_workspace, tmp_path):
    out, data = tmp_path / "out", tmp_path / "data-later"
    jobs = [Job("needs-bad", fast_recipe(demo_workspace, **loaded_teacher(out, "bad")), depends_on=["bad"]),
            Job("ok", fast_recipe(demo_workspace), seed=3),
            Job("bad", fast_recipe(demo_workspace, data={"train": str(data / "{lang}.conll")}))]
    grid = run_grid(jobs, out, parallel=2, say=lambda m: None)
    assert {k: v["status"] for k, v in grid["jobs"].items()} == {"ok": "done", "bad": "failed", "needs-bad": "blocked"}
    metrics = json.loads((out / "ok" / "metrics.json").read_text())
    assert json.loads((out / "ok" / "manifest.json").read_text())["seed"] == 3 and metrics["models"]
    assert "[ok] finished in" in (out / "grid.log").read_text()  # the worker process's lines are in grid.log
    # the data appears: the same command runs the failed job and the one it blocked, and skips the finished one
    data.mkdir()
    (data / "en.conll").write_text((demo_workspace / "data" / "en" / "train.conll").read_text())
    lines = []
    again = run_grid(jobs, out, parallel=2, say=lines.append)
    assert {k: v["status"] for k, v in again["jobs"].items()} == {"ok": "done", "bad": "done", "needs-bad": "done"}
    assert "error" not in again["jobs"]["bad"] and again["jobs"]["ok"]["wall_s"] == grid["jobs"]["ok"]["wall_s"]
    assert sum("done before, skipped" in line for line in lines) == 1


@pytest.mark.slow  # two tiny runs in spawned processes
def test_a_job_that_reads_one_model_of_a_running_job_starts_once_that_model_is_finished(demo_workspace, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.setattr(runner, "POLL_S", 0.05)
    out = tmp_path / "out"
    # the teacher's job goes on after its teacher: a student stage of many epochs
    first = Job("first", fast_recipe(demo_workspace, train={"epochs": 60}))
    reader = Job("reader", fast_recipe(demo_workspace, **loaded_teacher(out, "first")), depends_on=["first"],
                 needs_model={"first": "teacher"})
    grid = run_grid([first, reader], out, parallel=2, say=lambda m: None)
    assert {k: v["status"] for k, v in grid["jobs"].items()} == {"first": "done", "reader": "done"}
    log = (out / "grid.log").read_text().splitlines()
    started = next(i for i, line in enumerate(log) if "[grid] reader: starting" in line)
    finished = next(i for i, line in enumerate(log) if "[first] finished in" in line)
    assert started < finished  # it did not wait for the whole job
    assert (out / "first" / "teacher" / "stage.json").is_file()


def test_bad_grids_are_refused_with_a_clear_error(demo_workspace, tmp_path):
    recipe, out = fast_recipe(demo_workspace), tmp_path / "out"
    with pytest.raises(UserError, match="'a' depends on 'nope', which is not in the grid"):
        run_grid([Job("a", recipe, depends_on=["nope"])], out)
    with pytest.raises(UserError, match="cycle: a -> b -> a"):
        run_grid([Job("a", recipe, depends_on=["b"]), Job("b", recipe, depends_on=["a"])], out)
    with pytest.raises(UserError, match="two jobs are named 'a'"):
        run_grid([Job("a", recipe), Job("a", recipe)], out)
    with pytest.raises(cascade_kd.RecipeError, match="job a.*lerning_rate"):
        run_grid([Job("ok", recipe), Job("a", merge(recipe, {"train": {"lerning_rate": 1}}))], out)
    assert not out.exists()  # nothing written for a grid that cannot run


def fake_run(trained: list):
    """A stand-in for `cascade_kd.run` that writes what a finished run leaves (manifest with the
    recipe's fingerprint, metrics.json with one model whose score is its job's seed) in no time."""
    def run(recipe, run_dir, resume=True, say=None):
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        trained.append(run_dir.name)
        metrics = {"name": recipe.name, "task": "token", "metric": "f1", "split": "test", "languages": ["en"],
                   "models": [{"name": "s", "role": "student", "path": "stages/s", "average": recipe.seed / 10,
                               "per_language": {"en": recipe.seed / 10}, "params_total": 1}]}
        (run_dir / "manifest.json").write_text(json.dumps({"recipe_fingerprint": recipe.fingerprint(),
                                                           "seed": recipe.seed}))
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        return {"wall_time_s": 0.01}
    return run


def test_a_lost_out_is_restored_from_the_archive_and_what_must_train_retrains_its_dependencies(
        demo_workspace, tmp_path, monkeypatch):
    trained, archive, notes = [], tmp_path / "results" / "grid_runs.json", tmp_path / "notes.txt"
    monkeypatch.setattr(cascade_kd, "run", fake_run(trained), raising=False)
    lost = tmp_path / "out"
    jobs = [Job("teacher", fast_recipe(demo_workspace), seed=1, after=functools.partial(note, notes)),
            Job("student", fast_recipe(demo_workspace, **loaded_teacher(lost, "teacher")), seed=2,
                depends_on=["teacher"])]
    run_grid(jobs, lost, archive=archive, say=lambda m: None)
    assert trained == ["teacher", "student"] and notes.read_text() == "teacher \n"
    kept = json.loads(archive.read_text())
    assert kept["format"] == 1 and set(kept["jobs"]) == {"teacher", "student"}
    assert kept["jobs"]["student"]["metrics"] == json.loads((lost / "student" / "metrics.json").read_text())
    assert kept["jobs"]["teacher"]["record"]["after"]["status"] == "done"  # the post step's record too

    # OUT is lost (another machine): both are restored, nothing trains, no post step runs without a model
    shutil.rmtree(lost)
    lines = []
    grid_lost = run_grid(jobs, lost, archive=archive, say=lines.append)
    assert trained == ["teacher", "student"] and notes.read_text() == "teacher \n"
    for name in ("teacher", "student"):
        assert json.loads((lost / name / "metrics.json").read_text()) == kept["jobs"][name]["metrics"]
        assert runner.restored(lost / name) and grid_lost["jobs"][name]["restored"] is True
        assert grid_lost["jobs"][name]["status"] == "done"
        assert grid_lost["jobs"][name]["wall_s"] == kept["jobs"][name]["record"]["wall_s"]
    assert sum("restored from" in line for line in lines) == 2
    assert json.loads(archive.read_text()) == kept  # restoring changes nothing there

    # a new job needs the teacher's model, which is not here: the teacher trains again, the
    # restored student stays as it is, and the archive takes the new runs
    jobs.append(Job("student3", fast_recipe(demo_workspace, **loaded_teacher(lost, "teacher")), seed=3,
                    depends_on=["teacher"]))
    lines = []
    run_grid(jobs, lost, archive=archive, say=lines.append, post_steps=False)  # stopped before the post steps
    assert trained[2:] == ["teacher", "student3"] and notes.read_text() == "teacher \n"
    assert any("teacher: restored before, trains again" in line for line in lines)
    # until the new teacher's post step is done, the archive keeps the earlier teacher whole
    assert json.loads(archive.read_text())["jobs"]["teacher"] == kept["jobs"]["teacher"]
    after = run_grid(jobs, lost, archive=archive, say=lines.append)
    assert trained[2:] == ["teacher", "student3"] and notes.read_text() == "teacher \nteacher \n"
    assert not runner.restored(lost / "teacher") and runner.restored(lost / "student")
    assert "restored" not in after["jobs"]["teacher"] and after["jobs"]["student"]["restored"] is True
    kept = json.loads(archive.read_text())
    assert set(kept["jobs"]) == {"teacher", "student", "student3"}
    assert kept["jobs"]["teacher"]["record"]["finished"] == after["jobs"]["teacher"]["finished"]


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_restored_job_whose_teacher_others_read_trains_that_model_only(demo_workspace, tmp_path, parallel):
    """A wiped OUT, a new run that reads the restored first job's teacher: the teacher alone trains
    again (a run of the first job's recipe stopped after it), its scores stay the archived ones; a
    run that reads the whole job later takes that partial run over and resumes it."""
    out, archive = tmp_path / "out", tmp_path / "runs.json"
    first = Job("first", fast_recipe(demo_workspace, cascade={"stages": [{"name": "s1", "student": {"layers": 1}}]}))
    def reader(name: str, seed: int, only_teacher: bool = True) -> Job:
        return Job(name, fast_recipe(demo_workspace, **loaded_teacher(out, "first")), seed=seed, depends_on=["first"],
                   needs_model={"first": "teacher"} if only_teacher else {})
    run_grid([first, reader("a", 1)], out, archive=archive, say=lambda m: None)
    kept = json.loads(archive.read_text())["jobs"]["first"]
    shutil.rmtree(out)

    lines = []
    grid = run_grid([first, reader("a", 1), reader("b", 2)], out, archive=archive, say=lines.append, parallel=parallel)
    assert grid["jobs"]["b"]["status"] == "done" and (out / "b" / "metrics.json").is_file()
    assert runner.restored(out / "first") and runner.restored(out / "a")  # scores kept, not trained
    assert grid["jobs"]["first"]["model_status"] == "done" and grid["jobs"]["first"]["models_trained_here"]["teacher"]
    partial = runner.partial_dir(out, "first")
    assert (out / "first" / "teacher").is_symlink() and (out / "first" / "teacher" / "stage.json").is_file()
    assert not (partial / "stages" / "s1").exists() and not (partial / "metrics.json").exists()  # stopped there
    assert json.loads(archive.read_text())["jobs"]["first"] == kept
    assert any("first: restored from the archive; training its teacher only" in line for line in lines)
    assert not any("first: starting" in line for line in lines)
    teacher_info = (partial / "teacher" / "stage.json").read_text()

    # a call again: nothing trains (the model is here)
    lines = []
    run_grid([first, reader("a", 1), reader("b", 2)], out, archive=archive, say=lines.append)
    assert not any("training its teacher only" in line or "starting" in line for line in lines)

    # a run that reads the whole first job: it trains, from the partial run (its teacher not again)
    lines = []
    grid = run_grid([first, reader("a", 1), reader("b", 2), reader("c", 3, only_teacher=False)], out,
                    archive=archive, say=lines.append, parallel=parallel)
    assert grid["jobs"]["first"]["status"] == "done" and not runner.restored(out / "first")
    assert (out / "first" / "stages" / "s1" / "stage.json").is_file() and not partial.exists()
    assert not (out / "first" / "teacher").is_symlink()
    assert (out / "first" / "teacher" / "stage.json").read_text() == teacher_info
    # (in grid.log: a worker process's lines do not reach `say`)
    assert "[first] teacher: already trained, loading it (resume)" in (out / "grid.log").read_text().split(
        "first: restored before, trains again")[-1]


def test_a_stage_read_by_others_trains_alone_and_a_changed_recipe_leaves_no_link_behind(demo_workspace, tmp_path):
    """needs_model names a folder (stages/s1): the partial run stops after that stage. When the
    restored job's recipe changes, its restore is undone with the link, and the grid still starts."""
    out, archive = tmp_path / "out", tmp_path / "runs.json"
    stages = {"stages": [{"name": "s1", "student": {"layers": 1}}, {"name": "s0", "student": {"layers": 1}}]}
    first = Job("first", fast_recipe(demo_workspace, cascade=stages))
    stage_s1 = merge(loaded_teacher(out, "first"), {"teacher": {"model": str(out / "first" / "stages" / "s1")}})
    reader = Job("reader", fast_recipe(demo_workspace, **stage_s1), seed=4,
                 depends_on=["first"], needs_model={"first": "stages/s1"})
    run_grid([first], out, archive=archive, say=lambda m: None)
    shutil.rmtree(out)
    grid = run_grid([first, reader], out, archive=archive, say=lambda m: None)
    partial = runner.partial_dir(out, "first")
    assert grid["jobs"]["reader"]["status"] == "done", grid["jobs"]["reader"].get("error")
    assert (out / "first" / "stages" / "s1").is_symlink()
    assert (partial / "stages" / "s1" / "stage.json").is_file() and not (partial / "stages" / "s0").exists()

    changed = Job("first", fast_recipe(demo_workspace, cascade=stages, train={"epochs": 2}))
    grid = run_grid([changed], out, archive=archive, say=lambda m: None)  # not refused: no link is left
    assert grid["jobs"]["first"]["status"] == "done" and not runner.restored(out / "first")
    assert not (out / "first" / "stages" / "s1").is_symlink()


def test_a_model_that_fails_to_train_blocks_its_readers_and_says_so(demo_workspace, tmp_path, monkeypatch):
    out, archive = tmp_path / "out", tmp_path / "runs.json"
    first = Job("first", fast_recipe(demo_workspace))
    reader = Job("reader", fast_recipe(demo_workspace, **loaded_teacher(out, "first")), seed=5, depends_on=["first"],
                 needs_model={"first": "teacher"})
    run_grid([first], out, archive=archive, say=lambda m: None)
    shutil.rmtree(out)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")
    monkeypatch.setattr("cascade_kd.cascade.run_recipe", broken)
    grid = run_grid([first, reader], out, archive=archive, say=lambda m: None)
    assert grid["jobs"]["reader"]["status"] == "blocked" and "its teacher" in grid["jobs"]["reader"]["error"]
    assert runner.failures(grid) == {"reader": grid["jobs"]["reader"]["error"],
                                     "first (teacher, for the runs that read it)": "RuntimeError: out of memory"}


def test_until_stops_a_run_after_the_model_named_and_refuses_one_it_lacks(demo_workspace, tmp_path):
    from cascade_kd.cascade import run_recipe
    from cascade_kd.config import Recipe

    recipe = Recipe.from_dict(fast_recipe(demo_workspace))
    with pytest.raises(cascade_kd.RecipeError, match="until='s9': the recipe has no such model"):
        run_recipe(recipe, tmp_path / "x", until="s9", say=lambda m: None)
    assert not (tmp_path / "x").exists()
    assert run_recipe(recipe, tmp_path / "run", until="teacher", say=lambda m: None) == {"stopped_after": "teacher"}
    assert (tmp_path / "run" / "teacher" / "stage.json").is_file()
    assert not (tmp_path / "run" / "stages").exists() and not (tmp_path / "run" / "metrics.json").exists()


def test_a_job_trained_again_keeps_its_archived_run_whole_until_its_new_post_step(demo_workspace, tmp_path,
                                                                                   monkeypatch):
    """An interrupted job trains again over a record whose post step described the model before:
    that step is dropped, and the archive keeps the earlier run (scores and step of one model)."""
    trained, archive, notes = [], tmp_path / "runs.json", tmp_path / "notes.txt"
    monkeypatch.setattr(cascade_kd, "run", fake_run(trained), raising=False)
    out = tmp_path / "out"
    jobs = [Job("teacher", fast_recipe(demo_workspace), seed=1, after=functools.partial(note, notes))]
    run_grid(jobs, out, archive=archive, say=lambda m: None)
    kept = json.loads(archive.read_text())["jobs"]["teacher"]
    (out / "teacher" / "metrics.json").unlink()  # interrupted: RUN_DIR holds a run that is not finished
    grid = run_grid(jobs, out, archive=archive, say=lambda m: None, post_steps=False)
    assert trained == ["teacher", "teacher"] and "after" not in grid["jobs"]["teacher"]
    assert json.loads(archive.read_text())["jobs"]["teacher"] == kept
    grid = run_grid(jobs, out, archive=archive, say=lambda m: None)  # the post step: now the new run goes in
    assert notes.read_text() == "teacher \nteacher \n" and grid["jobs"]["teacher"]["after"]["status"] == "done"
    assert json.loads(archive.read_text())["jobs"]["teacher"]["record"] == grid["jobs"]["teacher"]


def test_only_trains_the_jobs_asked_for_and_what_they_need(demo_workspace, tmp_path, monkeypatch):
    trained, out = [], tmp_path / "out"
    monkeypatch.setattr(cascade_kd, "run", fake_run(trained), raising=False)
    jobs = [Job("teacher", fast_recipe(demo_workspace), seed=1),
            Job("a", fast_recipe(demo_workspace, **loaded_teacher(out, "teacher")), seed=2, depends_on=["teacher"]),
            Job("b", fast_recipe(demo_workspace), seed=3)]
    lines = []
    grid = run_grid(jobs, out, only=["a"], say=lines.append)
    assert trained == ["teacher", "a"] and grid["jobs"]["b"]["status"] == "pending" and not (out / "b").exists()
    assert any("1 job(s) left as they are (not among the jobs asked for)" in line for line in lines)
    with pytest.raises(UserError, match="no job named 'c'"):
        run_grid(jobs, out, only=["c"], say=lambda m: None)
    run_grid(jobs, out, say=lambda m: None)
    assert trained == ["teacher", "a", "b"]


def test_an_archive_of_another_format_or_that_does_not_parse_is_refused_not_overwritten(demo_workspace, tmp_path):
    archive = tmp_path / "runs.json"
    for text, message in (('{"jobs": []}', "not a grid archive"), ('{"format": 1}', "not a grid archive"),
                          ('<<<<<<< HEAD\n{"format": 1', "does not parse as JSON.*conflict markers")):
        archive.write_text(text)
        with pytest.raises(UserError, match=message):
            run_grid([Job("a", fast_recipe(demo_workspace))], tmp_path / "out", archive=archive)
        assert archive.read_text() == text and not (tmp_path / "out").exists()


def test_what_is_restored_and_what_is_not(demo_workspace, tmp_path, monkeypatch):
    trained, out, archive = [], tmp_path / "out", tmp_path / "runs.json"
    monkeypatch.setattr(cascade_kd, "run", fake_run(trained), raising=False)
    jobs = [Job(name, fast_recipe(demo_workspace), seed=i) for i, name in enumerate(["a", "b", "c", "d"])]
    run_grid(jobs, out, archive=archive, say=lambda m: None)
    kept = json.loads(archive.read_text())
    shutil.rmtree(out)
    # b: an entry of another recipe; c: an interrupted run here (resumed, never restored over);
    # d: a restore cut short (no metrics.json yet): undone and made again
    kept["jobs"]["b"]["fingerprint"] = "0" * 16
    archive.write_text(json.dumps(kept))
    (out / "c").mkdir(parents=True)
    (out / "c" / "manifest.json").write_text(json.dumps({"recipe_fingerprint": jobs[2].build().fingerprint()}))
    runner.restore(jobs[3], out / "d", kept["jobs"]["d"], archive)
    (out / "d" / "metrics.json").unlink()
    lines = []
    grid = run_grid(jobs, out, archive=archive, say=lines.append)
    assert trained[4:] == ["b", "c"]
    assert {n for n, r in grid["jobs"].items() if r.get("restored")} == {"a", "d"}
    assert runner.restored(out / "d") and json.loads((out / "d" / "metrics.json").read_text()) == kept["jobs"]["d"]["metrics"]
    assert any("1 archived run(s) not restored, their recipe differs" in line and "b" in line for line in lines)
    assert json.loads(archive.read_text())["jobs"]["b"]["fingerprint"] == jobs[1].build().fingerprint()  # retrained


def test_restoring_for_the_tables_trains_nothing_and_keeps_the_other_records(demo_workspace, tmp_path, monkeypatch):
    trained, out, archive = [], tmp_path / "out", tmp_path / "runs.json"
    monkeypatch.setattr(cascade_kd, "run", fake_run(trained), raising=False)
    jobs = [Job("a", fast_recipe(demo_workspace), seed=1), Job("b", fast_recipe(demo_workspace), seed=2)]
    run_grid(jobs[:1], out, archive=archive, quick=True, say=lambda m: None)
    shutil.rmtree(out)
    out.mkdir()
    (out / "grid.json").write_text(json.dumps({"mode": "quick", "jobs": {"b": {"status": "failed", "error": "why"}}}))
    grid = runner.restore_archived(jobs, out, archive, quick=True)
    assert trained == ["a"] and runner.restored(out / "a") and not (out / "b").exists()
    assert grid["mode"] == "quick" and grid["jobs"]["b"] == {"status": "failed", "error": "why"}
    assert grid["jobs"]["a"]["restored"] is True


def test_mean_and_sample_sd_over_seeds_per_model_and_language():
    rows = {0: {"average": 0.50, "worst": 0.40, "per_language": {"en": 0.60, "ru": 0.40}},
            1: {"average": 0.60, "worst": 0.50, "per_language": {"en": 0.70, "ru": 0.50}},
            2: {"average": 0.70, "worst": 0.30, "per_language": {"en": 0.80, "ru": 0.30}}}
    summary = runner.over_seeds(rows)
    # average: mean 0.6; deviations -0.1, 0, 0.1 -> sample variance 0.02 / 2 = 0.01 -> sd 0.1
    assert summary["average"]["mean"] == pytest.approx(0.6) and summary["average"]["sd"] == pytest.approx(0.1)
    assert summary["average"]["n"] == 3
    # ru: 0.4, 0.5, 0.3 -> mean 0.4, sd 0.1; worst: 0.4, 0.5, 0.3 likewise
    assert summary["per_language"]["ru"]["mean"] == pytest.approx(0.4)
    assert summary["per_language"]["ru"]["sd"] == pytest.approx(0.1)
    assert summary["worst"]["sd"] == pytest.approx(0.1)
    table = runner.language_table({"student": summary["per_language"]}, ["en", "ru"])
    assert table == ["| language | student |", "|---|---:|", "| en | 70.0 ± 10.0 |", "| ru | 40.0 ± 10.0 |"]
    # one seed: no sd; None and NaN are left out
    assert runner.mean_sd([0.25, None, float("nan")]) == {"mean": 0.25, "sd": None, "n": 1}
    assert runner.pm(runner.mean_sd([0.25])) == "25.0"
    assert runner.mean_sd([]) == {"mean": None, "sd": None, "n": 0} and runner.pm(runner.mean_sd([])) == "—"


def test_a_partial_run_takes_the_place_of_a_run_dir_that_is_a_symbolic_link(tmp_path):
    partial, target = tmp_path / ".models" / "first", tmp_path / "disk" / "first"
    (partial / "teacher").mkdir(parents=True)
    (partial / "teacher" / "stage.json").write_text("{}")
    target.mkdir(parents=True)
    run_dir = tmp_path / "out" / "first"
    run_dir.parent.mkdir()
    run_dir.symlink_to(target, target_is_directory=True)
    runner.reclaim_partial(run_dir, partial)
    assert run_dir.is_symlink() and (target / "teacher" / "stage.json").read_text() == "{}"
    assert not partial.exists()
