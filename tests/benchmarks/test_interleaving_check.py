"""benchmarks/interleaving_check.py on the tiny run: every way of timing, every call, the ratios
the medians give, written where --out says (never over the committed figures)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import interleaving_check  # noqa: E402


def test_times_teacher_and_model_every_way(tiny_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'cascade-kd[export]')")
    out = tmp_path / "check.json"
    assert interleaving_check.main([str(tiny_run), "--model", "student", "--repeats", "2", "--calls", "2",
                                    "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "stages/student" and (result["batch"], result["seq"], result["repeats"]) == (1, 64, 2)
    ways = {c["way"] for c in result["calls"]}
    assert len(ways) == 4 and "one after another" in ways and len(result["calls"]) == 8
    for call in result["calls"]:
        ms = call["median_ms"]
        assert set(ms) == {"teacher ort-int8", "teacher fp32", "student ort-int8", "student fp32"}
        for backend, ratio in call["teacher_over_student"].items():
            assert ratio == pytest.approx(ms[f"teacher {backend}"] / ms[f"student {backend}"])
    assert f"written: {out}" in capsys.readouterr().out
