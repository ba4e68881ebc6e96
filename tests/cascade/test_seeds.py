"""`cascade-kd run RECIPE --seeds ...` (cascade/seeds.py): one RUN_DIR per seed, resumable, and the
aggregate report; an occupied --out is refused as for a single run."""

from __future__ import annotations

import json
import shutil

import yaml

from tests.helpers import tiny_recipe

# a 3-layer teacher, a 2-layer assistant, a 1-layer student and the direct baseline, small and quick
SEEDS_RECIPE = yaml.safe_dump(tiny_recipe(
    name="tiny-run", data={"test": None, "max_train_per_language": 48, "max_eval_per_language": 16},
    teacher={"config": {"num_hidden_layers": 3}, "train": {"epochs": 1}},
    cascade={"stages": [{"name": "ta", "student": {"layers": 2}}, {"name": "student", "student": {"layers": 1}}],
             "direct": True}), sort_keys=False)


def test_seeds_run_once_each_resume_and_aggregate(demo_workspace, tmp_path, capsys, monkeypatch):
    from cascade_kd.cli.app import main

    monkeypatch.setenv("CASCADE_KD_QUIET", "0")  # the progress lines are part of what is checked

    for name in ("data", "tokenizer"):
        shutil.copytree(demo_workspace / name, tmp_path / name)
    assert SEEDS_RECIPE.count("direct: true") == 1 and "max_train_per_language: 48" in SEEDS_RECIPE
    (tmp_path / "recipe.yaml").write_text(SEEDS_RECIPE)
    out = tmp_path / "seeds"
    args = ["run", str(tmp_path / "recipe.yaml"), "--out", str(out), "--seeds", "3", "7"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "seed 3 (1 of 2)" in printed and "seed 7 (2 of 2)" in printed
    # the first seed's estimate covers the second seed's run; the second's only its own
    first, second = printed.split("seed 7 (2 of 2)")
    assert "left for this run and the 1 after it" in first and "left for the run" in second
    assert "after it" not in second
    streams = {}
    for seed in (3, 7):
        manifest = json.loads((out / f"seed{seed}" / "manifest.json").read_text())
        assert manifest["seed"] == seed and (out / f"seed{seed}" / "report.html").is_file()
        for model in ("teacher", "stages/ta", "stages/student", "stages/direct"):
            marker = json.loads((out / f"seed{seed}" / model / "stage.json").read_text())
            assert marker["seed"] == seed  # the recipe's seed, as model cards show it; the stream beside it
            streams[seed, model] = marker["stream"]
    # each model its own random stream; the direct baseline shares the last stage's (the same batches)
    assert [streams[3, m] for m in ("teacher", "stages/ta", "stages/student")] == [3 * 10_007 + i for i in (0, 1, 2)]
    assert streams[3, "stages/direct"] == streams[3, "stages/student"]
    assert len({v for (seed, m), v in streams.items() if m != "stages/direct"}) == 6
    aggregate = json.loads((out / "aggregate.json").read_text())
    assert aggregate["variants"][0]["seeds"] == [3, 7] and aggregate["variants"][0]["runs"][0]["path"] == "seed3"
    (pair,) = aggregate["pairs"]
    assert pair["what"].startswith("cascade against direct") and list(pair["average"]["per_seed"]) == ["3", "7"]
    assert (out / "report.html").is_file() and "mean ± sample standard deviation" in (out / "report.md").read_text()

    from cascade_kd.outdir import read_marker

    assert read_marker(out)[0]["entries"] == sorted([".cascade-kd.json", "aggregate.json", "report.html", "report.md",
                                                     "seed3", "seed7", "seeds.json"])
    assert main(args) == 2  # an occupied --out, as for a single run
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0  # both seeds finished: nothing is trained again
    printed = capsys.readouterr().out
    assert "seed 3 (1 of 2): already finished" in printed and "seed 7 (2 of 2): already finished" in printed
    # --overwrite replaces what the seeds' runs wrote, nothing else: a user's files, a seed not listed now
    (out / "notes.txt").write_text("mine")
    (out / "seed3" / "mine.txt").write_text("mine")
    before = (out / "seed3" / "stages" / "student" / "stage.json").read_text()
    assert main(["run", str(tmp_path / "recipe.yaml"), "--out", str(out), "--seeds", "3", "--overwrite"]) == 0
    assert "already finished" not in capsys.readouterr().out
    assert (out / "notes.txt").read_text() == "mine" and (out / "seed3" / "mine.txt").read_text() == "mine"
    assert (out / "seed7" / "metrics.json").is_file()  # seed 7's run is kept, though no longer compared
    assert json.loads((out / "seeds.json").read_text())["seeds"] == [3]
    assert json.loads((out / "aggregate.json").read_text())["variants"][0]["seeds"] == [3]
    assert json.loads((out / "seed3" / "stages" / "student" / "stage.json").read_text())["wall_time_s"] != \
        json.loads(before)["wall_time_s"]  # trained again
    assert main(["run", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "data"), "--seeds", "0"]) == 2
    assert "not a multi-seed run" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "x"), "--seeds", "1", "1"]) == 2
    assert "twice" in capsys.readouterr().err


