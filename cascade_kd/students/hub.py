"""Models in and out: load a tokenizer or a pretrained model, create one from a config, save and
reload checkpoints (safetensors, written atomically) with the plain transformers Auto classes."""

from __future__ import annotations

import filecmp
import json
import os
import re
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import torch

from cascade_kd.errors import RecipeError, UserError
from cascade_kd import plugins
from cascade_kd.fileio import atomic_directory, looks_like_path, read_json_record
from cascade_kd.plugins import PluginError, load_plugins
from cascade_kd.students.anatomy import ffn_attr

# Weights in pickle-based formats: torch.load would unpickle them, and unpickling can run code
PICKLED_WEIGHTS = re.compile(r".*\.(bin|pt|pth|ckpt|pkl|pickle)$")
# What save_pretrained writes for a model and its tokenizer (to recognise a checkpoint's files in
# a directory written before checkpoints listed their files)
CHECKPOINT_FILE = re.compile(r"^(config\.json|generation_config\.json|model(-\d+-of-\d+)?\.safetensors"
                             r"|model\.safetensors\.index\.json|projections\.safetensors|stage\.json|tokenizer.*"
                             r"|special_tokens_map\.json|added_tokens\.json|vocab\.(txt|json)|merges\.txt"
                             r"|sentencepiece.*\.model|spiece\.model|chat_template.*)$")


def auto_class(task: str):
    from transformers import (
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    if task == "mlm":  # general distillation / pretraining: the encoder with its masked-LM head
        return AutoModelForMaskedLM
    return AutoModelForTokenClassification if task == "token" else AutoModelForSequenceClassification

def local_path_missing(name_or_path: str) -> bool:
    """A reference that can only be a local path (`fileio.looks_like_path`) and names nothing: say
    so, rather than pass on the hub's complaint about a repo id."""
    return looks_like_path(name_or_path) and not os.path.exists(os.path.expanduser(name_or_path))


def not_found_offline(name_or_path: str, what: str) -> str | None:
    """Why a reference that is neither a local directory nor, offline, a hub model in the cache
    cannot load, in one short line (rather than the hub client's paragraph); None otherwise."""
    import huggingface_hub

    if os.path.exists(os.path.expanduser(name_or_path)) or not huggingface_hub.is_offline_mode():
        return None
    try:  # a model in the cache failed for a reason of its own: the loader's message says which
        if any(isinstance(huggingface_hub.try_to_load_from_cache(name_or_path, name), str)
               for name in ("config.json", "tokenizer_config.json")):
            return None
    except ValueError:  # not a valid repo id either
        pass
    return (f"no {what} at {name_or_path!r}: no such local directory, and offline (HF_HUB_OFFLINE) "
            "no hub model of that name is in the cache")


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False, where: str = "teacher.tokenizer"):
    """The tokenizer of a local directory or hub name; `where` places a RecipeError (the recipe's key)."""
    from transformers import AutoTokenizer

    hint = "give a local directory with tokenizer files, or a hub name when online"
    if local_path_missing(name_or_path):
        raise RecipeError(f"no tokenizer at {name_or_path!r}: no such directory", where=where, hint=hint)
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise RecipeError(not_found_offline(name_or_path, "tokenizer")
                          or f"cannot load the tokenizer {name_or_path!r}: {first_line(exc)}", where=where,
                          hint=hint) from None


def has_task_head(config, task: str, labels: list[str]) -> bool:
    """Whether a saved model's config has a head of this task for exactly these labels (in this
    order): such a teacher is used as it is under `finetune: auto`."""
    head = "ForTokenClassification" if task == "token" else "ForSequenceClassification"
    return any(a.endswith(head) for a in (config.architectures or [])) and config_labels(config) == list(labels)


