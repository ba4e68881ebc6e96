"""Findings a report states in words, shared by report.md, report.html and the model cards: the
languages a model does worst on, and students that still carry the teacher's whole vocabulary."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

from cascade_kd.deploy.paths import trimmed_copy
from cascade_kd.evaluation.run_files import model_config

# how each metric is named in reports, model cards and comparisons
METRIC_NAMES = {"f1": "entity-level F1 (seqeval)", "accuracy": "accuracy", "mlm_accuracy": "masked-token accuracy"}
EMBEDDING_SHARE = 0.5  # above this share of embedding parameters, trimming the vocabulary pays


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def worst_languages(row: dict, n: int = 3) -> list[tuple[str, float, float | None]]:
    """The model's `n` lowest-retention languages, ties (the teacher's retention is 1 everywhere)
    broken by the lower score; lowest scores when there is no retention:
    [(language, score, retention or None)], worst first."""
    scores = row.get("per_language") or {}
    retention = row.get("retention_per_language") or {}
    key = (lambda lang: (retention[lang], scores[lang])) if retention and all(
        _finite(retention.get(l)) for l in scores) else (lambda lang: scores[lang])
    ranked = sorted((lang for lang in scores if _finite(scores[lang])), key=key)
    return [(lang, scores[lang], retention.get(lang) if _finite(retention.get(lang)) else None) for lang in ranked[:n]]


def _vocab_size(directory: Path) -> int | None:
    try:
        return int(model_config(directory)["vocab_size"])
    except (ValueError, KeyError, TypeError):
        return None


def embedding_notes(run_dir: Path, metrics: dict) -> list[dict]:
    """Distilled models that keep the teacher's whole word-piece vocabulary although embeddings are
    most of their parameters: {model, share, vocab, params_total, params_embedding, command}, the
    command being the `cascade-kd trim` call that keeps only the pieces the run's languages use
    (with RUN_DIR standing for the run's folder)."""
    run_dir = Path(run_dir)
    rows = metrics.get("models") or []
    teacher = next((r for r in rows if r.get("role") == "teacher"), None)
    teacher_vocab = _vocab_size(run_dir / teacher["path"]) if teacher else None
    notes = []
    for row in rows:
        if row.get("role") == "teacher" or not row.get("params_total"):
            continue
        share = row.get("params_embedding", 0) / row["params_total"]
        vocab = _vocab_size(run_dir / row["path"])
        if share > EMBEDDING_SHARE and vocab is not None and vocab == teacher_vocab:
            directory = run_dir / row["path"]
            trimmed = trimmed_copy(directory) is not None
            notes.append({"model": row["name"], "share": share, "vocab": vocab, "params_total": row["params_total"],
                          "params_embedding": row.get("params_embedding", 0), "trimmed": trimmed,
                          # RUN_DIR/..., not this machine's path: the reports and model cards travel
                          "command": f"cascade-kd trim {shlex.quote('RUN_DIR/' + row['path'])}"})
    return notes


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def embedding_sentence(note: dict) -> str:
    """The note in words (Markdown)."""
    text = (f"**{note['model']}** still carries the teacher's whole vocabulary ({note['vocab']:,} word pieces): "
            f"{100 * note['share']:.0f}% of its {_count(note['params_total'])} parameters are embeddings. ")
    if note["trimmed"]:
        return text + "A trimmed copy is already in its `trimmed/` folder."
    return text + (f"`{note['command']}` (RUN_DIR: the run's folder) keeps only the pieces that the run's languages "
                   "use (default: all the recipe's languages; `--languages` to choose) and reports the coverage per "
                   "language.")
