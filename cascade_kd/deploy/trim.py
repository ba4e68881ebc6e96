"""Vocabulary trimming: keep only the word pieces that the chosen languages' training data use.

A multilingual encoder's word-embedding table is most of a small student (mBERT: 119,547 x 768,
92M of its 178M parameters; a 1-layer 256-wide student is almost all embeddings). A model that
serves a few languages uses a small share of those rows. `trim_vocabulary` keeps the pieces that
the tokenizer produces on the chosen languages' training text (plus every special and added
token), builds a new embedding table from exactly those rows (and the MLM output layer where there
is one), and rebuilds a WORKING fast tokenizer whose vocabulary is the kept pieces in a new id order
(their original order, renumbered from 0).

What changes and what does not:
- Text made of kept pieces is tokenised to the same pieces as before, each under its new id, and
  the trimmed model computes exactly the logits the original computes on it (its rows are the
  original rows; positions and everything else are untouched). For WordPiece this holds because
  longest-match-first picks, at every step, a piece that exists in the kept vocabulary whenever the
  original pick was kept; for Unigram because the original best segmentation is still available
  and nothing new can beat it.
- A word with a dropped piece is segmented again from the kept pieces (WordPiece: longest match
  first over the kept vocabulary) and becomes [UNK] only when that is impossible. The coverage
  report measures exactly that, on held-out text of every language: the share of pieces that are
  [UNK] with the original tokenizer and with the trimmed one, and the share of the original pieces
  that were dropped.
- A chosen language whose held-out [UNK] share rises by more than `max_unk_increase` percentage
  points (default 1) is reported loudly: a WARNING line and an entry in `warnings` (with `strict`,
  an error). Languages that were not chosen are reported too, as information.

Why a separate step (`cascade-kd trim MODEL_DIR`), not a stage option: a cascade run encodes its
data once, with one tokenizer, and every batch feeds the same input ids to the stage's teacher and
student and to the evaluation of every model (cascade.Job). A trimmed model needs other ids, and
its own tokenizer to read held-out text correctly (re-segmenting words with dropped pieces, as
above), which a table lookup on the run's ids cannot do. Trimming also changes nothing a model
computes on its training text, so trimming after distillation gives the same model that trimming
before the last stage would; as a final step the run stays one-tokenizer, and the result is a
standalone directory (model, tokenizer, trim.json) that loads with the Auto classes and scores
with the run's own evaluation code (`evaluation.scoring.score_split`), which `trim_model_dir` runs for the
original and the trimmed model on the recipe's report split.

Supported tokenizers: fast (tokenizers-backed) WordPiece (BERT, mBERT, DistilBERT) and Unigram
(XLM-R, SentencePiece) models; BPE vocabularies (GPT-2, RoBERTa) need their merges rewritten and are
refused with a clear error.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections import Counter
from pathlib import Path

import torch

from cascade_kd.config.schema import Recipe, load_recipe, recipe_name
from cascade_kd.data.task import load_task_data
from cascade_kd.deploy.export import find_run_dir, model_task
from cascade_kd.deploy.paths import SOURCE_KEY, TRIM_INFO, trim_dir, weights_digest
from cascade_kd.errors import UserError
from cascade_kd.evaluation.scoring import score_split
from cascade_kd.fileio import weights_size
from cascade_kd.outdir import check_output, info_file_with, replace_output
from cascade_kd.students import count_parameters
from cascade_kd.students.hub import CHECKPOINT_FILE, config_labels, load_checkpoint

DEFAULT_MAX_UNK_INCREASE = 1.0  # percentage points of held-out pieces that become [UNK]
TASK_NAMES = {"token": "token classifier", "sequence": "sequence classifier", "mlm": "masked-LM model"}

# ---------------------------------------------------------------------------------------------
# Text


def _encode_ids(tokenizer, items: list, *, special: bool) -> list[list[int]]:
    """Piece ids of each item: a text, a list of words (token tasks) or a (text, pair) tuple; all
    items of one kind."""
    if not items:
        return []
    kwargs = {"add_special_tokens": special, "truncation": False, "verbose": False}
    first = items[0]
    if isinstance(first, list):
        return tokenizer(items, is_split_into_words=True, **kwargs)["input_ids"]
    if isinstance(first, tuple):
        return tokenizer([a for a, _ in items], [b for _, b in items], **kwargs)["input_ids"]
    return tokenizer(list(items), **kwargs)["input_ids"]


def example_items(examples) -> list:
    """cascade_kd Examples as tokenizer inputs (word lists, texts or (text, pair) tuples)."""
    return [ex.tokens if ex.tokens is not None else (ex.text, ex.text_pair) if ex.text_pair is not None else ex.text
            for ex in examples]


def piece_counts(tokenizer, items: list) -> Counter:
    return Counter(i for ids in _encode_ids(tokenizer, items, special=False) for i in ids)


def coverage(tokenizer, items: list, kept: set[int] | None = None) -> dict:
    """Pieces of `items` (no special tokens added), how many are [UNK], and (with `kept`, old ids)
    how many would be dropped by a trim keeping `kept`."""
    ids = [i for row in _encode_ids(tokenizer, items, special=False) for i in row]
    unk = tokenizer.unk_token_id
    out = {"pieces": len(ids), "unk": sum(i == unk for i in ids)}
    out["unk_share"] = out["unk"] / len(ids) if ids else 0.0
    if kept is not None:
        dropped = sum(i not in kept for i in ids)
        out["dropped_share"] = dropped / len(ids) if ids else 0.0
    return out


# ---------------------------------------------------------------------------------------------
# The tokenizer


def _remap_processor(node, old2new: dict[int, int]):
    """Special-token ids inside a post-processor (TemplateProcessing, Bert/RobertaProcessing, Sequence)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "ids" and isinstance(value, list):
                out[key] = [old2new[i] for i in value]
            elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                out[key] = [value[0], old2new[value[1]]]
            else:
                out[key] = _remap_processor(value, old2new)
        return out
    if isinstance(node, list):
        return [_remap_processor(v, old2new) for v in node]
    return node


