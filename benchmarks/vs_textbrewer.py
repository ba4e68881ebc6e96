"""cascade-kd against TextBrewer's GeneralDistiller, same teacher, student, losses, data and epochs.

The teacher is mBERT-base-shaped (12 layers, 768 hidden, 12 heads, the mBERT cased vocabulary of
119,547 pieces), trained here on the PAN-X sentences of the run (no pretrained multilingual weights
can be had offline); it is trained once and reused from WORK/teacher. The student is the teacher's
bottom 6 layers with its embeddings. Both toolkits distil with the same recipe:

    soft logits (temperature 2, x T^2, every real token)  + last-layer hidden-state MSE
                                                          + last-layer attention-probability MSE
    AdamW, lr 1e-4, weight decay 0.01, 10% linear warm-up, grad-norm clip 1.0, batch 32, 3 epochs

Configurations, each in its own process (so that peak memory is its own):
    textbrewer-padded    TextBrewer as its documentation shows: every input padded to max length, fp32
    textbrewer-dynamic   TextBrewer with batches padded to their longest member, fp32
    cascade-kd           `distil_stage`, the function `cascade-kd run` calls for a stage: length-bucketed
                         dynamic padding, bf16 autocast where the hardware has it, the teacher's
                         outputs computed once into the on-disk cache (build timed), dev evaluation
                         after each epoch with selection of the best (timed as well)
    cascade-kd-frozen    the same with the student's embeddings frozen (LightMBERT's default)
    cascade-kd-all-rows  cascade-kd with `embedding_rows: all`: every embedding row gets a gradient
                         and AdamW state at every step, as in TextBrewer (the default trains only
                         the rows the data uses; the others get a zero gradient in TextBrewer too)
Training throughput = real (non-padding) training tokens x epochs / wall time of the whole
distillation (for cascade-kd: cache build, training, evaluations and saving included).

    python benchmarks/vs_textbrewer.py                         # 1000 sentences, 10 languages
    python benchmarks/vs_textbrewer.py --train 20000 --device cuda
    python benchmarks/vs_textbrewer.py --memory                # peak memory at batch 32 x 128 tokens
    python benchmarks/vs_textbrewer.py --quick                 # a 2-layer, 256-wide smoke check
    python benchmarks/vs_textbrewer.py --teacher minilm        # scores with a teacher worth distilling

`--teacher minilm` compares scores where they mean something: the mBERT-shaped teacher trained here
from scratch reaches only a few points of F1, but the pretrained English MiniLM-L6 (6 x 384),
fine-tuned on CoNLL-2002 Spanish and Dutch NER by `benchmarks/real_data.py --tasks minilm`, reaches
about 40. Its bottom 3 layers are distilled on CoNLL-2002 training sentences (teacher outputs only,
no labels) by the same five configurations.

`--memory` trains each configuration on sentences packed to exactly 128 tokens with trainable
embeddings, for a few dozen steps, and reports peak resident memory (and peak GPU memory on GPU).
Needs the `bench` extra (`pip install -e .[bench]`: textbrewer, tensorboard).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the shared data beside the checkout; CASCADE_KD_DATA points elsewhere (e.g. a copy on a GPU machine)
DATA = Path(os.environ.get("CASCADE_KD_DATA", ROOT.parent / "shared" / "data"))
LANGUAGES = ["en", "de", "fr", "es", "ru", "el", "ar", "hi", "zh", "ja"]
CONFIGS = ["textbrewer-padded", "textbrewer-dynamic", "cascade-kd", "cascade-kd-frozen", "cascade-kd-all-rows"]
MAX_LENGTH = 128
TEMPERATURE = 2.0

RECIPE = """\
name: vs-textbrewer
seed: 0
task: {{type: token, max_length: {max_length}}}
data: {data}
teacher: {teacher}
train: {{batch_size: 32, epochs: {epochs}, lr: 1.0e-4, precision: {precision}, checkpoint_every: null,
        teacher_cache: {cache}, eval_batch_size: 32, embedding_rows: {rows}}}
cascade:
  losses:
    kl: {{weight: 1.0, temperature: {temperature}, positions: tokens}}
    hidden_mse: {{weight: 1.0, layer_map: top_only}}
    attention_mse: {{weight: 1.0, layer_map: top_only}}
  stages:
    - {{name: student, student: {{layers: {student_layers}, init: bottom, freeze_embeddings: {frozen}}}}}
