"""Cross-lingual sentence retrieval (Tatoeba): does a student keep its teacher's alignment?

Task scores say little about whether a distilled multilingual encoder still maps a sentence and its
translation to nearby vectors; retrieval measures that directly, with no fine-tuning. Following
LASER's Tatoeba protocol (and XTREME's), each sentence is embedded as the mean of one layer's
hidden states over its real tokens, and accuracy is the share of sentences whose nearest
neighbour (cosine) on the other side is their own translation, in both directions.

Data: a directory in LASER's Tatoeba layout, `tatoeba.<xxx>-eng.<xxx>` and
`tatoeba.<xxx>-eng.eng` (line i of one file translates line i of the other). Other parallel data
can be used by naming its files that way, or read with `read_parallel` and passed to
`evaluate_retrieval` as {language: (sentences, english_sentences)}.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from cascade_kd.errors import DataError, UserError
from cascade_kd.fileio import read_input
from cascade_kd.evaluation.scoring import summarise
from cascade_kd.students.anatomy import masked_lm_parts

__all__ = [
    "available_languages",
    "evaluate_retrieval",
    "markdown_table",
    "read_parallel",
    "retention_table",
    "retrieval_accuracy",
    "sentence_embeddings",
    "tatoeba_pairs",
]

_TATOEBA_FILE = re.compile(r"tatoeba\.([a-z]{2,3})-eng\.([a-z]{2,3})")


# ---------------------------------------------------------------------------------------------
# Data


def _read_lines(path: Path, both: str) -> list[str]:
    if not path.exists():
        raise DataError("file not found", where=str(path), hint=f"reading the parallel pair {both}")
    data = read_input(path, error=DataError, what="parallel text file")  # a regular file: a FIFO would block
    if data.startswith(b"\xef\xbb\xbf"):  # a BOM is not part of the first sentence
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 ({e.reason})", where=f"{path}:{line}",
                        hint=f"reading the parallel pair {both}") from None
    if not text.strip():
        raise DataError("file is empty", where=str(path), hint=f"reading the parallel pair {both}")
    # split on "\n" only: str.splitlines() would also split at U+2028, U+0085 etc. inside a sentence
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_parallel(src_path, tgt_path, limit: int | None = None) -> tuple[list[str], list[str]]:
    """Line-aligned sentences of two files (each line without its newline), the first `limit` pairs."""
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    both = f"{src_path} and {tgt_path}"
    src, tgt = _read_lines(src_path, both), _read_lines(tgt_path, both)
    if len(src) != len(tgt):
        raise DataError(f"line counts differ: {len(src)} lines in {src_path.name}, {len(tgt)} in {tgt_path.name}",
                        where=both, hint="line i of one file must translate line i of the other")
    return (src[:limit], tgt[:limit]) if limit is not None else (src, tgt)


def available_languages(directory) -> list[str]:
    """Language codes with at least one file in Tatoeba layout under `directory`, sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError("directory not found", where=str(directory),
                        hint="expected LASER's Tatoeba files, tatoeba.<xxx>-eng.<xxx> and tatoeba.<xxx>-eng.eng")
    found = set()
    for p in directory.iterdir():
        m = _TATOEBA_FILE.fullmatch(p.name)
        if m and m.group(2) in (m.group(1), "eng"):
            found.add(m.group(1))
    if not found:
        raise DataError("no Tatoeba files here", where=str(directory),
                        hint="expected tatoeba.<xxx>-eng.<xxx> and tatoeba.<xxx>-eng.eng")
    return sorted(found)


def tatoeba_pairs(directory, languages=None, limit: int | None = None) -> dict[str, tuple[list[str], list[str]]]:
    """{language: (sentences in it, their English translations)}; `languages`: codes (a list, or one
    comma-separated string), None for every language in the directory."""
    directory = Path(directory)
    available = available_languages(directory)
    if languages is None:
        languages = available
    elif isinstance(languages, str):
        languages = [l.strip() for l in languages.split(",") if l.strip()]
    for lang in languages:
        if lang not in available:
            close = difflib.get_close_matches(lang, available, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            shown = ", ".join(available[:8]) + (f", ... ({len(available)} in all)" if len(available) > 8 else "")
            raise DataError(f"no Tatoeba files for language {lang!r}", where=str(directory),
                            hint=f"{hint}available: {shown}")
    return {
        lang: read_parallel(directory / f"tatoeba.{lang}-eng.{lang}", directory / f"tatoeba.{lang}-eng.eng", limit)
        for lang in languages
    }


# ---------------------------------------------------------------------------------------------
# Embeddings and accuracy


@torch.no_grad()
def sentence_embeddings(model, tokenizer, texts: list[str], *, batch_size: int = 64, max_length: int = 128,
                        layer: int = -1) -> Tensor:
    """[N, D] float32: mean of `hidden_states[layer]` over each sentence's real tokens (special
    tokens included, padding not), in the order of `texts`."""
    if not texts:
        return torch.zeros((0, model.config.hidden_size))
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    names = [k for k in ("input_ids", "token_type_ids") if k in encoded]
    lengths = [len(ids) for ids in encoded["input_ids"]]
    order = sorted(range(len(texts)), key=lengths.__getitem__)  # similar lengths together: little padding
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    parts = masked_lm_parts(model)  # a masked-LM model: its encoder alone, not the vocabulary-wide head
    encoder = parts[0] if parts is not None else model
    pooled = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            width = max(lengths[i] for i in indices)
            batch = {k: torch.full((len(indices), width), pad_id if k == "input_ids" else 0, dtype=torch.long)
                     for k in names + ["attention_mask"]}
            for row, i in enumerate(indices):  # right padding, as the encoders were trained with
                for k in names:
                    batch[k][row, : lengths[i]] = torch.tensor(encoded[k][i])
                batch["attention_mask"][row, : lengths[i]] = 1
            batch = {k: v.to(device) for k, v in batch.items()}
            hidden_states = encoder(**batch, output_hidden_states=True, return_dict=True).hidden_states
            if not hidden_states:
                raise ValueError(f"{type(model).__name__} returned no hidden_states")
            if not -len(hidden_states) <= layer < len(hidden_states):
                raise ValueError(f"layer {layer} out of range: the model returns {len(hidden_states)} hidden states")
            hidden = hidden_states[layer].float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu())
    finally:
        model.train(was_training)
    by_length = torch.cat(pooled)
    out = torch.empty_like(by_length)
    out[order] = by_length  # back to the order of `texts`
    return out


