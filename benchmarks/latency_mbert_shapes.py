"""Student latency against an mBERT-base-shaped model on this machine, in one process.

Builds randomly initialised models of the shapes a cascade produces (latency does not depend on
the weights): an mBERT-base-shaped teacher (12 layers, 768 hidden, 12 heads, 119,547 word pieces)
and students down to 1 layer x 256, each with a 7-label token-classification head (PAN-X NER).
For each: median forward latency in PyTorch fp32 and bf16 autocast (where the CPU runs bf16
natively) at batch 32 and batch 1, sequence 64 (random word pieces, full attention mask, so
tokenisation is excluded), parameters (total, embedding), and the speed-up against the teacher in
fp32. ONNX Runtime fp32/int8 backends are not measured yet.

    python benchmarks/latency_mbert_shapes.py [--repeats 10] [--out benchmarks/results/latency_mbert_shapes.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForTokenClassification

from cascade_kd.deploy.bench import forward_latency_ms
from cascade_kd.training.setup import resolve_precision
from cascade_kd.students import count_parameters

SHAPES = [  # (name, layers, hidden, heads)
    ("teacher 12x768 (mBERT-base)", 12, 768, 12),
    ("6x768 (bottom-6, LightMBERT)", 6, 768, 12),
    ("6x384", 6, 384, 12),
    ("4x312", 4, 312, 12),
    ("2x256", 2, 256, 4),
    ("1x256", 1, 256, 4),
    ("2x128 (real-data cascade student)", 2, 128, 4),
    ("1x128", 1, 128, 4),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "latency_mbert_shapes.json")
    args = parser.parse_args()
    precisions = ["fp32"] + (["bf16"] if resolve_precision("auto") == "bf16" else [])
    rows = []
    for name, layers, hidden, heads in SHAPES:
        config = BertConfig(vocab_size=119547, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            intermediate_size=4 * hidden, num_labels=7)
        model = BertForTokenClassification(config).eval()
        row = {"model": name, **count_parameters(model), "latency_ms": {}}
        for precision in precisions:
            for batch in (32, 1):
                row["latency_ms"][f"{precision}/b{batch}"] = forward_latency_ms(
                    model, batch, args.seq_len, bf16=precision == "bf16", repeats=args.repeats)
        rows.append(row)
        print(f"{name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in row["latency_ms"].items()), flush=True)
        del model
    teacher = rows[0]["latency_ms"]["fp32/b32"], rows[0]["latency_ms"]["fp32/b1"]
    for row in rows:
        row["speedup_vs_teacher_fp32"] = {k: teacher[0 if k.endswith("b32") else 1] / v for k, v in row["latency_ms"].items()}
    result = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "seq_len": args.seq_len, "repeats": args.repeats,
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    keys = list(rows[0]["latency_ms"])
    print("\n| model | params | emb. params | " + " | ".join(f"{k} ms (x vs teacher fp32)" for k in keys) + " |")
    print("|---|---:|---:|" + "---:|" * len(keys))
    for row in rows:
        cells = [f"{row['latency_ms'][k]:.1f} ({row['speedup_vs_teacher_fp32'][k]:.1f}x)" for k in keys]
        print(f"| {row['model']} | {row['params_total'] / 1e6:.1f}M | {row['params_embedding'] / 1e6:.1f}M | " + " | ".join(cells) + " |")
    print(f"\nsaved {args.out}")


if __name__ == "__main__":
    main()
