"""Run outputs: metrics.json (machine-readable) and report.md (one row per model, one column per
language). Both are written atomically, so a crash never leaves half a file."""

from __future__ import annotations

import json
from pathlib import Path

from cascade_kd.deploy.bench import bench_table, best_section, tokenization_line
from cascade_kd.evaluation.findings import METRIC_NAMES, embedding_notes, embedding_sentence
from cascade_kd.evaluation.retrieval import markdown_table
from cascade_kd.fileio import atomic_write


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _pct(x: float | None) -> str:
    return "—" if x is None or x != x else f"{100 * x:.1f}"


ZERO_SHOT_MARK = "†"  # after a zero-shot language's column name: no labelled training data in it
GROUP_COLUMNS = (("avg seen", "average_seen"), ("avg zero-shot", "average_zero_shot"),
                  ("retention seen", "retention_seen"), ("retention zero-shot", "retention_zero_shot"))


def report_table(metrics: dict) -> str:
    """The per-model, per-language table (Markdown). In a cross-lingual run, zero-shot languages'
    columns are marked with ZERO_SHOT_MARK and the averages and retentions of the seen (training)
    and zero-shot languages get columns of their own."""
    langs = metrics["languages"]
    zero_shot = set(metrics.get("zero_shot_languages") or ())  # absent from metrics of older runs
    # a recursive student applies its shared layer once per step: show what the forward pass applies too
    unrolled = any(m.get("params_unrolled", m["params_total"]) != m["params_total"] for m in metrics["models"])
    groups = GROUP_COLUMNS if zero_shot else ()
    head = (["model", "role", "layers", "hidden", "params", "emb. params", "avg", "worst", "retention"]
            + [title for title, _ in groups] + [lang + (ZERO_SHOT_MARK if lang in zero_shot else "") for lang in langs])
    if unrolled:
        head[5:5] = ["unrolled params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for m in metrics["models"]:
        row = [
            m["name"], m["role"], m.get("layers_label", str(m["layers"])), str(m["hidden"]), _millions(m["params_total"]),
            _millions(m["params_embedding"]), _pct(m["average"]), f"{_pct(m['worst'])} ({m['worst_language']})",
            _pct(m["retention"]),
        ] + [_pct(m.get(key)) for _, key in groups] + [_pct(m["per_language"][lang]) for lang in langs]
        if unrolled:
            row[5:5] = [_millions(m.get("params_unrolled", m["params_total"]))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def selection_text(metrics: dict) -> str:
    """Which languages had labelled training data, and whose dev sets selected the models."""
    selection = metrics.get("selection_languages")
    if selection is None:  # metrics.json of a run from before cross-lingual recipes: every language
        return f"Models were selected on the macro average over the dev sets of all {len(metrics['languages'])} languages."
    zero_shot = metrics.get("zero_shot_languages") or []
    if not zero_shot:
        return f"Models were selected on the macro average over the dev sets of all {len(selection)} languages."
    seen = metrics["train_languages"]
    text = (f"Cross-lingual transfer: labelled training data in {', '.join(seen)} only; the {len(zero_shot)} "
            f"languages marked {ZERO_SHOT_MARK} are zero-shot (the models saw no labelled example of them). "
            f"'avg seen' and 'avg zero-shot' average over each group (retention likewise). ")
    if metrics.get("select_on") == "all":
        return text + ("Models were selected on the dev sets of every language, zero-shot ones included "
                       "(data.select_on: all): the zero-shot scores are not strictly zero-shot, since target-language "
                       "dev data chose the checkpoints.")
    return text + (f"Models were selected on the dev sets of {', '.join(selection)} only: no dev data of a zero-shot "
                   "language was used (the XTREME protocol).")


def render_report(metrics: dict, run_dir: Path | None = None) -> str:
    """report.md; with `run_dir`, also the findings that need the saved models (embedding tables)."""
    metric = METRIC_NAMES.get(metrics["metric"], metrics["metric"]) + (
        " (the masked pieces predicted right; masks drawn once per split)" if metrics["metric"] == "mlm_accuracy" else "")
    parts = [
        f"# {metrics['name']}: cascade report",
        "",
        f"Task: {'masked-LM (general distillation)' if metrics['task'] == 'mlm' else metrics['task'] + ' classification'}; metric: {metric}, in percent, on the "
        f"**{metrics['split']}** split (models were selected on dev). Retention is the mean over "
        f"languages of model score / teacher score.",
        "",
        selection_text(metrics),
        "",
        report_table(metrics),
        "",
    ]
    if run_dir is not None:
        parts += [embedding_sentence(note) + "\n" for note in embedding_notes(run_dir, metrics)]
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
                  f"(one seed; `cascade-kd run RECIPE --seeds 0 1 2` gives the spread over seeds)."]
    if metrics.get("retrieval"):
        counts = [r["pairs"] for results in metrics["retrieval"].get("per_model", {}).values()
                  for r in results.values() if isinstance(r, dict) and isinstance(r.get("pairs"), int)]
        size = "" if not counts else (
            f" Each language has {min(counts):,}" + (f" to {max(counts):,}" if max(counts) != min(counts) else "")
            + " sentence pairs: a guess finds the translation once in that many (chance under "
            + f"{100 / min(counts):.1f}%).")
        parts += ["", "## Cross-lingual sentence retrieval (`cascade-kd eval --parallel`)", "",
                  "Each sentence is the mean of the last layer's hidden states over its real tokens; accuracy is the "
                  "share whose nearest neighbour (cosine) on the other side is its own translation, averaged over "
                  "both directions (xx to English, English to xx), in percent. Retention is the mean over languages "
                  "of model accuracy / teacher accuracy." + size, "", markdown_table(metrics["retrieval"]["summary"])]
    if metrics.get("latency"):
        lat = metrics["latency"]
        parts += ["", "## Latency (`cascade-kd bench`)", "",
                  f"Median forward time in ms on {lat['device']} with {lat['threads']} threads over {lat['repeats']} "
                  + ("rounds" if lat.get("timing") else "repeats") + f" ({lat['input']}); in brackets the speed-up "
                  "against the teacher at the same setting" + (" and backend" if lat.get("backends") else "")
                  + (": the median of the round-by-round ratios" if lat.get("timing") else "") + "."
                  + (f" Timing: {lat['timing']}." if lat.get("timing") else "")]
        if lat.get("backends"):
            note = ("Settings are batch (b) and sequence length (s). seq/s is batch size / median latency; "
                    f"peak MB: {lat['memory']}; size: the weights that backend loads; agreement: argmax "
                    "agreement of the ONNX model with PyTorch fp32 on the export check's inputs, and its max "
                    f"absolute logit difference. {lat['ort_threads']}.")
            load = lat.get("load_average_1min") or {}
            if load.get("start") is not None and load.get("end") is not None:
                note += (f" Load average (1 min) at start and end: {load['start']:.1f}, {load['end']:.1f} (a load "
                         f"above {lat['threads']} means other processes shared the CPU).")
            parts += ["", note]
            parts += [f"Skipped {b}: {why}." for b, why in lat.get("skipped_backends", {}).items()]
        parts += ["", bench_table(lat)]
        parts += best_section(lat)
        if tokenization_line(lat):
            parts += ["", tokenization_line(lat)]
    return "\n".join(parts) + "\n"


def write_outputs(out: Path, metrics: dict) -> None:
    atomic_write(Path(out) / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False))
    atomic_write(Path(out) / "report.md", render_report(metrics, Path(out)))
