"""General (task-agnostic) distillation end to end: a masked-LM teacher pretrained here, a cascade of
smaller masked-LM students distilled from it on multilingual plain text, then the students measured
without a task (masked-token accuracy, Tatoeba retrieval) and on two tasks after fine-tuning,
against a task-specific cascade of the same final size.

What it measures, per model and language:
- masked-token accuracy on held-out text (dev), with retention against the teacher;
- Tatoeba sentence retrieval xx <-> English (mean of the last layer's hidden states, cosine nearest
  neighbour, both directions; `cascade-kd eval --parallel`): does a student keep the teacher's
  cross-lingual alignment? No Tatoeba sentence is in the training text (lines equal to a Tatoeba
  sentence of the language are dropped from the corpus, and counted);
- SIB-200 topic classification (all corpus languages, accuracy on test) and PAN-X NER (a subset,
  entity F1 on half of each dev file held out as test) after fine-tuning: (a) the teacher, (b) the
  general 2-layer students (LightMBERT cascade, its direct baseline, MiniLMv2), and (c) a task
  cascade distilled from the fine-tuned teacher down to the same 2-layer shape (+ its direct
  baseline): general-then-fine-tune against fine-tune-then-distil at equal size;
- parameters, training wall time of every model (and of everything it depends on: "cumul."), and
  the wall time of every step.

Steps: the corpus is written first (plain Python); everything else is a grid of recipe runs that
benchmarks/runner.py runs with the Python API (`cascade_kd.run`), each into OUT/<name> after the
runs it reads from (each recipe.yaml as run is in its RUN_DIR; every line they print goes to
OUT/grid.log too, each run's status, fingerprint and wall time to OUT/grid.json):
1. corpus: per language, OUT/corpus/train-<lang>.txt and dev-<lang>.txt, one example per line:
   half SIB-200 train text, half PAN-X training sentences (tokens joined by spaces, by nothing for
   Chinese and Japanese) where the language has PAN-X, else SIB-200 alone; dev: SIB-200 dev text
   and PAN-X sentences not in train. Languages: SIB-200 ones that Tatoeba also has (deu_Latn <->
   deu, arb_Arab <-> ara, zho_Hans <-> cmn, azj_Latn <-> aze, ...), plus English.
2. pretraining (`ckd.pretrain_recipe`: the recipe `cascade-kd pretrain` runs): a BERT masked-LM
   teacher from scratch, mBERT cased tokenizer (119,547 pieces), temperature sampling of languages
   (alpha 0.3), lr 1e-3 (post-LN BERT from scratch diverged at 5e-3 in our trials).
3. the general recipe (task mlm, static masks; bf16 teacher cache when a stage has 2+
   epochs): teacher L -> L-1 -> ... -> 2 layers (CAMeMBERT-style chain), each student from its
   teacher's bottom layers with frozen embeddings, `top_only` hidden-state + attention MSE
   (LightMBERT), and the `direct` baseline (L -> 2). A second recipe distils L -> 2 with
   MiniLMv2's relation_kl (q-q, k-k, v-v relations of the last layer; `--no-minilm` skips it).
4. Tatoeba retrieval (`ckd.evaluate(RUN, split="dev", parallel=...)`, as `cascade-kd eval RUN --split
   dev --parallel DATA/tatoeba`) on both general runs: a post step of each, run once the training is
   over (their teacher cache is deleted then).
5. Per task: fine-tune the teacher and each general 2-layer student (recipes without a cascade
   section, `teacher.model: RUN/stages/NAME`), and run the task cascade L -> ... -> 2 (+ direct)
   from the fine-tuned teacher (kl + top_only hidden + attention MSE, bottom init, frozen
   embeddings). A capped SIB-200 dev/test is a seeded sample written to OUT/sib200-sample.

Quick mode only checks that every step runs: its teacher sees about 2,500 lines in all and predicts
the commonest pieces, so its scores sit near chance (the tables say when every model scores alike).

Sizes (each can be changed with a flag, see --help; changed sizes need another --out):

| | --quick | full (default) |
|---|---|---|
| languages (10 scripts) | 21, 20 Tatoeba pairs | 37, 36 Tatoeba pairs |
| corpus lines per language, train / dev | 60 / 20 | 500 / 50 |
| teacher: layers x hidden, heads; max length | 4 x 128, 4; 128 | 4 x 128, 4; 128 |
| pretraining epochs (lr 1e-3, batch 32) | 2 | 3 |
| general distillation epochs per stage (lr 5e-4) | 1 | 2 |
| fine-tuning / task distillation epochs (lr 5e-4) | 2 / 1 | 3 / 2 |
| SIB-200 per language: train; dev and test (a sample, the same rows in every language) | 30; 40 and 40 | 100; all, 99 and 204 |
| PAN-X languages; train / dev per language (half of dev is test) | en ru ar zh hi; 100 / 60 | + de fr es el ja; 500 / 200 |
| Tatoeba pairs per language | 50 | 60 |
| wall time on the shared 2-core CPU | 4.6 min measured | 51.1 min measured (2026-11-21, load average about 3) |

Few Tatoeba pairs (60 per language) keep the run short; retrieval runs each masked-LM model's
encoder alone (not its 119,547-piece head), so --parallel-limit (up to 1,000) can be raised where
time allows. Timings on this machine vary several-fold with
the other jobs on it (the same pretraining ran at 560 and at 3,700 tokens/s; in the measured full
run pretraining took 1,084 s of the 51.1 min).

    nice -n 10 .venv/bin/python benchmarks/general_distillation.py --quick    # smoke check
    nice -n 10 .venv/bin/python benchmarks/general_distillation.py            # full mode
    nice -n 10 .venv/bin/python benchmarks/general_distillation.py --layers 6 --out runs/general-bench-6L
    CASCADE_KD_DATA=/data/shared nice -n 10 .venv/bin/python benchmarks/general_distillation.py --quick

Outputs go to OUT (default runs/general-bench, or runs/general-bench-quick; ignored by git): the
corpus, every run directory, grid.json and grid.log, and the results as OUT/results.json
(everything) and OUT/results.md (the printed tables); nothing is written under benchmarks/results
(its general_distillation.{json,md} are copies of a full run's). Rerunning the same command
resumes: a run whose RUN_DIR holds a finished run of the same recipe (by its fingerprint) is
skipped, an unfinished one continues from its checkpoints, and a retrieval step runs again only
when its run was retrained. `--jobs N` trains up to N runs at once whose inputs are ready;
`--collect-only` rebuilds the tables from what has finished. The shared data is
read from ../shared/data beside the checkout, or from $CASCADE_KD_DATA, or --data; where it is
absent the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import platform
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cascade_kd.fileio import atomic_write  # noqa: E402
from runner import Job, finished, read_json, run_grid, write_json

REPO = Path(__file__).resolve().parent.parent
# the shared data beside the checkout; CASCADE_KD_DATA points elsewhere (e.g. a copy on a GPU machine)
DEFAULT_DATA = Path(os.environ.get("CASCADE_KD_DATA", REPO.parent / "shared" / "data"))

# (SIB-200 code, Tatoeba code or None for English, PAN-X code or None, script): the 36 SIB-200
# languages that Tatoeba has, and English; the first 21 are the quick set (10 scripts).
LANGUAGES = [
    ("eng_Latn", None, "en", "Latin"), ("deu_Latn", "deu", "de", "Latin"), ("fra_Latn", "fra", "fr", "Latin"),
    ("spa_Latn", "spa", "es", "Latin"), ("rus_Cyrl", "rus", "ru", "Cyrillic"), ("arb_Arab", "ara", "ar", "Arabic"),
    ("zho_Hans", "cmn", "zh", "Han"), ("jpn_Jpan", "jpn", "ja", "Japanese"), ("hin_Deva", "hin", "hi", "Devanagari"),
    ("ell_Grek", "ell", "el", "Greek"), ("ben_Beng", "ben", "bn", "Bengali"), ("tel_Telu", "tel", "te", "Telugu"),
    ("mal_Mlym", "mal", "ml", "Malayalam"), ("ukr_Cyrl", "ukr", "uk", "Cyrillic"), ("bul_Cyrl", "bul", "bg", "Cyrillic"),
    ("pes_Arab", "pes", "fa", "Arabic"), ("tur_Latn", "tur", "tr", "Latin"), ("ind_Latn", "ind", "id", "Latin"),
    ("por_Latn", "por", "pt", "Latin"), ("ita_Latn", "ita", "it", "Latin"), ("nld_Latn", "nld", "nl", "Latin"),
    # full mode adds
    ("afr_Latn", "afr", "af", "Latin"), ("azj_Latn", "aze", "az", "Latin"), ("cat_Latn", "cat", None, "Latin"),
    ("ces_Latn", "ces", None, "Latin"), ("dan_Latn", "dan", None, "Latin"), ("est_Latn", "est", "et", "Latin"),
    ("eus_Latn", "eus", "eu", "Latin"), ("hun_Latn", "hun", "hu", "Latin"), ("jav_Latn", "jav", "jv", "Latin"),
    ("kaz_Cyrl", "kaz", "kk", "Cyrillic"), ("lit_Latn", "lit", "lt", "Latin"), ("mar_Deva", "mar", "mr", "Devanagari"),
    ("ron_Latn", "ron", "ro", "Latin"), ("swe_Latn", "swe", None, "Latin"), ("tgl_Latn", "tgl", "tl", "Latin"),
    ("zsm_Latn", "zsm", "ms", "Latin"),
]
BY_SIB = {row[0]: row for row in LANGUAGES}
PANX_QUICK = ["en", "ru", "ar", "zh", "hi"]
PANX_FULL = ["en", "de", "fr", "es", "ru", "el", "ar", "hi", "zh", "ja"]
PANX_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
NO_SPACES = {"zh", "ja"}  # PAN-X tokens of these are characters: joined without spaces


# ---------------------------------------------------------------------------------------------
# Sizes


@dataclass
class Sizes:
    languages: list[str]  # SIB-200 codes: the corpus, SIB-200 and (but English) Tatoeba languages
    panx_languages: list[str]  # PAN-X codes
    lines: int  # corpus training lines per language
    dev_lines: int
    pretrain_epochs: float
    distil_epochs: float  # per general distillation stage
    finetune_epochs: float
    task_distil_epochs: float  # per task cascade stage
    sib_train: int  # per language
    sib_eval: int | None  # dev and test sentences per language: a random sample, the same in every language (None: all)
    panx_train: int
    panx_eval: int  # dev sentences per language, half of which are held out as test
    parallel_limit: int | None  # Tatoeba pairs per language (None: all, up to 1,000)
    minilm: bool  # the MiniLMv2 recipe (and its retrieval eval)
    finetune_students: list[str]  # which general 2-layer students are fine-tuned: s2, direct, m2
    layers: int = 4  # the teacher's; the chain goes layers -> layers-1 -> ... -> 2
    hidden: int = 128
    heads: int = 4
    max_length: int = 128
    batch_size: int = 32
    pretrain_lr: float = 1e-3
    distil_lr: float = 5e-4
    finetune_lr: float = 5e-4
    language_alpha: float = 0.3
    seed: int = 0

    @property
    def teacher_cache(self) -> str:
        """The bf16 teacher cache pays from the second epoch on; with one epoch it is only extra work."""
        return "bf16" if self.distil_epochs > 1 else "off"


def sizes_for(args) -> Sizes:
    if args.quick:
        s = Sizes([r[0] for r in LANGUAGES[:21]], PANX_QUICK, lines=60, dev_lines=20, pretrain_epochs=2,
                  distil_epochs=1, finetune_epochs=2, task_distil_epochs=1, sib_train=30, sib_eval=40,
                  panx_train=100, panx_eval=60, parallel_limit=50, minilm=True,
                  finetune_students=["s2", "direct", "m2"])
    else:
        s = Sizes([r[0] for r in LANGUAGES], PANX_FULL, lines=500, dev_lines=50, pretrain_epochs=3,
                  distil_epochs=2, finetune_epochs=3, task_distil_epochs=2, sib_train=100, sib_eval=None,
                  panx_train=500, panx_eval=200, parallel_limit=60, minilm=True,
                  finetune_students=["s2", "direct", "m2"])
    for key in ("languages", "panx_languages", "lines", "dev_lines", "layers", "hidden", "heads", "pretrain_epochs",
                "distil_epochs", "finetune_epochs", "task_distil_epochs", "sib_train", "sib_eval", "panx_train",
                "panx_eval", "parallel_limit", "pretrain_lr", "distil_lr", "finetune_lr", "max_length", "minilm",
                "finetune_students"):
        value = getattr(args, key)
        if value is not None:
            setattr(s, key, value)
    unknown = [l for l in s.languages if l not in BY_SIB]
    if unknown:
        raise SystemExit(f"unknown language(s) {unknown}: choose among {', '.join(BY_SIB)}")
    if "eng_Latn" not in s.languages:
        raise SystemExit("eng_Latn must be among the languages: Tatoeba pairs are xx <-> English")
    if s.layers < 4:
        raise SystemExit("--layers must be at least 4 (teacher -> at least one assistant -> 2 layers, and direct)")
    if "m2" in s.finetune_students and not s.minilm:
        s.finetune_students = [k for k in s.finetune_students if k != "m2"]
    return s


# ---------------------------------------------------------------------------------------------
# Step 1: the corpus


def _sib_texts(path: Path) -> list[str]:
    """The text column. The files are CSV-quoted (pandas style), so csv reads them, not a split on tabs."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))[1:]  # header: index_id category text
    return [r[2].strip() for r in rows if len(r) == 3 and r[2].strip()]


