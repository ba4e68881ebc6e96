"""What sharding the frozen teacher costs and saves (`train.teacher_sharding: fsdp`, issue 9).

Run on N processes (CPU here, gloo; GPUs with NCCL the same way):

    torchrun --standalone --nproc_per_node 2 benchmarks/teacher_sharding.py [--layers 12 --hidden 768 ...]

An mBERT-base-shaped token classifier (12 x 768, 12 heads, 3072 intermediate, 119,547 pieces; random
weights, the same on every process) is the teacher. Each process gets its share of a global batch of
32 sequences of 64 pieces, as in training. Measured, in one run, alternating the two:
- parameters each process holds: the whole teacher vs its FSDP shard (what sits on the device);
- the teacher's forward time per batch, whole vs sharded (sharded adds one all-gather per layer);
- the largest difference between the two's logits and hidden states (should be ~0).
Results: printed, and saved by the main process to benchmarks/results/teacher_sharding.json.
On a CPU-only machine the device is host memory, and every process also keeps the whole teacher on
the host (cascade_kd/training/sharding.py), so no memory is saved here: the figure that carries over to
accelerators is the parameters held per process.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import BertConfig, BertForTokenClassification

from cascade_kd.students.features import extract_features
from cascade_kd.training.sharding import local_parameter_count, shard_frozen

RESULTS = Path(__file__).resolve().parent / "results" / "teacher_sharding.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=3072)
    parser.add_argument("--vocab", type=int, default=119547)
    parser.add_argument("--batch", type=int, default=32, help="global batch, split between processes")
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same teacher on every process, as loading one checkpoint gives
    config = BertConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, intermediate_size=args.intermediate, num_labels=7)
    teacher = BertForTokenClassification(config).eval().requires_grad_(False)
    sharded = shard_frozen(teacher, torch.device("cpu"))

    per_process = args.batch // world
    generator = torch.Generator().manual_seed(1 + rank)  # each process its own share of the batch
    batch = {"input_ids": torch.randint(min(1000, args.vocab // 2), args.vocab, (per_process, args.seq), generator=generator),
             "attention_mask": torch.ones(per_process, args.seq, dtype=torch.long)}

    def forward(model):
        with torch.no_grad():
            return extract_features(model, batch, hidden=True, attentions=False)

    whole_out, sharded_out = forward(teacher), forward(sharded)  # also the warm-up of each
    gap = max((a - b).abs().max().item() for a, b in zip((whole_out.logits, *whole_out.hidden_states),
                                                         (sharded_out.logits, *sharded_out.hidden_states)))
    times = {"whole": [], "sharded": []}
    for _ in range(args.repeats):  # alternating, so a change in the machine's load hits both
        for name, model in (("whole", teacher), ("sharded", sharded)):
            dist.barrier()
            started = time.perf_counter()
            forward(model)
            dist.barrier()  # a batch is done when every process is done
            times[name].append(time.perf_counter() - started)

    held = [0] * world
    dist.all_gather_object(held, local_parameter_count(sharded))
    gaps = [0.0] * world
    dist.all_gather_object(gaps, gap)
    if rank == 0:
        total = sum(p.numel() for p in teacher.parameters())
        whole_ms, sharded_ms = (statistics.median(times[k]) * 1000 for k in ("whole", "sharded"))
        result = {
            "command": f"torchrun --standalone --nproc_per_node {world} benchmarks/teacher_sharding.py",
            "processes": world, "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s) per process",
            "teacher": f"{args.layers} x {args.hidden}, {args.heads} heads, {args.intermediate} intermediate, vocab {args.vocab:,}",
            "global_batch": args.batch, "seq": args.seq, "repeats": args.repeats,
            "params_total": total, "params_held_whole": total, "params_held_sharded": held,
            "share_held": max(held) / total,
            "forward_ms_whole": whole_ms, "forward_ms_sharded": sharded_ms,
            "sharded_over_whole": sharded_ms / whole_ms, "max_abs_gap": max(gaps),
        }
        print(f"teacher {result['teacher']}: {total:,} parameters")
        print(f"held per process: whole {total:,}; sharded {', '.join(f'{h:,}' for h in held)} "
              f"({100 * result['share_held']:.1f}% at most)")
        print(f"forward, global batch {args.batch} x {args.seq} on {world} processes (median of {args.repeats}): "
              f"whole {whole_ms:.1f} ms, sharded {sharded_ms:.1f} ms ({result['sharded_over_whole']:.2f}x)")
        print(f"largest difference between their logits and hidden states: {max(gaps):.2e}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
