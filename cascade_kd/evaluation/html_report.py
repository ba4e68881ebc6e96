"""RUN_DIR/report.html: one self-contained page per run, built from the files report.md and
metrics.json come from (run_files.py): the model table and the run's provenance, a per-language
retention heatmap, score against size and against latency (after `cascade-kd bench`) with the Pareto
front, cascade against direct per language, and each model's training curves.

Self-contained: the figures are matplotlib SVGs (plots.py) embedded as data: URIs, the style is
inline, there is no script, font or anything else to fetch, so the file opens offline and can be
mailed or attached as it is. `write_html_report(run_dir)` rebuilds it from a finished run
(`cascade-kd report RUN_DIR`); the comparison of several runs (compare.py) uses the same page parts.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from cascade_kd.deploy.bench import BEST_CAPTION, best_table, bench_table
from cascade_kd.evaluation.findings import (
    METRIC_NAMES,
    embedding_notes,
    embedding_sentence,
    worst_languages,
)
from cascade_kd.evaluation.plots import (
    differences,
    retention_heatmap,
    tradeoff,
    training_curves,
)
from cascade_kd.evaluation.report import report_table
from cascade_kd.evaluation.run_files import MODEL_CARD, RunFiles, read_run
from cascade_kd.fileio import atomic_write

STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 1.5rem; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { font-size: 1.25rem; margin-top: 2rem;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.6rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; } th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
figure { margin: 0.8rem 0; } figure img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.85rem; }
.note { background: #fff7e0; border-left: 4px solid #e6a700; padding: 0.5rem 0.8rem; margin: 0.6rem 0; }
.verdict { background: #eef6ee; border-left: 4px solid #33a02c; padding: 0.5rem 0.8rem; }
code, pre { font-family: "SFMono-Regular", Menlo, Consolas, monospace; font-size: 0.82rem; }
pre { background: #f6f6f6; padding: 0.7rem; overflow-x: auto; }
"""

def esc(text) -> str:
    return html.escape(str(text), quote=True)


def _inline_code(text: str) -> str:
    """Markdown `code` and **bold** (as the shared findings write them) as HTML, the rest escaped."""
    out, parts = [], str(text).split("`")
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{esc(part)}</code>")
        else:
            bold = esc(part).split("**")
            out.append("".join(f"<strong>{b}</strong>" if j % 2 else b for j, b in enumerate(bold)))
    return "".join(out)


def markdown_table(md: str) -> str:
    """A Markdown pipe table (as report.md writes them) as an HTML table; right-aligned columns
    (---:) are numeric."""
    lines = [line.strip() for line in md.strip().splitlines() if line.strip().startswith("|")]
    if len(lines) < 2:
        return ""
    cells = lambda line: [c.strip() for c in line.strip("|").split("|")]
    head, align = cells(lines[0]), cells(lines[1])
    numeric = [a.endswith(":") for a in align]
    rows = ["<tr>" + "".join(f"<th>{_inline_code(h)}</th>" for h in head) + "</tr>"]
    for line in lines[2:]:
        rows.append("<tr>" + "".join(f"<td{' class=num' if numeric[i] else ''}>{_inline_code(c)}</td>"
                                     for i, c in enumerate(cells(line)) if i < len(head)) + "</tr>")
    return '<div class="scroll"><table>' + "".join(rows) + "</table></div>"


def table(head: list[str], rows: list[list], numeric_from: int = 1) -> str:
    """An HTML table from cells (escaped); columns from `numeric_from` on are right-aligned."""
    out = ["<tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td{' class=num' if i >= numeric_from else ''}>{esc(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>")
    return '<div class="scroll"><table>' + "".join(out) + "</table></div>"


def figure(svg: str, caption: str, alt: str) -> str:
    """An SVG figure as an <img> with a data: URI: self-contained, and each figure's SVG ids stay
    its own (inlined <svg> elements would share one id space)."""
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return (f'<figure><img src="data:image/svg+xml;base64,{data}" alt="{esc(alt)}">'
            f"<figcaption>{_inline_code(caption)}</figcaption></figure>")


def page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _pct(x) -> str:
    return "—" if not isinstance(x, (int, float)) or not math.isfinite(x) else f"{100 * x:.1f}"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def metric_label(metrics: dict) -> str:
    return METRIC_NAMES.get(metrics.get("metric"), metrics.get("metric", "score"))


# --- the sections of a run's page --------------------------------------------------------------