def label_config(labels: list[str]) -> dict:
    return {
        "num_labels": len(labels),
        "id2label": {i: label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
    }

def config_labels(config) -> list[str]:
    """A checkpoint's label names in id order ([] when it has none)."""
    id2label = getattr(config, "id2label", None) or {}
    return [id2label[i] for i in sorted(id2label)]

def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file (truncated, garbage header, not one at all), or None.
    Read from its header alone: 8 bytes of length, a JSON header, then exactly the tensor bytes
    the header describes."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"{size} bytes: too short for a safetensors file (empty or truncated)"
            length = int.from_bytes(head, "little")
            if length < 2 or length > min(size - 8, 100 * 2**20):
                return (f"not a safetensors file, or truncated: its header length field says {length:,} bytes, "
                        f"the file has {size:,}")
            header = json.loads(handle.read(length).decode("utf-8"))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    except (ValueError, UnicodeDecodeError):
        return "its header is not valid JSON: not a safetensors file, or damaged"
    if not isinstance(header, dict):
        return "its header is not a JSON object: not a safetensors file"
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            return f"its header is malformed at tensor {name[:60]!r}"
        end = max(end, offsets[1])
    if 8 + length + end != size:
        return (f"truncated: its header describes {8 + length + end:,} bytes, the file has {size:,}"
                if size < 8 + length + end else
                f"{size - 8 - length - end:,} bytes longer than its header describes (damaged)")
    return None


def checkpoint_problem(directory: Path) -> tuple[Path, str] | None:
    """(file, what is wrong) for a model directory that cannot be loaded as saved, else None:
    config.json must be a JSON object and the weights safetensors files, each intact. Weights only
    in a pickle format (pytorch_model.bin) are refused: cascade-kd never unpickles."""
    directory = Path(directory)
    config = directory / "config.json"
    if not config.is_file():
        return config, "missing"
    try:
        if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
            return config, "not a JSON object"
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return config, f"not valid JSON ({type(exc).__name__})"
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.name for p in directory.iterdir() if PICKLED_WEIGHTS.match(p.name))
        if pickled:
            return directory / pickled[0], "PICKLED"
        return directory, "no model.safetensors (weights are read from safetensors only)"
    for path in weights:
        problem = safetensors_problem(path)
        if problem:
            return path, problem
    return shard_index_problem(directory)


def shard_index_problem(directory: Path) -> tuple[Path, str] | None:
    """(file, what is wrong) where a checkpoint has neither model.safetensors nor a readable
    model.safetensors.index.json naming shards that are all there, else None."""
    index = directory / SHARD_INDEX
    if (directory / "model.safetensors").is_file() and not index.exists():
        return None
    if not index.is_file():
        return index, "missing (the weights are in shards, which the index names)"
    data, why = read_json_record(index, limit=64 << 20, what="shard index")
    if why:
        return index, why
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        return index, "not a shard index (no weight_map of tensor -> shard file)"
    for shard in sorted(set(weight_map.values())):
        if not (directory / shard).is_file():
            return directory / shard, "missing (the shard index names it)"
    return None


def refuse_damaged(directory: Path, where_key: str | None = None, error=UserError) -> None:
    problem = checkpoint_problem(directory)
    if problem is None:
        return
    path, what = problem
    if what == "PICKLED":
        raise error(
            f"{path} holds weights in a pickle format, which cascade-kd does not read (unpickling can run code); "
            "weights are read from safetensors only", where=where_key or str(directory),
            hint="convert it once, where you trust the file: python -c \"import transformers as t; d='"
                 f"{directory}'; a=t.AutoConfig.from_pretrained(d).architectures[0]; "
                 "getattr(t, a).from_pretrained(d).save_pretrained(d)\" writes model.safetensors")
    raise error(f"{path.name} is damaged or unreadable: {what}", where=str(path) if where_key is None else where_key,
                hint="restore the file, or save the model again" if path.name != "config.json"
                else "restore config.json (a JSON object, as save_pretrained writes)")


