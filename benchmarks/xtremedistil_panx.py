"""XtremeDistil on PAN-X (issue 6): the project's teacher against a BiLSTM student and a small
transformer student, each distilled with an unlabelled transfer set and then vocabulary-trimmed.

What it measures, per model (10 PAN-X languages: en de fr es ru el ar hi zh ja):
- parameters (total and embedding table) and the ratio against an mBERT-base-shaped token
  classifier (12 layers, 768 hidden, 12 heads, 3072 intermediate, 119,547 word pieces, 7 labels;
  built from a config with random weights and counted, no download);
- entity F1 (seqeval) per language on the held-out test split (half of each language's dev set,
  `data.holdout_from_dev: 0.5`, as benchmarks/real_data.py), and retention = student F1 / teacher
  F1 per language, averaged over languages. Accuracy retention is against the project's OWN
  teacher (a 4 x 128 BERT trained from scratch with the mBERT vocabulary, not mBERT);
- forward latency at batch 32 and batch 1, sequence length 64 (random word pieces, full attention
  mask, tokenisation excluded), all models in ONE process with the same torch thread count:
  the mBERT-base-shaped model in PyTorch fp32 (and bf16 autocast), and each student in PyTorch fp32,
  bf16 autocast, onnxruntime fp32 and onnxruntime dynamic int8 (export checked against PyTorch by
  cascade_kd.deploy.export). The latency ratio is mBERT-base fp32 / the student's best backend; targets are
  judged on the best backend whose numerics are fp32 (PyTorch or onnxruntime fp32: the backends the
  F1 figures hold for), the best of all backends is shown beside it.

How the students are made (recipes only, one engine: a grid of recipes that benchmarks/runner.py
runs with the Python API into OUT/runs/<name>/):
- transfer set (XtremeDistil's unlabelled data): PAN-X training sentences of each language that come
  AFTER the labelled ones (the reader's `max_train_per_language` keeps the first N sentences; we
  skip at least as many as the teacher's own run used), with duplicates and any sentence that also
  occurs in the labelled part or in dev/test removed; written as plain text (words separated by
  spaces, one sentence per line) to OUT/transfer/{lang}.txt, used via `data.transfer` and
  `data.max_transfer_per_language`. The teacher labels it (soft targets); `ce` ignores it;
- bilstm: XtremeDistil's staged schedule on one BiLSTM student (PCA-compressed teacher embeddings):
  stage 1 `hidden_mse` of the projected BiLSTM output against the teacher's middle layer (layer 2 of
  4, as XtremeDistil uses layer 6 of 12), stage 2 `kl` on the teacher's logits with gradual
  unfreezing (`student: previous`, `teacher: original`), stage 3 `ce` on the gold labels with
  gradual unfreezing;
- transformer: 2 x 128 from the teacher's bottom layers with frozen embeddings (LightMBERT), `kl` +
  top-layer `hidden_mse` + `attention_mse`, with the same transfer set;
- then `cascade_kd.trim` on each final student (a post step of its run), two ways: its default (the
  word pieces of the run's labelled training text and the transfer text: every piece the student
  was trained on), and with `with_transfer=False` (`cascade-kd trim --no-transfer`: the pieces of
  the labelled training text only).
  Parameters and F1 are given before and after trimming; ratios and retention use the trimmed
  model (both trims are shown).

The teacher: `--teacher DIR` (default: runs/real-data/panx/seed0/cascade/teacher, trained by
benchmarks/real_data.py, when it exists), loaded with `finetune: never`; without one, a teacher is
trained here with real_data.py's recipe settings (OUT/runs/teacher). The output says which.

    nice -n 10 .venv/bin/python benchmarks/xtremedistil_panx.py --quick   # pipeline check (4 languages, tiny)
    nice -n 10 .venv/bin/python benchmarks/xtremedistil_panx.py           # full mode (see benchmarks/RESULTS.md)

Rerunning the same command skips finished runs and trims (a half-finished run resumes from its
checkpoints) and measures latency again; `--collect-only` rebuilds the tables from the finished
runs, trims and OUT/latency.json without training or measuring anything. Training processes get
one torch thread each (`--threads`); the two students train in parallel (`--jobs 2`). Results:
OUT/xtremedistil_panx.{json,md} and benchmarks/results/xtremedistil_panx[_quick].{json,md}.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cascade_kd.fileio import atomic_write  # noqa: E402
from runner import Job, count, failures, mean_sd, pct, read_json, run_grid, write_json

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = (REPO / ".." / "shared" / "data").resolve()
RESULTS_DIR = Path(__file__).resolve().parent / "results"
REAL_DATA_TEACHER = REPO / "runs" / "real-data" / "panx" / "seed0" / "cascade" / "teacher"

PANX_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
LANGUAGES = ["en", "de", "fr", "es", "ru", "el", "ar", "hi", "zh", "ja"]
QUICK_LANGUAGES = ["en", "ru", "ar", "zh"]
MBERT_BASE = {"vocab_size": 119547, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
              "intermediate_size": 3072, "num_labels": len(PANX_LABELS)}
TARGETS = {"params_ratio": 35.0, "latency_ratio_b32": 100.0, "retention": 0.95}

# ---------------------------------------------------------------------------------------------
# Sizes per mode

SIZES = {
    # max_train: labelled sentences per language (the teacher of real_data.py saw the first 1000); transfer:
    # unlabelled transfer sentences per language (at most); bilstm_epochs: stage 1 (hidden_mse), 2 (kl,
    # gradual), 3 (ce, gradual); teacher_epochs: only when a teacher has to be trained here
    "quick": {"languages": QUICK_LANGUAGES, "max_train": 200, "max_eval": 100, "transfer": 200,
              "bilstm_epochs": (1, 1, 1), "transformer_epochs": 1, "teacher_epochs": 2},
    "full": {"languages": LANGUAGES, "max_train": 1000, "max_eval": 500, "transfer": 6000,
             "bilstm_epochs": (2, 4, 3), "transformer_epochs": 2, "teacher_epochs": 8},
}
COMMON = {
    "bilstm_embedding": 96,  # PCA of the teacher's 128-wide word embeddings
    "bilstm_hidden": 128,  # LSTM units per direction
    "bilstm_teacher_layer": 2,  # the teacher's middle layer (XtremeDistil: 6 of 12)
    "bilstm_lr": 1e-3, "transformer_layers": 2, "lr": 5e-4, "batch_size": 32, "max_length": 128,
    "latency_seq": 64, "latency_repeats": 20,
    "mbert_repeats": 10,  # one fp32 pass of the 12 x 768 model at batch 32 takes seconds on one thread
}


def sizes_for(args) -> dict:
    s = {**SIZES["quick" if args.quick else "full"], **COMMON}
    s.update({"latency_repeats": 5, "mbert_repeats": 3} if args.quick else {})
    if args.transfer is not None:
        s["transfer"] = args.transfer
    return s


# ---------------------------------------------------------------------------------------------
# The transfer set: unlabelled PAN-X training sentences disjoint from every labelled and held-out one


def teacher_train_cap(teacher: Path) -> int | None:
    """How many leading training sentences per language the teacher's own run used (its recipe's
    max_train_per_language), or None when the teacher's run recipe cannot be read."""
    import yaml

    for parent in (teacher.parent, teacher.parent.parent):
        recipe = parent / "recipe.yaml"
        if recipe.is_file():
            data = (yaml.safe_load(recipe.read_text()) or {}).get("data") or {}
            return data.get("max_train_per_language")
    return None