def _panx_sentences(path: Path, join: str) -> list[str]:
    out = []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        tokens = [line.split("\t")[0] for line in block.splitlines() if line.strip()]
        if tokens:
            out.append(join.join(tokens))
    return out


def _tatoeba_sentences(data: Path, sizes: Sizes) -> dict[str, set[str]]:
    """Every Tatoeba sentence of each corpus language (English: the English side of every pair used)."""
    seen: dict[str, set[str]] = {"eng_Latn": set()}
    for sib in sizes.languages:
        tat = BY_SIB[sib][1]
        if tat is None:
            continue
        stem = data / "tatoeba" / f"tatoeba.{tat}-eng"
        seen[sib] = {line.strip() for line in Path(f"{stem}.{tat}").read_text(encoding="utf-8").splitlines()}
        seen["eng_Latn"] |= {line.strip() for line in Path(f"{stem}.eng").read_text(encoding="utf-8").splitlines()}
    return seen


def _half_and_half(first: list[str], second: list[str], n: int) -> tuple[list[str], int]:
    """n lines: half from `first`, the rest from `second` (all from `first` when `second` is empty);
    returns them and how many of `second` were used."""
    k = min(len(first), n // 2 if second else n)
    rest = second[: n - k]
    return first[:k] + rest, len(rest)


def build_corpus(data: Path, corpus: Path, sizes: Sizes) -> dict:
    """Writes corpus/{train,dev}-<lang>.txt; returns per-language line counts."""
    corpus.mkdir(parents=True, exist_ok=True)
    tatoeba = _tatoeba_sentences(data, sizes)
    stats = {}
    for sib in sizes.languages:
        panx_code = BY_SIB[sib][2]
        sources = {"sib_train": _sib_texts(data / "sib200" / sib / "train.tsv"),
                   "sib_dev": _sib_texts(data / "sib200" / sib / "dev.tsv"),
                   "panx": _panx_sentences(data / "panx" / f"train-{panx_code}.tsv",
                                           "" if panx_code in NO_SPACES else " ") if panx_code else []}
        banned = tatoeba.get(sib, set())  # evaluation sentences never go into the training text
        kept = {k: [line for line in v if line not in banned] for k, v in sources.items()}
        train, used = _half_and_half(kept["sib_train"], kept["panx"], sizes.lines)
        dev, _ = _half_and_half(kept["sib_dev"], kept["panx"][used:], sizes.dev_lines)
        for name, lines in (("train", train), ("dev", dev)):
            path = corpus / f"{name}-{sib}.txt"
            text = "\n".join(lines) + "\n"
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
        stats[sib] = {"train_lines": len(train), "dev_lines": len(dev), "panx_train_lines": used,
                      "dropped_tatoeba_matches": sum(len(v) - len(kept[k]) for k, v in sources.items())}
    return stats


def sib_eval_files(data: Path, out: Path, sizes: Sizes) -> Path:
    """The folder SIB-200's dev and test files are read from. With sizes.sib_eval, OUT/sib200-sample
    holds a seeded random sample of each, the same rows in every language (the files are parallel,
    row for row); a plain cap (max_eval_per_language) would keep the first rows, and test.tsv is
    sorted by category: its first 51 rows are all science/technology."""
    if sizes.sib_eval is None:
        return data / "sib200"
    sample = out / "sib200-sample"
    for split in ("dev", "test"):
        n_rows = len((data / "sib200" / "eng_Latn" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()) - 1
        rows = sorted(random.Random(f"sib200:{split}").sample(range(n_rows), min(sizes.sib_eval, n_rows)))
        for sib in sizes.languages:
            lines = (data / "sib200" / sib / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
            path = sample / sib / f"{split}.tsv"
            text = "\n".join([lines[0]] + [lines[1 + i] for i in rows]) + "\n"
            if not path.is_file() or path.read_text(encoding="utf-8") != text:  # a running grid may be reading it
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, text)
    return sample


# ---------------------------------------------------------------------------------------------
# Recipes (written as YAML under OUT/recipes/, absolute paths)

LIGHTMBERT_GENERAL = {"hidden_mse": {"weight": 1.0, "layer_map": "top_only"},
                      "attention_mse": {"weight": 1.0, "layer_map": "top_only"}}
MINILMV2 = {"relation_kl": {"weight": 1.0, "layer_map": "top_only", "relations": ["query", "key", "value"]}}
LIGHTMBERT_TASK = {"kl": {"weight": 1.0, "temperature": 2.0}, **LIGHTMBERT_GENERAL}
FROZEN = {"init": "bottom", "freeze_embeddings": True}


def chain(layers: int, prefix: str) -> list[dict]:
    """Stages layers-1, ..., 2: ta<k> assistants, then <prefix>2, the final student."""
    return [{"name": f"ta{k}" if k > 2 else f"{prefix}2", "student": {"layers": k, **FROZEN}}
            for k in range(layers - 1, 1, -1)]


def general_recipe(s: Sizes, corpus: Path, teacher: Path, minilm: bool) -> dict:
    return {
        "name": "general-minilmv2" if minilm else "general-lightmbert", "seed": s.seed,
        "task": {"type": "mlm", "max_length": s.max_length, "masking": "static", "mask_probability": 0.15},
        "data": {"format": "text", "languages": s.languages, "train": str(corpus / "train-{lang}.txt"),
                 "dev": str(corpus / "dev-{lang}.txt"), "language_alpha": s.language_alpha},
        "teacher": {"model": str(teacher), "finetune": "never"},
        # relation_kl needs the live teacher (the cache does not hold query/key/value states)
        "train": {"epochs": s.distil_epochs, "lr": s.distil_lr, "batch_size": s.batch_size,
                  "teacher_cache": "off" if minilm else s.teacher_cache},
        "cascade": ({"losses": MINILMV2, "stages": [{"name": "m2", "student": {"layers": 2, **FROZEN}}], "direct": False}
                    if minilm else {"losses": LIGHTMBERT_GENERAL, "stages": chain(s.layers, "s"), "direct": True}),
    }


def task_sections(task: str, s: Sizes, data: Path, sib_eval: Path) -> tuple[dict, dict]:
    """(task, data) sections of a task recipe; `sib_eval`: the folder of SIB-200's dev and test files."""
    if task == "sib200":
        return ({"type": "sequence", "max_length": s.max_length, "labels_file": str(data / "sib200" / "labels.txt")},
                {"format": "tsv", "languages": s.languages, "header": True, "text_column": "text",
                 "label_column": "category", "train": str(data / "sib200" / "{lang}" / "train.tsv"),
                 "dev": str(sib_eval / "{lang}" / "dev.tsv"), "test": str(sib_eval / "{lang}" / "test.tsv"),
                 "max_train_per_language": s.sib_train})
    return ({"type": "token", "max_length": s.max_length, "label_all_subwords": False, "labels": PANX_LABELS},
            {"format": "conll", "languages": s.panx_languages, "train": str(data / "panx" / "train-{lang}.tsv"),
             "dev": str(data / "panx" / "dev-{lang}.tsv"), "holdout_from_dev": 0.5,
             "max_train_per_language": s.panx_train, "max_eval_per_language": s.panx_eval})


def finetune_recipe(task: str, s: Sizes, data: Path, sib_eval: Path, model: Path, name: str) -> dict:
    """No cascade section: the model (a masked-LM checkpoint, here without a task head) is fine-tuned
    on the task and scored."""
    task_sec, data_sec = task_sections(task, s, data, sib_eval)
    return {"name": f"{task}-finetune-{name}", "seed": s.seed, "task": task_sec, "data": data_sec,
            "teacher": {"model": str(model), "finetune": "always"},
            "train": {"epochs": s.finetune_epochs, "lr": s.finetune_lr, "batch_size": s.batch_size}}


def task_cascade_recipe(task: str, s: Sizes, data: Path, sib_eval: Path, teacher: Path) -> dict:
    task_sec, data_sec = task_sections(task, s, data, sib_eval)
    return {"name": f"{task}-task-cascade", "seed": s.seed, "task": task_sec, "data": data_sec,
            "teacher": {"model": str(teacher), "finetune": "never"},
            "train": {"epochs": s.task_distil_epochs, "lr": s.distil_lr, "batch_size": s.batch_size},
            "cascade": {"losses": LIGHTMBERT_TASK, "stages": chain(s.layers, "t"), "direct": True}}


def pretrain_recipe(s: Sizes, corpus: Path, tokenizer: Path):
    """The masked-LM teacher's recipe: what `cascade-kd pretrain` runs with these flags."""
    import cascade_kd as ckd

    return ckd.pretrain_recipe(corpus / "train-{lang}.txt", corpus / "dev-{lang}.txt", s.languages, tokenizer,
                               layers=s.layers, hidden=s.hidden, heads=s.heads, epochs=float(s.pretrain_epochs),
                               lr=s.pretrain_lr, batch_size=s.batch_size, max_length=s.max_length,
                               language_alpha=s.language_alpha, seed=s.seed)


# ---------------------------------------------------------------------------------------------
# The grid: every run a recipe; retrieval a post step of the general runs


def retrieval_step(run_dir: Path, *, tatoeba: Path, languages: str, limit: int | None) -> dict:
    """Tatoeba retrieval of every model of a finished general run (RUN_DIR/eval-dev/metrics.json),
    as `cascade-kd eval RUN --split dev --parallel TATOEBA` does; the run's teacher cache goes first
    (the run is done: it is no longer needed)."""
    import cascade_kd as ckd

    shutil.rmtree(run_dir / "cache", ignore_errors=True)
    metrics = ckd.evaluate(run_dir, split="dev", parallel=tatoeba, parallel_languages=languages, parallel_limit=limit,
                           say=lambda m: print(f"[{run_dir.name}-retrieval] {m}", flush=True))
    return {"languages": len(metrics.get("retrieval", {}).get("per_model", {}).get("teacher", {}))}


def step_name(job_name: str) -> str:
    """A job's name in the tables' step list (finetune/sib200-teacher -> finetune-sib200-teacher)."""
    return job_name.replace("/", "-")


def grid(out: Path, s: Sizes, data: Path, corpus: Path, sib_eval: Path) -> list[Job]:
    """Every run of the benchmark, each after the runs whose models it reads."""
    teacher = out / "pretrain" / "teacher"
    jobs = [Job("pretrain", pretrain_recipe(s, corpus, data / "tokenizers" / "mbert-cased"),
                what="masked-LM teacher pretrained here")]
    retrieval = functools.partial(retrieval_step, tatoeba=data / "tatoeba",
                                  languages=",".join(BY_SIB[l][1] for l in s.languages if BY_SIB[l][1]),
                                  limit=s.parallel_limit)
    for name, minilm in [("general", False)] + ([("general-minilm", True)] if s.minilm else []):
        jobs.append(Job(name, general_recipe(s, corpus, teacher, minilm), depends_on=["pretrain"], after=retrieval,
                        what="MiniLMv2 general distillation" if minilm else "LightMBERT-style general cascade"))
    students = {"s2": ("general", out / "general" / "stages" / "s2"),
                "direct": ("general", out / "general" / "stages" / "direct"),
                "m2": ("general-minilm", out / "general-minilm" / "stages" / "m2")}
    for task in ("sib200", "panx"):
        for key, (needs, model) in [("teacher", ("pretrain", teacher))] + [(k, students[k]) for k in _general_students(s)]:
            jobs.append(Job(f"finetune/{task}-{key}", finetune_recipe(task, s, data, sib_eval, model, key),
                            depends_on=[needs], what=f"{key} fine-tuned on {task}"))
        ft_teacher = out / "finetune" / f"{task}-teacher" / "teacher"
        jobs.append(Job(f"task-cascade/{task}", task_cascade_recipe(task, s, data, sib_eval, ft_teacher),
                        depends_on=[f"finetune/{task}-teacher"], what=f"task cascade on {task} from the fine-tuned teacher"))
    return jobs


def steps_of(jobs: list[Job], state: dict, done_before: set[str], after_before: dict) -> tuple[dict, dict]:
    """({step: {"status", "wall_s", "what"}}, {step: why it failed or did not run}) from the grid's
    records: a job or retrieval step is "ran" in this call, "done before" (its wall time is the
    one of the call that ran it), "FAILED", or "not run" (a run it needs did not finish)."""
    records = state.get("jobs", {})
    steps, failed = {}, {}
    for job in jobs:
        record, name = records.get(job.name) or {}, step_name(job.name)
        status = record.get("status", "not run")
        label = {"done": "done before" if job.name in done_before else "ran", "failed": "FAILED"}.get(status, "not run")
        steps[name] = {"status": label, "wall_s": record.get("wall_s"), "what": job.what}
        if status == "failed":
            failed[name] = record.get("error", "failed")
        elif status != "done":
            failed[name] = record.get("error", f"not run ({status})")
        if job.after is None:
            continue
        after, name = record.get("after") or {}, f"{name}-retrieval"
        if after.get("status") == "done":
            label = "done before" if after == after_before.get(job.name) else "ran"
        else:
            label = "FAILED" if after.get("status") == "failed" else "not run"
            failed[name] = after.get("error") or f"not run: {step_name(job.name)} did not finish"
        steps[name] = {"status": label, "wall_s": after.get("wall_s"), "what": "Tatoeba retrieval (eval --parallel)"}
    return steps, failed


# ---------------------------------------------------------------------------------------------
# Collecting the results


def _model(metrics: dict | None, name: str) -> dict | None:
    if not metrics:
        return None
    return next((m for m in metrics["models"] if m["name"] == name), None)


def _summary(per_language: dict, teacher: dict | None) -> dict:
    """Mean, worst language, retention (mean of per-language ratios to the teacher) and worst retention."""
    worst = min(per_language, key=per_language.get)
    out = {"mean": sum(per_language.values()) / len(per_language), "worst": per_language[worst], "worst_language": worst,
           "retention": None, "worst_retention": None, "worst_retention_language": None, "per_language": per_language}
    if teacher:
        ratios = {l: v / teacher[l] for l, v in per_language.items() if teacher.get(l)}
        if ratios:
            low = min(ratios, key=ratios.get)
            out.update(retention=sum(ratios.values()) / len(ratios), worst_retention=ratios[low],
                       worst_retention_language=low, retention_per_language=ratios)
    return out


@dataclass
class Row:
    key: str
    label: str
    how: str
    metrics: dict | None = None  # the run's metrics.json entry for this model
    cost_s: float | None = None  # training wall time of everything this model depends on, itself included
    scores: dict = field(default_factory=dict)


def _train_s(m: dict | None) -> float | None:
    return None if m is None else m.get("wall_time_s")


def _add(*values) -> float | None:
    return None if any(v is None for v in values) else sum(values)


def collect(out: Path, s: Sizes, steps: dict, failed: dict) -> dict:
    pre = read_json(out / "pretrain" / "metrics.json")
    gen = read_json(out / "general" / "metrics.json")
    mini = read_json(out / "general-minilm" / "metrics.json")
    gen_eval = read_json(out / "general" / "eval-dev" / "metrics.json") or {}
    mini_eval = read_json(out / "general-minilm" / "eval-dev" / "metrics.json") or {}
    teacher_cost = _train_s(_model(pre, "teacher"))

    # general models: the pretrained teacher, the chain's assistants and student, direct, MiniLMv2
    rows_general = [Row("teacher", f"teacher {s.layers}x{s.hidden}", "pretrained here (masked LM)",
                        _model(pre, "teacher"), teacher_cost)]
    cost = teacher_cost
    for stage in chain(s.layers, "s"):
        k, m = stage["student"]["layers"], _model(gen, stage["name"])
        cost = _add(cost, _train_s(m))
        rows_general.append(Row(stage["name"], f"{stage['name']} {k}x{s.hidden}",
                                "cascade " + "->".join(map(str, range(s.layers, k - 1, -1))), m, cost))
    m = _model(gen, "direct")
    rows_general.append(Row("direct", f"direct 2x{s.hidden}", f"{s.layers}->2 straight", m,
                            _add(teacher_cost, _train_s(m))))
    if s.minilm:
        m = _model(mini, "m2")
        rows_general.append(Row("m2", f"m2 2x{s.hidden}", f"{s.layers}->2, relation_kl (MiniLMv2)", m,
                                _add(teacher_cost, _train_s(m))))
    # retention against the teacher as the general run scored it (the same dev text and masks as pretraining)
    teacher_mlm = (_model(gen, "teacher") or _model(pre, "teacher") or {}).get("per_language")
    for r in rows_general:
        if r.metrics:
            r.scores["mlm"] = _summary(r.metrics["per_language"], teacher_mlm)
    # retrieval: the teacher's figures from the general run's eval (the MiniLMv2 eval has them too)
    retrieval = {**(mini_eval.get("retrieval", {}).get("per_model", {})),
                 **(gen_eval.get("retrieval", {}).get("per_model", {}))}
    t_ret = {l: v["accuracy"] for l, v in retrieval.get("teacher", {}).items()}
    for r in rows_general:
        if r.key in retrieval:
            r.scores["retrieval"] = _summary({l: v["accuracy"] for l, v in retrieval[r.key].items()}, t_ret or None)

    tasks = {}
    for task in ("sib200", "panx"):
        ft = {key: read_json(out / "finetune" / f"{task}-{key}" / "metrics.json")
              for key in ["teacher", *_general_students(s)]}
        tc = read_json(out / "task-cascade" / task / "metrics.json")
        ft_teacher = _model(ft["teacher"], "teacher")
        ft_teacher_cost = _add(teacher_cost, _train_s(ft_teacher))
        rows = [Row("teacher", f"teacher {s.layers}x{s.hidden}", "pretrained, fine-tuned", ft_teacher, ft_teacher_cost)]
        general_cost = {r.key: r.cost_s for r in rows_general}
        for key in _general_students(s):
            m = _model(ft[key], "teacher")  # a recipe without cascade: its one model is the "teacher"
            rows.append(Row(f"general-{key}", f"general {key} 2x{s.hidden}, fine-tuned",
                            {"s2": "general cascade student", "direct": "general direct student",
                             "m2": "general MiniLMv2 student"}[key] + ", fine-tuned on the task", m,
                            _add(general_cost.get(key), _train_s(m))))
        cost = ft_teacher_cost
        for stage in chain(s.layers, "t"):
            k, m = stage["student"]["layers"], _model(tc, stage["name"])
            cost = _add(cost, _train_s(m))
            rows.append(Row(f"task-{stage['name']}", f"task {stage['name']} {k}x{s.hidden}",
                            "task cascade " + "->".join(map(str, range(s.layers, k - 1, -1))) + " from the fine-tuned "
                            "teacher", m, cost))
        m = _model(tc, "direct")
        rows.append(Row("task-direct", f"task direct 2x{s.hidden}", "fine-tuned teacher -> 2 straight", m,
                        _add(ft_teacher_cost, _train_s(m))))
        teacher_scores = ft_teacher["per_language"] if ft_teacher else None
        for r in rows:
            if r.metrics:
                r.scores["task"] = _summary(r.metrics["per_language"], teacher_scores)
        first = ft["teacher"] or tc or {}
        tasks[task] = {"metric": first.get("metric"), "split": first.get("split"), "languages": first.get("languages"),
                       "rows": [_row_json(r) for r in rows]}
    return {
        "pretrain": _model(pre, "teacher"),
        "general": [_row_json(r) for r in rows_general],
        "retrieval_pairs_per_language": {l: v["pairs"] for l, v in retrieval.get("teacher", {}).items()},
        "tasks": tasks,
        "steps": steps,
        "failed": failed,
    }


def _general_students(s: Sizes) -> list[str]:
    return [k for k in ("s2", "direct", "m2") if k in s.finetune_students]


def _row_json(r: Row) -> dict:
    m = r.metrics or {}
    return {"key": r.key, "label": r.label, "how": r.how, "layers": m.get("layers"), "hidden": m.get("hidden"),
            "params_total": m.get("params_total"), "params_embedding": m.get("params_embedding"),
            "train_s": m.get("wall_time_s"), "cumulative_train_s": r.cost_s, **r.scores}


# ---------------------------------------------------------------------------------------------
# Tables


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _m(n) -> str:
    return "—" if n is None else (f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k")


def _s(x) -> str:
    return "—" if x is None else f"{x:.0f}"


def _score_cells(sm: dict | None, teacher: bool) -> list[str]:
    if not sm:
        return ["—"] * 4
    return [_pct(sm["mean"]), f"{_pct(sm['worst'])} ({sm['worst_language']})",
            "100.0" if teacher else _pct(sm["retention"]),
            "100.0" if teacher else (f"{_pct(sm['worst_retention'])} ({sm['worst_retention_language']})"
                                     if sm.get("worst_retention") is not None else "—")]


def _table(head: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """A Markdown table; the first `left` columns are text (left-aligned), the others numbers."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * left + "---:|" * (len(head) - left)] + \
           ["| " + " | ".join(r) + " |" for r in rows]


def _same_everywhere(rows: list[dict], key: str) -> bool:
    """Every model scored exactly alike in every language: they all predict the same thing (a model
    that learned nothing but the commonest piece, class or tag), and the table compares nothing."""
    scores = [tuple(sorted(r[key]["per_language"].items())) for r in rows if r.get(key)]
    return len(scores) > 1 and len(set(scores)) == 1


def render(results: dict) -> str:
    s = results["sizes"]
    scripts = len({results["languages"][l]["script"] for l in s["languages"]})
    head = ["model", "how", "params", "emb.", "mean", "worst (lang)", "retention", "worst retention (lang)",
            "train s", "cumul. s"]
    same = "Every model scores exactly alike in every language: they predict the same pieces/classes, so this " \
           "table compares nothing (too little training)."
    steps_s = sum(v.get("wall_s") or 0 for v in results["steps"].values())
    resumed = (f" (resumed: the steps took {steps_s / 60:.1f} min when they ran)"
               if any(v["status"] == "done before" for v in results["steps"].values()) else "")
    lines = [f"## General distillation ({results['mode']})", "",
             (f"`{results['command']}`: {results['date']}, wall time {results['wall_time_s'] / 60:.1f} min{resumed} "
              f"({results['machine']}). {len(s['languages'])} languages in {scripts} scripts, {s['lines']} training "
              f"lines each (corpus {results['corpus_lines']['train']:,} train / {results['corpus_lines']['dev']:,} "
              f"dev lines); teacher {s['layers']}x{s['hidden']} ({s['heads']} heads), mBERT cased vocabulary; max "
              f"length {s['max_length']}; epochs: pretraining {s['pretrain_epochs']:g}, general distillation "
              f"{s['distil_epochs']:g} per stage, fine-tuning {s['finetune_epochs']:g}, task distillation "
              f"{s['task_distil_epochs']:g}.")]
    if results["mode"] == "quick":
        lines += ["", ("Quick mode checks that every step runs: its teacher sees a few thousand lines, so its "
                       "scores sit near chance and say nothing about the methods.")]
    lines += ["", "Masked-token accuracy on the corpus dev text (%; the same masks for every model):", ""]
    lines += _table(head, [[r["label"], r["how"], _m(r["params_total"]), _m(r["params_embedding"]),
                            *_score_cells(r.get("mlm"), r["key"] == "teacher"), _s(r["train_s"]),
                            _s(r["cumulative_train_s"])] for r in results["general"]], left=2)
    if _same_everywhere(results["general"], "mlm"):
        lines += ["", same]
    pairs = results["retrieval_pairs_per_language"]
    n = sorted(set(pairs.values()))
    chance = f"; chance {100 / n[0]:.1f}%" if len(n) == 1 else ""
    lines += ["", (f"Tatoeba retrieval xx <-> eng ({len(pairs)} languages, {'/'.join(map(str, n)) or '?'} pairs each; "
                   f"accuracy = mean of both directions, %{chance}):"), ""]
    lines += _table(["model", "mean", "worst (lang)", "retention", "worst retention (lang)"],
                    [[r["label"], *_score_cells(r.get("retrieval"), r["key"] == "teacher")]
                     for r in results["general"] if r.get("retrieval")])
    for task, title in (("sib200", "SIB-200 topic classification"), ("panx", "PAN-X NER")):
        t = results["tasks"][task]
        metric = {"f1": "entity F1", "accuracy": "accuracy"}.get(t["metric"], t["metric"] or "?")
        lines += ["", (f"{title}: {metric} (%) on {t['split'] or '?'}, {len(t['languages'] or [])} languages; "
                       "retention against the fine-tuned teacher:"), ""]
        lines += _table(head, [[r["label"], r["how"], _m(r["params_total"]), _m(r["params_embedding"]),
                                *_score_cells(r.get("task"), r["key"] == "teacher"), _s(r["train_s"]),
                                _s(r["cumulative_train_s"])] for r in t["rows"]], left=2)
        if _same_everywhere(t["rows"], "task"):
            lines += ["", same]
    lines += ["", ("train s: training wall time of the model (its dev evaluations included); cumul. s: that plus "
                   "the training of every model it comes from, pretraining included (what the model costs)."), "",
              ("Steps (wall time of each run or retrieval, loading, scoring and saving included; 'done before': "
               "the time of the call that did it):"), ""]
    lines += _table(["step", "status", "wall s"], left=2,
                    rows=[[k, v["status"], _s(v.get("wall_s"))] for k, v in results["steps"].items()])
    if results["failed"]:
        lines += ["", "Failed or not run: " + "; ".join(f"{k}: {v}" for k, v in results["failed"].items())]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke check: small corpus, model and epochs (~10 min)")
    p.add_argument("--out", type=Path, help="where everything goes (default runs/general-bench[-quick], ignored by git)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"the shared data (default {DEFAULT_DATA}; "
                   "or set CASCADE_KD_DATA)")
    p.add_argument("--languages", nargs="+", help="SIB-200 codes of the corpus and SIB-200 languages (eng_Latn "
                   f"needed); known: {' '.join(BY_SIB)}")
    p.add_argument("--panx-languages", nargs="+", help="PAN-X codes for the NER task")
    p.add_argument("--lines", type=int, help="corpus training lines per language")
    p.add_argument("--dev-lines", type=int, help="corpus dev lines per language")
    p.add_argument("--layers", type=int, help="the teacher's layers (the chain goes down to 2)")
    p.add_argument("--hidden", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--max-length", type=int)
    p.add_argument("--pretrain-epochs", type=float)
    p.add_argument("--pretrain-lr", type=float)
    p.add_argument("--distil-epochs", type=float, help="epochs per general distillation stage")
    p.add_argument("--distil-lr", type=float)
    p.add_argument("--finetune-epochs", type=float)
    p.add_argument("--finetune-lr", type=float)
    p.add_argument("--task-distil-epochs", type=float, help="epochs per task cascade stage")
    p.add_argument("--sib-train", type=int, help="SIB-200 training sentences per language")
    p.add_argument("--sib-eval", type=int, help="SIB-200 dev and test sentences per language, a random sample "
                   "(default: all with full, 40 with --quick)")
    p.add_argument("--panx-train", type=int, help="PAN-X training sentences per language")
    p.add_argument("--panx-eval", type=int, help="PAN-X dev sentences per language (half become test)")
    p.add_argument("--parallel-limit", type=int, help="Tatoeba pairs per language")
    p.add_argument("--minilm", action=argparse.BooleanOptionalAction, default=None,
                   help="run the MiniLMv2 (relation_kl) recipe (default: yes)")
    p.add_argument("--finetune-students", nargs="+", choices=["s2", "direct", "m2"],
                   help="general 2-layer students fine-tuned on the tasks (default: all three)")
    p.add_argument("--threads", type=int, help="torch threads of each run (default: torch's choice)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once in worker processes, each as soon as the "
                   "runs it reads from are done (default 1: one after the other, in this process)")
    p.add_argument("--collect-only", action="store_true", help="train nothing: rebuild the tables from finished runs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    for key, value in (("HF_HUB_OFFLINE", "1"), ("CASCADE_KD_QUIET", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                       *((("OMP_NUM_THREADS", str(args.threads)), ("MKL_NUM_THREADS", str(args.threads)))
                         if args.threads else ())):
        os.environ.setdefault(key, value)  # before torch and the hub are imported
    data = args.data.resolve()
    needed = [data / "sib200", data / "panx", data / "tatoeba", data / "tokenizers" / "mbert-cased"]
    if not all(p.is_dir() for p in needed):
        print(f"skipped: the shared data was not found at {data} (needs sib200/, panx/, tatoeba/ and "
              "tokenizers/mbert-cased/; see ../shared/data/README.md, or set CASCADE_KD_DATA)")
        return 0
    s = sizes_for(args)
    out = (args.out or REPO / "runs" / ("general-bench-quick" if args.quick else "general-bench")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = {"sizes": asdict(s), "data": str(data)}
    previous = read_json(out / "settings.json")
    if previous is not None and previous != settings:
        changed = sorted(k for k in settings["sizes"] if previous.get("sizes", {}).get(k) != settings["sizes"][k])
        print(f"error: {out} was made with other settings ({', '.join(changed) or 'data'} differ): its finished runs "
              "would be mixed with new ones; give another --out", file=sys.stderr)
        return 2
    write_json(out / "settings.json", settings)
    started = time.perf_counter()

    # 1. corpus
    corpus = out / "corpus"
    stats = build_corpus(data, corpus, s)
    write_json(corpus / "corpus.json", stats)
    dropped = sum(v["dropped_tatoeba_matches"] for v in stats.values())
    total = {k: sum(v[f"{k}_lines"] for v in stats.values()) for k in ("train", "dev")}
    print(f"[corpus] {len(stats)} languages, {total['train']:,} train / {total['dev']:,} dev lines in {corpus}; "
          f"{dropped} line(s) equal to a Tatoeba sentence dropped", flush=True)

    # 2.-5. pretraining, general distillation (+ retrieval), fine-tuning and task cascades: one grid
    from cascade_kd.errors import UserError

    try:
        jobs = grid(out, s, data, corpus, sib_eval_files(data, out, s))
        done_before = {job.name for job in jobs if args.collect_only or finished(job, out / job.name)}
        after_before = {name: r.get("after") for name, r in (read_json(out / "grid.json") or {}).get("jobs", {}).items()}
        state = (read_json(out / "grid.json") or {}) if args.collect_only else run_grid(
            jobs, out, parallel=args.jobs, quick=args.quick, threads=args.threads)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    steps, failed = steps_of(jobs, state, done_before, after_before)

    wall = time.perf_counter() - started
    previous = read_json(out / "results.json") or {}
    results = {
        "mode": "quick" if args.quick else "full",
        "command": "nice -n 10 .venv/bin/python benchmarks/general_distillation.py " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "wall_time_s": previous.get("wall_time_s", wall) if args.collect_only else wall,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "data": str(data), "out": str(out), "sizes": asdict(s),
        "languages": {l: {"tatoeba": BY_SIB[l][1], "panx": BY_SIB[l][2], "script": BY_SIB[l][3]} for l in s.languages},
        "corpus": stats, "corpus_lines": total,
        **collect(out, s, steps, failed),
    }
    write_json(out / "results.json", results)
    text = render(results)
    (out / "results.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\nresults: {out / 'results.json'}, {out / 'results.md'} ({wall / 60:.1f} min)")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume (finished steps are skipped)", file=sys.stderr)
        sys.exit(130)
