"""`cascade-kd export`: a saved model to ONNX (fp32, and optionally a dynamic int8 copy), checked
against PyTorch before it is written.

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)`. In torch 2.4-2.13 it needs
only the `onnx` package, exports a BERT-sized model in well under a second per layer, and takes
`dynamic_axes` directly; the torch.export-based exporter (`dynamo=True`) also works here but needs
`onnxscript`, takes ~20x longer on the tiny models and prints pages of progress. Both gave the same
logits (to 1e-7) on the test models. The trace is taken on a batch with padding, and every export is
run on inputs of other batch sizes and lengths before it is accepted, so a shape baked in by
tracing would be caught.

The check: the ONNX model and the PyTorch model run on the same inputs (real sentences when there
are any, else generated word-piece ids; padded batches of several lengths) and are compared at every
real position (every example for sequence tasks, every non-padding token for token tasks):
- fp32: max |logit difference| <= FP32_ATOL, and the argmax agrees everywhere except where
  PyTorch's top two logits are closer than 2 x FP32_ATOL (a near tie that rounding may flip);
- int8 (onnxruntime dynamic quantisation: int8 weights, activations quantised per batch at run
  time): argmax agreement with PyTorch fp32 >= INT8_MIN_AGREEMENT (changeable); its logit
  difference is reported, not bounded.
A failed check is an error (exit code 2) and nothing is written.

Output folder (default MODEL_DIR/onnx, written atomically; new or empty, or an earlier export, which
is replaced only with overwrite and only in the files that export wrote, see cascade_kd/outdir.py;
never the model directory itself): model.onnx, model.int8.onnx (with int8), config.json and the tokenizer files (so the
folder serves on its own), export.json (inputs, opset, check figures and tolerances), .cascade-kd.json
(the marker that proves cascade-kd wrote the folder).
"""

from __future__ import annotations

import inspect
import json
import random
import shutil
import time
import warnings
from pathlib import Path

from cascade_kd.config.schema import Recipe, load_recipe, recipe_name
from cascade_kd.data.task import _read_hub, _read_local, load_task_data
from cascade_kd.errors import UserError
from cascade_kd.evaluation.scoring import OnnxClassifier, score_split
from cascade_kd.fileio import read_input, weight_files
from cascade_kd.outdir import check_output, info_file_with, replace_output
from cascade_kd.deploy.paths import EXPORT_INFO, INT8_NAME, ONNX_NAME, SOURCE_KEY, export_dir, weights_digest
from cascade_kd.students.hub import CHECKPOINT_FILE, config_labels, load_checkpoint

FP32_ATOL = 1e-3  # max abs logit difference, ONNX fp32 vs PyTorch fp32
INT8_MIN_AGREEMENT = 0.95  # share of positions where int8 and PyTorch fp32 pick the same label
OPSET = 17  # LayerNormalization is one op from 17 on
TASK_OF_HEAD = {"ForTokenClassification": "token", "ForSequenceClassification": "sequence", "ForMaskedLM": "mlm"}


def require_onnx() -> None:
    """onnx and onnxruntime are an optional extra; say how to get them."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise UserError(f"ONNX export needs the onnx and onnxruntime packages ({exc})",
                        hint="pip install 'cascade-kd[export]'") from None


# ---------------------------------------------------------------------------------------------
# The model directory and the run it belongs to


def model_task(model_dir: Path, *, command: str = "load_model", tasks=("token", "sequence", "mlm")) -> str:
    """'token', 'sequence' (sentence-pair models are sequence classifiers) or 'mlm' (a masked-LM
    teacher or general-distillation student), from config.json; a UserError naming `command` for
    a model of none of `tasks`."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError("no such model directory", where=str(model_dir),
                        hint="give a saved model: RUN_DIR/teacher or RUN_DIR/stages/NAME")
    config = model_dir / "config.json"
    if not config.is_file():
        raise UserError("not a saved model: no config.json", where=str(model_dir),
                        hint="give a saved model: RUN_DIR/teacher or RUN_DIR/stages/NAME")
    try:
        data = json.loads(read_input(config, limit=64 << 20, what="config.json").decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"config.json is not valid JSON: {exc}", where=str(config)) from None
    architectures = (data.get("architectures") if isinstance(data, dict) else None) or []
    if not isinstance(architectures, list):
        architectures = [architectures]
    heads = [head for head, task in TASK_OF_HEAD.items() if task in tasks]
    for arch in architectures:
        for head in heads:
            if str(arch).endswith(head):
                return TASK_OF_HEAD[head]
    raise UserError(f"{command} cannot take a model whose config.json architectures are {architectures}",
                    where=str(config), hint=f"{command} takes " + ", ".join(f"*{h}" for h in heads) + " checkpoints")