def write_transfer(root: Path, out: Path, s: dict, skip: int, log) -> dict:
    """OUT/transfer/{lang}.txt: up to s["transfer"] sentences from train-{lang}.tsv after the first
    `skip` sentences, read with the project's own CoNLL reader (so sentence boundaries are the ones
    `max_train_per_language` counts), minus duplicates and minus any sentence that also occurs among
    the first `skip` training sentences or anywhere in dev (dev is where the test split is carved)."""
    from cascade_kd.data.readers import read_examples

    stats = {}
    for lang in s["languages"]:
        path = out / "transfer" / f"{lang}.txt"
        train = read_examples(root / "panx" / f"train-{lang}.tsv", fmt="conll", task="token", lang=lang)
        dev = read_examples(root / "panx" / f"dev-{lang}.tsv", fmt="conll", task="token", lang=lang)
        seen = {tuple(ex.tokens) for ex in train[:skip]} | {tuple(ex.tokens) for ex in dev}
        lines, dropped = [], {"duplicate_or_labelled_or_dev": 0, "whitespace_in_token": 0}
        for ex in train[skip:]:
            if len(lines) >= s["transfer"]:
                break
            key = tuple(ex.tokens)
            if key in seen:
                dropped["duplicate_or_labelled_or_dev"] += 1
                continue
            if any(len(tok.split()) != 1 for tok in ex.tokens):  # a word the text format would split in two
                dropped["whitespace_in_token"] += 1
                continue
            seen.add(key)
            lines.append(" ".join(ex.tokens))
        text = "\n".join(lines) + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        stats[lang] = {"sentences": len(lines), "train_file_sentences": len(train), "skipped_first": skip, **dropped}
        log(f"transfer {lang}: {len(lines)} sentences (train file has {len(train)}; first {skip} skipped; "
            f"{dropped['duplicate_or_labelled_or_dev']} dropped as duplicates or labelled/dev sentences)")
    return stats


# ---------------------------------------------------------------------------------------------
# Recipes


def data_section(root: Path, out: Path, s: dict, transfer: bool = True) -> dict:
    data = {"languages": s["languages"], "format": "conll",
            "train": str(root / "panx" / "train-{lang}.tsv"), "dev": str(root / "panx" / "dev-{lang}.tsv"),
            "holdout_from_dev": 0.5, "max_train_per_language": s["max_train"], "max_eval_per_language": s["max_eval"]}
    if transfer:
        data.update(transfer=str(out / "transfer" / "{lang}.txt"), max_transfer_per_language=s["transfer"])
    return data


def task_section(s: dict) -> dict:
    return {"type": "token", "max_length": s["max_length"], "label_all_subwords": False, "labels": PANX_LABELS}


def teacher_recipe(root: Path, out: Path, s: dict) -> dict:
    """real_data.py's PAN-X teacher: 4 x 128 BERT from scratch with the mBERT cased vocabulary."""
    config = {"model_type": "bert", "num_hidden_layers": 4, "hidden_size": 128, "num_attention_heads": 4,
              "intermediate_size": 512, "max_position_embeddings": 128}
    return {"name": "panx-xtremedistil-teacher", "seed": 0, "task": task_section(s),
            "data": data_section(root, out, s, transfer=False),
            "teacher": {"config": config, "tokenizer": str(root / "tokenizers" / "mbert-cased"),
                        "train": {"epochs": s["teacher_epochs"], "lr": 1e-3, "batch_size": 64}}}