def _provenance(run: RunFiles) -> list[str]:
    import yaml

    manifest, metrics = run.manifest, run.metrics
    out = ["<h2>Provenance</h2>"]
    facts = [("recipe", metrics.get("name")), ("recipe fingerprint", manifest.get("recipe_fingerprint")),
             ("seed", manifest.get("seed")), ("task", metrics.get("task")),
             ("scored on", f"{metrics.get('split')} split (models selected on dev)"),
             ("wall time of the run", f"{metrics['wall_time_s']:.0f} s" if _finite(metrics.get("wall_time_s")) else None),
             ("versions", ", ".join(f"{k} {manifest[k]}" for k in ("cascade_kd", "torch", "transformers", "python")
                                    if manifest.get(k))),
             ("plugins", ", ".join(f"{p.get('name')} ({p.get('distribution')})" for p in manifest.get("plugins") or []
                                   if isinstance(p, dict))),
             ("licence of the models", (run.recipe.get("license") or "unknown (the recipe names none)"))]
    out.append(table(["", ""], [[k, v] for k, v in facts if v not in (None, "")], numeric_from=99))
    sizes = manifest.get("data_sizes") or {}
    if sizes:
        langs = list(dict.fromkeys(lang for per in sizes.values() for lang in per))
        rows = [[split] + [per.get(lang, "—") for lang in langs] + [sum(per.values())] for split, per in sizes.items()]
        out += ["<p>Examples per language and split:</p>", table(["split"] + langs + ["total"], rows)]
    timed = [(m["name"], m.get("wall_time_s")) for m in run.models if _finite(m.get("wall_time_s"))]
    if timed:
        out.append("<p>Training time per model (evaluations excluded): "
                   + ", ".join(f"{esc(n)} {t:.0f} s" for n, t in timed) + ".</p>")
    if run.recipe:
        text = yaml.safe_dump(run.recipe, sort_keys=False, allow_unicode=True)
        out.append(f"<details><summary>The recipe as run</summary><pre>{esc(text)}</pre></details>")
    return out


def _heatmap(metrics: dict) -> list[str]:
    rows = [m for m in metrics["models"] if m["role"] != "teacher" and m.get("retention_per_language")]
    if not rows:
        return []
    langs = metrics["languages"]
    values = [[m["retention_per_language"].get(lang) for lang in langs] for m in rows]
    # the outlined cell is the first of the model's weakest languages, ranked as everywhere else
    worst = [langs.index(w[0][0]) if (w := worst_languages(m, 1)) and w[0][0] in langs else None for m in rows]
    svg = retention_heatmap([m["name"] for m in rows], langs, values,
                            f"Retention per language: {metric_label(metrics)} / the teacher's (%)", worst)
    return ["<h2>Retention per language</h2>",
            figure(svg, "Each cell is the model's score divided by the teacher's on that language; the outlined cell "
                        "is the model's lowest retention (which may not be its lowest score). Green keeps the teacher's "
                        "score, red loses most.",
                   "retention heatmap")]


def _latency_key(latency: dict) -> str | None:
    """The setting the latency plot uses: PyTorch fp32, batch 1, the longest sequence measured."""
    teacher = (latency.get("models") or [{}])[0].get("latency_ms") or {}
    keys = [k for k in teacher if k.startswith("fp32/b1/")] or list(teacher)
    return max(keys, key=lambda k: int(k.rsplit("/s", 1)[-1]) if k.rsplit("/s", 1)[-1].isdigit() else 0) if keys else None


def _tradeoffs(metrics: dict) -> list[str]:
    label = f"average {metric_label(metrics)} (%)"
    out = ["<h2>Size, speed and score</h2>"]
    points = [{"name": m["name"], "role": m["role"], "x": m["params_total"], "y": 100 * m["average"]}
              for m in metrics["models"] if _finite(m.get("average"))]
    out.append(figure(tradeoff(points, "parameters (log scale)", label, "Score against size"),
                      "Each model's average score over languages against its parameter count; the dashed line is the "
                      "Pareto front (no other model is both smaller and better).", "score against size"))
    latency = metrics.get("latency") or {}
    key = _latency_key(latency) if latency else None
    if key:
        by_name = {m["name"]: m.get("latency_ms", {}).get(key) for m in latency.get("models", [])}
        points = [dict(p, x=by_name[p["name"]]) for p in points if _finite(by_name.get(p["name"]))]
        backend, batch, seq = key.split("/")
        out.append(figure(tradeoff(points, f"median latency, ms ({backend}, batch {batch[1:]}, sequence {seq[1:]}; "
                                           "log scale)", label, "Score against latency", x_unit="ms"),
                          f"Latency measured by `cascade-kd bench` on {latency.get('device', 'cpu')} with "
                          f"{latency.get('threads', '?')} thread(s); the dashed line is the Pareto front.",
                          "score against latency"))
    else:
        out.append("<p>No latency yet: <code>cascade-kd bench RUN_DIR</code> measures it and adds the score against "
                   "latency plot here.</p>")
    return out