def ensure_model_type(model_type) -> None:
    """Import the installed plugins (cascade_kd/plugins.py) when transformers does not know
    `model_type`: a type one of them registers. Known types never import them."""
    from transformers import CONFIG_MAPPING

    if isinstance(model_type, str) and model_type not in CONFIG_MAPPING and plugins.LOADED is None:
        load_plugins()


def auto_config(name_or_path, **kwargs):
    """AutoConfig.from_pretrained, with the installed plugins imported first where the model's type
    is one only a plugin registers: read from a local config.json (not one that names remote code
    in `auto_map`), or, for a hub name, learned from a first attempt that fails on the model type.
    A plugin that fails to import there does not hide the model's own error: both are said."""
    from transformers import AutoConfig

    local = Path(name_or_path) / "config.json"
    if local.is_file():
        try:
            fields = json.loads(local.read_text(encoding="utf-8"))
            if "AutoConfig" not in (fields.get("auto_map") or {}):  # remote code brings its own config class
                ensure_model_type(fields.get("model_type"))
        except (OSError, ValueError, AttributeError):
            pass  # a damaged config.json: from_pretrained's error names it
        return AutoConfig.from_pretrained(name_or_path, **kwargs)
    try:
        return AutoConfig.from_pretrained(name_or_path, **kwargs)
    except ValueError as first:  # transformers' "does not recognize this architecture" among others
        if plugins.LOADED is not None or "recogni" not in str(first):
            raise
        try:
            load_plugins()
        except PluginError as err:
            raise ValueError(f"{(str(first).strip().splitlines() or [''])[0]} (the installed cascade-kd plugins, one of which might register "
                             f"it, could not be imported: {err})") from None
        return AutoConfig.from_pretrained(name_or_path, **kwargs)


def load_model(name_or_path: str, task: str, labels: list[str], *, trust_remote_code: bool = False,
               where: str = "teacher.model"):
    """A pretrained encoder or a fine-tuned task model. Returns (model, has_matching_head).
    Weights are read from safetensors only; a local directory with damaged files, or weights only
    in a pickle format, is refused with a RecipeError that names the file (`where`: the recipe's key)."""
    if os.path.isdir(name_or_path):
        refuse_damaged(Path(name_or_path), where, RecipeError)
    try:
        config = auto_config(name_or_path, trust_remote_code=trust_remote_code)
    except PluginError:
        raise  # a plugin the model's type needs: its own one-line error
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, a strict config field: the user's model
        raise RecipeError(
            not_found_offline(name_or_path, "model") or f"cannot load the model {name_or_path!r}: {first_line(exc)}",
            where=where,
            hint="give a local directory with config.json and weights, or a hub name when online",
        ) from None
    check_fits(config, task, trains=False, where=where, what="the teacher")  # before any allocation
    hint = "the directory needs model.safetensors matching its config.json, as save_pretrained writes them"
    try:
        if task == "mlm":  # a masked-LM head is there when the checkpoint filled every weight of one
            with quiet_loading():
                model, info = auto_class(task).from_pretrained(name_or_path, trust_remote_code=trust_remote_code,
                                                               dtype=torch.float32, output_loading_info=True,
                                                               use_safetensors=True, ignore_mismatched_sizes=True)
            has_head = not _unloaded(info)
        else:
            has_head = has_task_head(config, task, labels)
            with quiet_loading():  # a new head is expected; encoder weights that do not fit are refused below
                model, info = auto_class(task).from_pretrained(
                    name_or_path, trust_remote_code=trust_remote_code, dtype=torch.float32, use_safetensors=True,
                    ignore_mismatched_sizes=True, output_loading_info=True, **label_config(labels)
                )
            if has_head and _unloaded(info):
                has_head = False  # the head did not load after all: it is trained
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - weights that do not fit the config, a hub repo without safetensors
        raise RecipeError(f"cannot load the weights of {name_or_path!r}: {first_line(exc)}", where=where,
                          hint=hint) from None
    # a new task head is initialised at random (it is trained), and so is the pooler of a sentence
    # head when the checkpoint has none (a masked-LM checkpoint, e.g. `cascade-kd pretrain`'s, is
    # saved without one); any other encoder weight never may be
    fresh_pooler = {k for k in info.get("missing_keys") or [] if ".pooler." in k} if task == "sequence" else set()
    body = [k for k in _unloaded(info) if k.startswith(f"{model.base_model_prefix}.") and k not in fresh_pooler]
    if body:
        raise RecipeError(f"the weights of {name_or_path!r} do not fit its config.json: {len(body)} encoder weight(s) "
                          f"missing or of another shape (e.g. {min(body)})", where=where, hint=hint)
    return model, has_head