def find_run_dir(model_dir: Path) -> Path | None:
    """RUN_DIR for RUN_DIR/teacher, RUN_DIR/stages/NAME or a trimmed copy of one
    (RUN_DIR/stages/NAME/trimmed): the nearest folder above that holds the run's recipe.yaml."""
    model_dir = Path(model_dir).resolve()
    for parent in list(model_dir.parents)[:3]:
        if (parent / "recipe.yaml").is_file() and ((parent / "metrics.json").is_file() or (parent / "manifest.json").is_file()):
            return parent
    return None


def recipe_items(recipe_path: Path, limit: int) -> tuple[str, list]:
    """Up to `limit` examples of a recipe's dev split (else test, else train), spread over its
    languages: word lists (token tasks), texts (sequence) or (text, pair) tuples (pair)."""
    recipe = load_recipe(recipe_path)
    reader = _read_hub if recipe.data.format == "hf" else _read_local
    langs = recipe.data.languages
    per_lang = max(1, -(-limit // len(langs)))
    for split in ("dev", "test", "train"):
        items = []
        for lang in langs:
            for ex in (reader(recipe, split, lang) or [])[:per_lang]:
                items.append(ex.tokens if ex.tokens is not None else (ex.text, ex.text_pair) if ex.text_pair is not None else ex.text)
        if items:
            return f"{split} split of {recipe_path} ({len(items)} examples, {len(langs)} languages)", items[:limit]
    raise UserError("the recipe names no data to check with", where=str(recipe_path))


def text_items(path: Path, task: str, limit: int) -> tuple[str, list]:
    """One example per line: words separated by spaces (token tasks; tokenised as words), a text, or
    text<TAB>pair (sentence-pair models)."""
    try:
        text = read_input(path, what="check data file").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"cannot read check data: {exc}", where=str(path)) from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise UserError("check data is empty", where=str(path), hint="one example per line")
    items = [line.split() if task == "token" else tuple(line.split("\t", 1)) if "\t" in line else line
             for line in lines[:limit]]
    return f"{path} ({len(items)} lines)", items


def check_items(model_dir: Path, task: str, check_data: Path | None, limit: int) -> tuple[str, list | None]:
    """Real examples for the check: --check-data (a recipe or a text file), else the run's dev data,
    else None (generated ids)."""
    if check_data is not None:
        check_data = Path(check_data)
        if not check_data.is_file():
            raise UserError("no such check data file", where=str(check_data))
        if check_data.suffix in (".yaml", ".yml"):
            return recipe_items(check_data, limit)
        return text_items(check_data, task, limit)
    run_dir = find_run_dir(model_dir)
    if run_dir is not None:
        try:
            return recipe_items(run_dir / "recipe.yaml", limit)
        except UserError as err:  # the run's data moved: say so, and check on generated ids instead
            return f"generated word-piece ids (the run's data could not be read: {err})", None
    return "generated word-piece ids (no --check-data and no run recipe found)", None


# ---------------------------------------------------------------------------------------------
# Inputs


def input_names(model, tokenizer=None) -> list[str]:
    """input_ids, attention_mask, and token_type_ids where the model takes them (BERT; not XLM-R,
    whose tokenizer does not produce them, nor DistilBERT, whose forward has no such argument)."""
    names = ["input_ids", "attention_mask"]
    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters
    if takes_types and (tokenizer is None or "token_type_ids" in tokenizer.model_input_names):
        names.append("token_type_ids")
    return names


def max_length_of(config, wanted: int = 128) -> int:
    """The longest input the model's position table takes (RoBERTa-style models use 2 positions
    before the first token)."""
    limit = getattr(config, "max_position_embeddings", wanted + 2)
    return max(2, min(wanted, limit - 2))


def tokenize(tokenizer, items: list, task: str, max_length: int, names: list[str], **kwargs) -> dict:
    """A padded numpy batch of the given inputs."""
    if task == "token" and items and isinstance(items[0], list):
        enc = tokenizer(items, is_split_into_words=True, truncation=True, max_length=max_length, return_tensors="np", **kwargs)
    elif items and isinstance(items[0], tuple):
        enc = tokenizer([a for a, _ in items], [b for _, b in items], truncation=True, max_length=max_length, return_tensors="np", **kwargs)
    else:
        enc = tokenizer(list(items), truncation=True, max_length=max_length, return_tensors="np", **kwargs)
    out = {name: enc[name].astype("int64") for name in names if name in enc}
    if "token_type_ids" in names and "token_type_ids" not in out:
        out["token_type_ids"] = out["input_ids"] * 0
    return out


def generated_batches(config, names: list[str], *, seed: int = 0, sizes=((1, 5), (3, 17), (8, 40), (16, 9))) -> list[dict]:
    """Random word-piece ids, in batches of several sizes and lengths, with some rows padded."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = config.vocab_size
    low = min(1000, vocab // 2)  # skip the special tokens at the start of most vocabularies
    top = max_length_of(config)
    batches = []
    for batch, length in sizes:
        length = min(length, top)
        ids = rng.integers(low, vocab, size=(batch, length), dtype=np.int64)
        mask = np.ones_like(ids)
        for row in range(1, batch, 2):  # every other row is shorter, padded with the pad id
            keep = int(rng.integers(1, length + 1))
            mask[row, keep:] = 0
            ids[row, keep:] = config.pad_token_id or 0
        batch_inputs = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            batch_inputs["token_type_ids"] = np.zeros_like(ids)
        batches.append(batch_inputs)
    return batches


def real_batches(tokenizer, items: list, task: str, names: list[str], max_length: int, batch_size: int = 16) -> list[dict]:
    """The examples in padded batches, sorted by length (in words or characters) so that batch
    shapes vary and padding stays moderate."""
    order = sorted(range(len(items)), key=lambda k: len(items[k]) if not isinstance(items[k], tuple) else len(items[k][0]) + len(items[k][1]))
    return [tokenize(tokenizer, [items[k] for k in order[s:s + batch_size]], task, max_length, names, padding=True)
            for s in range(0, len(order), batch_size)]


# ---------------------------------------------------------------------------------------------
# Export, quantisation, sessions


def export_onnx(model, path: Path, names: list[str], task: str, example: dict) -> None:
    """TorchScript-based export with dynamic batch and sequence axes (logits: batch, and sequence
    for token tasks)."""
    import torch

    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch", 1: "sequence"} if task == "token" else {0: "batch"}
    named = {name: torch.from_numpy(example[name]) for name in names}
    # torch >= 2.9 defaults to dynamo=True; torch < 2.5 has no such argument (and only this exporter)
    choice = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of dynamo=True (see the module docstring),
        # and tracing notes Python conditions on shapes, which the multi-shape check covers
        warnings.simplefilter("ignore")
        # a dict as the last element of args is passed as keyword arguments (all torch versions)
        torch.onnx.export(model, (named,), str(path), input_names=names, output_names=["logits"],
                          dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True, **choice)
    import onnx

    onnx.checker.check_model(str(path))


def quantize_int8(source: Path, target: Path) -> None:
    """onnxruntime dynamic quantisation: weights to int8 with one scale per output channel,
    activations quantised per batch. Per channel rather than per tensor: on the 3-layer PAN-X student
    of multilingual-e5-small (benchmarks/xlingual.py) it agreed with PyTorch on 96.6% of token
    predictions instead of 93.0%, at the same size and speed (measured in one run)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it advises shape-inference pre-processing, which dynamic int8 does not need
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)


