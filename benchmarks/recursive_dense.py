"""Issue 8's benchmark: recursive (MiniALBERT) students, adapter-only fine-tuning and dense guidance
(DGKD) on real data, PAN-X NER (10 languages) and SIB-200 topic classification (41 languages).

What it measures, per task, against the same teacher (the 4 x 128 BERT that benchmarks/real_data.py
trained from scratch with the mBERT vocabulary; it is loaded, never retrained):

1. MiniALBERT against a plain student of (about) equal unique parameters: a recursive student (one
   shared 128-wide layer applied 4 times, 2 bottleneck adapters per step, init: mean of the
   teacher's layers, frozen copied embeddings; kl + hidden_mse + attention_mse with the explicit map
   step i <-> teacher layer i) against a plain 1 x 128 transformer distilled straight from the teacher
   (LightMBERT defaults: bottom-layer init, frozen embeddings, top_only maps). Both have one layer's
   worth of unique weights (+ the recursive student's adapters); the recursive one applies its layer
   4 times, so `params_unrolled` and `cascade_kd.bench` latency show what that costs.
2. Adapter-only against full fine-tuning: after the recursive distillation stage, the same shape is
   fine-tuned on the gold labels (`ce`) with `train_only: adapters` (adapters + head train), with
   every parameter trainable, and with everything but the (frozen) embedding tables trainable. All
   three start from the distilled recursive student (it is their recipe's teacher, which a recursive
   student of the same shape copies entirely) with the same seed and batch order.
3. Chain against dense guidance at equal final size: a cascade 4 -> 3 -> 2 -> 1 of plain students
   whose final stage is taught by the 2-layer model alone (chain), against the same cascade whose
   final stage is densely guided (`guides: dense`: logit losses from the teacher, the 3-layer and
   the 2-layer models; `drop_guides: 1`, so 2 of the 3 per batch; `guide_reduction: sum`, the DGKD
   paper's choice). The 3- and 2-layer assistants are trained once (in the dense run) and the chain's
   final stage is a one-stage recipe whose teacher is that run's 2-layer model, so both final
   stages learn from the very same assistants.

Everything is a recipe run: the script is a grid of recipes (benchmarks/runner.py runs them with
the Python API into OUT/<task>/<run>/, each with its recipe.yaml as run; absolute paths to
../shared/data, nothing is copied into the repository), with `cascade_kd.bench` as a post step on
the PAN-X dense and recursive runs (latency depends on the shape, not the task). The data sections
are copied from the teacher's own run (TEACHER/../recipe.yaml), so the splits are the teacher's:
the teacher is re-scored in every run and compared with its score in its own run. Scores are on
the test split (SIB-200's test files; PAN-X: half of each language's dev set held out, as in
real_data.py); every model is selected on dev by the engine.

Per model: unique / unrolled / trainable parameters, per-language test score, average, worst
language, retention against the teacher per language and averaged, training wall time.

    nice -n 10 .venv/bin/python benchmarks/recursive_dense.py --quick   # pipeline check, few languages, tiny caps
    nice -n 10 .venv/bin/python benchmarks/recursive_dense.py           # full mode, see benchmarks/RESULTS.md

Flags: --panx-teacher, --sib-teacher (default: runs/real-data/<task>/seed0/cascade/teacher; a
missing one is an error, exit code 2: train it with benchmarks/real_data.py first), --out (default
runs/recursive-dense[-quick]), --jobs (runs trained at once, default 2, one torch thread each),
--no-bench. Rerunning the same command skips finished runs and resumes unfinished ones. Tables go
to OUT/recursive_dense.{md,json} and benchmarks/results/recursive_dense[_quick].{md,json}.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cascade_kd.fileio import atomic_write  # noqa: E402
from runner import (
    LIGHTMBERT,
    Job,
    count,
    drop_none,
    failures,
    mean_sd,
    model_row,
    pct,
    read_json,
    run_grid,
    write_json,
)

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TASKS = ("panx", "sib200")
TITLES = {"panx": "PAN-X NER", "sib200": "SIB-200 topic classification"}
QUICK_LANGUAGES = {"panx": ["en", "ru", "ar", "zh"], "sib200": ["eng_Latn", "rus_Cyrl", "arb_Arab", "zho_Hans"]}
# every student and fine-tuning stage as real_data.py's students; recursions: the teacher's depth (step i <->
# teacher layer i); adapter_reduction: MiniALBERT's (128 / 16 = 8-wide adapters)
SIZES = {"epochs": 2, "lr": 5e-4, "batch_size": 32, "recursions": 4, "adapter_reduction": 16, "quick_max_train": 120,
         "quick_max_eval": 60}


def task_sections(task: str, teacher: Path, s: dict) -> tuple[dict, dict]:
    """(task, data) sections of the teacher's own recipe, as run: the same files, caps and dev/test
    split (the quick mode takes a few languages and tiny caps, so its splits are not the teacher's)."""
    import yaml

    recipe = yaml.safe_load((teacher.parent / "recipe.yaml").read_text())
    task_sec, data_sec = drop_none(recipe["task"]), drop_none(recipe["data"])
    if s["quick"]:
        data_sec.update(languages=QUICK_LANGUAGES[task], max_train_per_language=s["quick_max_train"],
                        max_eval_per_language=s["quick_max_eval"])
    return task_sec, data_sec


# ---------------------------------------------------------------------------------------------
# The grid

LABELS = {"ce": {"weight": 1.0}}
PLAIN = {"init": "bottom", "freeze_embeddings": True}  # LightMBERT: teacher's bottom layers, frozen copied embeddings


def recursive_losses(steps: int) -> dict:
    """kl + hidden/attention MSE with step i <-> teacher layer i (the teacher has as many layers as
    the student has steps; `uniform` would add the embedding output, which is frozen and equal)."""
    def step_map():  # a fresh list each time
        return [[i, i] for i in range(1, steps + 1)]

    return {"kl": {"weight": 1.0, "temperature": 2.0},
            "hidden_mse": {"weight": 1.0, "layer_map": step_map()},
            "attention_mse": {"weight": 1.0, "layer_map": step_map()}}


def task_jobs(task: str, out: Path, teacher: Path, s: dict) -> list[Job]:
    """The runs of one task; a run that loads another's saved model depends on it."""
    task_sec, data_sec = task_sections(task, teacher, s)
    rec = {"kind": "recursive", "recursions": s["recursions"], "adapter_reduction": s["adapter_reduction"]}

    def job(name, teacher_model, stages, what, losses=None, direct=False, needs=None):
        recipe = {"name": f"{task}-{name}", "seed": 0, "task": task_sec, "data": data_sec,
                  "teacher": {"model": str(teacher_model), "finetune": "never"},
                  "train": {"batch_size": s["batch_size"], "epochs": s["epochs"], "lr": s["lr"]},
                  "cascade": {"losses": losses or LIGHTMBERT, "stages": stages, "direct": direct}}
        return Job(f"{task}/{name}", recipe, what=what, depends_on=[f"{task}/{needs}"] if needs else [])

    def finetune(name, student, what):  # the recursive student, fine-tuned on the labels (its recipe teacher
        # is the recursive student, which a recursive student of the same shape copies whole)
        return job(name, out / task / "recursive" / "stages" / "rec",
                   [{"name": name, "student": {**rec, **student}, "losses": LABELS}], what, needs="recursive")

    return [
        # chain vs dense: the assistants are trained once, in the dense run; its direct baseline is the
        # plain 1 x 128 student straight from the teacher (never dense), the equal-unique-parameter match
        job("dense", teacher, [{"name": "ta3", "student": {"layers": 3, **PLAIN}},
                               {"name": "s2", "student": {"layers": 2, **PLAIN}},
                               {"name": "s1-dense", "student": {"layers": 1, **PLAIN},
                                "guides": "dense", "drop_guides": 1, "guide_reduction": "sum"}],
            "teacher -> 3 -> 2 -> 1 (dense final stage), + plain 1 layer straight from the teacher", direct=True),
        job("chain", out / task / "dense" / "stages" / "s2", [{"name": "s1-chain", "student": {"layers": 1, **PLAIN}}],
            "final stage of the chain: 1 layer taught by the dense run's 2-layer model only", needs="dense"),
        job("recursive", teacher, [{"name": "rec", "student": {**rec, "init": "mean", "freeze_embeddings": True},
                                    "losses": recursive_losses(s["recursions"])}],
            f"MiniALBERT: 1 shared layer x {s['recursions']} steps, adapters, straight from the teacher"),
        finetune("ft-adapters", {"freeze_embeddings": True, "train_only": "adapters"},
                 "recursive student fine-tuned on the labels, adapters and head only"),
        finetune("ft-full", {"freeze_embeddings": False}, "recursive student fine-tuned on the labels, every parameter"),
        finetune("ft-noemb", {"freeze_embeddings": True},
                 "recursive student fine-tuned on the labels, all but the embedding tables"),
    ]


def bench_step(run_dir: Path, *, seq: int, repeats: int, backends: tuple) -> None:
    """`cascade_kd.bench` on a finished run, one torch thread; the settings kept in its metrics.json."""
    import torch

    import cascade_kd as ckd

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ckd.bench(run_dir, batch_sizes=(1, 32), seq_lens=(seq,), repeats=repeats, backends=tuple(backends),
                  say=lambda m: print(f"{time.strftime('%H:%M:%S')} [bench {run_dir.name}] {m}", flush=True))
    finally:
        torch.set_num_threads(before)
    metrics = read_json(run_dir / "metrics.json")
    metrics["latency_settings_recursive_dense"] = {"batch_sizes": [1, 32], "seq_lens": [seq], "repeats": repeats,
                                                   "backends": list(backends), "threads": 1}
    write_json(run_dir / "metrics.json", metrics)


# ---------------------------------------------------------------------------------------------
# Tables


@dataclass
class Row:
    """One model of the tables: which run and which model of its metrics.json."""

    key: str
    label: str
    run: str
    model: str
    how: str
    needs: tuple = ()  # other rows whose training this model needs (cumulative training time)


ROWS = [
    Row("teacher", "teacher 4x128", "dense", "teacher", "real_data.py's teacher, loaded (finetune: never)"),
    Row("ta3", "chain 3x128", "dense", "ta3", "4->3 (assistant)"),
    Row("s2", "chain 2x128", "dense", "s2", "4->3->2 (assistant)", ("ta3",)),
    Row("chain-1L", "chain 1x128", "chain", "s1-chain", "4->3->2->1, last stage from the 2-layer model", ("ta3", "s2")),
    Row("dense-1L", "dense 1x128", "dense", "s1-dense", "4->3->2->1, last stage from teacher+3L+2L (drop 1, sum)",
        ("ta3", "s2")),
    Row("direct-1L", "plain 1x128", "dense", "direct", "1 layer straight from the teacher"),
    Row("rec", "MiniALBERT 4x(1x128)", "recursive", "rec", "1 shared layer x 4 steps + adapters, from the teacher"),
    Row("rec-adapters", "MiniALBERT + adapter FT", "ft-adapters", "ft-adapters", "rec, then ce on labels: adapters + head",
        ("rec",)),
    Row("rec-full", "MiniALBERT + full FT", "ft-full", "ft-full", "rec, then ce on labels: every parameter", ("rec",)),
    Row("rec-noemb", "MiniALBERT + FT w/o emb.", "ft-noemb", "ft-noemb", "rec, then ce on labels: all but embedding tables",
        ("rec",)),
]
COMPARISONS = [
    ("MiniALBERT vs plain 1 layer, equal unique params, both from the teacher", "rec", "direct-1L"),
    ("MiniALBERT vs chain 1 layer", "rec", "chain-1L"),
    ("MiniALBERT vs chain 2 layers (more unique params, half the compute)", "rec", "s2"),
    ("adapter-only vs full fine-tuning", "rec-adapters", "rec-full"),
    ("adapter-only vs fine-tuning all but embeddings", "rec-adapters", "rec-noemb"),
    ("adapter-only fine-tuning vs no fine-tuning", "rec-adapters", "rec"),
    ("full fine-tuning vs no fine-tuning", "rec-full", "rec"),
    ("dense vs chain, 1 layer, same assistants", "dense-1L", "chain-1L"),
    ("dense vs direct, 1 layer", "dense-1L", "direct-1L"),
    ("chain vs direct, 1 layer", "chain-1L", "direct-1L"),
]


def collect_task(task: str, out: Path, teacher: Path, s: dict, grid_jobs: dict) -> dict:
    timing = {k: {"wall_s": v["wall_s"], "finished": v.get("finished")} for k, v in grid_jobs.items()
              if k.startswith(task + "/") and v.get("status") == "done"}
    failed = {k: v for k, v in failures({"jobs": grid_jobs}).items() if k.startswith(task + "/")}
    runs = {row.run: read_json(out / task / row.run / "metrics.json") for row in ROWS}
    base = runs["dense"] or next((m for m in runs.values() if m), None)
    if base is None:
        return {"task": task, "models": [], "comparisons": [], "failed": failed}
    t_scores = model_row(base, "teacher")["per_language"]
    # the teacher re-scored here against its score in its own run: the same split gives the same figures
    ref_row = model_row(read_json(teacher.parent / "metrics.json"), "teacher")
    check = None
    if ref_row and set(ref_row["per_language"]) == set(t_scores):
        check = max(abs(ref_row["per_language"][lang] - t_scores[lang]) for lang in t_scores)
    # the recursive run loads the same teacher: it must score it exactly as the dense run does
    rescored = None
    if runs["recursive"] and runs["dense"]:
        other = model_row(runs["recursive"], "teacher")["per_language"]
        rescored = max(abs(other[lang] - t_scores[lang]) for lang in t_scores)
    models, by_key = [], {}
    for row in ROWS:
        entry = model_row(runs.get(row.run), row.model)
        if entry is None:
            models.append({"key": row.key, "label": row.label, "how": row.how, "missing": True})
            continue
        ratios = {lang: entry["per_language"][lang] / t_scores[lang] if t_scores[lang] > 0 else None for lang in t_scores}
        finite = {lang: r for lang, r in ratios.items() if r is not None}
        worst_ret = min(finite, key=finite.get) if finite else None
        model = {
            "key": row.key, "label": row.label, "how": row.how, "run": row.run, "model": row.model,
            "kind": entry.get("kind", "transformer"), "layers": entry["layers"], "hidden": entry["hidden"],
            "params_total": entry["params_total"], "params_embedding": entry["params_embedding"],
            "params_unrolled": entry.get("params_unrolled", entry["params_total"]),
            "params_trainable": entry.get("params_trainable") if row.key != "teacher" else None,
            "params_adapters": entry.get("params_adapters", 0),
            "per_language": entry["per_language"], "average": entry["average"], "worst": entry["worst"],
            "worst_language": entry["worst_language"], "dev_average": entry.get("dev_average"),
            "retention_per_language": ratios, "retention": mean_sd(finite.values())["mean"],
            "worst_retention": finite.get(worst_ret), "worst_retention_language": worst_ret,
            "wall_time_s": entry.get("wall_time_s") if row.key != "teacher" else None,
            "train_tokens_per_s": entry.get("train_tokens_per_s"), "needs": list(row.needs),
            "latency": latency_of(runs.get(row.run), row.model),
        }
        models.append(model)
        by_key[row.key] = model
    found = [m for m in models if not m.get("missing")]
    for model in found:  # latency depends on the shape only: fine-tuned and chain models share their twin's
        if model["latency"] is None:
            twin = next((m for m in found if m["latency"] is not None and
                         (m["kind"], m["layers"], m["hidden"]) == (model["kind"], model["layers"], model["hidden"])), None)
            model["latency"] = twin["latency"] if twin else None
    for model in found:  # training time of everything this model needs, the (shared) teacher excluded
        if model["key"] != "teacher":
            parts = [by_key.get(k, {}).get("wall_time_s") for k in model["needs"]] + [model["wall_time_s"]]
            model["cumulative_wall_time_s"] = sum(parts) if all(p is not None for p in parts) else None
    return {"task": task, "metric": base["metric"], "split": base["split"], "languages": base["languages"],
            "teacher": str(teacher), "teacher_check_max_diff": check, "teacher_rescored_max_diff": rescored,
            "teacher_reference_average": ref_row["average"] if ref_row else None,
            "data_sizes": (read_json(out / task / "dense" / "manifest.json") or {}).get("data_sizes"),
            "sizes": s, "models": models,
            "comparisons": [compare(what, by_key[a], by_key[b], t_scores) for what, a, b in COMPARISONS
                            if a in by_key and b in by_key],
            "timing": timing, "failed": failed}


def compare(what: str, ma: dict, mb: dict, t_scores: dict) -> dict:
    """A minus B in points, and over how many languages A scores higher (with a sign test)."""
    diffs = [ma["per_language"][lang] - mb["per_language"][lang] for lang in t_scores]
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return {"what": what, "a": ma["key"], "b": mb["key"], "diff_points": 100 * (ma["average"] - mb["average"]),
            "retention_diff_points": 100 * (ma["retention"] - mb["retention"]),
            "worst_retention_diff_points": 100 * (ma["worst_retention"] - mb["worst_retention"]),
            "a_better_languages": wins, "b_better_languages": losses, "ties": sum(d == 0 for d in diffs),
            "sign_test_p": sign_test(wins, losses)}


def sign_test(wins: int, losses: int) -> float | None:
    """Two-sided exact sign test over languages (ties dropped): how often a fair coin splits the
    languages at least this unevenly. Languages are not independent samples, so it is a rough guide."""
    n = wins + losses
    if n == 0:
        return None
    k = min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def latency_of(metrics: dict | None, name: str) -> dict | None:
    lat = (metrics or {}).get("latency")
    entry = next((m for m in (lat or {}).get("models", []) if m.get("name") == name), None)
    if entry is None:
        return None
    return {"latency_ms": entry.get("latency_ms", {}), "speedup_vs_teacher": entry.get("speedup_vs_teacher", {}),
            "size_mb": entry.get("size_mb"), "load_average_1min": lat.get("load_average_1min")}


# ---------------------------------------------------------------------------------------------
# Markdown


def _s(x):
    return "—" if x is None else f"{x:.0f}"

def render_task(r: dict, lat_keys: list[str]) -> str:
    if not r["models"]:
        return f"### {TITLES[r['task']]}\n\nNo finished run." + _failed(r)
    metric = "entity F1 (seqeval)" if r["metric"] == "f1" else "accuracy"
    langs = r["languages"]
    sizes = r.get("data_sizes") or {}
    lines = [f"### {TITLES[r['task']]}", "",
             f"{len(langs)} languages; {metric} in percent on the **{r['split']}** split (models selected on dev); "
             f"examples per language: " + ", ".join(f"{split} {sorted(set(n.values()))}" for split, n in sizes.items())
             + f". Teacher: `{r['teacher']}` (test average in its own run "
             f"{pct(r['teacher_reference_average'])}; re-scored here, largest per-language difference "
             + ("—" if r["teacher_check_max_diff"] is None else f"{100 * r['teacher_check_max_diff']:.2f} points")
             + ("" if r.get("teacher_rescored_max_diff") is None else
                f"; the recursive run, which loads it too, scores it within {100 * r['teacher_rescored_max_diff']:.2f} "
                "points of the dense run per language")
             + ").", ""]
    head = ["model", "how", "unique params", "non-emb. unique", "non-emb. unrolled", "trainable", "avg",
            "worst (lang)", "retention", "worst retention (lang)", "train s", "cumul. s"]
    head += [f"{k.replace('/', ' ')} ms" for k in lat_keys] + (["size MB"] if lat_keys else [])
    lines += ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for m in r["models"]:
        if m.get("missing"):
            lines.append(f"| {m['label']} | {m['how']} | " + " | ".join(["—"] * (len(head) - 2)) + " |")
            continue
        emb = m["params_embedding"]
        cells = [m["label"], m["how"], count(m["params_total"], 1e6), count(m["params_total"] - emb, 1e6),
                 count(m["params_unrolled"] - emb, 1e6), count(m["params_trainable"], 1e6), pct(m["average"]),
                 f"{pct(m['worst'])} ({m['worst_language']})", pct(m["retention"]),
                 "100.0" if m["key"] == "teacher" else f"{pct(m['worst_retention'])} ({m['worst_retention_language']})",
                 _s(m["wall_time_s"]), _s(m.get("cumulative_wall_time_s"))]
        for k in lat_keys:
            lat = m.get("latency") or {}
            v, ratio = (lat.get("latency_ms") or {}).get(k), (lat.get("speedup_vs_teacher") or {}).get(k)
            cells.append("—" if v is None else f"{v:.2f}" + (f" ({ratio:.1f}x)" if ratio else ""))
        if lat_keys:
            size = (m.get("latency") or {}).get("size_mb")
            cells.append("—" if size is None else f"{size:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", ("Parameters: unique = every tensor once (`params_total`, the shared layer once); embeddings "
              f"(word, position, type tables and their norm) are {count(r['models'][0]['params_embedding'], 1e6)} of every "
              "model's, frozen in every stage but 'full FT'; unrolled = what the forward pass applies "
              "(`params_unrolled`: the shared layer once per step); trainable = what the stage trained. Retention = "
              "mean over languages of model score / teacher score; worst retention = the lowest of those ratios. "
              "train s: that model's training wall time (evaluations excluded); cumul. s: with the stages it needs "
              "(the teacher excluded: it is shared)."), "",
              ("Differences, A − B (points of the average; retention and worst-language retention in points; "
              "languages where A / B scores higher):"), "",
              ("| comparison | A | B | avg A − B | retention A − B | worst retention A − B | languages A > B / A < B / = "
              "| sign test p |"),
              "|---|---|---|---:|---:|---:|---:|---:|"]
    for c in r["comparisons"]:
        lines.append(f"| {c['what']} | {c['a']} | {c['b']} | {c['diff_points']:+.2f} | "
                     f"{c['retention_diff_points']:+.2f} | {c['worst_retention_diff_points']:+.2f} | "
                     f"{c['a_better_languages']} / {c['b_better_languages']} / {c['ties']} | "
                     + ("—" if c.get("sign_test_p") is None else f"{c['sign_test_p']:.3f}") + " |")
    keys = [m for m in r["models"] if not m.get("missing") and m["key"] not in ("ta3", "s2")]
    lines += ["", "Per language (score; in brackets retention against the teacher, %):", "",
              "| language | " + " | ".join(m["label"] for m in keys) + " |", "|---|" + "---:|" * len(keys)]
    for lang in langs:
        cells = [pct(m["per_language"][lang]) + ("" if m["key"] == "teacher" or m["retention_per_language"][lang] is None
                                                   else f" ({pct(m['retention_per_language'][lang], 0)})")
                 for m in keys]
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    if r["timing"]:
        total = sum(v["wall_s"] for v in r["timing"].values())
        lines += ["", f"Wall time of this task's runs (each a `cascade-kd run`, with loading, evaluation and "
                  f"scoring): {total / 60:.1f} min; " + ", ".join(f"{k.split('/')[1]} {v['wall_s']:.0f} s"
                                                                  for k, v in r["timing"].items()) + "."]
    return "\n".join(lines) + _failed(r)


def _failed(r: dict) -> str:
    return ("\n\nFailed or skipped runs: " + "; ".join(f"{k}: {v}" for k, v in r["failed"].items())) if r.get("failed") else ""


def render(results: dict) -> str:
    lat_keys = []
    b = results.get("bench") or {}
    for backend in b.get("backends") or []:
        lat_keys += [f"{backend}/b1/s{b['seq']}", f"{backend}/b32/s{b['seq']}"]
    parts = [f"## Recursive students and dense guidance ({results['mode']})", "",
             f"`{results['command']}`: {results['date']} UTC, wall time {results['wall_time_s'] / 60:.1f} min "
             f"({results['machine']}; {results['jobs']} run sequence(s) in parallel, one torch thread each). "
             + (f"1-minute load average during the runs: mean {results['load_average']['mean']:.1f}, "
                f"max {results['load_average']['max']:.1f} (sampled every minute). " if results.get("load_average") else "")
             + f"Every student and fine-tuning stage: {results['sizes']['epochs']:g} epoch(s), lr {results['sizes']['lr']:g}, "
             f"batch {results['sizes']['batch_size']}, bf16 autocast where the CPU has it (precision: auto), seed 0.", ""]
    if b:
        load = b.get("load_average_1min") or {}
        parts += [f"Latency: `cascade-kd bench` on the PAN-X runs ({', '.join(b['runs'])}), 1 thread, "
                  f"{b['repeats']} repeats, median ms per forward pass of random ids at batch 1 and 32, sequence "
                  f"{b['seq']} (in brackets: speed-up against the teacher measured in the same bench call); "
                  "the same shapes on SIB-200 share the figures. The teacher, timed again in each call (ms, "
                  + "; ".join(f"{run} run: " + ", ".join(f"{k.replace('/', ' ')} {v:.2f}" for k, v in ms.items())
                              for run, ms in (b.get("teacher_ms") or {}).items() if ms)
                  + "), shows how much one figure moves between calls on this shared machine; size MB: "
                  "model.safetensors (fp32)"
                  + (f"; load average {load.get('start'):.1f} at start, {load.get('end'):.1f} at end of the last call"
                     if load.get("start") is not None else "") + ".", ""]
    for r in results["tasks"]:
        parts += [render_task(r, lat_keys if r["task"] == "panx" else []), ""]
    return "\n".join(parts)




# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="pipeline check: 4 languages, tiny caps, 1 epoch")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--panx-teacher", type=Path, default=REPO / "runs/real-data/panx/seed0/cascade/teacher")
    p.add_argument("--sib-teacher", type=Path, default=REPO / "runs/real-data/sib200/seed0/cascade/teacher")
    p.add_argument("--out", type=Path, help="where runs go (default runs/recursive-dense[-quick], ignored by git)")
    p.add_argument("--jobs", type=int, default=2, help="runs trained in parallel processes (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--no-bench", action="store_true")
    p.add_argument("--bench-seq", type=int, default=64)
    p.add_argument("--bench-repeats", type=int, default=20)
    p.add_argument("--bench-backends", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--collect-only", action="store_true", help="only rebuild the tables from finished runs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    for key, value in (("HF_HUB_OFFLINE", "1"), ("OMP_NUM_THREADS", str(args.threads)),
                       ("TOKENIZERS_PARALLELISM", "false"), ("CASCADE_KD_QUIET", "1")):
        os.environ.setdefault(key, value)
    s = {"quick": args.quick, **SIZES, **({"epochs": 1} if args.quick else {})}
    teachers = {"panx": args.panx_teacher.resolve(), "sib200": args.sib_teacher.resolve()}
    for task in args.tasks:  # the teachers are reused, never retrained here
        t = teachers[task]
        missing = [p for p in (t / "config.json", t / "stage.json", t.parent / "recipe.yaml") if not p.is_file()]
        if missing:
            print(f"error: no trained {task} teacher at {t} (missing {', '.join(str(p) for p in missing)}); "
                  f"train it first with `nice -n 10 .venv/bin/python benchmarks/real_data.py` or pass "
                  f"--{'panx' if task == 'panx' else 'sib'}-teacher DIR", file=sys.stderr)
            return 2
    out = (args.out or REPO / "runs" / ("recursive-dense-quick" if args.quick else "recursive-dense")).resolve()
    # SIB-200 (41 languages) first: the longest runs start first
    jobs = [job for task in sorted(args.tasks, key=lambda t: t != "sib200") for job in task_jobs(task, out, teachers[task], s)]
    bench_runs = [f"panx/{name}" for name in ("dense", "recursive")] if "panx" in args.tasks and not args.no_bench else []
    for job in jobs:
        if job.name in bench_runs:
            job.after = functools.partial(bench_step, seq=args.bench_seq, repeats=args.bench_repeats,
                                          backends=tuple(args.bench_backends))
    started = time.perf_counter()
    if args.collect_only:
        state = read_json(out / "grid.json") or {}
    else:
        from cascade_kd.errors import UserError

        try:
            state = run_grid(jobs, out, parallel=args.jobs, quick=args.quick, threads=args.threads)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    wall = time.perf_counter() - started
    bench_meta = None
    lats = {name.split("/")[1]: (read_json(out / name / "metrics.json") or {}).get("latency") for name in bench_runs}
    last = lats.get("recursive") or lats.get("dense")
    if last:
        # each call times the teacher again: speed-ups are against that call's own teacher figure
        teacher_ms = {name: next((m["latency_ms"] for m in lat["models"] if m["name"] == "teacher"), None)
                      for name, lat in lats.items() if lat}
        bench_meta = {"runs": [k for k, v in lats.items() if v], "seq": args.bench_seq, "teacher_ms": teacher_ms,
                      "repeats": args.bench_repeats, "backends": last.get("backends"),
                      "threads": last.get("threads"), "load_average_1min": last.get("load_average_1min"),
                      "skipped_backends": last.get("skipped_backends")}
    previous = read_json(out / "recursive_dense.json") or {}
    collect_only = args.collect_only and previous
    results = {
        "mode": "quick" if args.quick else "full",
        "command": previous.get("command") if collect_only else
        " ".join(["nice -n 10 .venv/bin/python benchmarks/recursive_dense.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": previous.get("date") if collect_only else time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "wall_time_s": previous.get("wall_time_s", wall) if collect_only else wall,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared", "jobs": args.jobs,
        "sizes": s, "bench": bench_meta,
        "load_average": previous.get("load_average") if collect_only else state.get("load_average"),
        "tasks": [collect_task(task, out, teachers[task], s, state.get("jobs", {})) for task in args.tasks],
    }
    write_json(out / "recursive_dense.json", results)
    text = render(results)
    (out / "recursive_dense.md").write_text(text)
    name = "recursive_dense_quick" if args.quick else "recursive_dense"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    for suffix in ("json", "md"):  # committed files: a kill never leaves one truncated
        atomic_write(RESULTS_DIR / f"{name}.{suffix}", (out / f"recursive_dense.{suffix}").read_text(encoding="utf-8"))
    print(text)
    print(f"done in {wall / 60:.1f} min; tables: {out / 'recursive_dense.md'}, {RESULTS_DIR / (name + '.md')}")
    return 1 if any(r.get("failed") for r in results["tasks"]) else 0


if __name__ == "__main__":
    sys.exit(main())