@contextmanager
def quiet_loading():
    """transformers' loading report (a table of missing and mismatched weights) is not printed: the
    caller says what matters in one line."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _unloaded(info: dict) -> list[str]:
    """The weights that from_pretrained did not fill from the file (missing, or of another shape)."""
    return list(info.get("missing_keys") or []) + [str(k[0] if isinstance(k, tuple) else k)
                                                    for k in info.get("mismatched_keys") or []]


def first_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first lines of its message, joined."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines else type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"


def config_from_spec(config_spec: dict, task: str, labels: list[str], vocab_size: int | None,
                     pad_token_id: int | None, *, where=None):
    """The transformers config a recipe's `teacher.config` describes (model_type + fields), with the
    tokenizer's vocabulary size and padding id and the task's labels filled in. Every problem is a
    RecipeError naming the key: `where(key)` says where a key of teacher.config is (key None: the
    section itself). Sizes and counts must be positive integers, activations known ones."""
    from transformers import AutoConfig
    from transformers.activations import ACT2FN

    def at(key: str | None = None) -> str:
        return where(key) if where is not None else "teacher.config" + (f".{key}" if key else "")

    from transformers import CONFIG_MAPPING

    spec = dict(config_spec)
    model_type = spec.pop("model_type")
    ensure_model_type(model_type)
    if model_type not in CONFIG_MAPPING:
        import difflib

        close = difflib.get_close_matches(str(model_type), list(CONFIG_MAPPING.keys()), n=1)
        raise RecipeError(f"unknown model_type {model_type!r}", where=at("model_type"),
                          hint=f"did you mean {close[0]!r}?" if close else "a transformers model type, e.g. bert")
    for key, value in spec.items():  # a string or a float here ends in a traceback deep inside transformers
        if _is_size_key(key) and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise RecipeError(f"{key} must be a positive integer, not {value!r}", where=at(key))
        problem = _float_problem(key, value)
        if problem:
            raise RecipeError(f"{key} {problem}, not {value!r}", where=at(key))
        if key in ("hidden_act", "activation", "hidden_activation") and isinstance(value, str) and value not in ACT2FN:
            raise RecipeError(f"unknown activation {value!r}", where=at(key),
                              hint="use one of " + ", ".join(a for a in ("gelu", "relu", "silu", "gelu_new", "tanh") if a in ACT2FN))
    if vocab_size is not None:
        spec.setdefault("vocab_size", vocab_size)
    if pad_token_id is not None:
        spec.setdefault("pad_token_id", pad_token_id)
    try:
        config = AutoConfig.for_model(model_type, **spec, **(label_config(labels) if task != "mlm" else {}))
    except Exception as exc:  # noqa: BLE001 - ValueError, TypeError, a strict dataclass field: the user's config
        named = re.search(r"field '(\w+)'", str(exc))  # a strict dataclass field names itself in its message
        field = named.group(1) if named else None
        raise RecipeError(f"invalid teacher.config: {first_line(exc)}",
                          where=at(field) if isinstance(field, str) and field in spec else at()) from None
    pad = getattr(config, "pad_token_id", None)
    vocab = getattr(config, "vocab_size", None)
    if pad is not None and isinstance(vocab, int) and not (isinstance(pad, int) and 0 <= pad < vocab):
        # the embeddings' padding row (and RoBERTa-style position ids, which start after it)
        raise RecipeError(f"pad_token_id {pad!r} is not a token of the {vocab}-piece vocabulary", where=at("pad_token_id"),
                          hint="leave pad_token_id out: the tokenizer's is used")
    if vocab_size is not None and getattr(config, "vocab_size", vocab_size) < vocab_size:
        raise RecipeError(
            f"teacher.config.vocab_size {config.vocab_size} is smaller than the tokenizer's {vocab_size}",
            where=at("vocab_size"),
        )
    return config


def _float_problem(key: str, value) -> str | None:
    """What a probability, a standard deviation or an epsilon must be (None when `value` is one, or
    `key` is none of these): the model would build on the meta device and fail at initialisation."""
    import math

    kind = ("a probability between 0 and 1" if key.endswith(("dropout_prob", "dropout")) else
            "a positive number" if key in ("initializer_range", "layer_norm_eps", "layer_norm_epsilon") else None)
    if kind is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"must be {kind}"
    if (kind.startswith("a probability") and not 0 <= value <= 1) or (kind == "a positive number" and value <= 0):
        return f"must be {kind}"
    return None


_SIZE_KEYS = re.compile(r"^(num_\w+|n_\w+|\w+_size|\w+_layers|\w+_heads|dim|hidden_dim|max_position_embeddings|vocab_size)$")
_NOT_SIZES = {"num_labels", "pad_token_id", "n_positions"}  # checked by transformers, or 0 is valid


def _is_size_key(key: str) -> bool:
    return bool(_SIZE_KEYS.match(key)) and key not in _NOT_SIZES and not key.endswith(("_id", "_ids"))


def model_on_meta(config, task: str, *, where: str = "teacher.config", error=RecipeError):
    """The model a config builds, on the meta device (no memory for weights): its structure and its
    parameter count, or `error` saying why the config builds no model for this task."""
    cls = auto_class(task)
    try:
        with torch.device("meta"):
            return cls.from_config(config)
    except Exception as exc:  # noqa: BLE001 - zero heads, an unknown activation, no such head...
        if isinstance(exc, ValueError) and "Unrecognized configuration class" in str(exc):
            raise error(f"model type {config.model_type!r} has no {cls.__name__.removeprefix('AutoModelFor')} "
                        "head: it is not a text encoder that this task can use", where=where,
                        hint="use an encoder such as bert, xlm-roberta, distilbert") from None
        raise error(f"the config builds no model ({first_line(exc)})", where=where) from None


def check_fits(config, task: str, *, trains: bool, where: str, what: str = "the model", error=RecipeError):
    """Refuse (`error`) a config that builds no model for `task`, or one whose model does not fit in
    memory: a rough count from the config's sizes first (absurd sizes are refused before anything
    is built), then the exact count of the model built on the meta device (no weights). Returns the
    meta model."""
    have, memory = device_memory()

    def refuse(parameters: int, about: str = "") -> None:
        need = training_bytes(parameters, trains=trains)
        if need > have:
            raise error(
                f"{what} has {about}{parameters / 1e6:,.0f}M parameters: "
                + ("training it needs" if trains else "holding it needs")
                + f" {about}{need / 2**30:,.0f} GiB ({'weights, gradients and two AdamW moments' if trains else 'weights'}"
                f" in fp32, before activations), more than this machine's {have / 2**30:,.0f} GiB of {memory}",
                where=where, hint="use smaller sizes (num_hidden_layers, hidden_size, intermediate_size, vocab_size)")

    sizes = [getattr(config, k, None) for k in ("num_hidden_layers", "hidden_size", "vocab_size")]
    if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
        layers, hidden, vocab = sizes
        ffn = getattr(config, ffn_attr(config), None)
        ffn = ffn if isinstance(ffn, int) and ffn > 0 else 4 * hidden
        refuse(vocab * hidden + layers * (4 * hidden * hidden + 2 * hidden * ffn), "about ")
    model = model_on_meta(config, task, where=where, error=error)
    refuse(sum(p.numel() for p in model.parameters()))
    return model


def training_bytes(parameters: int, *, trains: bool) -> int:
    """Memory for a model's weights in fp32, and when it trains, its gradients and AdamW's two
    moments too (activations come on top)."""
    return parameters * 4 * (4 if trains else 1)


def device_memory() -> tuple[int, str]:
    """(bytes, name) of the memory a model trains in: the GPU's when there is one, else the RAM."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, "GPU memory"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "memory"
    except (ValueError, OSError, AttributeError):  # not on this platform: no limit known
        return 2**62, "memory"


