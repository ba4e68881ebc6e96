"""Several finished runs side by side: the seeds of one recipe, or recipes that differ in a choice.

`compare_runs(run_dirs, out)` reads each RUN_DIR (run_files.py) and groups the runs into variants:
runs whose recipes differ only in `seed` and `name` are seeds of one variant (or give the groups
yourself: {label: [run dirs]}). It then writes, to OUT:
- aggregate.json: per variant and model, the mean, standard deviation and per-seed values of the
  average, worst-language score and retention, and of each language's score and retention (in
  zero-shot runs also average_seen, average_zero_shot, retention_seen, retention_zero_shot);
  and the pairs: within a variant, the cascade's final student against the direct baseline; across
  variants, each variant's student (and direct model) against the first variant's. A pair holds
  the per-seed differences (matched by seed), their mean and sd, and how many seeds each side won,
  overall, per language, and (where the runs trained on some of their languages only: zero-shot
  transfer) over the seen and over the zero-shot languages apart;
- report.md and report.html (tables and figures: per-language differences with their spread and
  each seed's value, scores per model with their spread, mean retention per language).

Every figure is computed on the languages all runs share (said in the report when some run has
more); runs must share the task, metric and split. `run_seeds` (cascade/seeds.py) ends with this.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
from pathlib import Path

from cascade_kd.cascade.rundir import changed_keys
from cascade_kd.config.schema import computing_part
from cascade_kd.errors import UserError
from cascade_kd.evaluation.compare_report import (
    render_comparison_html,
    render_comparison_md,
)
from cascade_kd.evaluation.run_files import RunFiles, read_json, read_run
from cascade_kd.fileio import atomic_write
from cascade_kd.outdir import info_file_with

AGGREGATE = "aggregate.json"
COMPARISON_FILES = ("report.html", "report.md", AGGREGATE)  # what a comparison writes in its folder


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def spread(values: list[float]) -> dict:
    """mean, sd (sample standard deviation; None with one value), n and the values themselves."""
    finite = [v for v in values if _finite(v)]
    return {"mean": statistics.fmean(finite) if finite else None,
            "sd": statistics.stdev(finite) if len(finite) > 1 else None, "n": len(finite), "values": list(values)}


# what the runs of one variant (its seeds) may differ in, besides the presentation keys
SEED_KEYS = ("seed", "name")


def _variant_key(run: RunFiles) -> str:
    """Runs with the same key are seeds of one variant: their recipes differ at most in seed and
    name (and the presentation keys). A run without a manifest is a variant of its own."""
    if not run.recipe:
        return f"dir:{run.directory.resolve()}"
    data = computing_part(run.recipe)
    for key in SEED_KEYS:
        data.pop(key, None)
    if "evaluated_run" in run.metrics:  # `cascade-kd eval` output: apart from the runs it scored
        data["_eval"] = [run.metrics.get("split"), run.metrics.get("evaluated_with")]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _seed(run: RunFiles):
    return run.manifest.get("seed", run.recipe.get("seed"))


def _check_shared(runs: list[RunFiles]) -> list[str]:
    """The languages every run has, in the first run's order; UserError when runs differ in task,
    metric or split, or share no language."""
    first = runs[0]
    for key in ("task", "metric", "split"):
        values = {run.metrics[key] for run in runs}
        if len(values) > 1:
            which = ", ".join(f"{run.directory}: {run.metrics[key]}" for run in runs)
            raise UserError(f"the runs do not share a {key} ({which})", hint="compare runs of the same task, scored "
                            "alike (`cascade-kd eval --split` rescores a run on another split)")
    shared = [lang for lang in first.languages if all(lang in run.languages for run in runs)]
    if not shared:
        raise UserError("the runs share no language: " + "; ".join(f"{run.directory}: {', '.join(run.languages)}"
                                                                   for run in runs))
    return shared


def _model_figures(row: dict, languages: list[str], groups: dict[str, list[str]] | None = None) -> dict:
    """A model's figures on `languages` (recomputed, so that every run is summarised alike), and
    with `groups` ({"seen": [...], "zero_shot": [...]}) the average and retention of each group."""
    scores = [row["per_language"].get(lang) for lang in languages]
    retention = row.get("retention_per_language") or {}
    kept = [retention.get(lang) for lang in languages]

    def mean(values):
        finite = [v for v in values if _finite(v)]
        return statistics.fmean(finite) if finite else None

    def least(values):
        finite = [v for v in values if _finite(v)]
        return min(finite) if finite else None

    figures = {"average": mean(scores), "worst": least(scores), "retention": mean(kept), "worst_retention": least(kept),
               "per_language": dict(zip(languages, scores)), "retention_per_language": dict(zip(languages, kept))}
    for group, members in (groups or {}).items():
        figures[f"average_{group}"] = mean([row["per_language"].get(lang) for lang in members])
        figures[f"retention_{group}"] = mean([retention.get(lang) for lang in members])
    return figures


def _variant(label: str, runs: list[RunFiles], languages: list[str], groups: dict[str, list[str]] | None = None) -> dict:
    seeds = [_seed(run) for run in runs]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
    if repeated:
        dirs = [str(run.directory) for run in runs if _seed(run) == repeated[0]]
        raise UserError(f"variant {label!r} has several runs with seed {repeated[0]}: {', '.join(dirs)}",
                        hint="give each seed once (runs of one recipe are matched by seed)")
    names = list(dict.fromkeys(m["name"] for run in runs for m in run.models))
    models = []
    for name in names:
        rows = [(seed, run.model(name)) for seed, run in zip(seeds, runs)]
        rows = [(seed, row) for seed, row in rows if row is not None]
        figures = [(seed, _model_figures(row, languages, groups)) for seed, row in rows]
        models.append({
            "name": name, "role": rows[0][1]["role"], "seeds": [s for s, _ in figures],
            "params_total": rows[0][1]["params_total"],
            **{key: spread([f[key] for _, f in figures]) for key in ("average", "worst", "retention", "worst_retention",
                                                                     *(f"{s}_{g}" for g in groups or {}
                                                                       for s in ("average", "retention")))},
            "per_language": {lang: spread([f["per_language"][lang] for _, f in figures]) for lang in languages},
            "retention_per_language": {lang: spread([f["retention_per_language"][lang] for _, f in figures])
                                       for lang in languages},
        })
    return {"label": label, "runs": [{"path": str(run.directory), "seed": seed} for run, seed in zip(runs, seeds)],
            "seeds": seeds, "name": runs[0].metrics["name"], "models": models}


def _pair(what: str, a: tuple[dict, dict], b: tuple[dict, dict], languages: list[str],
          groups: dict[str, list[str]] | None = None) -> dict:
    """A minus B (points), matched by seed; per seed, mean, sd, wins, overall and per language, and
    over each group of languages in `groups` ({"seen": [...], "zero_shot": [...]}): per seed, the
    mean of that group's per-language differences."""
    (va, ma), (vb, mb) = a, b
    common = [s for s in ma["seeds"] if s is not None and s in mb["seeds"]]  # an unknown seed matches nothing

    def value(model, key, seed, lang=None):
        return (model["per_language"][lang] if lang else model[key])["values"][model["seeds"].index(seed)]

    def minus(x, y):  # None where either side has no value (e.g. no retention: the teacher scored 0)
        return 100 * (x - y) if _finite(x) and _finite(y) else None

    def difference(lang=None, key="average"):
        if common:
            diffs = [minus(value(ma, key, s, lang), value(mb, key, s, lang)) for s in common]
            stats = spread([d for d in diffs if d is not None])
            return {**stats, "per_seed": dict(zip(map(str, common), diffs)), "paired": True,
                    "a_wins": sum(d is not None and d > 0 for d in diffs), "b_wins": sum(d is not None and d < 0 for d in diffs),
                    "ties": sum(d == 0 for d in diffs)}
        # no seed in common: the difference of the means, without a spread or wins
        ka, kb = (ma["per_language"][lang], mb["per_language"][lang]) if lang else (ma[key], mb[key])
        mean = 100 * (ka["mean"] - kb["mean"]) if _finite(ka["mean"]) and _finite(kb["mean"]) else None
        return {"mean": mean, "sd": None, "n": 0, "values": [], "per_seed": {}, "paired": False,
                "a_wins": None, "b_wins": None, "ties": None}

    per_language = {lang: difference(lang) for lang in languages}

    def group_difference(group: list[str]) -> dict:
        if common:
            diffs = [statistics.fmean(d) if (d := [per_language[lang]["per_seed"][str(s)] for lang in group
                                                   if per_language[lang]["per_seed"][str(s)] is not None]) else None
                     for s in common]
            stats = spread([d for d in diffs if d is not None])
            return {**stats, "per_seed": dict(zip(map(str, common), diffs)), "paired": True,
                    "a_wins": sum(d is not None and d > 0 for d in diffs),
                    "b_wins": sum(d is not None and d < 0 for d in diffs), "ties": sum(d == 0 for d in diffs)}
        means = [per_language[lang]["mean"] for lang in group if per_language[lang]["mean"] is not None]
        return {"mean": statistics.fmean(means) if means else None, "sd": None, "n": 0, "values": [], "per_seed": {},
                "paired": False, "a_wins": None, "b_wins": None, "ties": None}

    return {"what": what, "a": f"{va['label']}/{ma['name']}", "b": f"{vb['label']}/{mb['name']}", "seeds": common,
            "average": difference(), "retention": difference(key="retention"),
            "worst_retention": difference(key="worst_retention"),
            **{name: group_difference(group) for name, group in (groups or {}).items() if group},
            "per_language": per_language}


