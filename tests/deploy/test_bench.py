"""`cascade-kd bench`: every backend, tokenisation, throughput, memory and size, into metrics.json
and report.md."""

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from cascade_kd.deploy.bench import (
    best_backends,
    best_table,
    bench_run,
    bench_table,
    interleaved_times,
    memory_baseline,
    round_ratios,
    timed,
)
from cascade_kd.cli.app import main


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


def test_bench_writes_every_backend_with_tokenisation_memory_and_size(run_copy, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'cascade-kd[export]')")
    rc = main(["bench", str(run_copy), "--batch-sizes", "1", "4", "--seq-lens", "8", "--repeats", "2"])
    assert rc == 0
    lat = json.loads((run_copy / "metrics.json").read_text())["latency"]
    assert {"fp32", "ort-fp32", "ort-int8"} <= set(lat["backends"])
    assert set(lat["backends"]) | set(lat["skipped_backends"]) == {"fp32", "bf16", "ort-fp32", "ort-int8"}
    assert str(lat["threads"]) in lat["ort_threads"]
    assert set(lat["tokenization_ms"]) == {"b1/s8", "b4/s8"}
    assert all(v > 0 for v in lat["tokenization_ms"].values()) and "dev split" in lat["tokenization_input"]
    assert [m["name"] for m in lat["models"]] == ["teacher", "student"]
    for m in lat["models"]:
        keys = {f"{b}/b{n}/s8" for b in lat["backends"] for n in (1, 4)}
        assert set(m["latency_ms"]) == keys and all(v > 0 for v in m["latency_ms"].values())
        for k, v in m["throughput_seq_s"].items():
            assert v == pytest.approx(int(k.split("/")[1][1:]) / (m["latency_ms"][k] / 1000))
        assert set(m["peak_mem_mb"]) == keys and all(v is None or v >= 0 for v in m["peak_mem_mb"].values())
        sizes = m["size_mb_by_backend"]
        assert sizes["fp32"] == m["size_mb"] > 0 and 0 < sizes["ort-int8"] < sizes["ort-fp32"]
        assert m["onnx_check"]["fp32"]["agreement"] == 1.0 and m["onnx_check"]["int8"]["agreement"] >= 0.9
    assert lat["models"][0]["speedup_vs_teacher"]["ort-int8/b4/s8"] == pytest.approx(1.0)
    assert "interleaved" in lat["timing"]
    teacher, student = lat["models"]
    for setting in ("b1/s8", "b4/s8"):  # each model's fastest backend against the teacher's fastest
        best = student["best"][setting]
        mine = {k: v for k, v in student["latency_ms"].items() if k.endswith(setting)}
        assert student["latency_ms"][f"{best['backend']}/{setting}"] == best["latency_ms"] == min(mine.values())
        assert best["teacher_latency_ms"] == min(v for k, v in teacher["latency_ms"].items() if k.endswith(setting))
        assert len(best["speedup_quartiles"]) == 2 and best["speedup_vs_teacher_best"] > 0
    assert set(student["speedup_quartiles"]) == set(student["speedup_vs_teacher"]) == set(student["latency_ms"])
    report = (run_copy / "report.md").read_text()
    assert "## Latency" in report and "| student | onnxruntime int8 |" in report and "Tokenisation" in report
    assert "fastest backend against the teacher's fastest" in report and best_table(lat) in report
    row = next(line for line in best_table(lat).splitlines() if line.startswith("| student |"))
    assert f"{student['best']['b4/s8']['speedup_vs_teacher_best']:.2f}x" in row.split(" | ")[-1]
    assert "onnxruntime int8" in capsys.readouterr().out