def test_no_two_models_of_a_seed_set_share_a_random_stream():
    from cascade_kd.cascade.stages import stream_seed

    # with seed + index + 1, stage 1 of seed 0 and stage 0 of seed 1 drew the same stream
    streams = [stream_seed(seed, index) for seed in range(50) for index in range(-1, 40)]
    assert len(set(streams)) == len(streams)
    # seed 0's streams are those runs made before the stride: its finished runs stay comparable
    assert [stream_seed(0, index) for index in range(-1, 4)] == [0, 1, 2, 3, 4]


def test_a_stage_resumed_mid_way_draws_the_stream_its_state_recorded(tmp_path):
    """A stage interrupted under one stream formula resumes on the same stream: a state that
    recorded its stream keeps it; one written before streams were recorded drew seed + index + 1."""
    from types import SimpleNamespace

    from cascade_kd.cascade.stages import stage_stream, stream_seed
    from cascade_kd.training.state import PROGRESS, Progress, saved_stream

    job = SimpleNamespace(recipe=SimpleNamespace(seed=2), state_dir=lambda name: tmp_path / "state" / name)
    assert stage_stream(job, "ta", 1) == stream_seed(2, 1) == 2 * 10_007 + 2  # nothing to resume
    state = tmp_path / "state" / "ta"
    state.mkdir(parents=True)
    legacy = {k: v for k, v in Progress(step=40).__dict__.items() if k != "stream"}
    (state / PROGRESS).write_text(json.dumps(legacy))
    assert saved_stream(state) == (True, None) and stage_stream(job, "ta", 1) == 2 + 1 + 1
    (state / PROGRESS).write_text(json.dumps({**legacy, "stream": 12345}))
    assert stage_stream(job, "ta", 1) == 12345
    (state / PROGRESS).write_text("{not json")  # damaged: the stage starts again, on the current formula
    assert saved_stream(state) == (False, None) and stage_stream(job, "ta", 1) == stream_seed(2, 1)
    assert stage_stream(job, "teacher", -1) == 2 * 10_007  # the teacher's own state, absent here


def test_a_seed_folder_that_is_not_a_run_is_refused_before_anything_changes(demo_workspace, tmp_path, capsys):
    from cascade_kd.cli.app import main

    for name in ("data", "tokenizer"):
        (tmp_path / name).symlink_to(demo_workspace / name)
    (tmp_path / "recipe.yaml").write_text(SEEDS_RECIPE)
    out = tmp_path / "seeds"
    (out / "seed5").mkdir(parents=True)
    (out / "seed5" / "mine.txt").write_text("mine")
    (out / "seeds.json").write_text('{"recipe": "tiny-run", "seeds": [5], "runs": {"5": "seed5"}}')
    (out / "aggregate.json").write_text("{}")
    before = {p.name: p.read_text() for p in out.iterdir() if p.is_file()}
    assert main(["run", str(tmp_path / "recipe.yaml"), "--out", str(out), "--seeds", "5", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite needs a cascade-kd run in RUN_DIR" in err and "seed5" in err
    assert {p.name: p.read_text() for p in out.iterdir() if p.is_file()} == before  # nothing replaced
    assert (out / "seed5" / "mine.txt").read_text() == "mine"
    # a file merely named seeds.json proves nothing: not replaced, with --resume or --overwrite
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "seeds.json").write_text('{"my": "settings"}')
    for flag in ("--resume", "--overwrite"):
        assert main(["run", str(tmp_path / "recipe.yaml"), "--out", str(mine), "--seeds", "0", flag]) == 2
        assert "not a multi-seed run" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["seeds.json"] and "settings" in (mine / "seeds.json").read_text()
    (out / "seed6").write_text("a file where a seed's folder goes")
    assert main(["run", str(tmp_path / "recipe.yaml"), "--out", str(out), "--seeds", "6", "--resume"]) == 2
    assert "seed6" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in out.iterdir() if p.is_file() and p.name != "seed6"} == before
