"""report.md and report.html of a comparison (compare.py): tables of mean ± sd over seeds, the
pairs with their per-seed differences and wins, and figures of the same."""

from __future__ import annotations

import math

from cascade_kd.evaluation.findings import METRIC_NAMES
from cascade_kd.evaluation.html_report import (
    _inline_code,
    esc,
    figure,
    markdown_table,
    page,
)
from cascade_kd.evaluation.plots import differences, grouped_scores, retention_heatmap
from cascade_kd.evaluation.report import GROUP_COLUMNS, ZERO_SHOT_MARK


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def pm(stats: dict, scale: float = 100.0, digits: int = 1, sign: bool = False) -> str:
    """'83.2 ± 0.4' (sd only with two or more seeds), '—' without a value."""
    if not stats or not _finite(stats.get("mean")):
        return "—"
    text = f"{scale * stats['mean']:{'+' if sign else ''}.{digits}f}"
    return text + (f" ± {scale * stats['sd']:.{digits}f}" if _finite(stats.get("sd")) else "")


def _wins(d: dict) -> str:
    if not d.get("paired"):
        return "— (no seed in common)"
    return f"{d['a_wins']} / {d['b_wins']}" + (f" ({d['ties']} tied)" if d["ties"] else "")


def _per_seed(d: dict) -> str:
    return ", ".join(f"{seed}: {v:+.2f}" for seed, v in d.get("per_seed", {}).items() if _finite(v)) or "—"


def variant_table(variant: dict, languages: list[str], zero_shot: list[str] | None = None) -> str:
    """Mean ± sd over seeds per model; with zero-shot languages, also the average and retention over
    the seen and over the zero-shot languages apart, and the zero-shot languages' columns marked
    as in a run's report (ZERO_SHOT_MARK)."""
    groups = GROUP_COLUMNS if zero_shot and all("average_seen" in m for m in variant["models"]) else ()
    head = ["model", "role", "seeds", "avg", "worst", "retention", *(title for title, _ in groups)]
    head += [lang + (ZERO_SHOT_MARK if zero_shot and lang in zero_shot else "") for lang in languages]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for m in variant["models"]:
        cells = [m["name"], m["role"], str(len(m["seeds"])), pm(m["average"]), pm(m["worst"]), pm(m["retention"])]
        cells += [pm(m[key]) for _, key in groups]
        cells += [pm(m["per_language"][lang]) for lang in languages]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pairs_table(pairs: list[dict]) -> str:
    groups = [g for g in ("seen", "zero_shot") if any(g in p for p in pairs)]  # zero-shot transfer runs
    names = {"seen": "seen languages", "zero_shot": "zero-shot languages"}
    lines = ["| pair | A | B | A − B, mean ± sd (points) | per seed | seeds won, A / B |"
             + "".join(f" {names[g]}: A − B | {names[g]}: seeds won |" for g in groups),
             "|---|---|---|---:|---|---:|" + "---:|---:|" * len(groups)]
    for p in pairs:
        d = p["average"]
        lines.append(f"| {p['what']} | {p['a']} | {p['b']} | {pm(d, scale=1, digits=2, sign=True)} | {_per_seed(d)} | "
                     f"{_wins(d)} |" + "".join(f" {pm(p.get(g), scale=1, digits=2, sign=True)} | "
                                               f"{_wins(p[g]) if g in p else '—'} |" for g in groups))
    return "\n".join(lines)


def pair_language_table(pair: dict, languages: list[str]) -> str:
    lines = ["| language | A − B, mean ± sd (points) | per seed | seeds won, A / B |", "|---|---:|---|---:|"]
    for lang in languages:
        d = pair["per_language"][lang]
        lines.append(f"| {lang} | {pm(d, scale=1, digits=2, sign=True)} | {_per_seed(d)} | {_wins(d)} |")
    return "\n".join(lines)


def _intro(aggregate: dict) -> list[str]:
    metric = METRIC_NAMES.get(aggregate["metric"], aggregate["metric"])
    lines = [f"{metric} in percent on the **{aggregate['split']}** split, mean ± sample standard deviation over seeds "
             f"(sd only with two or more). {len(aggregate['languages'])} languages: {', '.join(aggregate['languages'])}."]
    if aggregate["languages_left_out"]:
        lines.append(f"Only the languages every run has are compared; left out: {', '.join(aggregate['languages_left_out'])}.")
    for v in aggregate["variants"]:
        differs = v.get("differs_from_first_in")
        lines.append(f"- **{v['label']}**: {len(v['runs'])} run(s), seeds {', '.join(map(str, v['seeds']))}"
                     + (f"; differs from {aggregate['variants'][0]['label']} in {', '.join(differs)}" if differs else "")
                     + ".")
    if aggregate.get("zero_shot_languages"):
        lines.append(f"Trained on {', '.join(aggregate['seen_languages'])} (seen); zero-shot: "
                     f"{', '.join(aggregate['zero_shot_languages'])} (marked {ZERO_SHOT_MARK}). The model tables give each model's "
                     "average and retention over the seen and the zero-shot languages apart, and the pairs each "
                     "seed's difference over each group.")
    return lines