def session(path: Path, threads: int | None = None, *, arena: bool = True):
    """A CPU onnxruntime session with as many intra-op threads as torch uses (one inter-op thread),
    so the comparison with PyTorch is made on equal threads."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = arena
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _real_positions(logits, mask, task: str):
    """(N, labels): every example (sequence tasks) or every non-padding token (token tasks)."""
    return logits[mask.astype(bool)] if task == "token" else logits


def reference_logits(model, batches: list[dict]) -> list:
    """PyTorch fp32 logits of every batch (numpy)."""
    import torch

    with torch.inference_mode():
        return [model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.float().numpy() for batch in batches]


def compare(references: list, sess, batches: list[dict], task: str) -> dict:
    """Argmax agreement and max abs logit difference of an onnxruntime session against the PyTorch
    fp32 logits `references`, over the real positions of `batches`; `decisive_flips` counts
    disagreements where PyTorch's top two logits are more than 2 x FP32_ATOL apart."""
    import numpy as np

    total = agree = decisive = 0
    max_diff = 0.0
    feed_names = {i.name for i in sess.get_inputs()}
    for ref, batch in zip(references, batches):
        out = sess.run(["logits"], {k: v for k, v in batch.items() if k in feed_names})[0]
        ref, out = _real_positions(ref, batch["attention_mask"], task), _real_positions(out, batch["attention_mask"], task)
        same = ref.argmax(-1) == out.argmax(-1)
        top2 = np.sort(ref, axis=-1)[:, -2:]
        margin = top2[:, -1] - top2[:, 0] if ref.shape[-1] > 1 else np.full(len(ref), np.inf)
        total += same.size
        agree += int(same.sum())
        decisive += int((~same & (margin > 2 * FP32_ATOL)).sum())
        if ref.size:
            max_diff = max(max_diff, float(np.abs(ref - out).max()))
    return {"positions": total, "agreement": agree / max(1, total), "max_abs_diff": max_diff, "decisive_flips": decisive}


