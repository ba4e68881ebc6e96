"""Model cards: a README.md in every saved model directory of a run, as the Hugging Face Hub reads
them: YAML metadata (built with huggingface_hub's ModelCardData and EvalResult, so the Hub's own
code writes the model-index) and a body that says how the model was made, how well it does per
language against its teacher, what it costs, and how to load it.

Everything comes from the run's files (run_files.py); `write_model_cards(run_dir)` (re)writes the
cards of a finished run, e.g. after `cascade-kd bench` or `cascade-kd export` added latency or
ONNX files (`cascade-kd report RUN_DIR` does both the cards and report.html).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from cascade_kd.deploy.paths import EXPORT_INFO, INT8_NAME, current_export
from cascade_kd.errors import UserError
from cascade_kd.evaluation.findings import (
    METRIC_NAMES,
    embedding_notes,
    embedding_sentence,
    worst_languages,
)
from cascade_kd.evaluation.run_files import CARD_COPY, MODEL_CARD, RunFiles, card_edited, model_config, read_run, sign_card
from cascade_kd.fileio import atomic_write, weights_size
from cascade_kd.students.registry import FAMILIES

PIPELINE_TAGS = {"token": "token-classification", "sequence": "text-classification", "pair": "text-classification",
                 "mlm": "fill-mask"}
TASK_NAMES = {"token-classification": "Token Classification", "text-classification": "Text Classification",
              "fill-mask": "Fill-Mask"}
AUTO_CLASSES = {"token": "AutoModelForTokenClassification", "sequence": "AutoModelForSequenceClassification",
                "pair": "AutoModelForSequenceClassification", "mlm": "AutoModelForMaskedLM"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
_ISO = re.compile(r"^[a-z]{2,3}$")
_ISO_SCRIPT = re.compile(r"^([a-z]{2,3})[_-][A-Za-z]{4}$")  # FLORES-200 style: eng_Latn, zho_Hans


def iso_languages(codes: list[str]) -> tuple[list[str], list[str]]:
    """The run's language codes as the Hub's `language` metadata takes them (ISO 639-1/2/3): plain
    codes as they are, FLORES-style codes (eng_Latn) as their language part, once each; and the
    codes that are neither (left out of the metadata, kept in the body)."""
    iso, other = [], []
    for code in codes:
        match = _ISO.fullmatch(code) or _ISO_SCRIPT.fullmatch(code)
        if match:
            value = match.group(1) if match.re is _ISO_SCRIPT else code
            if value not in iso:
                iso.append(value)
        else:
            other.append(code)
    return iso, other


def hub_teacher(run: RunFiles) -> str | None:
    """The teacher's hub name, when the recipe loaded it from the hub (not a local directory, not a config)."""
    name = (run.recipe.get("teacher") or {}).get("model")
    if not name:
        return None
    as_run = _recipe_as_run(run.directory).get("teacher", {}).get("model")  # recipe.yaml: local paths made absolute
    if as_run and Path(as_run).is_absolute():
        return None
    return name if _HUB_ID.fullmatch(name) and not Path(name).exists() else None