def create_model(config_spec: dict, task: str, labels: list[str], vocab_size: int, pad_token_id: int | None, *,
                 where: str = "teacher.config"):
    """A randomly initialised model from a config spec (for machines without pretrained weights)."""
    config = config_from_spec(config_spec, task, labels, vocab_size, pad_token_id)
    try:
        return auto_class(task).from_config(config)
    except Exception as exc:  # noqa: BLE001 - checked on the meta device first (plan.py); initialisation may still refuse
        raise RecipeError(f"invalid teacher.config: {first_line(exc)}", where=where) from None

def use_attention_outputs(model, needed: bool) -> None:
    """Attention probabilities are only returned by the eager implementation in transformers 5."""
    model.set_attn_implementation("eager" if needed else "sdpa")

def save_checkpoint(model, tokenizer, directory: Path, extra_files: dict[str, bytes] | None = None, *,
                    record: tuple[str, dict] | None = None, keep=(), link_from: Iterable[Path] = ()) -> None:
    """save_pretrained into a temporary sibling directory, then swap it in with a rename.
    `record` (name, data): a JSON file written last, with data plus `files`, the list of every file
    of the checkpoint (so that later only those are ever replaced or deleted). `keep`: entries of an
    existing `directory` that are not this checkpoint's, carried over (see fileio.atomic_directory).
    A large word-embedding table is saved as a shard of its own (split_embedding_table), and each
    weight file equal to one of `link_from`'s (the model this one was loaded or built from) is a hard
    link to it (link_identical_weights): students that keep a frozen copy of the teacher's 250k-row
    table, and a teacher saved unchanged, cost no second copy on disk."""
    sources = [Path(p) for p in link_from if Path(p).is_dir()]
    with atomic_directory(directory, keep=keep) as tmp:
        model.config.architectures = [type(model).__name__]
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, data in (extra_files or {}).items():  # before linking: nothing is ever written through a link
            (tmp / name).write_bytes(data)
        # a model saved unchanged from a single-file checkpoint stays one file, linked to it
        if not link_identical_weights(tmp, sources) and split_embedding_table(tmp, model):
            link_identical_weights(tmp, sources)
        if record is not None:
            name, data = record
            files = sorted(p.name for p in tmp.iterdir()) + [name]
            (tmp / name).write_text(json.dumps({**data, "files": sorted(set(files))}, indent=2), encoding="utf-8")