def bilstm_recipe(root: Path, out: Path, s: dict, teacher: Path) -> dict:
    e1, e2, e3 = s["bilstm_epochs"]
    student = {"kind": "bilstm", "hidden": s["bilstm_hidden"], "lstm_layers": 1, "embedding_size": s["bilstm_embedding"],
               "embeddings": "pca", "freeze_embeddings": False}
    return {"name": "panx-xtremedistil-bilstm", "seed": 0, "task": task_section(s), "data": data_section(root, out, s),
            "teacher": {"model": str(teacher), "finetune": "never"},
            "train": {"batch_size": s["batch_size"], "lr": s["bilstm_lr"]},
            "cascade": {"direct": False, "losses": {"kl": {"temperature": 2.0}}, "stages": [
                {"name": "bilstm-repr", "student": student, "teacher": "original",
                 "losses": {"hidden_mse": {"layer_map": [[s["bilstm_teacher_layer"], "last"]]}}, "train": {"epochs": e1}},
                {"name": "bilstm-kl", "student": "previous", "teacher": "original",
                 "losses": {"kl": {"temperature": 2.0}}, "train": {"epochs": e2, "unfreeze": "gradual"}},
                {"name": "bilstm-ce", "student": "previous", "teacher": "original",
                 "losses": {"ce": {}}, "train": {"epochs": e3, "unfreeze": "gradual"}}]}}


def transformer_recipe(root: Path, out: Path, s: dict, teacher: Path) -> dict:
    lightmbert = {"kl": {"temperature": 2.0}, "hidden_mse": {"layer_map": "top_only"},
                  "attention_mse": {"layer_map": "top_only"}}
    return {"name": "panx-xtremedistil-transformer", "seed": 0, "task": task_section(s),
            "data": data_section(root, out, s), "teacher": {"model": str(teacher), "finetune": "never"},
            "train": {"batch_size": s["batch_size"], "lr": s["lr"], "epochs": s["transformer_epochs"]},
            "cascade": {"direct": False, "losses": lightmbert, "stages": [
                {"name": f"tf{s['transformer_layers']}",
                 "student": {"layers": s["transformer_layers"], "init": "bottom", "freeze_embeddings": True}}]}}


# ---------------------------------------------------------------------------------------------
# The grid: the two students (and the teacher when none is given), each trimmed two ways after training


def trim_step(run_dir: Path, *, model: str, student: str, out: Path) -> dict:
    """`cascade_kd.trim` of the run's final model two ways (coverage report and test scores before and
    after, in OUT/trimmed/<student>-<labelled|all>/trim.json): the pieces of the run's labelled training
    text only, and of that and its transfer text (trim's default). Returns each trim's wall time."""
    import cascade_kd as ckd

    timing = {}
    for variant, with_transfer in (("labelled", False), ("all", True)):
        started = time.perf_counter()
        ckd.trim(run_dir / "stages" / model, out / "trimmed" / f"{student}-{variant}", with_transfer=with_transfer,
                 overwrite=True, say=lambda m: print(f"{time.strftime('%H:%M:%S')} [trim {student}] {m}", flush=True))
        timing[f"trim-{student}-{variant}"] = time.perf_counter() - started
    return timing


def grid(root: Path, out: Path, s: dict, teacher: Path | None) -> list[Job]:
    """runs/bilstm and runs/transformer (after runs/teacher when the teacher is trained here), each
    with its two trims as a post step."""
    jobs = [] if teacher else [Job("runs/teacher", teacher_recipe(root, out, s), what="real_data.py's PAN-X teacher")]
    teacher = teacher or out / "runs" / "teacher" / "teacher"
    needs = [job.name for job in jobs]
    for student, recipe, model, what in (
            ("bilstm", bilstm_recipe(root, out, s, teacher), "bilstm-ce",
             "BiLSTM student, XtremeDistil's 3 stages, transfer set"),
            ("transformer", transformer_recipe(root, out, s, teacher), f"tf{s['transformer_layers']}",
             f"{s['transformer_layers']} x 128 transformer student, LightMBERT losses, transfer set")):
        jobs.append(Job(f"runs/{student}", recipe, what=what, depends_on=needs,
                        after=functools.partial(trim_step, model=model, student=student, out=out)))
    return jobs


# ---------------------------------------------------------------------------------------------
# Latency: every model in this one process, same threads, same inputs