def export_model(
    model_dir: Path,
    out: Path | None = None,
    *,
    int8: bool = False,
    overwrite: bool = False,
    check_data: Path | None = None,
    check_examples: int = 256,
    int8_min_agreement: float = INT8_MIN_AGREEMENT,
    score: Path | bool | None = None,
    say=print,
) -> dict:
    """Export MODEL_DIR to ONNX (and int8), check against PyTorch, write atomically. Returns the
    export info (also written to OUT/export.json). With `score` (a recipe, or True for the run's own
    recipe.yaml), also score PyTorch and each exported file per language on the recipe's held-out
    split (test, else dev), with the run's own scoring code: info["scores"]. Raises UserError on bad
    input or a failed check."""
    model_dir = Path(model_dir)
    if check_examples < 1:
        raise UserError(f"--check-examples must be at least 1, not {check_examples}")
    task = model_task(model_dir, command="export", tasks=("token", "sequence"))
    if not weight_files(model_dir):
        raise UserError("no model.safetensors nor its shards (weights are read from safetensors only)",
                        where=str(model_dir))
    found = claim_export_dir(model_dir, out, overwrite=overwrite)
    score_recipe = scoring_recipe(model_dir, score)  # a bad --score: one line, before the export's work
    require_onnx()
    import torch

    started = time.perf_counter()
    model = load_checkpoint(model_dir, task)  # a damaged or foreign checkpoint: a UserError naming the file
    tokenizer = model_tokenizer(model_dir)
    names = input_names(model, tokenizer)
    source, items = check_items(model_dir, task, check_data, check_examples)
    top = max_length_of(model.config)
    if items is not None and tokenizer is not None:
        batches = real_batches(tokenizer, items, task, names, top)
    else:
        if items is not None:
            source = "generated word-piece ids (the model directory has no tokenizer)"
        batches = generated_batches(model.config, names)
    # the example for the trace: two rows, one of them padded
    example = generated_batches(model.config, names, seed=1, sizes=((2, min(11, top)),))[0]
    info = {"model_dir": str(model_dir), SOURCE_KEY: weights_digest(model_dir), "task": task, "inputs": names,
            "outputs": ["logits"], "opset": OPSET,
            "exporter": f"torch.onnx.export(dynamo=False), torch {torch.__version__}",
            "dynamic_axes": "batch and sequence", "check_inputs": source,
            "tolerance": {"fp32_max_abs_diff": FP32_ATOL, "fp32_near_tie_margin": 2 * FP32_ATOL,
                          "int8_min_agreement": int8_min_agreement}}
    references = reference_logits(model, batches)
    with replace_output(found, "export", _export_file) as tmp:
        try:
            export_onnx(model, tmp / ONNX_NAME, names, task, example)
            fp32_session = session(tmp / ONNX_NAME)
        except Exception as exc:  # noqa: BLE001 - an architecture the exporter cannot trace: one line, exit 2
            first = (str(exc).strip().splitlines() or [""])[0]
            raise UserError(f"cannot export {type(model).__name__} to ONNX: {type(exc).__name__}: {first}",
                            where=str(model_dir)) from None
        fp32 = compare(references, fp32_session, batches, task)
        info["fp32"] = {**fp32, "size_mb": (tmp / ONNX_NAME).stat().st_size / 2**20}
        say(f"export: fp32 vs PyTorch on {fp32['positions']} positions ({source}): agreement "
            f"{100 * fp32['agreement']:.2f}%, max abs logit diff {fp32['max_abs_diff']:.2e} (tolerance {FP32_ATOL:g})")
        if fp32["max_abs_diff"] > FP32_ATOL or fp32["decisive_flips"]:
            raise UserError(
                f"the ONNX model does not reproduce PyTorch: max abs logit difference {fp32['max_abs_diff']:.3g} "
                f"(tolerance {FP32_ATOL:g}), {fp32['decisive_flips']} predictions changed beyond near ties; nothing written",
                where=str(model_dir))
        if int8:
            quantize_int8(tmp / ONNX_NAME, tmp / INT8_NAME)
            q = compare(references, session(tmp / INT8_NAME), batches, task)
            q.pop("decisive_flips")  # the near-tie margin is an fp32 notion
            info["int8"] = {**q, "size_mb": (tmp / INT8_NAME).stat().st_size / 2**20}
            say(f"export: int8 vs PyTorch fp32: agreement {100 * q['agreement']:.2f}% (minimum "
                f"{100 * int8_min_agreement:.0f}%), max abs logit diff {q['max_abs_diff']:.2e}")
            if q["agreement"] < int8_min_agreement:
                raise UserError(
                    f"the int8 model agrees with PyTorch on {100 * q['agreement']:.1f}% of predictions, below the "
                    f"minimum {100 * int8_min_agreement:.0f}%; nothing written", where=str(model_dir),
                    hint="export without --int8, or lower --int8-min-agreement if that loss is acceptable")
        if score_recipe is not None:
            sessions = {"onnx_fp32": fp32_session} | ({"onnx_int8": session(tmp / INT8_NAME)} if int8 else {})
            info["scores"] = score_backends(model, tokenizer, sessions, score_recipe, model_dir, say)
        shutil.copy2(model_dir / "config.json", tmp / "config.json")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        info["seconds"] = time.perf_counter() - started
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info


