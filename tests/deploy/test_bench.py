"""`cascade-kd bench`: every backend, tokenisation, throughput, memory and size, into metrics.json
and report.md."""

import json
import shutil
import sys

import numpy as np
import pytest

from cascade_kd.deploy.bench import bench_run, bench_table, memory_baseline, timed
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
    report = (run_copy / "report.md").read_text()
    assert "## Latency" in report and "| student | onnxruntime int8 |" in report and "Tokenisation" in report
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