def render_comparison_md(aggregate: dict) -> str:
    langs = aggregate["languages"]
    parts = ["# Comparison", ""] + _intro(aggregate) + [""]
    for v in aggregate["variants"]:
        parts += [f"## {v['label']}", "", variant_table(v, langs, aggregate.get("zero_shot_languages")), ""]
    if aggregate["pairs"]:
        parts += ["## Pairs", "", "Differences are matched by seed: for each seed, A's average (or language score) minus "
                  "B's, in points; then their mean and sd, and how many seeds each side won.", "",
                  pairs_table(aggregate["pairs"]), ""]
        for p in aggregate["pairs"]:
            parts += [f"### {p['what']}: per language", "", pair_language_table(p, langs), ""]
    return "\n".join(parts)


def render_comparison_html(aggregate: dict) -> str:
    langs = aggregate["languages"]
    metric = METRIC_NAMES.get(aggregate["metric"], aggregate["metric"])
    body = ["<h1>Comparison</h1>"]
    body += [f"<p>{_md_inline(line)}</p>" for line in _intro(aggregate)]
    for p in aggregate["pairs"]:
        d = p["average"]
        if d.get("paired"):
            body.append(f"<p class=verdict><strong>{esc(p['what'])}</strong>: A − B = {esc(pm(d, 1, 2, True))} points on "
                        f"average over {len(p['seeds'])} seed(s); A won {d['a_wins']}, B won {d['b_wins']}.</p>")
    if aggregate["pairs"]:
        body += ["<h2>Pairs</h2>", markdown_table(pairs_table(aggregate["pairs"]))]
        for p in aggregate["pairs"]:
            per = [p["per_language"][lang] for lang in langs]
            svg = differences(langs, [d["mean"] for d in per], f"{p['a']} minus {p['b']}, per language",
                              f"{metric} difference (points)", sds=[d["sd"] for d in per],
                              per_seed=[[v for v in d["per_seed"].values() if _finite(v)] for d in per])
            body += [f"<h3>{esc(p['what'])}</h3>",
                     figure(svg, "Bars: mean difference over seeds; error bars: one standard deviation; dots: each "
                                 "seed's difference.", f"{p['what']} per language"),
                     markdown_table(pair_language_table(p, langs))]
    for v in aggregate["variants"]:
        body += [f"<h2>{esc(v['label'])}</h2>", markdown_table(variant_table(v, langs, aggregate.get("zero_shot_languages")))]
        models = v["models"]
        svg = grouped_scores([m["name"] for m in models], [100 * (m["average"]["mean"] or 0) for m in models],
                             [100 * m["average"]["sd"] if _finite(m["average"]["sd"]) else None for m in models],
                             [[100 * x for x in m["average"]["values"] if _finite(x)] for m in models],
                             [m["role"] for m in models], f"{v['label']}: average {metric} per model",
                             f"average {metric} (%)")
        body.append(figure(svg, "Bars: mean over seeds; error bars: one standard deviation; dots: each seed.",
                           f"{v['label']} scores per model"))
        rows = [m for m in models if m["role"] != "teacher"]
        if rows:
            values = [[m["retention_per_language"][lang]["mean"] for lang in langs] for m in rows]
            worst = []
            for row in values:
                finite = [(x, j) for j, x in enumerate(row) if _finite(x)]
                worst.append(min(finite)[1] if finite else None)
            body.append(figure(retention_heatmap([m["name"] for m in rows], langs, values,
                                                 f"{v['label']}: mean retention per language (%)", worst),
                               "Mean over seeds of score / teacher score; outlined: each model's worst language.",
                               f"{v['label']} retention heatmap"))
    body += ["<h2>Runs</h2>", "<ul>" + "".join(f"<li>{esc(v['label'])}: " + ", ".join(
        f"seed {esc(r['seed'])} <code>{esc(r['path'])}</code>" for r in v["runs"]) + "</li>"
        for v in aggregate["variants"]) + "</ul>"]
    return page("Comparison", body)


def _md_inline(text: str) -> str:
    return _inline_code(text.removeprefix("- "))
