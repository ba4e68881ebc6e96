"""Per-language evaluation: accuracy for classification, entity-level F1 (seqeval) for NER.

Token-task predictions are read at each word's first sub-word and scored per word, so the score
does not depend on how a tokenizer splits words. Words cut off by max_length count as predicted
'O' (a miss if they were entities), so truncation cannot inflate a score.
"""

from __future__ import annotations

from contextlib import nullcontext
from types import SimpleNamespace

import torch

from cascade_kd.data.encode import IGNORE, Encoded, collate, encode, eval_batches
from cascade_kd.data.masking import mask_split, masker_for
from cascade_kd.data.readers import Example
from cascade_kd.students.features import extract_features


def metric_for(task: str, labels: list[str]) -> str:
    """f1 for BIO-tagged token tasks (NER); accuracy for classification and plain tagging (POS);
    mlm_accuracy (masked pieces predicted right) for masked-LM text."""
    if task == "mlm":
        return "mlm_accuracy"
    if task == "token" and all(l == "O" or l[:2] in ("B-", "I-") for l in labels):
        return "f1"
    return "accuracy"


@torch.no_grad()
def predict(model, encoded: list[Encoded], *, batch_size: int = 64, pad_id: int = 0, bf16: bool = False) -> list:
    """Argmax label ids: one per example (sequence tasks) or one list per example (token tasks)."""
    model.eval()
    device = next(model.parameters()).device
    out: list = [None] * len(encoded)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    for indices in eval_batches([len(x) for x in encoded], batch_size):
        batch = collate([encoded[i] for i in indices], pad_id)
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        with autocast:
            logits = model(**inputs).logits
        pred = logits.argmax(-1).cpu()
        for row, i in enumerate(indices):
            out[i] = pred[row, : len(encoded[i])].tolist() if pred.dim() == 2 else int(pred[row])
    return out


@torch.no_grad()
def masked_lm_accuracy(model, encoded: list[Encoded], *, batch_size: int = 64, pad_id: int = 0, bf16: bool = False) -> float:
    """Share of the masked positions (labels != IGNORE, masks drawn once per split) whose original
    piece the model ranks first. The vocabulary-wide head runs at those positions only."""
    model.eval()
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    right = total = 0
    for indices in eval_batches([len(x) for x in encoded], batch_size):
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in indices], pad_id).items()}
        masked = batch["labels"] != IGNORE
        with autocast:
            logits = extract_features(model, batch, hidden=False, attentions=False, logits=masked).logits
        right += int((logits.argmax(-1) == batch["labels"][masked]).sum())
        total += int(masked.sum())
    return right / max(1, total)


def word_predictions(enc: Encoded, sub_preds: list[int], id2label: list[str]) -> list[str]:
    """Each word's label, read at its first sub-word; words lost to truncation get 'O'."""
    words = ["O"] * enc.num_words
    previous = None
    for position, w in enumerate(enc.word_ids):
        if w is not None and w != previous:
            words[w] = id2label[sub_preds[position]]
        previous = w
    return words


def score(task: str, labels: list[str], examples: list[Example], encoded: list[Encoded], preds: list) -> float:
    metric = metric_for(task, labels)
    if task != "token":
        gold = [labels.index(ex.label) for ex in examples]
        return sum(int(p == g) for p, g in zip(preds, gold)) / len(gold)
    predicted = [word_predictions(enc, p, labels) for enc, p in zip(encoded, preds)]
    gold = [ex.tags for ex in examples]
    if metric == "f1":
        from seqeval.metrics import f1_score

        return float(f1_score(gold, predicted, zero_division=0))
    pairs = [(g, p) for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps)]
    return sum(int(g == p) for g, p in pairs) / max(1, len(pairs))