def _language_groups(runs: list[RunFiles], languages: list[str]) -> dict[str, list[str]] | None:
    """The seen (training) and zero-shot languages among `languages`, when every run trained on the
    same languages and some compared language is zero-shot; else None (nothing to split)."""
    trained = [run.metrics.get("train_languages") for run in runs]
    if any(t is None for t in trained) or any(set(t) != set(trained[0]) for t in trained):
        return None
    seen = [lang for lang in languages if lang in trained[0]]
    zero_shot = [lang for lang in languages if lang not in trained[0]]
    return {"seen": seen, "zero_shot": zero_shot} if zero_shot and seen else None  # else nothing to set apart


def _pairs(variants: list[dict], languages: list[str], groups: dict | None = None) -> list[dict]:
    def role(variant, name):
        return next((m for m in variant["models"] if m["role"] == name), None)

    pairs = []
    for v in variants:
        student, direct = role(v, "student"), role(v, "direct")
        if student and direct:
            pairs.append(_pair(f"cascade against direct ({v['label']})", (v, student), (v, direct), languages, groups))
    reference = variants[0]
    for v in variants[1:]:
        for name in ("student", "direct"):
            a, b = role(v, name), role(reference, name)
            if a and b:
                pairs.append(_pair(f"{v['label']} against {reference['label']}: {name}", (v, a), (reference, b),
                                   languages, groups))
    return pairs