def test_without_onnxruntime_the_onnx_backends_are_skipped_with_the_reason(run_copy, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    said = []
    lat = bench_run(run_copy, batch_sizes=(2,), seq_lens=(8,), repeats=1, say=said.append)
    assert "ort-fp32" in lat["skipped_backends"] and "not installed" in lat["skipped_backends"]["ort-int8"]
    assert any("skipping ort-int8: onnxruntime is not installed" in s for s in said)
    assert all(k.split("/")[0] in ("fp32", "bf16") for k in lat["models"][1]["latency_ms"])
    assert "PyTorch fp32" in bench_table(lat) and "onnxruntime" not in bench_table(lat)


def test_a_trimmed_copy_of_a_model_is_timed_beside_it(run_copy, capsys):
    """What a user ships (MODEL_DIR/trimmed, made by `cascade-kd trim`) is timed in the same run as
    what was trained, its ratio against the same teacher."""
    assert main(["trim", str(run_copy / "stages" / "student"), "--no-score"]) == 0
    lat = bench_run(run_copy, batch_sizes=(2,), seq_lens=(8,), repeats=1, backends=("fp32",), say=lambda m: None)
    assert [m["name"] for m in lat["models"]] == ["teacher", "student", "student (trimmed)"]
    trimmed, student = lat["models"][2], lat["models"][1]
    assert trimmed["size_mb"] < student["size_mb"] and set(trimmed["latency_ms"]) == {"fp32/b2/s8"}
    assert trimmed["speedup_vs_teacher"]["fp32/b2/s8"] == pytest.approx(
        lat["models"][0]["latency_ms"]["fp32/b2/s8"] / trimmed["latency_ms"]["fp32/b2/s8"])
    assert "| student (trimmed) | PyTorch fp32 |" in bench_table(lat)


def test_a_trimmed_copy_or_an_export_of_weights_trained_over_since_is_not_the_models(run_copy, capsys):
    """`run --overwrite` keeps the onnx/ and trimmed/ folders a user made; once the model is trained
    again they hold the old weights: not timed as its trimmed copy, not named in its card."""
    from safetensors.torch import load_file, save_file

    from cascade_kd.deploy.paths import current_export, trimmed_copy

    student = run_copy / "stages" / "student"
    assert main(["trim", str(student), "--no-score"]) == 0
    assert main(["export", str(student), "--onnx"]) == 0
    assert trimmed_copy(student) is not None and current_export(student) is not None
    assert main(["report", str(run_copy)]) == 0
    assert "onnx/model.onnx" in (student / "README.md").read_text()
    weights = load_file(str(student / "model.safetensors"))
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1.0  # as a retrained model would be
    save_file(weights, str(student / "model.safetensors"), metadata={"format": "pt"})
    assert trimmed_copy(student) is None and current_export(student) is None
    lat = bench_run(run_copy, batch_sizes=(2,), seq_lens=(8,), repeats=1, backends=("fp32",), say=lambda m: None)
    assert [m["name"] for m in lat["models"]] == ["teacher", "student"]
    assert main(["report", str(run_copy)]) == 0
    assert "onnx/model.onnx" not in (student / "README.md").read_text()


def test_interleaved_rounds_time_every_runner_in_turn_after_an_untimed_pass():
    """Round r calls runners (r + k) mod n for k = 0..n-1, reversed in rounds n..2n-1, each twice
    (untimed, timed), after the warm-up calls; each runner gets one time per round, and a slow
    runner's times are its own."""
    calls = []

    def runner(name, seconds=0.0):
        def run():
            calls.append(name)
            time.sleep(seconds)
        return run

    times = interleaved_times([runner("a"), runner("b", 0.05), runner("c")], repeats=4, warmup=1, pause_s=0, rewarm_ms=0)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    rounds = ["".join(calls[3 + 6 * r:9 + 6 * r:2]) for r in range(4)]
    assert rounds == ["abc", "bca", "cab", "cba"] and calls[3::2] == calls[4::2]  # each runner twice in a row
    assert [len(t) for t in times] == [4, 4, 4]
    assert min(times[1]) >= 50 > max(times[0] + times[2])


def test_each_timed_call_follows_a_pause_and_untimed_calls_for_rewarm_ms(monkeypatch):
    """On a fake clock that moves 1 ms a call: after each pause, untimed calls until 5 ms have
    passed, then the timed one (timed at 1 ms)."""
    clock, events = [0.0], []  # events: ("pause", seconds) or the name of the runner called
    monkeypatch.setattr(time, "sleep", lambda seconds: events.append(("pause", seconds)))
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    def runner(name):
        def run():
            events.append(name)
            clock[0] += 0.001
        return run

    times = interleaved_times([runner("a"), runner("b")], repeats=2, warmup=0, pause_s=0.05, rewarm_ms=5)
    assert times == [[pytest.approx(1.0)] * 2] * 2
    turns = "".join("|" if e == ("pause", 0.05) else e for e in events).split("|")[1:]
    assert turns == ["a" * 6, "b" * 6, "b" * 6, "a" * 6]  # 5 untimed calls (5 ms), then the timed one; order rotated


def test_round_ratios_by_hand():
    # round ratios 2, 4, 3, 5 -> sorted 2, 3, 4, 5: median 3.5, inclusive quartiles 2.75 and 4.25
    median, quartiles = round_ratios([4, 8, 9, 10], [2, 2, 3, 2])
    assert median == pytest.approx(3.5) and quartiles == pytest.approx([2.75, 4.25])
    assert round_ratios([6.0], [2.0]) == (3.0, [3.0, 3.0])


def test_best_backend_is_each_models_fastest_against_the_teachers_fastest():
    """The teacher is fastest with int8, the student with bf16: the speed-up is 8 / 2 = 4x, with
    quartiles of the round ratios of exactly that pair (teacher int8 round r / student bf16 round r)."""
    rows = [{"latency_ms": {"fp32/b1/s8": 20.0, "bf16/b1/s8": 12.0, "ort-int8/b1/s8": 8.0, "fp32/b4/s8": 50.0}},
            {"latency_ms": {"fp32/b1/s8": 5.0, "bf16/b1/s8": 2.0, "ort-int8/b1/s8": 2.5}}]
    rounds = {(0, "ort-int8/b1/s8"): [8.0, 9.0, 7.0], (1, "bf16/b1/s8"): [2.0, 2.0, 2.0],
              (0, "fp32/b4/s8"): [50.0], (0, "fp32/b1/s8"): [20.0] * 3, (0, "bf16/b1/s8"): [12.0] * 3}
    best_backends(rows, rounds)
    b = rows[1]["best"]["b1/s8"]
    assert (b["backend"], b["teacher_backend"], b["speedup_vs_teacher_best"]) == ("bf16", "ort-int8", 4.0)
    assert b["speedup_quartiles"] == pytest.approx([3.75, 4.25])  # round ratios 4, 4.5, 3.5: median 4
    assert set(rows[1]["best"]) == {"b1/s8"} and rows[0]["best"]["b4/s8"]["backend"] == "fp32"
    table = best_table({"models": [{"name": "teacher", **rows[0]}, {"name": "student", **rows[1]}]})
    assert "| student | PyTorch bf16 autocast, 2.00, **4.00x** (3.75-4.25) | — |" in table
    assert "| teacher | onnxruntime int8, 8.00 | PyTorch fp32, 50.00 |" in table
    assert best_table({"models": [{"name": "teacher", "latency_ms": {"fp32/b1/s8": 1.0}}]}) == ""  # an older result


def test_fastest_backends_are_chosen_among_those_both_were_timed_on():
    """The teacher's ONNX export failed: the student's faster int8 figure is not set against the
    teacher's PyTorch one (that would credit the student with the backend's gain)."""
    rows = [{"latency_ms": {"fp32/b1/s8": 20.0, "bf16/b1/s8": 16.0}},
            {"latency_ms": {"fp32/b1/s8": 5.0, "bf16/b1/s8": 4.0, "ort-int8/b1/s8": 1.0}}]
    rounds = {(0, "bf16/b1/s8"): [16.0], (1, "bf16/b1/s8"): [4.0], (0, "fp32/b1/s8"): [20.0], (1, "fp32/b1/s8"): [5.0]}
    best_backends(rows, rounds)
    b = rows[1]["best"]["b1/s8"]
    assert (b["backend"], b["teacher_backend"], b["speedup_vs_teacher_best"]) == ("bf16", "bf16", 4.0)
    # the other way round (the student's export failed): its cell names the teacher backend it was set against
    rows = [{"name": "teacher", "latency_ms": {"bf16/b1/s8": 16.0, "ort-int8/b1/s8": 8.0}},
            {"name": "student", "latency_ms": {"bf16/b1/s8": 4.0}}]
    best_backends(rows, {**rounds, (0, "ort-int8/b1/s8"): [8.0]})
    assert rows[1]["best"]["b1/s8"]["speedup_vs_teacher_best"] == 4.0
    assert "**4.00x** (4.00-4.00) vs the teacher's PyTorch bf16 autocast |" in best_table({"models": rows})


def test_models_picks_what_is_timed_beside_the_teacher(run_copy, capsys):
    """--models NAME times the teacher and NAME (and its trimmed copy); a name the run lacks is one
    line, exit code 2, listing the names it has, before anything is timed."""
    assert main(["trim", str(run_copy / "stages" / "student"), "--no-score"]) == 0
    lat = bench_run(run_copy, batch_sizes=(2,), seq_lens=(8,), repeats=1, backends=("fp32",), models=["student"],
                    say=lambda m: None)
    assert [m["name"] for m in lat["models"]] == ["teacher", "student", "student (trimmed)"]
    lat = bench_run(run_copy, batch_sizes=(2,), seq_lens=(8,), repeats=1, backends=("fp32",),
                    models=["student (trimmed)"], say=lambda m: None)
    assert [m["name"] for m in lat["models"]] == ["teacher", "student (trimmed)"]
    capsys.readouterr()
    assert main(["bench", str(run_copy), "--backends", "fp32", "--models", "student", "s9"]) == 2
    err = capsys.readouterr().err
    assert "--models s9: no model of that name" in err and "teacher, student, student (trimmed)" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    from cascade_kd import api
    from cascade_kd.errors import UserError

    with pytest.raises(UserError, match="a list of model names"):  # not the letters s, t, u, ...
        api.bench(run_copy, models="student", say=lambda m: None)


def test_a_teacher_without_onnx_figures_is_set_against_on_its_own_backends(run_copy, monkeypatch):
    """The teacher's export fails: the student keeps its onnxruntime figures, and its fastest
    backend is chosen among the PyTorch ones both have."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'cascade-kd[export]')")
    import cascade_kd.deploy.bench as bench

    real = bench.export_model

    def export(directory, *args, **kwargs):
        if directory.name == "teacher":
            raise bench.UserError("cannot export this teacher")
        return real(directory, *args, **kwargs)

    monkeypatch.setattr(bench, "export_model", export)
    lat = bench_run(run_copy, batch_sizes=(2,), seq_lens=(8,), repeats=2, say=lambda m: None)
    teacher, student = lat["models"]
    assert "cannot export" in teacher["onnx_error"] and not any(k.startswith("ort") for k in teacher["latency_ms"])
    assert "ort-int8/b2/s8" in student["latency_ms"] and student["best"]["b2/s8"]["backend"] in ("fp32", "bf16")
    assert student["best"]["b2/s8"]["teacher_backend"] == teacher["best"]["b2/s8"]["backend"]


def test_peak_memory_sees_what_a_pass_allocates():
    if memory_baseline() is None:
        pytest.skip("the RSS high-water mark cannot be reset here (needs Linux /proc/self/clear_refs)")
    _, grown = timed(lambda: np.ones(64 * 2**20 // 8).sum(), repeats=2, warmup=0)  # 64 MB, freed after each pass
    assert 60 <= grown < 140
    _, idle = timed(lambda: sum(range(100)), repeats=2, warmup=0)
    assert idle < 8


def test_table_of_a_result_from_before_the_backends():
    """metrics.json files written by the earlier bench (PyTorch only, no memory) still render."""
    old = {"models": [{"name": "teacher", "size_mb": 2.5, "latency_ms": {"fp32/b1/s32": 1.5, "bf16/b1/s32": 2.0},
                       "speedup_vs_teacher": {"fp32/b1/s32": 1.0, "bf16/b1/s32": 1.0}}]}
    table = bench_table(old)
    assert "| teacher | PyTorch fp32 | 2.50 | 1.50 (1.0x) | — | — | reference |" in table
    assert "| teacher | PyTorch bf16 autocast | 2.50 | 2.00 (1.0x) |" in table


@pytest.mark.parametrize("flags, says", [
    (["--repeats", "0"], "--repeats 0"),
    (["--repeats", "-3"], "--repeats -3"),
    (["--batch-sizes", "0"], "--batch-sizes 0"),
    (["--seq-lens", "8", "0"], "--seq-lens 8 0"),
    (["--seq-lens", "100000"], "usable positions, so no setting can be timed"),  # longer than the teacher holds
])
def test_bad_numbers_are_one_line_and_keep_the_runs_latency_table(run_copy, capsys, flags, says):
    """A bad flag used to end in a traceback (an empty median, a tokeniser's IndexError) or, for
    lengths no model fits, replace the run's latency table with an empty one."""
    metrics = run_copy / "metrics.json"
    before = json.loads(metrics.read_text())
    before["latency"] = {"models": [{"name": "teacher", "latency_ms": {"fp32/b1/s8": 1.0}}]}  # an earlier table
    metrics.write_text(json.dumps(before))
    report = (run_copy / "report.md").read_text()
    capsys.readouterr()
    assert main(["bench", str(run_copy), "--backends", "fp32", *flags]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert json.loads(metrics.read_text()) == before and (run_copy / "report.md").read_text() == report


def test_bench_and_report_wait_for_no_one_in_a_run_another_process_works_in(run_copy, capsys):
    """bench and report rewrite a finished run's files: while another process holds RUN_DIR's lock
    (a `run --resume` there), they are refused before any timing, and nothing changes."""
    from filelock import FileLock

    from cascade_kd.outdir import LOCK

    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom filelock import FileLock\n"
                               f"lock = FileLock({str(run_copy / LOCK)!r}); lock.acquire(); print('held', flush=True); time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for command in (["bench", str(run_copy), "--backends", "fp32", "--repeats", "1"], ["report", str(run_copy)]):
            assert main(command) == 2
            err = capsys.readouterr().err
            assert "another cascade-kd process is working in RUN_DIR" in err and "Traceback" not in err
        assert {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()} == before
    finally:
        holder.kill()
        holder.wait()
    with FileLock(str(run_copy / LOCK), timeout=0):  # released with its holder
        pass
    assert main(["report", str(run_copy)]) == 0