def _cascade_vs_direct(metrics: dict) -> list[str]:
    student = next((m for m in metrics["models"] if m["role"] == "student"), None)
    direct = next((m for m in metrics["models"] if m["role"] == "direct"), None)
    if not (student and direct):
        return []
    langs = metrics["languages"]
    diffs = [100 * (student["per_language"][l] - direct["per_language"][l]) for l in langs]
    mean = 100 * (student["average"] - direct["average"])
    wins = sum(d > 0 for d in diffs)
    svg = differences(langs, diffs, f"Cascade ({student['name']}) minus direct, per language (one seed)",
                      f"{metric_label(metrics)} difference (points)")
    return ["<h2>Cascade against direct distillation</h2>",
            f"<p class=verdict>At equal size, the cascade's final student scores {mean:+.2f} points against the direct "
            f"baseline on average; it is ahead on {wins} of {len(langs)} languages. One seed: run "
            "<code>cascade-kd run RECIPE --seeds 0 1 2</code> for the spread over seeds.</p>",
            figure(svg, "Bars: cascade student minus direct student per language, in points (green: the cascade is "
                        "ahead).", "cascade minus direct per language")]


def _curves(run: RunFiles) -> list[str]:
    trained = [{"name": m["name"], "curve": run.markers.get(m["name"], {}).get("curve"),
                "history": run.markers.get(m["name"], {}).get("history")} for m in run.models]
    trained = [t for t in trained if t["curve"] or t["history"]]
    if not trained:
        return ["<h2>Training curves</h2><p>No model of this run has recorded curves (loaded models, or a run "
                "from before curves were recorded).</p>"]
    svg = training_curves(trained, metric_label(run.metrics))
    return ["<h2>Training curves</h2>",
            figure(svg, "Each loss part and the weighted total (averaged over windows of steps) against the step, and "
                        "the dev score at each evaluation (right axis).", "training curves")]


def _worst_languages(metrics: dict) -> list[str]:
    rows = []
    for m in metrics["models"]:
        if m["role"] == "teacher":
            continue
        worst = worst_languages(m)
        rows.append([m["name"]] + [f"{lang} {100 * s:.1f}" + (f" ({100 * r:.0f}% of the teacher)" if r is not None else "")
                                   for lang, s, r in worst] + [""] * (3 - len(worst)))
    return ["<h2>Worst languages (lowest share of the teacher's score kept)</h2>",
            table(["model", "worst", "second", "third"], rows, numeric_from=99)] if rows else []


def render_run_html(run: RunFiles) -> str:
    """The page of one finished run."""
    metrics = run.metrics
    body = [f"<h1>{esc(metrics['name'])}: cascade report</h1>",
            f"<p class=sub>{esc(metrics['task'])} task, {len(metrics['languages'])} languages, "
            f"{esc(metric_label(metrics))} on the {esc(metrics['split'])} split, in percent. Retention is the model's "
            "score divided by the teacher's, averaged over languages.</p>"]
    for note in embedding_notes(run.directory, metrics):
        body.append(f"<p class=note>{_inline_code(embedding_sentence(note))}</p>")
    body += ["<h2>Models</h2>", markdown_table(report_table(metrics))]
    cards = [m for m in run.models if (run.model_dir(m) / MODEL_CARD).is_file()]
    if cards:
        body.append("<p>Model cards: " + ", ".join(f'<a href="{esc(m["path"])}/README.md">{esc(m["name"])}</a>'
                                                    for m in cards) + ".</p>")
    body += _cascade_vs_direct(metrics) + _heatmap(metrics) + _worst_languages(metrics) + _tradeoffs(metrics)
    if metrics.get("latency"):
        body += ["<h3>Latency table</h3>", markdown_table(bench_table(metrics["latency"]))]
        best = best_table(metrics["latency"])
        if best:
            body += [f"<p>{esc(BEST_CAPTION)}</p>", markdown_table(best)]
    body += _curves(run) + _provenance(run)
    return page(f"{metrics['name']}: cascade report", body)


def write_html_report(run_dir: str | Path) -> Path:
    """Build RUN_DIR/report.html from a finished run's files; returns its path. UserError for a
    missing or broken run."""
    run = read_run(run_dir)
    path = run.directory / "report.html"
    atomic_write(path, render_run_html(run))
    return path