def _labels(groups: list[list[RunFiles]]) -> list[str]:
    """Each variant's recipe name; where several recipes share one, each says where it lies too: the
    folder holding its runs, else its own folder, else its path, else its place in the list."""
    names = [group[0].metrics["name"] + (f" (eval, {group[0].metrics.get('split')})" if "evaluated_run" in group[0].metrics
                                         else "") for group in groups]
    labels = list(names)
    for name in set(names):
        same = [i for i, n in enumerate(names) if n == name]
        if len(same) < 2:
            continue
        for where in (group_dir, lambda g: g[0].directory.name, lambda g: str(g[0].directory), None):
            places = [where(groups[i]) for i in same] if where else [str(k + 1) for k in range(len(same))]
            if len(set(places)) == len(places):
                break
        for i, place in zip(same, places):
            labels[i] = f"{name} ({place})"
    return labels


def group_dir(group: list[RunFiles]) -> str:
    parents = {run.directory.resolve().parent for run in group}
    return (parents.pop().name if len(parents) == 1 else group[0].directory.name) or str(group[0].directory)


def _differences_from(reference: RunFiles, run: RunFiles) -> list[str]:
    if not reference.recipe or not run.recipe:
        return []
    return [k for k in changed_keys(computing_part(reference.recipe), computing_part(run.recipe)) if k not in SEED_KEYS]


def _named_pairs(variants: list[dict], pairs, languages: list[str], groups: dict | None = None) -> list[dict]:
    """The pairs the caller names: (what, 'variant/model', 'variant/model')."""
    def find(ref: str):
        label, _, name = ref.rpartition("/")
        variant = next((v for v in variants if v["label"] == label), None)
        model = next((m for m in variant["models"] if m["name"] == name), None) if variant else None
        if model is None:
            raise UserError(f"no model {ref!r} to compare", hint="name a pair's sides as VARIANT/MODEL")
        return variant, model

    return [_pair(what, find(a), find(b), languages, groups) for what, a, b in pairs]