# A word-embedding table of at least this many bytes is saved as a shard of its own (a standard
# sharded Hugging Face checkpoint: from_pretrained reads it as any other). XLM-R's 250k rows at
# width 384 are 384 MB of a 6-layer student's 427 MB, mBERT's 119k at 768 are 366 MB.
EMBEDDING_SHARD_BYTES = 32 * 2**20
EMBEDDING_SHARD, REST_SHARD = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
SHARD_INDEX = "model.safetensors.index.json"


def split_embedding_table(directory: Path, model) -> bool:
    """Rewrite DIRECTORY/model.safetensors as two shards, the input word-embedding table alone and
    everything else, with the index from_pretrained reads, where that table holds at least
    EMBEDDING_SHARD_BYTES. The point: the table's shard is byte-identical wherever the table is
    (a frozen student's copy of its teacher's), so it can be linked instead of stored again.
    Returns whether it split."""
    weights = directory / "model.safetensors"
    try:
        table = getattr(model.get_input_embeddings(), "weight", None)
    except (NotImplementedError, AttributeError):  # a model without one input table
        table = None
    if not weights.is_file() or table is None or table.numel() * table.element_size() < EMBEDDING_SHARD_BYTES:
        return False
    from safetensors import safe_open
    from safetensors.torch import save_file

    names = [n for n, p in model.named_parameters(remove_duplicate=False) if p is table]
    with safe_open(str(weights), framework="pt") as handle:
        metadata, keys = handle.metadata(), list(handle.keys())
        key = next((n for n in names if n in keys), None)
        if key is None or len(keys) < 2:  # saved under another name (a conversion): left as it is
            return False
        tensors = {k: handle.get_tensor(k) for k in keys}
    weights.unlink()  # in memory now: the disk never holds the table twice
    save_file({key: tensors.pop(key)}, str(directory / EMBEDDING_SHARD), metadata=metadata)
    save_file(tensors, str(directory / REST_SHARD), metadata=metadata)
    total = table.numel() * table.element_size() + sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total},
             "weight_map": {key: EMBEDDING_SHARD, **{k: REST_SHARD for k in sorted(tensors)}}}
    (directory / SHARD_INDEX).write_text(json.dumps(index, indent=2), encoding="utf-8")
    return True