def retrieval_accuracy(src: Tensor, tgt: Tensor) -> float:
    """Share of rows i of `src` whose nearest row of `tgt` by cosine similarity is row i (ties go to
    the lower index)."""
    if src.dim() != 2 or src.shape != tgt.shape or len(src) == 0:
        raise ValueError(f"need two non-empty [N, D] tensors of the same shape, got {tuple(src.shape)} "
                         f"and {tuple(tgt.shape)}")
    sim = F.normalize(src.float(), dim=1) @ F.normalize(tgt.float(), dim=1).T
    nearest = sim.argmax(dim=1)
    return (nearest == torch.arange(len(src), device=nearest.device)).float().mean().item()


def evaluate_retrieval(model, tokenizer, pairs: dict[str, tuple[list[str], list[str]]], *, batch_size: int = 64,
                       max_length: int = 128, layer: int = -1) -> dict[str, dict[str, float]]:
    """Per language: xx_to_en and en_to_xx accuracy, their mean ("accuracy") and the number of pairs."""
    kwargs = {"batch_size": batch_size, "max_length": max_length, "layer": layer}
    results = {}
    for lang, (xx, en) in pairs.items():
        xx_emb = sentence_embeddings(model, tokenizer, xx, **kwargs)
        en_emb = sentence_embeddings(model, tokenizer, en, **kwargs)
        forward, backward = retrieval_accuracy(xx_emb, en_emb), retrieval_accuracy(en_emb, xx_emb)
        results[lang] = {"xx_to_en": forward, "en_to_xx": backward, "accuracy": (forward + backward) / 2,
                         "pairs": len(xx)}
    return results


# ---------------------------------------------------------------------------------------------
# Retention against the teacher


def retention_table(per_model: dict[str, dict[str, dict]], teacher: str) -> dict[str, dict]:
    """Per model: mean accuracy, mean retention (model / teacher accuracy, averaged over languages;
    undefined, None, where the teacher scores 0 or lacks the language), worst language, and per
    language {"accuracy", "retention"}. `per_model`: {model: evaluate_retrieval(...)}."""
    if teacher not in per_model:
        raise UserError(f"teacher {teacher!r} has no retrieval results", hint=f"models: {', '.join(per_model)}")
    accuracy = {name: {lang: r["accuracy"] if isinstance(r, dict) else float(r) for lang, r in results.items()}
                for name, results in per_model.items()}
    table = {}
    for name, acc in accuracy.items():
        # the same definition as the task report's retention (evaluation.summarise)
        s = summarise(acc, {lang: accuracy[teacher].get(lang, 0.0) for lang in acc})
        table[name] = {
            "accuracy": s["average"], "retention": s["retention"],
            "worst_language": s["worst_language"], "worst": s["worst"],
            "languages": {lang: {"accuracy": a, "retention": s["retention_per_language"][lang]}
                          for lang, a in acc.items()},
        }
    return table


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def markdown_table(table: dict[str, dict]) -> str:
    """Two Markdown tables from `retention_table`: one row per model (means and worst language),
    then retrieval accuracy per language (rows) and model (columns); all in percent."""
    lines = ["| model | accuracy | retention | worst language |", "|---|---:|---:|---|"]
    for name, m in table.items():
        lines.append(f"| {name} | {_pct(m['accuracy'])} | {_pct(m['retention'])} | "
                     f"{m['worst_language']} ({_pct(m['worst'])}) |")
    models = list(table)
    langs = sorted({lang for m in table.values() for lang in m["languages"]})
    lines += ["", "| language | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for lang in langs:
        cells = [_pct(table[n]["languages"][lang]["accuracy"]) if lang in table[n]["languages"] else "—"
                 for n in models]
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