def _recipe_as_run(run_dir: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _pct(x) -> str:
    return "—" if not isinstance(x, (int, float)) or not math.isfinite(x) else f"{100 * x:.1f}"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def card_metadata(run: RunFiles, row: dict):
    """The card's metadata as huggingface_hub.ModelCardData."""
    from huggingface_hub import EvalResult, ModelCardData

    metrics, recipe = run.metrics, run.recipe
    task = PIPELINE_TAGS.get(metrics["task"], "feature-extraction")
    data = recipe.get("data") or {}
    hub_data = (data.get("hf") or {}).get("path") if data.get("format") == "hf" else None
    dataset_type = hub_data or metrics["name"]
    results = []
    splits = [(metrics["split"], row["per_language"])]
    if metrics["split"] != "dev" and row.get("dev_per_language"):
        splits.append(("dev", row["dev_per_language"]))
    for split, scores in splits:
        for lang, value in scores.items():
            if _finite(value):
                results.append(EvalResult(
                    task_type=task, task_name=TASK_NAMES.get(task), dataset_type=dataset_type,
                    dataset_name=f"{hub_data or metrics['name'] + ' data'} ({lang})", dataset_config=lang,
                    dataset_split=split, metric_type=metrics["metric"], metric_value=round(100 * value, 2),
                    metric_name=f"{METRIC_NAMES.get(metrics['metric'], metrics['metric'])}, {lang}, {split} (%)"))
    iso, _ = iso_languages(metrics["languages"])
    tags = ["distillation", "knowledge-distillation", "cascade-kd"]
    tags += ["multilingual"] if len(metrics["languages"]) > 1 else []
    tags += {"teacher": ["teacher"], "direct": ["direct-distillation"]}.get(row["role"], ["teacher-assistant-cascade"])
    return ModelCardData(
        language=iso or None, license=recipe.get("license") or "unknown", library_name="transformers",
        pipeline_tag=task, base_model=hub_teacher(run), tags=tags, datasets=[hub_data] if hub_data else None,
        model_name=f"{metrics['name']}-{row['name']}", eval_results=results or None)


# --- the body ------------------------------------------------------------------------------------


def _chain(run: RunFiles, row: dict) -> list[str]:
    """The models this one descends from, the original teacher first, itself last."""
    if row["role"] == "teacher":
        return [row["name"]]
    if row["role"] == "direct":
        return ["teacher", row["name"]]
    stages = (run.recipe.get("cascade") or {}).get("stages") or []
    names = [s.get("name") for s in stages]
    if row["name"] not in names:
        return ["teacher", row["name"]]
    chain = ["teacher"]
    for stage in stages[: names.index(row["name"]) + 1]:
        if stage.get("teacher") == "original":
            chain = ["teacher"]
        chain.append(stage["name"])
    return chain


def _stage(run: RunFiles, row: dict) -> dict:
    stages = (run.recipe.get("cascade") or {}).get("stages") or []
    if row["role"] == "direct" and stages:
        return stages[-1]
    return next((s for s in stages if s.get("name") == row["name"]), {})


def _losses_text(run: RunFiles, row: dict, marker: dict) -> str:
    if marker.get("losses"):
        parts = []
        for term in marker["losses"]:
            pairs = term.get("pairs") or []
            where = (" on layer pairs (teacher, student) " + ", ".join(f"({t}, {s})" for t, s in pairs)) if pairs else ""
            parts.append(f"`{term['name']}` x {term['weight']:g}{where}")
        return "; ".join(parts)
    stage = _stage(run, row)
    losses = stage.get("losses") or (run.recipe.get("cascade") or {}).get("losses") or {}
    return "; ".join(f"`{name}` x {cfg.get('weight', 1):g}" + (f", layer map {cfg['layer_map']}" if name not in
                     ("kl", "ce", "logit_mse") and cfg.get("layer_map") else "") for name, cfg in losses.items())


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else "?"


def _init_text(student: dict) -> str:
    init = student.get("init", "bottom")
    if isinstance(init, list):
        return f"from its teacher's layers {', '.join(map(str, init))}"
    if str(init).startswith("layer:"):
        return f"from its teacher's layer {init.split(':', 1)[1]}"
    return {"bottom": "its teacher's bottom layers", "top": "its teacher's top layers",
            "uniform": "its teacher's layers, evenly spread", "random": "random layers",
            "mean": "the mean of its teacher's layers"}.get(init, str(init)) + f" (init: {init})"


def _how_made(run: RunFiles, row: dict, marker: dict) -> list[str]:
    recipe = run.recipe
    teacher_cfg = recipe.get("teacher") or {}
    lines = ["## How it was made", ""]
    shape = f"{row.get('layers_label', row.get('layers'))} layers x {row.get('hidden')} hidden, {row.get('kind', 'transformer')}"
    if row["role"] == "teacher":
        source = (f"`{teacher_cfg['model']}`" if teacher_cfg.get("model") else "a randomly initialised config "
                  f"({(teacher_cfg.get('config') or {}).get('model_type', '?')})")
        if marker.get("trained"):
            lines.append(f"- Method: the teacher of this run ({shape}), trained on the task from {source} "
                         f"for {_num(marker.get('epochs'))} epochs, seed {marker.get('seed', '?')} (best dev checkpoint, epoch "
                         f"{marker.get('best_epoch')}).")
        else:
            lines.append(f"- Method: the teacher of this run ({shape}), {source} as loaded (it already had a head "
                         "for these labels; not trained further).")
    else:
        chain = " -> ".join(_chain(run, row))
        what = ("distilled straight from the teacher: the direct baseline of the cascade, at the final student's shape"
                if row["role"] == "direct" else "knowledge distillation through a cascade of teacher assistants")
        lines.append(f"- Method: {what} ({shape}).")
        lines.append(f"- Chain of models: {chain} (each distilled from the one before it).")
        lines.append(f"- Losses: {_losses_text(run, row, marker) or 'as the recipe says'}.")
        stage = _stage(run, row)
        # the spec the model was built from, as its marker records it (runs before that: the recipe's stage)
        student = marker["student"] if "student" in marker else stage.get("student")
        if isinstance(student, dict):
            lines.append(f"- Initialisation: {_init_text(student)}; embeddings: {student.get('embeddings', 'copy')} "
                         "(`copy`: the teacher's, `pca`: the teacher's projected to the student's width).")
            frozen = student.get("freeze_embeddings")
            if frozen:
                lines.append(f"- Frozen: {'the embeddings' if frozen is True else ', '.join(frozen) + ' embeddings'}"
                             f" ({row.get('params_trainable', 0):,} of {row['params_total']:,} parameters trained).")
        elif stage.get("student") == "previous":
            lines.append("- Initialisation: the previous stage's student, trained further.")
        if stage.get("guides") == "dense" and row["role"] != "direct":  # the direct baseline has no guides
            lines.append("- Guides: dense (the logit losses learn from the teacher and every earlier student).")
        if marker:
            # runs from before the markers held epochs and seed: the recipe's (a stage's own, else the run's)
            epochs = marker.get("epochs", (stage.get("train") or {}).get("epochs", (recipe.get("train") or {}).get("epochs")))
            lines.append(f"- Training: {_num(epochs)} epochs, {marker.get('steps', '?')} steps, seed "
                         f"{marker.get('seed', '?')}; best dev checkpoint at epoch {marker.get('best_epoch')}.")
    sizes = (run.manifest.get("data_sizes") or {}).get("train") or {}
    if sizes:
        lines.append("- Training data per language: " + ", ".join(f"{l} {n:,}" for l, n in sizes.items()) + ".")
    transfer = (run.manifest.get("data_sizes") or {}).get("transfer") or {}  # what was read, after left-out sentences
    # a stage on the labels alone reads no transfer text (markers from before say nothing: as the run)
    if transfer and row["role"] != "teacher" and marker.get("with_transfer", True):
        lines.append(f"- Also {sum(transfer.values()):,} unlabelled transfer sentences in {len(transfer)} language(s), "
                     "labelled by the teacher (data.transfer).")
    return lines


def _results(run: RunFiles, row: dict) -> list[str]:
    metrics = run.metrics
    teacher = next((m for m in run.models if m["role"] == "teacher"), None)
    metric = METRIC_NAMES.get(metrics["metric"], metrics["metric"])
    lines = ["## Results", "", f"{metric} in percent on the **{metrics['split']}** split (models were selected on dev)"
             + ("; retention is the score divided by the teacher's." if row["role"] != "teacher" else "."), ""]
    if row["role"] != "teacher" and teacher:
        lines += ["| language | score | teacher | retention |", "|---|---:|---:|---:|"]
        for lang in metrics["languages"]:
            ret = (row.get("retention_per_language") or {}).get(lang)
            lines.append(f"| {lang} | {_pct(row['per_language'].get(lang))} | {_pct(teacher['per_language'].get(lang))} "
                         f"| {_pct(ret)} |")
        lines.append(f"| **average** | {_pct(row['average'])} | {_pct(teacher['average'])} | {_pct(row.get('retention'))} |")
    else:
        lines += ["| language | score |", "|---|---:|"]
        lines += [f"| {lang} | {_pct(row['per_language'].get(lang))} |" for lang in metrics["languages"]]
        lines.append(f"| **average** | {_pct(row['average'])} |")
    worst = worst_languages(row)
    if worst:
        said = ", ".join(f"{lang} ({_pct(score)}" + (f", {_pct(r)}% of the teacher's" if r is not None else "") + ")"
                         for lang, score, r in worst)
        ranked_by = ("lowest share of the teacher's score kept, then lowest score" if worst[0][2] is not None
                     else "lowest score")
        lines += ["", f"**Weakest languages** ({ranked_by}): {said}. Check these before using the model for them."]
    return lines


def _cost(run: RunFiles, row: dict) -> list[str]:
    lines = ["## Size and speed", "", f"- Parameters: {row['params_total']:,} ({row.get('params_embedding', 0):,} of them "
             f"embeddings, {100 * row.get('params_embedding', 0) / max(1, row['params_total']):.0f}%)."]
    size = weights_size(run.model_dir(row))
    if size:
        lines.append(f"- Weights: {size / 2**20:.1f} MB (safetensors, fp32).")
    latency = run.metrics.get("latency") or {}
    entry = next((m for m in latency.get("models", []) if m.get("name") == row["name"]), None)
    if entry and entry.get("latency_ms"):
        figures = ", ".join(f"{k} {v:.2f} ms" + (f" ({entry.get('speedup_vs_teacher', {}).get(k, 0):.1f}x the teacher's speed)"
                                                 if row["role"] != "teacher" and entry.get("speedup_vs_teacher", {}).get(k) else "")
                            for k, v in entry["latency_ms"].items() if k.startswith("fp32/")) or ", ".join(
            f"{k} {v:.2f} ms" for k, v in entry["latency_ms"].items())
        lines.append(f"- Median latency (`cascade-kd bench`, {latency.get('device', 'cpu')}, {latency.get('threads', '?')} "
                     f"thread(s); backend/batch/sequence length): {figures}.")
        best = entry.get("best") or {}
        if best and row["role"] != "teacher":
            lines.append("- Fastest backend against the teacher's fastest (batch/sequence length; the speed-up is the "
                         "median of the ratios of passes timed side by side): " + ", ".join(
                f"{s} {b['backend']} {b['latency_ms']:.2f} ms, {b['speedup_vs_teacher_best']:.2f}x the teacher's "
                f"{b['teacher_backend']} {b['teacher_latency_ms']:.2f} ms" for s, b in best.items()) + ".")
    else:
        lines.append("- Latency: not measured (`cascade-kd bench RUN_DIR` measures it and updates this card).")
    for note in embedding_notes(run.directory, {"models": [m for m in run.models if m["role"] == "teacher"] + [row]}):
        lines.append(f"- {embedding_sentence(note)}")
    return lines


def _registering_imports(run: RunFiles, row: dict) -> tuple[list[str], str, str]:
    """What loading this model needs beyond plain transformers: (import lines, why, extra
    from_pretrained arguments). Nothing for transformers' own model types; trust_remote_code for a
    config that names remote code (`auto_map`); cascade_kd.students for the types its built-in
    families register (recursive, BiLSTM); the installed plugins for any other (cascade_kd/plugins.py)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES  # transformers' own types

    config = model_config(run.model_dir(row))
    model_type = str(config.get("model_type", ""))
    if "AutoConfig" in (config.get("auto_map") or {}):  # remote code: transformers reads its config class from it
        return [], "; its model type's code comes with the model (trust_remote_code: read it first)", \
            ", trust_remote_code=True"
    if model_type in CONFIG_MAPPING_NAMES or not model_type:
        return [], "", ""
    built_in = {f.model_type for f in FAMILIES.values() if f.model_type and type(f).__module__.startswith("cascade_kd.")}
    if model_type in built_in:
        return (["import cascade_kd.students  # registers this model type with the Auto classes"],
                "; this model type is registered with transformers by cascade_kd.students, so import it first", "")
    return (["from cascade_kd.plugins import load_plugins", "",
             f"load_plugins()  # the installed cascade-kd plugins: one registers {model_type!r}"],
            f"; its model type ({model_type}) is not one of transformers' own but an installed cascade-kd "
            "plugin's, so load the plugins first (for a family registered in your own code, import that code)", "")


def _usage(run: RunFiles, row: dict) -> list[str]:
    task = run.metrics["task"]
    auto = AUTO_CLASSES.get(task, "AutoModel")
    imports, why, extra = _registering_imports(run, row)
    lines = ["## How to use", "", "With plain transformers (the folder holds config.json, the safetensors weights (one "
             "file, or shards and model.safetensors.index.json) and the tokenizer)" + why + ":", "", "```python"]
    lines += imports
    lines += [f"from transformers import AutoTokenizer, {auto}", "", 'path = "."  # this folder, or its hub name',
              f"tokenizer = AutoTokenizer.from_pretrained(path{extra})", f"model = {auto}.from_pretrained(path{extra})"]
    if task == "token":
        lines += ['inputs = tokenizer("Angela Merkel visited Paris.", return_tensors="pt")',
                  "labels = [model.config.id2label[i] for i in model(**inputs).logits.argmax(-1)[0].tolist()]"]
    elif task in ("sequence", "pair"):
        lines += ['inputs = tokenizer("A sentence to classify.", return_tensors="pt")',
                  "label = model.config.id2label[model(**inputs).logits.argmax(-1).item()]"]
    lines += ["```"]
    onnx = current_export(run.model_dir(row))  # an export of weights trained over since is not this model's
    if onnx is not None:
        names = ["input_ids", "attention_mask"]
        try:
            names = json.loads((onnx / EXPORT_INFO).read_text(encoding="utf-8")).get("inputs") or names
        except (OSError, ValueError):
            pass
        int8 = (onnx / INT8_NAME).is_file()
        lines += ["", "ONNX (exported and checked against PyTorch by `cascade-kd export`): `onnx/model.onnx`"
                  + (" and the int8 `onnx/model.int8.onnx`" if int8 else "") + ".", "", "```python",
                  "import onnxruntime as ort", "from transformers import AutoTokenizer", "",
                  'tokenizer = AutoTokenizer.from_pretrained("onnx")',
                  'session = ort.InferenceSession("onnx/model.onnx")',
                  'batch = tokenizer(["A sentence."], return_tensors="np")',
                  f"logits = session.run(None, {{k: batch[k] for k in {names!r}}})[0]", "```"]
    return lines


def render_model_card(run: RunFiles, row: dict) -> str:
    """The README.md of one saved model of a run."""
    from huggingface_hub import ModelCard

    metrics, manifest = run.metrics, run.manifest
    marker = run.markers.get(row["name"], {})
    licence = run.recipe.get("license")
    _, other = iso_languages(metrics["languages"])
    role = {"teacher": "the teacher", "student": "the cascade's final student", "direct": "the direct baseline",
            "assistant": "a teacher assistant"}.get(row["role"], row["role"])
    body = [f"# {metrics['name']}: {row['name']}", "",
            f"{role.capitalize()} of the cascade-kd run `{metrics['name']}`: a {metrics['task']} model for "
            f"{len(metrics['languages'])} language(s) ({', '.join(metrics['languages'])}).", ""]
    if not licence:
        body += ["**Licence: unknown.** The recipe names none (add `license:` to it); the terms of the teacher and the "
                 "training data decide what may be shared.", ""]
    else:
        body += [f"Licence: {licence} (as the recipe says; the teacher's and the data's terms apply too).", ""]
    if other:
        body += [f"Language codes that are not ISO 639 and are left out of the metadata: {', '.join(other)}.", ""]
    body += _how_made(run, row, marker) + [""] + _results(run, row) + [""] + _cost(run, row) + [""] + _usage(run, row)
    versions = ", ".join(f"{k} {manifest[k]}" for k in ("cascade_kd", "torch", "transformers", "python") if manifest.get(k))
    body += ["", "## Provenance", "",
             f"- Recipe fingerprint: `{manifest.get('recipe_fingerprint', 'unknown')}` (the run's recipe.yaml and "
             "manifest.json hold the whole recipe).",
             f"- Library versions: {versions or 'unknown'}.",
             "- Written by cascade-kd from the run's metrics.json; `cascade-kd report RUN_DIR` rewrites it."]
    card = ModelCard("---\n" + card_metadata(run, row).to_yaml() + "\n---\n\n" + "\n".join(body) + "\n")
    return str(card)


def write_model_card(run_dir: str | Path, model: str) -> Path:
    """Write README.md into the directory of one saved model of a finished run (by its name in
    metrics.json: teacher, a stage's name, direct); returns its path."""
    run = read_run(run_dir)
    row = run.model(model)
    if row is None or not run.model_dir(row).is_dir():
        raise UserError(f"no saved model {model!r} in this run (models: {', '.join(m['name'] for m in run.models)})",
                        where=str(run_dir))
    return _write_card(run.model_dir(row), render_model_card(run, row))


def write_model_cards(run_dir: str | Path, say=print) -> list[Path]:
    """Write README.md into every saved model directory of a finished run; returns their paths."""
    run = read_run(run_dir)
    return [_write_card(run.model_dir(row), render_model_card(run, row), say) for row in run.models
            if run.model_dir(row).is_dir()]


def _write_card(directory: Path, text: str, say=print) -> Path:
    """README.md, signed; where the user has edited README.md since, it is kept and the new card
    goes next to it (README.cascade-kd.md)."""
    path = directory / MODEL_CARD
    if card_edited(path):
        path = directory / CARD_COPY
        say(f"{directory / MODEL_CARD} was edited after cascade-kd wrote it: kept; the new card is {path.name}")
    atomic_write(path, sign_card(text))
    return path
