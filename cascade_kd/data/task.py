"""Load a recipe's task data: every split in every language, checked before any training starts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from cascade_kd.data.readers import (
    Example,
    _excerpt,
    read_examples,
    read_label_file,
    read_transfer_text,
)
from cascade_kd.errors import DataError, RecipeError
from cascade_kd.config.schema import Recipe, where

SPLITS = ("train", "dev", "test")


@dataclass
class TaskData:
    """All examples of a task, split -> language -> examples, plus the label set."""

    task: str
    labels: list[str]
    languages: list[str]  # the evaluation languages (data.languages)
    splits: dict[str, dict[str, list[Example]]] = field(default_factory=dict)
    transfer: dict[str, list[Example]] = field(default_factory=dict)  # lang -> unlabelled examples
    warnings: list[str] = field(default_factory=list)  # what the user should know about the data read
    notes: list[str] = field(default_factory=list)  # what was read and left out, for the log

    @property
    def train_languages(self) -> list[str]:
        """The languages with labelled training data (data.train_languages, default: all)."""
        return list(self.splits.get("train", {}))

    @property
    def zero_shot_languages(self) -> list[str]:
        """The evaluation languages without labelled training data."""
        return [lang for lang in self.languages if lang not in self.splits.get("train", {})]

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def digests(self) -> dict[str, dict[str, str]]:
        """A hash of the examples read, per split and language (and of the transfer text): a resumed
        run compares them with its manifest's, so that data edited in place since it started is
        not trained on half-way (finished models would come from the old data)."""
        groups = {**self.splits, **({"transfer": self.transfer} if self.transfer else {})}
        return {split: {lang: _digest(examples) for lang, examples in per_lang.items()}
                for split, per_lang in groups.items()}

    def source_file(self, split: str, lang: str) -> str | None:
        """The file a split's examples in `lang` were read from, for messages."""
        examples = (self.transfer if split == "transfer" else self.splits.get(split, {})).get(lang) or []
        return examples[0].source.rsplit(":", 1)[0] if examples else None

    def sizes(self) -> dict[str, dict[str, int]]:
        sizes = {split: {lang: len(ex) for lang, ex in per_lang.items()} for split, per_lang in self.splits.items()}
        if self.transfer:
            sizes["transfer"] = {lang: len(ex) for lang, ex in self.transfer.items()}
        return sizes


