"""Latency of every model of a run, measured in one process so ratios compare like with like.

For each model: median forward latency at fixed batch sizes and sequence lengths, in PyTorch fp32
and (where the hardware runs it natively) bf16 autocast, on the same inputs and threads; plus the
size of its weights on disk. Inputs are random word-piece ids with full attention masks (every
position real), so the figure is the model's cost alone: tokenisation is not included.
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from cascade_kd.engine import resolve_precision
from cascade_kd.models import load_checkpoint


@torch.inference_mode()
def forward_latency_ms(model, batch_size: int, seq_len: int, *, bf16: bool, repeats: int, warmup: int = 2) -> float:
    """Median wall time of one forward pass, in milliseconds."""
    generator = torch.Generator().manual_seed(0)
    low = min(1000, model.config.vocab_size - 1)  # skip the special tokens at the start of most vocabularies
    ids = torch.randint(low, model.config.vocab_size, (batch_size, seq_len), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    times = []
    with context:
        for i in range(warmup + repeats):
            started = time.perf_counter()
            model(**inputs)
            if i >= warmup:
                times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def bench_run(run_dir: Path, *, batch_sizes=(1, 32), seq_lens=(32, 128), repeats: int = 10, say=print) -> dict:
    """Latency grid for every model of a finished run (CPU), with ratios against the teacher."""
    import json

    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    precisions = ["fp32"] + (["bf16"] if resolve_precision("auto") == "bf16" else [])
    rows = []
    for row in metrics["models"]:
        directory = run_dir / row["path"]
        model = load_checkpoint(directory, metrics["task"])
        limit = getattr(model.config, "max_position_embeddings", max(seq_lens))
        entry = {"name": row["name"], "size_mb": (directory / "model.safetensors").stat().st_size / 2**20, "latency_ms": {}}
        for precision in precisions:
            for batch in batch_sizes:
                for seq in seq_lens:
                    if seq > limit - 2:  # RoBERTa-style models use 2 positions before the first token
                        entry.setdefault("skipped", []).append(f"s{seq}: only {limit} position embeddings")
                        continue
                    key = f"{precision}/b{batch}/s{seq}"
                    entry["latency_ms"][key] = forward_latency_ms(model, batch, seq, bf16=precision == "bf16", repeats=repeats)
        say(f"bench: {row['name']}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in entry["latency_ms"].items())
            + "".join(f"; skipped {s}" for s in sorted(set(entry.get("skipped", [])))))
        rows.append(entry)
    teacher = rows[0]["latency_ms"]
    for entry in rows:
        entry["speedup_vs_teacher"] = {k: teacher[k] / v for k, v in entry["latency_ms"].items() if k in teacher}
    return {"device": "cpu", "threads": torch.get_num_threads(), "repeats": repeats,
            "input": "random word-piece ids, full attention mask; tokenisation excluded", "models": rows}


def bench_table(bench: dict) -> str:
    """Markdown: one row per model, one column per latency setting, with the speed-up vs the teacher."""
    keys = list(bench["models"][0]["latency_ms"])
    head = ["model", "size (MB)"] + [k.replace("/", " ") + " ms" for k in keys]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for m in bench["models"]:
        cells = [f"{m['latency_ms'][k]:.2f} ({m['speedup_vs_teacher'][k]:.1f}x)" for k in keys]
        lines.append(f"| {m['name']} | {m['size_mb']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