def link_identical_weights(saved: Path, sources: Iterable[Path]) -> list[str]:
    """Replace each weight file of `saved` whose bytes equal the same-named file of one of `sources`
    by a hard link to it. Only *.safetensors, which nobody edits in place (an editor writing through
    a hard link would change both copies); every later write here replaces files by rename, which
    leaves the other copy as it was. Where a link cannot be made (another file system, links not
    supported) the written copy stays. Returns the names linked."""
    linked = []
    for f in sorted(saved.glob("*.safetensors")):
        for source in sources:
            other = Path(source) / f.name
            try:
                if not (other.is_file() and other.stat().st_size == f.stat().st_size
                        and filecmp.cmp(f, other, shallow=False)):
                    continue
                link = f.with_name(f".{f.name}.link")
                os.link(other, link)
            except OSError:
                continue
            try:
                os.replace(link, f)
            except OSError:
                link.unlink(missing_ok=True)
                continue
            linked.append(f.name)
            break
    return linked


def load_checkpoint(directory: Path, task: str):
    """Reload a saved model (safetensors only) with the plain Auto classes; a damaged or foreign
    directory is a UserError that names the file."""
    directory = Path(directory)
    refuse_damaged(directory)
    hint = "the directory needs model.safetensors matching its config.json, as save_pretrained writes them"
    try:
        config = auto_config(directory)
    except PluginError:
        raise  # a plugin the model's type needs: its own one-line error
    except Exception as exc:  # noqa: BLE001 - a field of the wrong type, an unknown model type
        raise UserError(f"config.json cannot be read as a model config: {first_line(exc)}",
                        where=str(directory / "config.json")) from None
    check_fits(config, task, trains=False, where=str(directory / "config.json"), error=UserError)  # nothing allocated yet
    try:
        with quiet_loading():  # mismatches are reported below, in one line, not as transformers' table
            model, info = auto_class(task).from_pretrained(directory, config=config, use_safetensors=True,
                                                           dtype=torch.float32, output_loading_info=True,
                                                           ignore_mismatched_sizes=True)
    except Exception as exc:  # noqa: BLE001 - weights that do not fit config.json, an unknown model type
        raise UserError(f"cannot load the model: {first_line(exc)}", where=str(directory), hint=hint) from None
    # transformers fills missing weights at random with a warning: a saved model must have them all
    missing = _unloaded(info)
    if missing:
        raise UserError(f"model.safetensors does not match config.json: {len(missing)} weight(s) missing or of "
                        f"another shape (e.g. {min(missing)})", where=str(directory), hint=hint)
    model.eval()
    return model