def compare_runs(run_dirs, out: str | Path | None = None, *, pairs=None) -> dict:
    """Compare finished runs (see the module docstring). `run_dirs`: run directories (grouped into
    variants by recipe), or {label: [run directories]} to give the variants yourself. `pairs`:
    [(what, 'variant/model', 'variant/model'), ...] instead of the default pairs. With `out`,
    writes aggregate.json, report.md and report.html there. UserError for a missing or broken run,
    or runs that share no language, task, metric or split."""
    if isinstance(run_dirs, dict):
        labels = list(run_dirs)
        groups = [[read_run(d) for d in dirs] for dirs in run_dirs.values()]
        if any(not g for g in groups):
            raise UserError("every variant needs at least one run directory")
    else:
        runs = [read_run(d) for d in run_dirs]
        if not runs:
            raise UserError("no run directories to compare")
        by_key: dict[str, list[RunFiles]] = {}
        for run in runs:
            by_key.setdefault(_variant_key(run), []).append(run)
        groups = list(by_key.values())
        labels = _labels(groups)
    runs = [run for group in groups for run in group]
    languages = _check_shared(runs)
    language_groups = _language_groups(runs, languages)
    variants = [_variant(label, group, languages, language_groups) for label, group in zip(labels, groups)]
    for variant, group in zip(variants[1:], groups[1:]):
        variant["differs_from_first_in"] = _differences_from(groups[0][0], group[0])
    first = runs[0].metrics
    groups = language_groups
    aggregate = {
        "task": first["task"], "metric": first["metric"], "split": first["split"], "languages": languages,
        "languages_left_out": sorted({l for run in runs for l in run.languages} - set(languages)),
        "seen_languages": groups["seen"] if groups else None,
        "zero_shot_languages": groups["zero_shot"] if groups else None,
        "variants": variants,
        "pairs": _pairs(variants, languages, groups) if pairs is None else _named_pairs(variants, pairs, languages, groups),
    }
    if out is not None:
        write_comparison(aggregate, out)
    return aggregate


def check_output_dir(out: Path) -> None:
    """OUT may hold an earlier comparison, never a run's own report (which it would overwrite)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError("the output exists and is not a directory", where=str(out))
    if (out / "metrics.json").exists():
        raise UserError("this is a run directory: writing the comparison there would replace the run's own report",
                        where=str(out), hint="give another --out")
    earlier = (out / AGGREGATE).exists()
    if earlier and not info_file_with(out / AGGREGATE, "variants"):  # a file merely named so is not replaced
        raise UserError(f"the output directory holds an {AGGREGATE} that is not a comparison's", where=str(out / AGGREGATE),
                        hint="give another --out")
    if not earlier and any((out / name).exists() for name in ("report.md", "report.html")):
        raise UserError("the output directory holds a report that is not a comparison", where=str(out),
                        hint="give another --out")


def write_comparison(aggregate: dict, out: str | Path) -> None:
    """aggregate.json, report.md and report.html in `out` (run paths stored relative to it, so the
    folder and its runs can move together)."""
    out = Path(out)
    check_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    stored = json.loads(json.dumps(aggregate))
    for variant in stored["variants"]:
        for run in variant["runs"]:
            run["path"] = os.path.relpath(Path(run["path"]).resolve(), out.resolve())
    atomic_write(out / AGGREGATE, json.dumps(stored, indent=2, ensure_ascii=False))
    atomic_write(out / "report.md", render_comparison_md(aggregate))
    atomic_write(out / "report.html", render_comparison_html(aggregate))


def rebuild_comparison(out: str | Path) -> dict:
    """Compare again the runs an earlier comparison in `out` named (`cascade-kd report OUT`)."""
    out = Path(out)
    stored = read_json(out / AGGREGATE, "not a comparison directory")
    groups = {}
    renamed = False
    for variant in stored.get("variants") or []:
        label = variant["label"]
        if label in groups:  # written before labels were made distinct: both variants are kept
            label = next(f"{label} ({k})" for k in range(2, len(groups) + 3) if f"{label} ({k})" not in groups)
            renamed = True
        groups[label] = [out / run["path"] if not Path(run["path"]).is_absolute() else Path(run["path"])
                         for run in variant.get("runs", [])]
    if not groups:
        raise UserError("aggregate.json names no runs", where=str(out / AGGREGATE))
    # the same pairs as before, the default ones or those the caller named (not where a label was
    # renamed: the stored pairs' sides named two variants alike, and would all point to the first)
    pairs = [(p["what"], p["a"], p["b"]) for p in stored.get("pairs") or []
             if isinstance(p, dict) and all(isinstance(p.get(k), str) for k in ("what", "a", "b"))]
    return compare_runs(groups, out, pairs=None if renamed or not pairs else pairs)