def _digest(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    for ex in examples:  # what training reads of an example; its source (file:line) is not its content
        digest.update(json.dumps([ex.text, ex.text_pair, ex.label, ex.tokens, ex.tags], ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def split_languages(recipe: Recipe, split: str) -> list[str]:
    """The languages a split is read for: train only for the training languages (data.train_languages),
    dev and test for every evaluation language (data.languages)."""
    return recipe.data.training_languages if split == "train" else list(recipe.data.languages)


def _zero_shot_hint(recipe: Recipe, split: str, lang: str) -> str:
    """For a training file that is missing: the language may be meant to be evaluated zero-shot."""
    if split != "train" or recipe.data.train_languages is not None or recipe.task.type == "mlm":
        return ""  # masked-LM text has no labels: it has no zero-shot languages either
    return f"; or, if {lang!r} has no labelled training data, list the languages that do in data.train_languages"


def _path_for(recipe: Recipe, split: str, lang: str) -> Path | None:
    spec = getattr(recipe.data, split)
    if spec is None:
        return None
    if isinstance(spec, dict):
        if lang not in spec:
            raise RecipeError(
                f"no {split} file for language {lang!r}",
                where=where(recipe, "data", split),
                hint=f"add '{lang}: PATH' or use a template with {{lang}}" + _zero_shot_hint(recipe, split, lang),
            )
        raw = spec[lang]
    else:
        n_languages = len(split_languages(recipe, split)) if split in SPLITS else len(recipe.data.languages)
        if "{lang}" not in spec and n_languages > 1:
            raise RecipeError(
                f"the {split} path has no {{lang}} placeholder but {n_languages} languages are listed",
                where=where(recipe, "data", split),
                hint="write e.g. data/train-{lang}.tsv, or give a mapping lang: path",
            )
        raw = spec.replace("{lang}", lang)
    try:
        path = Path(raw).expanduser()
    except RuntimeError:  # "~name/..." of a user this machine does not know
        raise RecipeError(
            f"the {split} path {raw!r} starts with the home directory of an unknown user",
            where=where(recipe, "data", split),
            hint=f"write the path in full, or relative to {recipe.base_dir}",
        ) from None
    return path if path.is_absolute() else recipe.base_dir / path


def _require_file(recipe: Recipe, key: str, lang: str, path: Path) -> None:
    try:
        exists = path.exists()
    except OSError:  # e.g. a name too long for the file system: the reader says why it cannot read it
        exists = True
    if not exists:  # the reader's hint speaks of the working directory: the recipe's base_dir is what counts
        raise DataError(
            f"{key} file of {lang!r} not found", where=str(path),
            hint=f"check {where(recipe, 'data', key)}; relative paths start from {recipe.base_dir}"
            + _zero_shot_hint(recipe, key, lang),
        )


def _read_local(recipe: Recipe, split: str, lang: str) -> list[Example] | None:
    path = _path_for(recipe, split, lang)
    if path is None:
        return None
    _require_file(recipe, split, lang, path)
    data = recipe.data
    limit = data.max_train_per_language if split == "train" else data.max_eval_per_language
    if split == "dev" and data.holdout_from_dev:
        limit = None  # the cap applies after the split, so the held-out part is always the same
    if data.format == "text":  # masked-LM text: one example per line, no labels
        return _cap(read_transfer_text(path, task="sequence", lang=lang, encoding=data.encoding,
                                       limit=limit if data.cap == "first" else None), limit, data.cap, f"{split}-{lang}")
    return _cap(read_examples(
        path,
        fmt=data.format,
        task=recipe.task.type,
        lang=lang,
        text_column=data.text_column,
        text_pair_column=data.text_pair_column,
        label_column=data.label_column,
        header=data.header,
        quoting=data.quoting,
        encoding=data.encoding,
        limit=limit if data.cap == "first" else None,  # first: reading stops at the cap
    ), limit, data.cap, f"{split}-{lang}")


def _cap(examples: list[Example], limit: int | None, how: str, key: str) -> list[Example]:
    """At most `limit` examples: the first ones, or (`cap: sample`) a seeded sample in file order.
    The sample's seed is the split and language, not the run's seed: every run sees the same data."""
    import random

    if limit is None or len(examples) <= limit:
        return examples
    if how == "first":
        return examples[:limit]
    return [examples[i] for i in sorted(random.Random(f"cap-{key}").sample(range(len(examples)), limit))]


def _dropped_labels(recipe: Recipe, split: str, lang: str, kept: list[Example]) -> list[str]:
    """Labels of a capped (cap: first) sequence-level split that the cap left out: a file sorted by
    label loses whole classes to a cap on its first rows."""
    data = recipe.data
    if data.cap != "first" or recipe.task.type not in ("sequence", "pair") or data.format == "hf":
        return []
    limit = data.max_train_per_language if split == "train" else data.max_eval_per_language
    if limit is None or len(kept) < limit or (split == "dev" and data.holdout_from_dev):
        return []  # not cut (held-out dev is cut after a shuffle)
    uncapped = data.model_copy(update={"max_train_per_language": None, "max_eval_per_language": None})
    full = _read_local(recipe.model_copy(update={"data": uncapped}), split, lang)
    return sorted({e.label for e in full} - {e.label for e in kept})


def _read_hub(recipe: Recipe, split: str, lang: str) -> list[Example] | None:
    """A split of a Hugging Face dataset (online users; offline with the 'json'/'csv' builders)."""
    hub = recipe.data.hf
    if split not in hub.splits:
        return None
    try:
        import datasets
    except ImportError:
        raise RecipeError(
            "data.format: hf needs the datasets package", where=where(recipe, "data", "format"),
            hint="pip install 'cascade-kd[hub]'",
        ) from None
    name = hub.name.replace("{lang}", lang) if hub.name else None
    files = {k: str(recipe.base_dir / v.replace("{lang}", lang)) for k, v in (hub.data_files or {}).items()} or None
    try:
        ds = datasets.load_dataset(hub.path, name, data_files=files, split=hub.splits[split])
    except Exception as exc:  # noqa: BLE001 - any loading failure is the user's dataset spec
        raise DataError(f"cannot load {hub.path} ({name}) split {hub.splits[split]!r}: {exc}",
                        where=where(recipe, "data", "hf")) from None
    task, data = recipe.task.type, recipe.data
    text_col = data.text_column or ("tokens" if task == "token" else "text")
    label_col = data.label_column or ("ner_tags" if task == "token" else "label")
    pair_col = data.text_pair_column or "text_pair"
    names = getattr(ds.features.get(label_col), "names", None)
    if names is None and task == "token":
        names = getattr(getattr(ds.features.get(label_col), "feature", None), "names", None)

    def as_label(v):
        return names[v] if names is not None and isinstance(v, int) else str(v)

    limit = data.max_train_per_language if split == "train" else data.max_eval_per_language
    examples = []
    for i, row in enumerate(ds):
        if limit and i >= limit:
            break
        source = f"{hub.path}/{name or ''}[{hub.splits[split]}]:{i}"
        if text_col not in row or label_col not in row:
            raise DataError(f"row has no column {text_col!r} or {label_col!r} (columns: {sorted(row)})", where=source)
        if task == "token":
            examples.append(Example(lang=lang, source=source, tokens=list(row[text_col]),
                                    tags=[as_label(t) for t in row[label_col]]))
        else:
            examples.append(Example(lang=lang, source=source, text=row[text_col],
                                    text_pair=row.get(pair_col) if task == "pair" else None,
                                    label=as_label(row[label_col])))
    return examples


def _hold_out(recipe: Recipe, splits) -> None:
    """Carve a test split out of dev (for data with no test files): a fixed, seeded shuffle per
    language, so the same examples are held out on every run and no model selection sees them."""
    import random

    fraction, cap = recipe.data.holdout_from_dev, recipe.data.max_eval_per_language
    splits["test"] = {}
    for lang, examples in splits["dev"].items():
        order = list(range(len(examples)))
        random.Random(f"holdout-{lang}").shuffle(order)  # not the run's seed: every seed sees one test set
        n_test = round(fraction * len(examples))
        if n_test == 0 or n_test == len(examples):
            raise DataError(f"dev of {lang!r} has {len(examples)} examples: too few to hold out {fraction:g} of them",
                            where=where(recipe, "data", "holdout_from_dev"))
        if recipe.data.cap == "sample":  # the cap takes shuffled examples, then file order again
            test, dev = sorted(order[:n_test][:cap]), sorted(order[n_test:][:cap])
        else:
            test, dev = sorted(order[:n_test])[:cap], sorted(order[n_test:])[:cap]
        splits["test"][lang] = [examples[i] for i in test]
        splits["dev"][lang] = [examples[i] for i in dev]


def _labels_of(example: Example) -> list[str]:
    return example.tags if example.tags is not None else [example.label]


def _label_at(recipe: Recipe, example: Example, i: int) -> str:
    """Where label i of an example is: in conll files, tag i is on the i-th line after the first."""
    path, _, first = example.source.rpartition(":")
    if recipe.data.format == "conll" and first.isdigit():
        return f"{path}:{int(first) + i}"
    return example.source


def load_task_data(recipe: Recipe) -> TaskData:
    """Read every split and language; check labels and emptiness. Raises UserError on bad input."""
    _check_format(recipe)
    reader = _read_hub if recipe.data.format == "hf" else _read_local
    splits: dict[str, dict[str, list[Example]]] = {}
    warnings: list[str] = []
    for split in SPLITS:
        per_lang = {}
        for lang in split_languages(recipe, split):  # train: only the training languages
            examples = reader(recipe, split, lang)
            if examples is None:
                continue
            if not examples:
                raise DataError(f"the {split} split of {lang!r} is empty", where=where(recipe, "data", split))
            per_lang[lang] = examples
            dropped = _dropped_labels(recipe, split, lang, examples)
            if dropped:
                cap_key = "max_train_per_language" if split == "train" else "max_eval_per_language"
                warnings.append(f"{where(recipe, 'data', cap_key)}: the first {len(examples)} {split} examples of "
                                f"{lang!r} have no {', '.join(map(repr, dropped))} (the file looks sorted by label); "
                                "set data.cap: sample to draw them at random")
        if per_lang:
            splits[split] = per_lang
    if "train" not in splits:
        raise DataError("no training data", where=where(recipe, "data"), hint="give data.train (or a train split)")
    # what transfer text must not repeat: every example read, and all of dev when test is carved from it
    # (a dev sentence beyond the caps is scored as soon as a cap is raised)
    read = {split: dict(per_lang) for split, per_lang in splits.items()}  # _hold_out replaces dev's lists
    if recipe.data.holdout_from_dev:
        _hold_out(recipe, splits)

    if recipe.task.type == "mlm":  # masked-LM text: the labels are the masked pieces themselves
        return TaskData(task="mlm", labels=[], languages=list(recipe.data.languages), splits=splits)
    labels = _label_set(recipe, splits)
    allowed = set(labels)
    for per_lang in splits.values():
        for examples in per_lang.values():
            for ex in examples:
                for i, label in enumerate(_labels_of(ex)):
                    if label not in allowed:  # (a label from a data file can be any length: shortened)
                        raise DataError(
                            f"label {_excerpt(label)} is not in the label set ({', '.join(labels)})",
                            where=_label_at(recipe, ex, i),
                            hint="add it to task.labels, or fix the row",
                        )
    notes: list[str] = []
    transfer = _read_transfer(recipe, read, notes)
    return TaskData(task=recipe.task.type, labels=labels, languages=list(recipe.data.languages), splits=splits,
                    transfer=transfer, warnings=warnings, notes=notes)


def _check_format(recipe: Recipe) -> None:
    """Plain text holds no labels: it is the data of masked-LM (general) distillation, and only that."""
    mlm, text = recipe.task.type == "mlm", recipe.data.format == "text"
    if mlm and not text:
        raise RecipeError("task type mlm reads plain text, one example per line", where=where(recipe, "data", "format"),
                          hint="set data.format: text")
    if text and not mlm:
        raise RecipeError("data.format: text holds no labels: it is for task type mlm (general distillation)",
                          where=where(recipe, "data", "format"), hint="use tsv, conll or jsonl for a labelled task")
    if recipe.data.transfer is None and recipe.data.transfer_format != "text":
        raise RecipeError("data.transfer_format is set but there is no data.transfer text to read",
                          where=where(recipe, "data", "transfer_format"),
                          hint="give data.transfer (a template with {lang} or a mapping lang: path), or drop the key")
    if mlm and recipe.data.transfer is not None:
        raise RecipeError("data.transfer adds unlabelled text to a labelled task; with type: mlm every text is "
                          "unlabelled", where=where(recipe, "data", "transfer"), hint="give the text as data.train")


def _sentence(example: Example) -> tuple:
    """What makes two examples the same sentence: the words of a token task, the text (and pair) of
    the others, whitespace-normalised (a text file and a labelled file write one sentence alike)."""
    if example.tokens is not None:
        return tuple(example.tokens)
    return (" ".join((example.text or "").split()), " ".join((example.text_pair or "").split()))


def _read_transfer(recipe: Recipe, read: dict[str, dict[str, list[Example]]],
                   notes: list[str]) -> dict[str, list[Example]]:
    """data.transfer: unlabelled text per language (any languages when given as a mapping).

    A sentence met before in its language is left out: a repeat in the same file, or an example in
    `read` (split -> language -> examples: the labelled training examples and the dev and test ones,
    all of dev where test is held out from it), since the teacher's outputs on scored text would
    flatter the scores. Other languages are not compared: PAN-X alone holds hundreds of one-name
    lines that occur in many languages' files. `max_transfer_per_language` counts the sentences
    kept. A language whose every sentence is left out (English, when the template also names its
    labelled train file) gets none."""
    spec, data = recipe.data.transfer, recipe.data
    if spec is None:
        return {}
    out, empty, left_out = {}, [], {"labelled_or_scored": 0, "repeated": 0}
    for lang in (spec if isinstance(spec, dict) else recipe.data.languages):
        met = {_sentence(ex) for per_lang in read.values() for ex in per_lang.get(lang, ())}
        path = _path_for(recipe, "transfer", lang)
        _require_file(recipe, "transfer", lang, path)
        counts = {"read": 0, "repeated": 0, "labelled_or_scored": 0}
        own: set[tuple] = set()

        def keep(example: Example) -> bool:
            counts["read"] += 1
            key = _sentence(example)
            if key in met:
                counts["labelled_or_scored"] += 1
                return False
            if key in own:
                counts["repeated"] += 1
                return False
            own.add(key)
            return True

        if data.transfer_format == "text":
            examples = read_transfer_text(path, task=recipe.task.type, lang=lang, encoding=data.encoding,
                                          limit=data.max_transfer_per_language, keep=keep)
        else:  # a labelled file: its labels are read (and checked for shape) but never used
            # the data section's column settings describe files of its own format only
            same = data.transfer_format == data.format
            settings = dict(text_column=data.text_column, text_pair_column=data.text_pair_column,
                            label_column=data.label_column, header=data.header, quoting=data.quoting) if same else {}
            try:
                labelled = read_examples(path, fmt=data.transfer_format, task=recipe.task.type, lang=lang,
                                         encoding=data.encoding, limit=data.max_transfer_per_language, keep=keep,
                                         **settings)
            except DataError as err:
                raise DataError(err.message, where=err.where, hint=(f"{err.hint}; " if err.hint else "") + (
                    f"data.transfer_format: {data.transfer_format} reads the transfer files as labelled files "
                    + ("with this section's column settings" if same else f"with {data.transfer_format}'s defaults")
                    + ", label included; for text without labels use transfer_format: text")) from None
            examples = [Example(lang=lang, source=ex.source, text=ex.text, text_pair=ex.text_pair, tokens=ex.tokens)
                        for ex in labelled]
        if not counts["read"]:
            raise DataError(f"the transfer file of {lang!r} has no text", where=str(path))
        for key in left_out:
            left_out[key] += counts[key]
        if examples:
            out[lang] = examples
        else:
            empty.append(lang)
    if any(left_out.values()):  # one line for all languages: a PAN-X recipe names 40
        notes.append(f"transfer: kept {sum(map(len, out.values())):,} sentence(s) in {len(out)} language(s); left out "
                     f"{left_out['labelled_or_scored']:,} already among their language's labelled training, dev or "
                     f"test examples and {left_out['repeated']:,} repeated"
                     + (f"; none left in {', '.join(empty)}" if empty else ""))
    if not out:
        raise DataError("data.transfer: every transfer sentence is already a labelled training, dev or test example "
                        "of its language (or a repeat), so none is left to distil on",
                        where=where(recipe, "data", "transfer"),
                        hint="point data.transfer at text that is not the task's own data, or remove the key")
    return out


def _label_set(recipe: Recipe, splits) -> list[str]:
    task = recipe.task
    if task.labels is not None:
        return list(task.labels)
    if task.labels_file is not None:
        path = Path(task.labels_file)
        path = path if path.is_absolute() else recipe.base_dir / path
        if not path.exists():  # the recipe's key and where relative paths start, as for a data file
            raise DataError("the label file is not found", where=str(path),
                            hint=f"check {where(recipe, 'task', 'labels_file')}; relative paths start from {recipe.base_dir}")
        return read_label_file(path)
    # Inferred from train: every language must use the same labels, or the task is ill-defined
    per_lang = {lang: sorted({l for ex in exs for l in _labels_of(ex)}) for lang, exs in splits["train"].items()}
    reference_lang, reference = next(iter(per_lang.items()))
    for lang, labels in per_lang.items():
        if labels != reference:
            missing = sorted(set(reference) - set(labels))
            extra = sorted(set(labels) - set(reference))
            first = next((_label_at(recipe, ex, i) for ex in splits["train"][lang]
                          for i, label in enumerate(_labels_of(ex)) if label in extra), None)
            raise DataError(
                f"labels differ between languages: {lang!r} vs {reference_lang!r}"
                + (f"; {lang} lacks {missing}" if missing else "")
                + (f"; {lang} adds {extra}" if extra else "")
                + (f", first at {first}" if first else ""),
                where=where(recipe, "data", "train"),
                hint="list the full label set in task.labels if some languages lack a label",
            )
    if len(reference) < 2:
        raise DataError(f"the training data has only the label {reference}", where=where(recipe, "data", "train"))
    if task.type == "token" and "O" in reference:  # keep O first: the conventional id 0
        reference = ["O"] + [l for l in reference if l != "O"]
    return reference
