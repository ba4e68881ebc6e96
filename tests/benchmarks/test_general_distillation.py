"""benchmarks/general_distillation.py as a grid: every run a recipe that validates, each after the
runs whose models it reads, retrieval a post step of the general runs, and the step table built
from the runner's records (what ran now, what was done before, what failed or could not start).
No training here: the script's quick mode runs it all (see its docstring)."""

from __future__ import annotations

import pickle
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import general_distillation as gd
from runner import ordered


def quick_grid(tmp_path: Path, *flags: str):
    args = gd.parse_args(["--quick", "--out", str(tmp_path / "out"), "--data", str(tmp_path / "data"), *flags])
    s = gd.sizes_for(args)
    out = tmp_path / "out"
    return gd.grid(out, s, tmp_path / "data", out / "corpus", tmp_path / "data" / "sib200"), out


def test_every_run_reads_only_models_of_runs_it_depends_on(tmp_path):
    jobs, out = quick_grid(tmp_path)
    by_name = {job.name: job for job in jobs}
    assert [j.name for j in ordered(jobs)] == [j.name for j in jobs]  # listed in an order that runs
    for job in jobs:
        recipe = job.build()  # validates: a wrong key would be a RecipeError naming the job
        model = recipe.teacher.model
        if model is None:
            assert job.name == "pretrain" and recipe.task.type == "mlm" and recipe.teacher.config is not None
            continue
        producer = Path(model).relative_to(out).parts[0]  # the RUN_DIR that saves this model
        producer = {"finetune": "finetune/" + Path(model).relative_to(out).parts[1]}.get(producer, producer)
        assert producer in by_name and job.depends_on == [producer], (job.name, model)
        pickle.dumps(replace(job, after=None))  # a worker process (--jobs) gets it pickled
    assert len(jobs) == 1 + 2 + 2 * (4 + 1)
    assert [j.name for j in jobs if j.after is not None] == ["general", "general-minilm"]


def test_no_minilm_drops_its_run_and_its_fine_tuning(tmp_path):
    jobs, _ = quick_grid(tmp_path, "--no-minilm")
    assert "general-minilm" not in {j.name for j in jobs} and not any(j.name.endswith("-m2") for j in jobs)


def test_the_step_table_says_what_ran_what_was_done_before_and_what_could_not_run(tmp_path):
    jobs, _ = quick_grid(tmp_path)
    after = {"tag": "t", "status": "done", "wall_s": 5.0}
    records = {job.name: {"status": "done", "wall_s": 1.0} for job in jobs}
    records["pretrain"] = {"status": "done", "wall_s": 30.0}
    records["general"] = {"status": "done", "wall_s": 12.0, "after": after}
    records["general-minilm"] = {"status": "done", "wall_s": 4.0, "after": {**after, "wall_s": 6.0}}
    records["finetune/sib200-teacher"] = {"status": "failed", "error": "RecipeError: x"}
    records["task-cascade/sib200"] = {"status": "blocked", "error": "not started: finetune/sib200-teacher did not finish"}
    steps, failed = gd.steps_of(jobs, {"jobs": records}, done_before={"pretrain", "general"},
                                after_before={"general": after, "general-minilm": {**after, "wall_s": 2.0}})
    assert steps["pretrain"] == {"status": "done before", "wall_s": 30.0, "what": "masked-LM teacher pretrained here"}
    assert steps["general"]["status"] == "done before" and steps["general-retrieval"]["status"] == "done before"
    assert steps["general-minilm"]["status"] == "ran" and steps["general-minilm-retrieval"] == {
        "status": "ran", "wall_s": 6.0, "what": "Tatoeba retrieval (eval --parallel)"}
    assert steps["finetune-sib200-teacher"]["status"] == "FAILED" and steps["task-cascade-sib200"]["status"] == "not run"
    assert failed == {"finetune-sib200-teacher": "RecipeError: x",
                      "task-cascade-sib200": "not started: finetune/sib200-teacher did not finish"}
    assert list(steps)[:5] == ["pretrain", "general", "general-retrieval", "general-minilm", "general-minilm-retrieval"]
    # a general run that did not finish: its retrieval did not run either
    records["general"] = {"status": "failed", "error": "boom"}
    steps, failed = gd.steps_of(jobs, {"jobs": records}, done_before=set(), after_before={})
    assert steps["general-retrieval"]["status"] == "not run" and "general-retrieval" in failed