def scoring_recipe(model_dir: Path, score: Path | Recipe | bool | None) -> Path | Recipe | None:
    """The recipe whose held-out split `--score` uses: the one given, or the run's recipe.yaml."""
    if score is None or score is False:
        return None
    if isinstance(score, Recipe):
        return score
    if score is True:
        run_dir = find_run_dir(model_dir)
        if run_dir is None:
            raise UserError("no recipe to score with: the model is not inside a run directory", where=str(model_dir),
                            hint="give the recipe: --score RECIPE")
        return run_dir / "recipe.yaml"
    if not Path(score).is_file():
        raise UserError("no such recipe to score with", where=str(score))
    return Path(score)


def score_backends(model, tokenizer, sessions: dict, recipe_path: Path, model_dir: Path, say) -> dict:
    """Per-language scores of the PyTorch model and of each onnxruntime session on the recipe's
    held-out split: {"split", "recipe", "per_backend": {"pytorch": {lang: score}, "onnx_fp32": ...,
    "onnx_int8": ...}, "largest_drop": {backend: [lang, points]}}."""
    if tokenizer is None:
        raise UserError("cannot score: the model directory has no tokenizer", where=str(model_dir))
    recipe = load_recipe(recipe_path)
    data = load_task_data(recipe)
    labels = config_labels(model.config)
    if set(labels) != set(data.labels):
        raise UserError(f"the model's labels ({', '.join(labels)}) are not the recipe's ({', '.join(data.labels)})",
                        where=recipe_name(recipe_path))
    split = "test" if "test" in data.splits else "dev"
    per_backend = {"pytorch": score_split(model, tokenizer, recipe, data, split, labels=labels)}
    for name, sess in sessions.items():
        per_backend[name] = score_split(OnnxClassifier(sess), tokenizer, recipe, data, split, labels=labels)
    reference = per_backend["pytorch"]
    drops = {}
    for name, scores in per_backend.items():
        if name == "pytorch" or not scores:
            continue
        lang = max(scores, key=lambda l: reference[l] - scores[l])
        drops[name] = [lang, 100 * (reference[lang] - scores[lang])]
        average = sum(scores.values()) / len(scores)
        say(f"export: {name} scores {100 * average:.2f} on average over {len(scores)} language(s) of {split} "
            f"(PyTorch {100 * sum(reference.values()) / len(reference):.2f}); the largest drop: {lang}, "
            f"{drops[name][1]:.2f} points")
    return {"split": split, "recipe": recipe_name(recipe_path), "per_backend": per_backend, "largest_drop": drops}


