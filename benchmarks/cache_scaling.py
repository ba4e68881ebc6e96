"""How the cost of a distillation epoch grows with the data, with and without the teacher cache.

For each training-set size (PAN-X sentences, several languages, mBERT tokenizer) one epoch of the
same distillation stage is timed twice in this process: with the teacher run on every batch, and
reading its outputs from the on-disk cache (whose one-off build is timed separately). The teacher
is deliberately bigger than the student, as in any distillation; weights are random (the cost of
a forward pass does not depend on them).

    python benchmarks/cache_scaling.py                      # sizes 2000 4000 8000 16000
    python benchmarks/cache_scaling.py --sizes 500 1000     # quick
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
LANGUAGES = ["en", "de", "fr", "es", "ru", "el", "ar", "hi", "zh", "ja"]

RECIPE = """\
name: cache-scaling
seed: 0
task: {{type: token, max_length: 128}}
data:
  languages: {languages}
  format: conll
  train: {data}/panx/train-{{lang}}.tsv
  dev: {data}/panx/dev-{{lang}}.tsv
  max_train_per_language: {per_language}
  max_eval_per_language: 10
teacher:
  tokenizer: {data}/tokenizers/mbert-cased
  config: {{model_type: bert, num_hidden_layers: {teacher_layers}, hidden_size: {hidden}, num_attention_heads: 4,
           intermediate_size: {intermediate}, max_position_embeddings: 128}}
train: {{batch_size: 32, epochs: 1, lr: 5.0e-4, checkpoint_every: null}}
cascade:
  losses:
    kl: {{weight: 1.0, temperature: 2.0}}
    hidden_mse: {{weight: 1.0, layer_map: top_only}}
  stages:
    - {{name: student, student: {{layers: 1, freeze_embeddings: true}}}}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 8000, 16000])
    parser.add_argument("--teacher-layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cache_scaling.json")
    args = parser.parse_args()
    if not (DATA / "panx").is_dir():
        print(f"skipped: PAN-X data not found at {DATA / 'panx'} (see ../shared/data/README.md)")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("CASCADE_KD_QUIET", "1")
    from cascade_kd.cascade import prepare
    from cascade_kd.losses.registry import build_terms
    from cascade_kd.training.data import StageData
    from cascade_kd.training.loop import train
    from cascade_kd.training.setup import resolve_precision
    from cascade_kd.training.task import DistillationTask
    from cascade_kd.training.teacher import CachedTeacher, LiveTeacher
    from cascade_kd.students import build_student
    from cascade_kd.students.hub import create_model
    from cascade_kd.config.schema import load_recipe
    from cascade_kd.training.teacher_cache import CacheRequest, TeacherCache, build_cache

    work = Path(tempfile.mkdtemp(prefix="cache-scaling-"))
    per_language = -(-max(args.sizes) // len(LANGUAGES))
    (work / "recipe.yaml").write_text(RECIPE.format(
        languages=json.dumps(LANGUAGES), data=DATA, per_language=per_language, teacher_layers=args.teacher_layers,
        hidden=args.hidden, intermediate=4 * args.hidden))
    recipe = load_recipe(work / "recipe.yaml")
    job = prepare(recipe, work / "run", say=lambda m: None)
    # interleave languages so every size mixes all of them
    by_lang = [enc for _, enc in job.encoded["train"].values()]
    everything = [x for group in zip(*by_lang) for x in group]
    torch.manual_seed(0)
    teacher = create_model(recipe.teacher.config, "token", job.data.labels, len(job.tokenizer), job.pad_id).eval()
    base_student = build_student(teacher, recipe.cascade.stages[0].student, where="student")
    cfg = recipe.train_for(None, "train")
    precision = resolve_precision(cfg.precision)
    terms = build_terms(recipe.cascade.losses, teacher.config, base_student.config, where="cascade")

    def task(side):  # a fresh copy of the same student and projections for every run
        return DistillationTask(copy.deepcopy(base_student), copy.deepcopy(terms), side)
    request = CacheRequest(logits=True, hidden=(teacher.config.num_hidden_layers,), attention=(), dtype=args.dtype,
                           precision={"no": "fp32"}.get(precision, precision))

    # warm-up: the first bf16 steps pay one-off kernel selection, which would land on the first size
    warm = everything[:96]
    train(task(LiveTeacher(teacher)), StageData(warm, pad_id=job.pad_id), cfg)
    rows = []
    print(f"teacher {args.teacher_layers}x{args.hidden}, student 1x{args.hidden} (frozen embeddings), "
          f"batch 32, precision {precision}, cache {args.dtype}, {torch.get_num_threads()} threads")
    print("| sentences | tokens | live epoch s | cache build s | cached epoch s | epoch speed-up | cache size |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        data = everything[:n]
        if len(data) < n:
            print(f"only {len(data)} sentences available, stopping")
            break
        live = train(task(LiveTeacher(teacher)), StageData(data, pad_id=job.pad_id), cfg)
        directory = work / f"cache-{n}"
        started = time.perf_counter()
        build_cache(teacher, data, request, directory, token_task=True, pad_id=job.pad_id, batch_size=64,
                    device="cpu", say=lambda m: None)
        build_s = time.perf_counter() - started
        cache = TeacherCache(directory, request, teacher.config, True)
        cached = train(task(CachedTeacher(cache, teacher)), StageData(data, pad_id=job.pad_id), cfg)
        size = sum(p.stat().st_size for p in directory.iterdir())
        row = {"sentences": n, "tokens": sum(len(x) for x in data), "live_epoch_s": live.wall_time_s,
               "cache_build_s": build_s, "cached_epoch_s": cached.wall_time_s,
               "speedup_per_epoch": live.wall_time_s / cached.wall_time_s, "cache_bytes": size}
        rows.append(row)
        print(f"| {n} | {row['tokens']} | {live.wall_time_s:.1f} | {build_s:.1f} | {cached.wall_time_s:.1f} | "
              f"{row['speedup_per_epoch']:.2f}x | {size / 2**20:.1f} MiB |", flush=True)
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "teacher": f"{args.teacher_layers}x{args.hidden}",
              "student": f"1x{args.hidden}", "precision": precision, "cache_dtype": args.dtype, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