def evaluate_languages(
    model, split: dict[str, tuple[list[Example], list[Encoded]]], task: str, labels: list[str], **predict_kwargs
) -> dict[str, float]:
    """Score the model on every language of one split. The languages are predicted together, so
    that batches group examples of similar length across languages (less padding than batching
    each language's few dev sentences on their own), then scored apart."""
    if task == "mlm":
        return {lang: masked_lm_accuracy(model, encoded, **predict_kwargs) for lang, (_, encoded) in split.items()}
    preds = iter(predict(model, [x for _, encoded in split.values() for x in encoded], **predict_kwargs))
    return {
        lang: score(task, labels, examples, encoded, [next(preds) for _ in encoded])
        for lang, (examples, encoded) in split.items()
    }


def summarise(per_language: dict[str, float], teacher: dict[str, float] | None = None) -> dict:
    """Average, worst language, and retention against the teacher (mean of per-language ratios)."""
    values = list(per_language.values())
    worst_lang = min(per_language, key=per_language.get)
    out = {
        "average": sum(values) / len(values),
        "worst": per_language[worst_lang],
        "worst_language": worst_lang,
    }
    if teacher is not None:
        # undefined (None, JSON null) where the teacher scores 0: NaN is not valid JSON
        ratios = {l: (s / teacher[l] if teacher[l] > 0 else None) for l, s in per_language.items()}
        defined = [r for r in ratios.values() if r is not None]
        out["retention_per_language"] = ratios
        out["retention"] = sum(defined) / len(defined) if defined else None
    return out


def summarise_groups(per_language: dict[str, float], teacher: dict[str, float] | None,
                     seen: list[str], zero_shot: list[str]) -> dict:
    """`summarise` over the seen (training) languages and over the zero-shot languages apart:
    average_seen, worst_seen, worst_language_seen, retention_seen and the same with _zero_shot.
    Retention is, as in `summarise`, the mean over the group's languages of model / teacher score.
    Every key of an empty group is None (JSON null). The key names are part of metrics.json, which
    scripts read: see docs/cross-lingual.md."""
    out = {}
    for group, languages in (("seen", seen), ("zero_shot", zero_shot)):
        scores = {lang: per_language[lang] for lang in languages}
        summary = summarise(scores, teacher) if scores else {}
        for stat in ("average", "worst", "worst_language", "retention"):
            out[f"{stat}_{group}"] = summary.get(stat)
    return out


def score_split(model, tokenizer, recipe, data, split: str, *, labels: list[str]) -> dict[str, float]:
    """Per-language scores of `model` on `split` of `data` (the recipe's TaskData), its inputs
    encoded with `tokenizer`: the run's own encoding and evaluation code, as `cascade-kd eval` uses,
    for a model that may have another tokenizer (a trimmed one) or another runtime (ONNX)."""
    label2id = {label: i for i, label in enumerate(labels)}
    encoded = {lang: (examples, encode(examples, tokenizer, task=data.task, label2id=label2id,
                                       max_length=recipe.task.max_length,
                                       label_all_subwords=recipe.task.label_all_subwords))
               for lang, examples in data.splits[split].items()}
    if data.task == "mlm":  # masked-LM text: the run's own draws (cascade/job.py), on this tokenizer's pieces
        encoded = mask_split(masker_for(tokenizer, probability=recipe.task.mask_probability, seed=recipe.seed),
                             split, encoded)
    return evaluate_languages(model, encoded, data.task, labels, batch_size=recipe.train.eval_batch_size,
                              pad_id=tokenizer.pad_token_id or 0)


class OnnxClassifier(torch.nn.Module):
    """An onnxruntime session behind the call the scoring code makes (`model(**inputs).logits`), so
    that an exported model is scored by the very code that scores it in PyTorch. Inputs the graph
    does not take (token_type_ids of an XLM-R export) are left out."""

    def __init__(self, session):
        super().__init__()
        self.session = session
        self.inputs = {i.name for i in session.get_inputs()}
        # `predict` reads the device off the first parameter: the session runs on the CPU
        self.anchor = torch.nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, **inputs):
        feed = {name: value.cpu().numpy() for name, value in inputs.items() if name in self.inputs}
        logits = self.session.run(["logits"], feed)[0]
        return SimpleNamespace(logits=torch.from_numpy(logits))