def claim_export_dir(model_dir: Path, out: Path | None, *, overwrite: bool):
    """Where an export may go: a new or empty folder (default MODEL_DIR/onnx), or an earlier export
    (replaced with --overwrite, its own files only); never the model directory itself."""
    out = export_dir(model_dir, out)
    return check_output(out, "export", overwrite=overwrite, inputs={"model directory": Path(model_dir)},
                        legacy=_legacy_export, exists_message="an export already exists there")


def _export_file(name: str) -> bool:
    """A file an export writes (to recognise an export made before markers)."""
    return name in (ONNX_NAME, INT8_NAME, EXPORT_INFO) or bool(CHECKPOINT_FILE.match(name))


def _legacy_export(path: Path) -> bool:
    """An export written before markers: its export.json (with the opset) is there."""
    return info_file_with(path / EXPORT_INFO, "opset")


def model_tokenizer(model_dir: Path):
    """The model's tokenizer, or None when the directory has none."""
    if not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError):
        return None


def generated_sentences(tokenizer, n: int, *, seed: int = 0, words: tuple[int, int] = (5, 40)) -> list[str]:
    """Sentences of random whole-word vocabulary entries (for timing a tokenizer without data)."""
    vocab = [w for w in tokenizer.get_vocab() if w.isalpha() and not w.startswith("##")]
    vocab = sorted(vocab) or ["word"]
    rng = random.Random(seed)
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(*words))) for _ in range(n)]
