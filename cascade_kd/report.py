"""Run outputs: metrics.json (machine-readable) and report.md (one row per model, one column per
language). Both are written atomically, so a crash never leaves half a file."""

from __future__ import annotations

import json
from pathlib import Path

from cascade_kd.fileio import atomic_write


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _pct(x: float | None) -> str:
    return "—" if x is None or x != x else f"{100 * x:.1f}"


def report_table(metrics: dict) -> str:
    """The per-model, per-language table (Markdown)."""
    langs = metrics["languages"]
    head = ["model", "role", "layers", "hidden", "params", "emb. params", "avg", "worst", "retention"] + langs
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for m in metrics["models"]:
        row = [
            m["name"], m["role"], str(m["layers"]), str(m["hidden"]), _millions(m["params_total"]),
            _millions(m["params_embedding"]), _pct(m["average"]), f"{_pct(m['worst'])} ({m['worst_language']})",
            _pct(m["retention"]),
        ] + [_pct(m["per_language"][lang]) for lang in langs]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def render_report(metrics: dict) -> str:
    metric = "entity-level F1 (seqeval)" if metrics["metric"] == "f1" else "accuracy"
    parts = [
        f"# {metrics['name']}: cascade report",
        "",
        f"Task: {metrics['task']} classification; metric: {metric}, in percent, on the "
        f"**{metrics['split']}** split (models were selected on dev). Retention is the mean over "
        f"languages of model score / teacher score.",
        "",
        report_table(metrics),
        "",
    ]
    timed = [m for m in metrics["models"] if m.get("wall_time_s")]
    if timed:
        parts += ["Training wall time: " + ", ".join(f"{m['name']} {m['wall_time_s']:.0f} s" for m in timed) + "."]
    direct = next((m for m in metrics["models"] if m["role"] == "direct"), None)
    student = next((m for m in metrics["models"] if m["role"] == "student"), None)
    if direct and student:
        diff = 100 * (student["average"] - direct["average"])
        verdict = "the cascade beat direct distillation" if diff > 0 else (
            "direct distillation beat the cascade" if diff < 0 else "cascade and direct distillation tied")
        parts += ["", f"Cascade vs direct at equal size: {verdict} by {abs(diff):.1f} points on average "
                  f"(one seed; see benchmarks for spreads over seeds)."]
    if metrics.get("latency"):
        from cascade_kd.benchmark import bench_table

        lat = metrics["latency"]
        parts += ["", "## Latency (`cascade-kd bench`)", "",
                  f"Median forward time in ms on {lat['device']} with {lat['threads']} threads over {lat['repeats']} "
                  f"repeats ({lat['input']}); in brackets the speed-up against the teacher at the same setting.", "",
                  bench_table(lat)]
    return "\n".join(parts) + "\n"


def write_outputs(out: Path, metrics: dict) -> None:
    atomic_write(Path(out) / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False))
    atomic_write(Path(out) / "report.md", render_report(metrics))
