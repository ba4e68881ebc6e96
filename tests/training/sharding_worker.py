"""Run by tests/training/test_sharding.py on 2 processes (torchrun, gloo): a sharded copy of a tiny teacher
must give the plain teacher's features while each process holds about half of its weights.
Writes one JSON line per model: what rank 0 measured."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from transformers import BertConfig, BertForMaskedLM, BertForTokenClassification

from cascade_kd.students.features import extract_features
from cascade_kd.training.sharding import local_parameter_count, shard_frozen


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results = []
    for cls in (BertForTokenClassification, BertForMaskedLM):
        torch.manual_seed(0)  # the same teacher on every process, as loading a checkpoint gives
        config = BertConfig(vocab_size=101, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                            intermediate_size=64, num_labels=5, max_position_embeddings=16)
        config._attn_implementation = "eager"  # attentions are compared too
        teacher = BertForTokenClassification(config) if cls is BertForTokenClassification else cls(config)
        teacher.eval().requires_grad_(False)
        before = {k: v.clone() for k, v in teacher.state_dict().items()}
        batch = {"input_ids": torch.randint(0, 101, (3, 9)), "attention_mask": torch.ones(3, 9, dtype=torch.long)}
        batch["attention_mask"][1, 6:] = 0
        masked = torch.zeros(3, 9, dtype=torch.bool)
        masked[0, 2] = masked[2, 7] = True
        logits = masked if cls is BertForMaskedLM else True
        want = extract_features(teacher, batch, hidden=True, attentions=True, qkv_layers=(1, "last"), logits=logits)
        sharded = shard_frozen(teacher, torch.device("cpu"))
        gaps = []
        for _ in range(2):  # a second pass: the weights gathered by the first were freed and gather again
            with torch.no_grad():
                got = extract_features(sharded, batch, hidden=True, attentions=True, qkv_layers=(1, "last"), logits=logits)
            pairs = [(got.logits, want.logits), *zip(got.hidden_states, want.hidden_states),
                     *zip(got.attentions, want.attentions)]
            pairs += [(got.qkv[k][q], want.qkv[k][q]) for k in want.qkv for q in want.qkv[k]]
            gaps.append(max((a - b).abs().max().item() for a, b in pairs))
            held_after_forward = local_parameter_count(sharded)
        total = sum(p.numel() for p in teacher.parameters())
        held = [0] * dist.get_world_size()
        dist.all_gather_object(held, held_after_forward)
        unchanged = all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
        if rank == 0:
            results.append({"model": cls.__name__, "max_gap": max(gaps), "total": total, "held": held,
                            "teacher_unchanged": unchanged,
                            "teacher_plain": not any(type(p).__name__ == "DTensor" for p in teacher.parameters())})
    if rank == 0:
        sys.stdout.write("RESULT " + json.dumps(results) + "\n")
    dist.barrier()  # no process leaves while another still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Leave without the interpreter's teardown: everything is checked and printed, and gloo's
    # background threads, still being destroyed, can abort a process at exit ("terminate called
    # without an active exception", seen once in a loaded CI run) after its work is done.
    sys.stdout.flush()
    os._exit(0)