def measure_latency(models: list[dict], s: dict, threads: int, log) -> dict:
    """models: [{key, dir (a saved model) or None for the mBERT-base-shaped one, recipe (for the ONNX
    check), onnx: bool}]. Returns per key {latency_ms: {backend/bB: ms}, onnx_check}."""
    import torch
    from transformers import BertConfig, BertForTokenClassification

    from cascade_kd.deploy.bench import forward_latency_ms, random_inputs, timed
    from cascade_kd.deploy.export import (
        INT8_NAME,
        ONNX_NAME,
        export_model,
        input_names,
        session,
    )
    from cascade_kd.students.hub import load_checkpoint
    from cascade_kd.training.setup import resolve_precision

    torch.set_num_threads(threads)
    bf16 = resolve_precision("auto") == "bf16"  # native bf16 (AMX / AVX-512 BF16); emulated bf16 is slower
    seq, batches = s["latency_seq"], (32, 1)
    load = {"start": os.getloadavg()[0]}
    out = {}

    def torch_figures(model, repeats):
        figures = {}
        for precision in ["fp32"] + (["bf16"] if bf16 else []):
            for batch in batches:
                figures[f"{precision}/b{batch}"] = forward_latency_ms(model, batch, seq, bf16=precision == "bf16",
                                                                      repeats=repeats)
        return figures

    mbert = BertForTokenClassification(BertConfig(**MBERT_BASE)).eval()
    out["mbert-base"] = {"latency_ms": torch_figures(mbert, s["mbert_repeats"])}
    log("latency mbert-base: " + ", ".join(f"{k} {v:.1f} ms" for k, v in out["mbert-base"]["latency_ms"].items()))
    for m in models:
        model = load_checkpoint(m["dir"], "token").eval()
        entry = {"latency_ms": torch_figures(model, s["latency_repeats"])}
        if m.get("onnx"):
            with tempfile.TemporaryDirectory(prefix="xtremedistil-onnx-") as tmp:
                try:
                    info = export_model(m["dir"], Path(tmp) / "onnx", int8=True, check_data=m.get("recipe"),
                                        check_examples=256, int8_min_agreement=0.0, say=log)
                except Exception as err:  # noqa: BLE001 - no ONNX figures for this model: say why, go on
                    entry["onnx_error"] = f"{type(err).__name__}: {err}"
                    log(f"latency {m['key']}: no onnxruntime figures: {err}")
                else:
                    entry["onnx_check"] = {k: {"agreement": info[k]["agreement"], "max_abs_diff": info[k]["max_abs_diff"],
                                               "positions": info[k]["positions"]} for k in ("fp32", "int8")}
                    names = input_names(model)
                    for backend, name in (("ort-fp32", ONNX_NAME), ("ort-int8", INT8_NAME)):
                        sess = session(Path(tmp) / "onnx" / name, threads)
                        feed_names = {i.name for i in sess.get_inputs()}
                        for batch in batches:
                            feed = {k: v for k, v in random_inputs(model.config, names, batch, seq).items()
                                    if k in feed_names}
                            entry["latency_ms"][f"{backend}/b{batch}"] = timed(
                                lambda sess=sess, feed=feed: sess.run(None, feed), repeats=s["latency_repeats"])[0]
                        del sess
        out[m["key"]] = entry
        log(f"latency {m['key']}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in entry["latency_ms"].items()))
        del model
    # the reference again at the end: the machine is shared, so its load may have changed meanwhile
    again = {f"fp32/b{b}": forward_latency_ms(mbert, b, seq, bf16=False, repeats=s["mbert_repeats"]) for b in batches}
    out["mbert-base"]["latency_ms_again_at_end"] = again
    log("latency mbert-base (again): " + ", ".join(f"{k} {v:.1f} ms" for k, v in again.items()))
    load["end"] = os.getloadavg()[0]
    from cascade_kd.students import count_parameters

    return {"models": out, "mbert_params": count_parameters(mbert), "threads": threads, "seq_len": seq,
            "batch_sizes": list(batches), "repeats": s["latency_repeats"], "mbert_repeats": s["mbert_repeats"],
            "bf16": bf16, "load_average_1min": load, "torch": torch.__version__,
            "input": "random word-piece ids, full attention mask; tokenisation excluded"}


# ---------------------------------------------------------------------------------------------
# Collecting the table


EXACT_BACKENDS = ("fp32", "ort-fp32")  # the numerics the F1 figures were measured with


def model_row(key: str, label: str, how: str, metrics_row: dict, teacher_scores: dict, trim_info: dict | None,
              latency: dict | None, mbert: dict) -> dict:
    """One model of the table: params and ratios (trimmed when trimmed), F1 and retention per
    language, latency and ratios against the mBERT-base-shaped model."""
    langs = list(teacher_scores)
    untrimmed = {lang: metrics_row["per_language"][lang] for lang in langs}
    scores = {lang: trim_info["scores_after"][lang] for lang in langs} if trim_info else untrimmed
    params = trim_info["params_after"] if trim_info else metrics_row["params_total"]
    emb = trim_info["params_embedding_after"] if trim_info else metrics_row["params_embedding"]
    retention = {lang: scores[lang] / teacher_scores[lang] if teacher_scores[lang] else None for lang in langs}
    row = {"key": key, "label": label, "how": how,
           "params_total": params, "params_embedding": emb,
           "params_total_untrimmed": metrics_row["params_total"],
           "params_embedding_untrimmed": metrics_row["params_embedding"],
           "params_ratio_vs_mbert_base": mbert["params"] / params,
           "params_ratio_vs_mbert_base_untrimmed": mbert["params"] / metrics_row["params_total"],
           "per_language": scores, "average": statistics.fmean(scores.values()),
           "per_language_untrimmed": untrimmed, "average_untrimmed": statistics.fmean(untrimmed.values()),
           "retention_per_language": retention, "retention": mean_sd(retention.values())["mean"],
           # None where the teacher scores 0 in every language (a quick check's teacher may): no ratio exists
           "retention_untrimmed": mean_sd(untrimmed[l] / teacher_scores[l] for l in langs if teacher_scores[l])["mean"],
           "worst_retention_language": min((l for l in langs if retention[l] is not None), key=retention.get,
                                           default=None),
           "train_wall_time_s": metrics_row.get("wall_time_s")}
    if trim_info:
        row["trim"] = {k: trim_info[k] for k in ("vocab_before", "vocab_after", "params_before", "params_after",
                                                 "size_mb_before", "size_mb_after", "warnings")}
        row["trim"]["unk_share"] = {lang: [c["unk_share_before"], c["unk_share_after"]]
                                    for lang, c in trim_info["coverage"].items()}
    if latency:
        lat = latency["latency_ms"]
        row["latency_ms"] = lat
        row["onnx_check"] = latency.get("onnx_check")
        row["onnx_error"] = latency.get("onnx_error")
        for b in (32, 1):
            ref = mbert["latency_fp32"][f"b{b}"]
            keys = [k for k in lat if k.endswith(f"/b{b}")]
            exact = min((k for k in keys if k.split("/")[0] in EXACT_BACKENDS), key=lat.get)
            best = min(keys, key=lat.get)
            row[f"best_exact_b{b}"] = {"backend": exact.split("/")[0], "ms": lat[exact], "ratio": ref / lat[exact]}
            row[f"best_any_b{b}"] = {"backend": best.split("/")[0], "ms": lat[best], "ratio": ref / lat[best]}
    return row


def targets(row: dict) -> dict:
    out = {"params_ratio": row["params_ratio_vs_mbert_base"] >= TARGETS["params_ratio"],
           "retention": row["retention"] is not None and row["retention"] >= TARGETS["retention"]}
    if "best_exact_b32" in row:
        out["latency_ratio_b32"] = row["best_exact_b32"]["ratio"] >= TARGETS["latency_ratio_b32"]
        out["latency_ratio_b32_any_backend"] = row["best_any_b32"]["ratio"] >= TARGETS["latency_ratio_b32"]
    out["all"] = all(out.get(k, False) for k in ("params_ratio", "retention", "latency_ratio_b32"))
    return out


# ---------------------------------------------------------------------------------------------
# Markdown


BACKEND_NAMES = {"fp32": "PyTorch fp32", "bf16": "PyTorch bf16", "ort-fp32": "ORT fp32", "ort-int8": "ORT int8"}


def render(r: dict) -> str:
    s, lat, mb = r["sizes"], r["latency"], r["mbert_base"]
    langs = s["languages"]
    lines = [f"## XtremeDistil on PAN-X (issue 6){' — quick pipeline check' if r['mode'] == 'quick' else ''}", "",
             (f"`{r['command']}`: {r['date']}, wall time {r['wall_time_s'] / 60:.1f} min ({r['machine']}; "
             f"{r['threads']} torch thread per training process, {r['jobs']} in parallel)."), "",
             f"Teacher: {r['teacher']['what']} (`{r['teacher']['dir']}`). {len(langs)} languages: {', '.join(langs)}. "
             f"Labelled: the first {s['max_train']} training sentences per language; test = half of each dev set "
             f"(`holdout_from_dev: 0.5`, eval cap {s['max_eval']}), models selected on the other half. "
             f"Transfer set: up to {s['transfer']} unlabelled training sentences per language after the first "
             f"{r['transfer_skip']} (duplicates and sentences also in the labelled part or in dev removed): "
             + ", ".join(f"{k} {v['sentences']}" for k, v in r["transfer"].items()) + ".", "",
             (f"mBERT-base-shaped reference: BertForTokenClassification 12 x 768, 12 heads, 3072 intermediate, "
             f"119,547 pieces, 7 labels, random weights: {mb['params']:,} parameters "
             f"({mb['params_embedding']:,} in the embedding block)."), ""]
    head = ["model", "params (trimmed)", "emb.", "params untrimmed", "x fewer than mBERT-base",
            "avg F1", "retention", "worst retention", "avg F1 untrimmed", "retention untrimmed",
            "b32 ms (best fp32 backend)", "x vs mBERT-base fp32", "b32 best any backend", "b1 ms (best fp32)",
            "x b1"]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in r["models"]:
        cells = [row["label"], count(row["params_total"]), count(row["params_embedding"]),
                 count(row["params_total_untrimmed"]), f"{row['params_ratio_vs_mbert_base']:.1f}x",
                 pct(row["average"]), pct(row["retention"]),
                 (f"{pct(row['retention_per_language'].get(row['worst_retention_language']))} "
                 f"({row['worst_retention_language'] or '—'})"),
                 pct(row["average_untrimmed"]), pct(row["retention_untrimmed"])]
        if "best_exact_b32" in row:
            e32, a32, e1 = row["best_exact_b32"], row["best_any_b32"], row["best_exact_b1"]
            cells += [f"{e32['ms']:.2f} ({BACKEND_NAMES[e32['backend']]})", f"{e32['ratio']:.0f}x",
                      f"{a32['ms']:.2f} ({BACKEND_NAMES[a32['backend']]}, {a32['ratio']:.0f}x)",
                      f"{e1['ms']:.2f} ({BACKEND_NAMES[e1['backend']]})", f"{e1['ratio']:.0f}x"]
        else:
            cells += ["—"] * 5
        lines.append("| " + " | ".join(cells) + " |")
    ref = mb["latency_fp32"]
    lines += ["", f"Latency: median ms per forward pass, batch 32 (b32) and batch 1 (b1), sequence length "
              f"{lat['seq_len']}, {lat['threads']} torch thread (onnxruntime: the same intra-op threads, 1 inter-op), "
              f"{lat['repeats']} repeats ({lat['mbert_repeats']} for mBERT-base), all in one process. mBERT-base fp32: "
              f"b32 {ref['b32']:.0f} ms, b1 {ref['b1']:.1f} ms (the lower of two measurements, at the start and at the "
              f"end of the latency run: {mb['latency_fp32_first']['b32']:.0f}/{mb['latency_fp32_again']['b32']:.0f} ms "
              f"and {mb['latency_fp32_first']['b1']:.1f}/{mb['latency_fp32_again']['b1']:.1f} ms)"
              + (f"; in bf16 autocast b32 {mb['latency_ms']['bf16/b32']:.0f} ms, b1 {mb['latency_ms']['bf16/b1']:.1f} ms"
                 if "bf16/b32" in mb["latency_ms"] else "")
              + f". Load average (1 min) {lat['load_average_1min']['start']:.1f} at the start, "
              f"{lat['load_average_1min']['end']:.1f} at the end (2 cores, shared). 'best fp32 backend': the faster of "
              "PyTorch fp32 and onnxruntime fp32 (the numerics the F1 figures hold for); 'best any backend' includes "
              "bf16 autocast and onnxruntime dynamic int8, whose predictions differ slightly (agreement below).", "",
              "Every backend (ms; in brackets x faster than mBERT-base fp32 at the same batch):", "",
              "| model | " + " | ".join(f"{BACKEND_NAMES[k.split('/')[0]]} {k.split('/')[1]}" for k in r["latency_keys"])
              + " | ONNX check (argmax agreement with PyTorch fp32: fp32 / int8) |",
              "|---|" + "---:|" * len(r["latency_keys"]) + "---|"]
    for row in [{"label": "mBERT-base-shaped", "latency_ms": mb["latency_ms"]}] + r["models"]:
        cells = []
        for k in r["latency_keys"]:
            v = (row.get("latency_ms") or {}).get(k)
            b = k.split("/")[1]
            cells.append("—" if v is None else f"{v:.2f} ({ref[b] / v:.0f}x)")
        check = row.get("onnx_check")
        cells.append(f"{100 * check['fp32']['agreement']:.2f}% / {100 * check['int8']['agreement']:.2f}% "
                     f"on {check['fp32']['positions']} tokens" if check
                     else f"not measured: export failed ({row['onnx_error']})" if row.get("onnx_error") else "—")
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += ["", ("Per language: test F1 (%) of the trimmed model; in brackets retention against the teacher (%); "
              "untrimmed F1 after the slash:"), "",
              "| language | " + " | ".join(row["label"] for row in r["models"]) + " |",
              "|---|" + "---:|" * len(r["models"])]
    for lang in langs:
        cells = []
        for row in r["models"]:
            cell = pct(row["per_language"][lang])
            if row["key"] != "teacher":
                cell += f" ({pct(row['retention_per_language'][lang], 0)}) / {pct(row['per_language_untrimmed'][lang])}"
            cells.append(cell)
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    lines += ["", (f"Targets: >= {TARGETS['params_ratio']:.0f}x fewer parameters than mBERT-base (trimmed model), "
              f">= {TARGETS['latency_ratio_b32']:.0f}x lower latency at batch 32 (best fp32 backend vs mBERT-base fp32), "
              f">= {100 * TARGETS['retention']:.0f}% of the teacher's F1 averaged over languages:"), ""]
    for row in r["models"]:
        if row["key"] == "teacher":
            continue
        t = row["targets"]
        yes = lambda ok: "met" if ok else "NOT met"
        lines.append(f"- {row['label']}: params {row['params_ratio_vs_mbert_base']:.1f}x {yes(t['params_ratio'])}; "
                     + (f"latency b32 {row['best_exact_b32']['ratio']:.0f}x {yes(t['latency_ratio_b32'])} "
                        f"(any backend {row['best_any_b32']['ratio']:.0f}x); " if "latency_ratio_b32" in t else "")
                     + f"retention {pct(row['retention'])}% {yes(t['retention'])}"
                     + f" -> {'all three met' if t['all'] else 'not all met'}.")
    trimmed = [row for row in r["models"] if row.get("trim")]
    if trimmed:
        lines += ["", "Trimming (`cascade-kd trim`; 'labelled + transfer text': its default, the pieces of the run's "
                  "labelled training sentences and of its transfer text; 'labelled text': `--no-transfer`, the "
                  "labelled sentences only): "
                  + "; ".join(f"{row['label']}: {row['trim']['vocab_before']:,} -> {row['trim']['vocab_after']:,} "
                              f"pieces, {row['trim']['size_mb_before']:.1f} -> {row['trim']['size_mb_after']:.1f} MB"
                              for row in trimmed) + ".", "",
                  "Held-out [UNK] share of word pieces, original -> trimmed tokenizer:", "",
                  "| trim | " + " | ".join(langs) + " |", "|---|" + "---:|" * len(langs)]
        for row in trimmed:
            if row["key"].startswith("bilstm"):  # the same tokenizer for both students: one line per trim
                shares = row["trim"]["unk_share"]
                lines.append(f"| {row['label'].rsplit(', ', 1)[1]} | " + " | ".join(
                    f"{100 * shares[lang][0]:.2f} -> {100 * shares[lang][1]:.2f}" for lang in langs) + " |")
    stages = r.get("bilstm_stages")
    if stages:
        lines += ["", "BiLSTM stages (untrimmed, test F1 average / retention): " + "; ".join(
            f"{k} {pct(v['average'])} / {pct(v['retention'])}" for k, v in stages.items())
            + " (the representation stage's head is untrained, so its score means nothing)."]
    t = r["timing"]
    lines += ["", "Wall time (s), this script's clock: " + ", ".join(f"{k} {v:.0f}" for k, v in t.items())
              + "; `cascade-kd run`'s own (metrics.json `wall_time_s`, both runs in parallel): "
              + ", ".join(f"{k} {v:.0f}" for k, v in r["run_wall_time_s"].items())
              + "; training time per model (evaluation excluded): "
              + ", ".join(f"{k} {v:.0f}" for k, v in r["train_wall_time_s"].items()) + "."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="pipeline check: 4 languages, tiny sizes, 1 epoch per stage")
    p.add_argument("--out", type=Path, help="where runs go (default runs/xtremedistil-panx[-quick], ignored by git)")
    p.add_argument("--teacher", type=Path, help=f"a trained PAN-X teacher (default {REAL_DATA_TEACHER} when it exists, "
                   "else one is trained here with real_data.py's settings)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"the shared data (default {DEFAULT_DATA})")
    p.add_argument("--transfer", type=int, help="transfer sentences per language (default 6000 full, 200 quick)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training process and for latency")
    p.add_argument("--jobs", type=int, default=2, choices=[1, 2], help="train the two students in parallel (2) or not")
    p.add_argument("--collect-only", action="store_true", help="rebuild the tables from finished runs, trims and "
                   "OUT/latency.json; nothing is trained or measured")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    for key, value in (("OMP_NUM_THREADS", str(args.threads)), ("TOKENIZERS_PARALLELISM", "false"),
                       ("HF_HUB_OFFLINE", "1"), ("CASCADE_KD_QUIET", "1")):
        os.environ.setdefault(key, value)
    started = time.perf_counter()
    s = sizes_for(args)
    root = args.data.resolve()
    if not (root / "panx").is_dir():
        print(f"no PAN-X data at {root / 'panx'} (give --data)", file=sys.stderr)
        return 2
    out = (args.out or REPO / "runs" / ("xtremedistil-panx-quick" if args.quick else "xtremedistil-panx")).resolve()
    previous = read_json(out / "xtremedistil_panx.json")

    def log(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)

    # 1. the teacher: the project's trained one, or one trained here (first job of the grid) with the same settings
    teacher = args.teacher or (REAL_DATA_TEACHER if (REAL_DATA_TEACHER / "stage.json").is_file() else None)
    if teacher is not None:
        teacher = teacher.resolve()
        if not (teacher / "config.json").is_file():
            print(f"--teacher {teacher}: not a saved model", file=sys.stderr)
            return 2
        what = ("the 4 x 128 teacher trained by benchmarks/real_data.py (seed 0, from scratch, mBERT vocabulary)"
                if teacher == REAL_DATA_TEACHER.resolve() else "given with --teacher")
        cap = teacher_train_cap(teacher)
    else:
        what, cap = "trained here: 4 x 128 from scratch with real_data.py's settings", s["max_train"]
    jobs = grid(root, out, s, teacher)
    teacher = teacher or out / "runs" / "teacher" / "teacher"
    log(f"teacher: {teacher} ({what})")

    # 2. the transfer set, after every sentence the teacher or the students saw with labels
    skip = max(s["max_train"], cap or 0)
    if cap is None:
        log(f"note: the teacher's training cap is unknown; the transfer set starts after sentence {skip}")
    transfer = write_transfer(root, out, s, skip, log)

    # 3. the grid: the teacher if trained here, the two students (in parallel with --jobs 2), their trims
    if args.collect_only:
        state = read_json(out / "grid.json") or {}
    else:
        from cascade_kd.errors import UserError

        try:
            state = run_grid(jobs, out, parallel=args.jobs, quick=args.quick, threads=args.threads)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if failures(state):
        for name, why in failures(state).items():
            print(f"error: {name}: {why}", file=sys.stderr)
        return 1
    runs = out / "runs"
    trims = {f"{student}-{variant}": read_json(out / "trimmed" / f"{student}-{variant}" / "trim.json")
             for student in ("bilstm", "transformer") for variant in ("labelled", "all")}
    timing = {k: v for name in ("runs/bilstm", "runs/transformer")
              for k, v in ((state.get("jobs", {}).get(name) or {}).get("after") or {}).get("result", {}).items()}
    if "runs/teacher" in state.get("jobs", {}):
        timing["teacher"] = state["jobs"]["runs/teacher"]["wall_s"]

    # 4. latency, one process: the mBERT-base-shaped reference, the teacher, the trimmed students
    if args.collect_only and (out / "latency.json").is_file():
        log(f"latency: the figures measured before ({out / 'latency.json'}), not measured again (--collect-only)")
        latency = read_json(out / "latency.json")
        if ((previous or {}).get("timing") or {}).get("latency") is not None:  # the measuring run's figure
            timing["latency"] = previous["timing"]["latency"]
    else:
        log("latency: measuring (one process, the same threads for every model)")
        t0 = time.perf_counter()
        latency = measure_latency([{"key": "teacher", "dir": teacher}] + [
            {"key": key, "dir": out / "trimmed" / key, "recipe": runs / key.split("-")[0] / "recipe.yaml", "onnx": True}
            for key in trims], s, args.threads, log)
        timing["latency"] = time.perf_counter() - t0
        write_json(out / "latency.json", latency)

    # 5. the table
    bl_metrics, tf_metrics = read_json(runs / "bilstm" / "metrics.json"), read_json(runs / "transformer" / "metrics.json")
    by_name = {m["name"]: m for m in bl_metrics["models"]}
    tf_by_name = {m["name"]: m for m in tf_metrics["models"]}
    teacher_row = by_name["teacher"]
    teacher_scores = {lang: teacher_row["per_language"][lang] for lang in s["languages"]}
    if any(abs(tf_by_name["teacher"]["per_language"][lang] - teacher_scores[lang]) > 1e-9 for lang in s["languages"]):
        log("WARNING: the teacher scores differently in the two runs (they should share data and split)")
    ref = latency["models"]["mbert-base"]
    first = {f"b{b}": ref["latency_ms"][f"fp32/b{b}"] for b in (32, 1)}
    again = {f"b{b}": ref["latency_ms_again_at_end"][f"fp32/b{b}"] for b in (32, 1)}
    mbert = {"params": latency["mbert_params"]["params_total"], "params_embedding": latency["mbert_params"]["params_embedding"],
             "config": MBERT_BASE, "latency_ms": ref["latency_ms"], "latency_fp32_first": first,
             "latency_fp32_again": again,
             # the lower of the two: the ratios are then the smaller, never flattered by a slow reference
             "latency_fp32": {b: min(first[b], again[b]) for b in first}}
    lat = latency["models"]
    bl_label = f"BiLSTM (emb. {s['bilstm_embedding']}, {s['bilstm_hidden']}x2)"
    bl_how = "XtremeDistil: hidden_mse -> kl (gradual) -> ce (gradual), transfer set"
    tf_label = f"transformer {s['transformer_layers']}x128"
    tf_how = "bottom layers, frozen emb., kl + hidden + attention (top_only), transfer set"
    vocab = {"all": "trim: labelled + transfer text", "labelled": "trim: labelled text"}
    rows = [model_row("teacher", "teacher 4x128 (project's own)", "trained from scratch on the labels", teacher_row,
                      teacher_scores, None, lat["teacher"], mbert)]
    for key in ("bilstm-all", "bilstm-labelled", "transformer-all", "transformer-labelled"):
        student, variant = key.split("-")
        label, how, metrics_row = ((bl_label, bl_how, by_name["bilstm-ce"]) if student == "bilstm"
                                   else (tf_label, tf_how, tf_by_name[f"tf{s['transformer_layers']}"]))
        rows.append(model_row(key, f"{label}, {vocab[variant]}", how, metrics_row, teacher_scores, trims[key],
                              lat[key], mbert))
    for row in rows:
        row["targets"] = targets(row)
    wall = time.perf_counter() - started
    results = {
        "mode": "quick" if args.quick else "full",
        "command": "nice -n 10 .venv/bin/python benchmarks/xtremedistil_panx.py " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "wall_time_s": wall,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared", "threads": args.threads, "jobs": args.jobs,
        "teacher": {"dir": str(teacher), "what": what}, "sizes": s, "transfer_skip": skip, "transfer": transfer,
        "targets_wanted": TARGETS, "mbert_base": mbert, "latency": {k: v for k, v in latency.items() if k != "models"},
        "latency_keys": [k for k in ("fp32/b32", "bf16/b32", "ort-fp32/b32", "ort-int8/b32",
                                     "fp32/b1", "bf16/b1", "ort-fp32/b1", "ort-int8/b1")
                         if any(k in (row.get("latency_ms") or {}) for row in rows)],
        "bilstm_stages": {name: {"average": by_name[name]["average"], "retention": by_name[name]["retention"],
                                 "wall_time_s": by_name[name].get("wall_time_s")}
                          for name in ("bilstm-repr", "bilstm-kl", "bilstm-ce")},
        "models": rows,
        # this script's clock for trims and latency (the runs' own wall times come from their metrics.json)
        "timing": timing,
        "run_wall_time_s": {"bilstm": bl_metrics.get("wall_time_s"), "transformer": tf_metrics.get("wall_time_s")},
        "train_wall_time_s": {m["name"]: m["wall_time_s"] for m in bl_metrics["models"] + tf_metrics["models"]
                              if m.get("wall_time_s") is not None},
    }
    if args.collect_only and previous:  # the measuring command and its wall time, not this re-collection's
        results.update({k: previous[k] for k in ("command", "date", "wall_time_s") if k in previous})
        results["collected"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = render(results)
    write_json(out / "xtremedistil_panx.json", results)
    (out / "xtremedistil_panx.md").write_text(text + "\n")
    name = "xtremedistil_panx_quick" if args.quick else "xtremedistil_panx"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS_DIR / f"{name}.json", results)
    atomic_write(RESULTS_DIR / f"{name}.md", text + "\n")
    print(text)
    print(f"done in {wall / 60:.1f} min; tables: {out / 'xtremedistil_panx.md'}, {RESULTS_DIR / (name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