def trimmed_tokenizer_json(tokenizer, kept: list[int]) -> str:
    """The fast tokenizer's JSON with only the `kept` ids (ascending old ids), renumbered 0..n-1."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"vocabulary trimming needs a fast (tokenizers-backed) tokenizer, not {type(tokenizer).__name__}")
    data = json.loads(backend.to_str())
    old2new = {old: new for new, old in enumerate(kept)}
    model = data["model"]
    kind = model.get("type")
    if kind == "WordPiece":
        id2token = {i: t for t, i in model["vocab"].items()}
        model["vocab"] = {id2token[old]: new for old, new in old2new.items() if old in id2token}
    elif kind == "Unigram":
        vocab = model["vocab"]
        model["vocab"] = [vocab[old] for old in kept if old < len(vocab)]
        if model.get("unk_id") is not None:
            model["unk_id"] = old2new[model["unk_id"]]
    else:
        raise UserError(f"cannot trim a {kind} vocabulary (its merges would need rewriting)",
                        hint="trimming supports WordPiece (BERT, mBERT) and Unigram (XLM-R, SentencePiece) tokenizers")
    for token in data.get("added_tokens") or []:
        token["id"] = old2new[token["id"]]
    if data.get("post_processor") is not None:
        data["post_processor"] = _remap_processor(data["post_processor"], old2new)
    if data.get("padding") and data["padding"].get("pad_id") is not None:
        data["padding"]["pad_id"] = old2new[data["padding"]["pad_id"]]
    return json.dumps(data, ensure_ascii=False)


def trim_tokenizer(tokenizer, kept: list[int]):
    """A Hugging Face tokenizer of the same class and settings over the kept pieces (new ids).
    Built through save_pretrained with every id-bearing file rewritten (tokenizer.json, vocab.txt,
    added_tokens_decoder), loaded back with AutoTokenizer and checked against the intended vocabulary."""
    from transformers import AutoTokenizer

    text = trimmed_tokenizer_json(tokenizer, kept)
    old2new = {old: new for new, old in enumerate(kept)}
    id2token = {i: t for t, i in tokenizer.get_vocab().items()}
    wanted = {id2token[old]: new for old, new in old2new.items()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "tokenizer.json").write_text(text, encoding="utf-8")
        if (tmp / "vocab.txt").is_file():  # WordPiece's slow-format vocabulary: one piece per line, in id order
            (tmp / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in sorted(wanted.items(), key=lambda kv: kv[1])),
                                           encoding="utf-8")
        for stale in list(tmp.glob("*.model")):  # a SentencePiece model would describe the old vocabulary
            stale.unlink()
        config_path = tmp / "tokenizer_config.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text(encoding="utf-8"))
            if "added_tokens_decoder" in config:
                config["added_tokens_decoder"] = {str(old2new[int(k)]): v for k, v in config["added_tokens_decoder"].items()}
            config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
        trimmed = AutoTokenizer.from_pretrained(tmp)
    if trimmed.get_vocab() != wanted:
        raise RuntimeError("the rebuilt tokenizer's vocabulary is not the kept pieces in the new order")
    return trimmed


# ---------------------------------------------------------------------------------------------
# The model

_SPECIAL_CONFIG_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                       "decoder_start_token_id", "mask_token_id", "unk_token_id")


@torch.no_grad()
def trim_model(model, kept: list[int]):
    """A copy of `model` whose vocabulary is the `kept` ids (ascending old ids), renumbered 0..n-1:
    word-embedding rows (and MLM output rows and biases, tied or not) taken from the original;
    every other tensor unchanged. Special-token ids in the config are renumbered."""
    old_vocab = model.get_input_embeddings().weight.shape[0]
    index = torch.tensor(kept, dtype=torch.long)
    old2new = {old: new for new, old in enumerate(kept)}
    vocab_tensors = {id(model.get_input_embeddings().weight)}
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None:
        vocab_tensors |= {id(t) for t in (output.weight, getattr(output, "bias", None)) if t is not None}
    names = {name for name, p in model.named_parameters(remove_duplicate=False) if id(p) in vocab_tensors}
    # an LM head's separate bias (BERT's cls.predictions.bias, tied to decoder.bias)
    names |= {name for name, p in model.named_parameters(remove_duplicate=False)
              if p.dim() == 1 and p.shape[0] == old_vocab and ("predictions" in name or "lm_head" in name)}
    state = {k: (v.index_select(0, index).clone() if k in names else v) for k, v in model.state_dict().items()}
    config = copy.deepcopy(model.config)
    config.vocab_size = len(kept)
    for key in _SPECIAL_CONFIG_IDS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value in old2new:
            setattr(config, key, old2new[value])
    trimmed = type(model)(config).to(next(model.parameters()).dtype)
    trimmed.load_state_dict(state, strict=True)
    for p, q in zip(model.parameters(), trimmed.parameters()):
        q.requires_grad_(p.requires_grad)
    return trimmed.train(model.training)


# ---------------------------------------------------------------------------------------------
# Both, with the coverage report


def kept_ids(tokenizer, texts_by_language: dict[str, list], *, min_count: int = 1) -> list[int]:
    """Ascending ids of every special and added token plus every piece seen at least `min_count`
    times in the texts."""
    counts = Counter()
    for items in texts_by_language.values():
        counts.update(piece_counts(tokenizer, items))
    keep = {i for i, n in counts.items() if n >= min_count}
    keep |= set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    if tokenizer.unk_token_id is not None:
        keep.add(tokenizer.unk_token_id)
    return sorted(keep)


def trim_vocabulary(model, tokenizer, texts_by_language: dict[str, list], *, heldout_by_language: dict[str, list] | None = None,
                    min_count: int = 1, max_unk_increase: float = DEFAULT_MAX_UNK_INCREASE, say=print):
    """Trim `model` and `tokenizer` to the pieces `texts_by_language` use (the chosen languages'
    training text: texts, word lists or (text, pair) tuples). Returns (model, tokenizer, report);
    the originals are untouched. `heldout_by_language` (any languages, chosen or not) gives the
    coverage report; a chosen language whose held-out [UNK] share rises by more than
    `max_unk_increase` points gets a WARNING line and an entry in report['warnings']."""
    kept = kept_ids(tokenizer, texts_by_language, min_count=min_count)
    old2new = {old: new for new, old in enumerate(kept)}
    new_model = trim_model(model, kept)
    new_tokenizer = trim_tokenizer(tokenizer, kept)
    # the promise: kept text reads the same pieces, under their new ids
    for lang, items in texts_by_language.items():
        sample = items[:200]
        before = _encode_ids(tokenizer, sample, special=True)
        after = _encode_ids(new_tokenizer, sample, special=True)
        if any(b and [old2new.get(i, -1) for i in b] != a for b, a in zip(before, after)):
            raise RuntimeError(f"the trimmed tokenizer reads {lang!r} training text differently from the original")
    before, after = count_parameters(model), count_parameters(new_model)
    report = {
        "languages": sorted(texts_by_language), "min_count": min_count, "max_unk_increase_pp": max_unk_increase,
        "vocab_before": len(tokenizer), "vocab_after": len(kept),
        "params_before": before["params_total"], "params_after": after["params_total"],
        "params_embedding_before": before["params_embedding"], "params_embedding_after": after["params_embedding"],
        "params_saved_share": 1 - after["params_total"] / before["params_total"],
        "coverage": {}, "warnings": [],
    }
    say(f"trim: kept {len(kept):,} of {len(tokenizer):,} word pieces (the pieces of {', '.join(report['languages'])} "
        f"training text, seen at least {min_count}x, and every special token); parameters {before['params_total']:,} -> "
        f"{after['params_total']:,} ({100 * report['params_saved_share']:.1f}% fewer)")
    keep = set(kept)
    for lang, items in (heldout_by_language or {}).items():
        old = coverage(tokenizer, items, keep)
        new = coverage(new_tokenizer, items)
        chosen = lang in texts_by_language
        increase = 100 * (new["unk_share"] - old["unk_share"])
        row = {"chosen": chosen, "pieces_before": old["pieces"], "pieces_after": new["pieces"],
               "unk_share_before": old["unk_share"], "unk_share_after": new["unk_share"],
               "unk_increase_pp": increase, "dropped_share": old["dropped_share"],
               "hurt": chosen and increase > max_unk_increase}
        report["coverage"][lang] = row
        line = (f"{lang}: held-out [UNK] {100 * old['unk_share']:.2f}% -> {100 * new['unk_share']:.2f}% "
                f"({increase:+.2f} points); {100 * old['dropped_share']:.2f}% of its pieces were dropped")
        if row["hurt"]:
            message = f"trimming hurts chosen language {line} (more than +{max_unk_increase:g} allowed)"
            report["warnings"].append(message)
            say(f"WARNING: {message}")
        else:
            say(f"trim: {line}" + ("" if chosen else " (not a chosen language)"))
    return new_model, new_tokenizer, report


# ---------------------------------------------------------------------------------------------
# A saved model of a run: `cascade-kd trim MODEL_DIR`


def trim_model_dir(model_dir: Path, out: Path | None = None, *, recipe_path: Path | Recipe | None = None,
                   languages: list[str] | None = None, min_count: int = 1,
                   max_unk_increase: float = DEFAULT_MAX_UNK_INCREASE, score: bool = True, strict: bool = False,
                   overwrite: bool = False, with_transfer: bool = True, say=print) -> dict:
    """Trim a saved model of a run (RUN_DIR/teacher or RUN_DIR/stages/NAME) to the word pieces of the
    chosen languages' training data, its unlabelled transfer text included unless with_transfer is
    False (default: all the recipe's training languages, data.train_languages; the recipe defaults to
    RUN_DIR/recipe.yaml), report coverage on the held-out split (test, else dev) of every language,
    score the original and the trimmed model there (unless score=False), and write model, tokenizer
    and trim.json to `out` (default MODEL_DIR/trimmed), atomically. Returns the report."""
    model_dir = Path(model_dir)
    task = model_task(model_dir, command="trim")  # a saved model, or a UserError that says what is missing
    found = claim_trim_dir(model_dir, out, overwrite=overwrite)
    out = found.path
    if min_count < 1:
        raise UserError(f"--min-count must be at least 1, not {min_count}")
    if recipe_path is None:
        run_dir = find_run_dir(model_dir)
        if run_dir is None:
            raise UserError("no recipe to read the training data from", where=str(model_dir),
                            hint="give --recipe (the run's RUN_DIR/recipe.yaml names its data)")
        recipe_path = run_dir / "recipe.yaml"
    recipe = load_recipe(recipe_path)
    data = load_task_data(recipe)
    if {"pair": "sequence"}.get(data.task, data.task) != task:  # sentence-pair models are sequence classifiers
        raise UserError(f"the model is a {TASK_NAMES[task]} and the recipe's task is {data.task}",
                        where=str(model_dir), hint="give the recipe of the run that trained this model (--recipe)")
    chosen = list(languages or data.train_languages)  # default: every language with training text
    unknown = [lang for lang in chosen if lang not in data.splits["train"]]
    if unknown:
        raise UserError(f"no training data for {', '.join(unknown)} in the recipe", where=recipe_name(recipe_path),
                        hint=f"choose among {', '.join(data.splits['train'])}")
    split = "test" if "test" in data.splits else "dev"
    from transformers import AutoTokenizer

    source = weights_digest(model_dir)  # recorded in trim.json: the copy is this model's until it is trained again
    model = load_checkpoint(model_dir, task)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the model's tokenizer: {str(exc).splitlines()[0]}", where=str(model_dir)) from None
    train = {lang: example_items(data.splits["train"][lang]) for lang in chosen}
    # the unlabelled transfer text (XtremeDistil) trained the student's embeddings too: its pieces stay
    transfer = {lang: examples for lang, examples in data.transfer.items() if languages is None or lang in chosen}
    if transfer and with_transfer:
        for lang, examples in transfer.items():
            train[lang] = train.get(lang, []) + example_items(examples)
        say(f"trim: the pieces of the transfer text ({', '.join(transfer)}) are kept too (--no-transfer: labelled text only)")
    uncovered = [lang for lang in data.zero_shot_languages if lang not in train]
    if uncovered:  # the pieces only a zero-shot language uses go: its [UNK] share below says how much that costs
        say(f"trim: {len(uncovered)} zero-shot language(s) of the recipe ({', '.join(uncovered[:8])}"
            f"{' ...' if len(uncovered) > 8 else ''}) have no text here: pieces only they use are dropped "
            "(give their unlabelled text as data.transfer to keep them)")
    heldout = {lang: example_items(examples) for lang, examples in data.splits[split].items()}
    new_model, new_tokenizer, report = trim_vocabulary(model, tokenizer, train, heldout_by_language=heldout,
                                                       min_count=min_count, max_unk_increase=max_unk_increase, say=say)
    report.update(model_dir=str(model_dir), **{SOURCE_KEY: source}, recipe=recipe_name(recipe_path), heldout_split=split,
                  transfer_included=sorted(transfer) if with_transfer else [])
    if score:
        labels = config_labels(model.config) if task != "mlm" else []  # a masked-LM head predicts pieces
        if set(labels) != set(data.labels):
            raise UserError(f"the model's labels ({', '.join(labels)}) are not the recipe's", where=str(model_dir))
        report["scores_before"] = score_split(model, tokenizer, recipe, data, split, labels=labels)
        report["scores_after"] = score_split(new_model, new_tokenizer, recipe, data, split, labels=labels)
        for lang in report["scores_before"]:
            say(f"trim: {lang} {split} score {100 * report['scores_before'][lang]:.1f} -> "
                f"{100 * report['scores_after'][lang]:.1f}" + ("" if lang in chosen else " (not a chosen language)"))
    if strict and report["warnings"]:
        raise UserError(f"trimming hurts {len(report['warnings'])} chosen language(s): {report['warnings'][0]}; "
                        "nothing written", where=str(model_dir), hint="choose more languages, or drop --strict")
    before = weights_size(model_dir)
    # model, tokenizer, trim.json and the marker in one atomic directory: all or nothing is written
    with replace_output(found, "trim", _trim_file) as tmp:
        new_model.config.architectures = [type(new_model).__name__]
        new_model.save_pretrained(tmp, safe_serialization=True)
        new_tokenizer.save_pretrained(tmp)
        after = weights_size(tmp)
        report.update(size_mb_before=before / 2**20, size_mb_after=after / 2**20, size_saved_share=1 - after / before)
        (tmp / TRIM_INFO).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    say(f"trim: weights {before / 2**20:.2f} MB -> {after / 2**20:.2f} MB; written {out}"
        + (f"; {len(report['warnings'])} WARNING(S) above" if report["warnings"] else ""))
    return report


def claim_trim_dir(model_dir: Path, out: Path | None, *, overwrite: bool):
    """Where a trimmed model may go: a new or empty folder (default MODEL_DIR/trimmed), or an earlier
    trim (replaced with --overwrite, its own files only); never the model directory itself."""
    out = trim_dir(model_dir, out)
    return check_output(out, "trim", overwrite=overwrite, inputs={"model directory": Path(model_dir)},
                        legacy=_legacy_trim, exists_message="a trimmed model already exists there")


def _trim_file(name: str) -> bool:
    """A file a trim writes (to recognise a trim made before markers)."""
    return name == TRIM_INFO or bool(CHECKPOINT_FILE.match(name))


def _legacy_trim(path: Path) -> bool:
    """A trimmed model written before markers: its trim.json (with the vocabulary sizes) is there."""
    return info_file_with(path / TRIM_INFO, "vocab_after")