"""
# the score comparison (--teacher minilm): the pretrained English MiniLM-L6 that real_data.py
# fine-tunes on CoNLL-2002 Spanish and Dutch NER (its minilm task), distilled on those sentences
MINILM_TEACHER = ROOT / "runs" / "real-data-minilm-v2" / "minilm" / "seed0" / "cascade" / "teacher"
CONLL_FILES = {"es": "esp", "nl": "ned"}


def data_section(settings: dict) -> dict:
    """The recipe's data section: PAN-X in 10 languages (mBERT-shaped teacher) or CoNLL-2002 es/nl (MiniLM)."""
    languages = settings["languages"]
    caps = {"max_train_per_language": -(-settings["train"] // len(languages)),
            "max_eval_per_language": -(-settings["dev"] // len(languages))}
    if settings["preset"] == "minilm":
        conll = DATA / "conll2002"
        return {"languages": languages, "format": "conll", "encoding": "latin-1",
                "train": {l: str(conll / f"{CONLL_FILES[l]}.train") for l in languages},
                "dev": {l: str(conll / f"{CONLL_FILES[l]}.testa") for l in languages}, **caps}
    return {"languages": languages, "format": "conll",
            "train": settings.get("train_file") or f"{DATA}/panx/train-{{lang}}.tsv",
            "dev": f"{DATA}/panx/dev-{{lang}}.tsv", **caps}


def teacher_shape(quick: bool) -> dict:
    if quick:
        return {"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4,
                "intermediate_size": 1024, "max_position_embeddings": 512}
    return {"model_type": "bert", "num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12,
            "intermediate_size": 3072, "max_position_embeddings": 512}


def write_recipe(settings: dict, *, frozen: bool = False, cache: str = "bf16", teacher_dir: Path | None = None,
                 rows: str = "seen") -> Path:
    work = Path(settings["work"])
    teacher = {"model": str(teacher_dir)} if teacher_dir else {"config": settings["teacher_shape"]}
    if settings["preset"] == "mbert":  # the MiniLM teacher's own tokenizer is saved beside it
        teacher["tokenizer"] = str(DATA / "tokenizers" / "mbert-cased")
    text = RECIPE.format(
        max_length=MAX_LENGTH, data=json.dumps(data_section(settings)), teacher=json.dumps(teacher),
        epochs=settings["epochs"], precision=settings["precision"], cache=cache, temperature=TEMPERATURE,
        student_layers=settings["teacher_shape"]["num_hidden_layers"] // 2, frozen=str(frozen).lower(), rows=rows)
    packed = "-packed" if settings.get("train_file") else ""
    path = work / f"recipe-{'frozen' if frozen else 'trainable'}-{cache}-{rows}-{'t' if teacher_dir else 'new'}{packed}.yaml"
    path.write_text(text)
    return path


# --- the teacher (trained once, reused) --------------------------------------------------------------

def ensure_teacher(settings: dict, say=print) -> Path:
    import torch

    from cascade_kd.cascade import prepare
    from cascade_kd.losses.base import LossTerm
    from cascade_kd.losses.logits import HardLabelCE
    from cascade_kd.training.data import StageData
    from cascade_kd.training.loop import train
    from cascade_kd.training.task import DistillationTask
    from cascade_kd.students.hub import create_model, save_checkpoint
    from cascade_kd.fileio import weight_files
    from cascade_kd.config.schema import load_recipe

    directory = Path(settings["teacher_dir"])
    if settings["preset"] == "minilm":
        if not weight_files(directory):
            raise SystemExit(f"no fine-tuned MiniLM teacher at {directory}: make it with `python benchmarks/real_data.py "
                             "--tasks minilm --out runs/real-data-minilm-v2 --seeds 0`, or pass --teacher-dir")
        say(f"teacher: the fine-tuned MiniLM in {directory}")
        return directory
    if weight_files(directory):
        say(f"teacher: reusing {directory}")
        return directory
    recipe = load_recipe(write_recipe({**settings, "train": settings["teacher_train"]}))
    job = prepare(recipe, Path(settings["work"]) / "teacher-run", say=lambda m: None)
    torch.manual_seed(0)
    teacher = create_model(recipe.teacher.config, "token", job.data.labels, len(job.tokenizer), job.pad_id)
    cfg = recipe.train.model_copy(update={"epochs": settings["teacher_epochs"], "lr": settings["teacher_lr"]})
    say(f"teacher: training {settings['teacher_shape']['num_hidden_layers']} x {settings['teacher_shape']['hidden_size']} "
        f"for {cfg.epochs} epochs on {len(job.train_set())} sentences (not part of any timing)")
    result = train(DistillationTask(teacher, [LossTerm(1.0, HardLabelCE())]), StageData(job.train_set(), pad_id=job.pad_id),
                   cfg, evaluate=lambda m: job.dev_score(m, cfg), desc="teacher")
    say(f"teacher: dev F1 {100 * result.best_score:.1f} (epoch {result.best_epoch}), {result.wall_time_s:.0f} s")
    save_checkpoint(teacher, job.tokenizer, directory)
    (directory / "teacher.json").write_text(json.dumps({"dev_f1": result.best_score, "wall_time_s": result.wall_time_s,
                                                        "sentences": len(job.train_set()), "epochs": cfg.epochs}))
    return directory


def teacher_score(settings: dict, work: Path) -> dict:
    """The teacher's dev F1: saved when this script trained it; the MiniLM's is measured once on this
    run's dev sentences and kept in WORK/teacher.json."""
    own = Path(settings["teacher_dir"]) / "teacher.json"
    if own.is_file():
        return json.loads(own.read_text())
    path = work / "teacher.json"
    if not path.is_file():
        from cascade_kd.cascade import prepare
        from cascade_kd.evaluation.scoring import evaluate_languages
        from cascade_kd.students.hub import load_checkpoint
        from cascade_kd.config.schema import load_recipe

        recipe = load_recipe(write_recipe(settings, teacher_dir=Path(settings["teacher_dir"])))
        job = prepare(recipe, Path(tempfile.mkdtemp(prefix="teacher-", dir=work)), say=lambda m: None)
        teacher = load_checkpoint(Path(settings["teacher_dir"]), "token").to(settings["device"])
        per_language = evaluate_languages(teacher, job.encoded["dev"], "token", job.data.labels, batch_size=64,
                                          pad_id=job.pad_id)
        path.write_text(json.dumps({"dev_f1": sum(per_language.values()) / len(per_language),
                                    "dev_f1_per_language": per_language}))
    return json.loads(path.read_text())


# --- one configuration per process --------------------------------------------------------------------

def _peak_memory() -> dict:
    import torch

    out = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # kB on Linux
    if torch.cuda.is_available():
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def run_cascade_kd(settings: dict, frozen: bool, rows: str) -> dict:

    from cascade_kd.cascade import distil_stage, prepare
    from cascade_kd.training.setup import resolve_precision
    from cascade_kd.students import count_parameters
    from cascade_kd.students.hub import load_checkpoint
    from cascade_kd.config.schema import load_recipe

    recipe = load_recipe(write_recipe(settings, frozen=frozen, cache=settings["cache"], teacher_dir=Path(settings["teacher_dir"]),
                                      rows=rows))
    out = Path(tempfile.mkdtemp(prefix="ours-", dir=settings["work"]))
    job = prepare(recipe, out, say=lambda m: None)
    teacher = load_checkpoint(Path(settings["teacher_dir"]), "token").to(settings["device"])
    tokens = sum(len(x) for x in job.train_set())
    sync()
    started = time.perf_counter()
    student, info = distil_stage(job, "student", recipe.cascade.stages[0], teacher, 0)
    sync()
    wall = time.perf_counter() - started
    params = count_parameters(student)
    return {"wall_s": wall, "train_only_s": info["wall_time_s"], "real_tokens": tokens,
            "precision": resolve_precision(recipe.train.precision), "padding": "dynamic, length-bucketed",
            "teacher": f"cache ({settings['cache']})" if settings["cache"] != "off" else "live",
            "embedding_rows": "frozen" if frozen else rows,
            "params_trainable": params["params_trainable"], "student": student, "job": job}


def run_textbrewer(settings: dict, padding: str) -> dict:
    import textbrewer
    import torch
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig
    from transformers import get_linear_schedule_with_warmup

    from cascade_kd.cascade import prepare
    from cascade_kd.data.encode import collate
    from cascade_kd.students import build_student, count_parameters
    from cascade_kd.students.hub import load_checkpoint, use_attention_outputs
    from cascade_kd.config.schema import load_recipe

    recipe = load_recipe(write_recipe(settings, teacher_dir=Path(settings["teacher_dir"])))
    job = prepare(recipe, Path(tempfile.mkdtemp(prefix="tb-", dir=settings["work"])), say=lambda m: None)
    device = settings["device"]
    teacher = load_checkpoint(Path(settings["teacher_dir"]), "token")
    student = build_student(teacher, recipe.cascade.stages[0].student)  # the same bottom-6 initialisation
    for model in (teacher, student):
        use_attention_outputs(model, True)
        model.config.output_hidden_states = True
        model.config.output_attentions = True
        model.to(device)
    data = job.train_set()
    pad = job.pad_id

    def to_batch(items):
        batch = collate(items, pad)
        if padding == "max":  # what the documentation's examples do: every input at max length
            width = MAX_LENGTH - batch["input_ids"].shape[1]
            batch["input_ids"] = torch.nn.functional.pad(batch["input_ids"], (0, width), value=pad)
            batch["attention_mask"] = torch.nn.functional.pad(batch["attention_mask"], (0, width), value=0)
            if "token_type_ids" in batch:
                batch["token_type_ids"] = torch.nn.functional.pad(batch["token_type_ids"], (0, width), value=0)
        return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}

    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True, collate_fn=to_batch,
                                         generator=torch.Generator().manual_seed(0))

    def adaptor(batch, outputs):
        return {"logits": outputs.logits, "hidden": outputs.hidden_states, "attention": outputs.attentions,
                "inputs_mask": batch["attention_mask"], "logits_mask": batch["attention_mask"]}

    layers_t, layers_s = teacher.config.num_hidden_layers, student.config.num_hidden_layers
    distill_config = DistillationConfig(
        # TextBrewer's soft cross-entropy is not multiplied by T^2 (cascade-kd's kl is, as in Hinton et
        # al.): the weight T^2 gives both the same gradient (the two losses differ by the teacher's
        # entropy, a constant)
        temperature=TEMPERATURE, kd_loss_type="ce", kd_loss_weight=TEMPERATURE ** 2, hard_label_weight=0.0,
        intermediate_matches=[
            # hidden_states has L+1 entries (embeddings first), attentions L: the last of each
            {"layer_T": layers_t, "layer_S": layers_s, "feature": "hidden", "loss": "hidden_mse", "weight": 1.0},
            {"layer_T": layers_t - 1, "layer_S": layers_s - 1, "feature": "attention", "loss": "attention_mse", "weight": 1.0},
        ])
    out = Path(tempfile.mkdtemp(prefix="tb-out-", dir=settings["work"]))
    train_config = TrainingConfig(device=device, output_dir=str(out), log_dir=str(out / "log"))
    distiller = GeneralDistiller(train_config=train_config, distill_config=distill_config, model_T=teacher,
                                 model_S=student, adaptor_T=adaptor, adaptor_S=adaptor)
    decay, no_decay = [], []
    for name, p in student.named_parameters():
        if p.requires_grad:
            (no_decay if "bias" in name or "LayerNorm" in name else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-4)
    total = len(loader) * settings["epochs"]
    tokens = sum(len(x) for x in data)
    torch.manual_seed(0)
    sync()
    started = time.perf_counter()
    with distiller:
        distiller.train(optimizer, loader, num_epochs=settings["epochs"], max_grad_norm=1.0,
                        scheduler_class=get_linear_schedule_with_warmup,
                        scheduler_args={"num_warmup_steps": int(0.1 * total), "num_training_steps": total})
    sync()
    wall = time.perf_counter() - started
    student.config.output_hidden_states = student.config.output_attentions = False
    use_attention_outputs(student, False)
    return {"wall_s": wall, "real_tokens": tokens, "precision": "fp32", "textbrewer": textbrewer.__version__,
            "padding": f"every input to {MAX_LENGTH}" if padding == "max" else "to the batch's longest",
            "teacher": "live", "embedding_rows": "all", "params_trainable": count_parameters(student)["params_trainable"],
            "student": student.eval(), "job": job}


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def worker(name: str, settings: dict) -> dict:
    import torch

    from cascade_kd.evaluation.scoring import evaluate_languages

    torch.manual_seed(0)
    if name.startswith("textbrewer"):
        result = run_textbrewer(settings, "max" if name.endswith("padded") else "dynamic")
    else:
        result = run_cascade_kd(settings, frozen=name.endswith("frozen"), rows="all" if name.endswith("all-rows") else "seen")
    student, job = result.pop("student"), result.pop("job")
    student.to(settings["device"])
    per_language = evaluate_languages(student, job.encoded["dev"], "token", job.data.labels, batch_size=64,
                                      pad_id=job.pad_id)
    result.update(_peak_memory())
    result.update({"config": name, "epochs": settings["epochs"], "dev_f1": sum(per_language.values()) / len(per_language),
                   "dev_f1_per_language": per_language,
                   "tokens_per_s": result["real_tokens"] * settings["epochs"] / result["wall_s"]})
    return result


# --- driver -------------------------------------------------------------------------------------------

def packed_train_file(settings: dict) -> str:
    """PAN-X sentences of each language concatenated until they fill MAX_LENGTH pieces (the rest is
    truncated): every training input is exactly 128 tokens, the memory benchmark's shape."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(DATA / "tokenizers" / "mbert-cased"))
    directory = Path(settings["work"]) / "packed"
    directory.mkdir(exist_ok=True)
    per_language = -(-settings["train"] // len(settings["languages"]))
    for lang in settings["languages"]:
        sentences, current = [], []
        for block in (DATA / "panx" / f"train-{lang}.tsv").read_text(encoding="utf-8").split("\n\n"):
            rows = [line for line in block.splitlines() if line.strip()]
            current += rows
            words = [r.split("\t")[0].split(":", 1)[-1] for r in current]
            if len(tokenizer(words, is_split_into_words=True)["input_ids"]) >= MAX_LENGTH:
                sentences.append("\n".join(current))
                current = []
                if len(sentences) == per_language:
                    break
        (directory / f"train-{lang}.tsv").write_text("\n\n".join(sentences) + "\n", encoding="utf-8")
    return str(directory / "train-{lang}.tsv")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="mbert", choices=["mbert", "minilm"],
                        help="mbert: an mBERT-base-shaped teacher trained here on PAN-X (speed); minilm: the pretrained "
                             "MiniLM-L6 fine-tuned on CoNLL-2002 es/nl by real_data.py (a teacher worth distilling: scores)")
    parser.add_argument("--teacher-dir", type=Path, default=None, help=f"the MiniLM teacher (default {MINILM_TEACHER})")
    parser.add_argument("--train", type=int, default=None, help="training sentences over the languages (default 1000; minilm 2000)")
    parser.add_argument("--dev", type=int, default=None, help="dev sentences over the languages (default 500; minilm 600)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--teacher-train", type=int, default=None, help="the teacher's training sentences (default: --train)")
    parser.add_argument("--teacher-only", action="store_true", help="train (or find) the teacher and stop")
    parser.add_argument("--teacher-lr", type=float, default=1e-4)
    parser.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    parser.add_argument("--cache", default="bf16", choices=["off", "bf16", "fp16", "fp32"], help="cascade-kd's teacher cache")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="cascade-kd's precision")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory", action="store_true", help="peak memory at batch 32 x 128 tokens, trainable embeddings")
    parser.add_argument("--quick", action="store_true", help="a 2-layer 256-wide teacher, 200 sentences: smoke check")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "vs-textbrewer")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("CASCADE_KD_QUIET", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.worker:  # one configuration, in its own process
        settings = json.loads(Path(args.worker.split("@", 1)[1]).read_text())
        result = worker(args.worker.split("@", 1)[0], settings)
        Path(settings["result"]).write_text(json.dumps(result))
        return 0
    needed = DATA / ("conll2002" if args.teacher == "minilm" else "panx")
    if not needed.is_dir():
        print(f"skipped: {needed.name} data not found at {needed} (see ../shared/data/README.md)")
        return 0
    if args.teacher == "minilm" and (args.memory or args.quick):
        print("--memory and --quick measure the mBERT-shaped teacher: leave out --teacher minilm", file=sys.stderr)
        return 2
    minilm = args.teacher == "minilm"
    args.train = args.train or (2000 if minilm else 1000)
    args.dev = args.dev or (600 if minilm else 500)
    try:
        import textbrewer  # noqa: F401
    except ImportError:
        print("textbrewer is not installed: pip install -e .[bench]", file=sys.stderr)
        return 2
    if args.quick:
        args.train, args.dev, args.teacher_epochs = min(args.train, 200), min(args.dev, 100), min(args.teacher_epochs, 2)
    teacher_dir = Path(args.teacher_dir or MINILM_TEACHER) if minilm else None
    if minilm and (teacher_dir / "config.json").is_file():
        config = json.loads((teacher_dir / "config.json").read_text())
        shape = {k: config[k] for k in ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads",
                                        "intermediate_size", "vocab_size")}
    else:
        shape = teacher_shape(args.quick)
    args.teacher_train = args.teacher_train or args.train
    tag = ("quick" if args.quick else f"minilm-{args.train}" if minilm else
           f"{shape['num_hidden_layers']}x{shape['hidden_size']}-{args.train}-t{args.teacher_train}")
    work = args.work / tag
    work.mkdir(parents=True, exist_ok=True)
    settings = {"work": str(work), "train": args.train, "dev": args.dev, "epochs": args.epochs,
                "teacher_epochs": args.teacher_epochs, "teacher_lr": args.teacher_lr, "teacher_shape": shape,
                "teacher_train": args.teacher_train, "preset": args.teacher,
                "languages": list(CONLL_FILES) if minilm else LANGUAGES,
                "teacher_dir": str(teacher_dir or work / "teacher"), "precision": args.precision, "cache": args.cache,
                "device": args.device}
    import torch

    teacher_dir = ensure_teacher(settings)
    teacher_info = teacher_score(settings, work)
    if args.teacher_only:
        return 0
    if args.memory:  # same teacher; training inputs packed to 128 tokens, a few dozen steps
        settings.update(train_file=packed_train_file({**settings, "train": 320}), train=320, epochs=1, dev=50)
    rows = []
    for name in args.configs:
        settings["result"] = str(work / f"result-{name}{'-memory' if args.memory else ''}.json")
        path = work / f"settings-{name}.json"
        path.write_text(json.dumps(settings))
        print(f"{name}: running ...", flush=True)
        done = subprocess.run([sys.executable, __file__, "--worker", f"{name}@{path}"], cwd=ROOT, check=False)
        if done.returncode != 0:
            print(f"{name}: failed (exit {done.returncode})", file=sys.stderr)
            return 1
        rows.append(json.loads(Path(settings["result"]).read_text()))
        r = rows[-1]
        print(f"{name}: {r['wall_s']:.1f} s, {r['tokens_per_s']:.0f} tokens/s, dev F1 {100 * r['dev_f1']:.1f}, "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
    base = {r["config"]: r["tokens_per_s"] for r in rows}
    print(f"\nteacher {shape['num_hidden_layers']}x{shape['hidden_size']} (dev F1 {100 * teacher_info['dev_f1']:.1f}), "
          f"student {shape['num_hidden_layers'] // 2} layers; {settings['train']} sentences x {settings['epochs']} epochs, "
          f"batch 32, device {args.device}, {torch.get_num_threads()} threads")
    print("| configuration | padding | precision | teacher | embedding rows trained | wall s | tokens/s | "
          "vs TB padded | vs TB dynamic | dev F1 | peak RSS GiB |" + (" peak GPU GiB |" if args.device != "cpu" else ""))
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.device != "cpu" else ""))
    def ratio(r, key):
        return f"{r['tokens_per_s'] / base[key]:.1f}x" if key in base else "-"

    for r in rows:
        print(f"| {r['config']} | {r['padding']} | {r['precision']} | {r['teacher']} | {r['embedding_rows']} | "
              f"{r['wall_s']:.1f} | {r['tokens_per_s']:.0f} | {ratio(r, 'textbrewer-padded')} | {ratio(r, 'textbrewer-dynamic')} | "
              f"{100 * r['dev_f1']:.1f} | {r['peak_rss_gib']:.2f} |"
              + (f" {r.get('peak_gpu_gib', 0):.2f} |" if args.device != "cpu" else ""))
    result = {"command": " ".join(["python", *sys.argv]), "machine": platform.processor() or platform.machine(),
              "device": args.device, "threads": torch.get_num_threads(), "teacher": shape, "teacher_dev_f1": teacher_info["dev_f1"],
              "sentences": settings["train"], "epochs": settings["epochs"], "memory_mode": args.memory, "rows": rows}
    suffix = "_minilm" if minilm else "_memory" if args.memory else "_quick" if args.quick else ""
    out = args.out or ROOT / "benchmarks" / "results" / f"vs_textbrewer{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
