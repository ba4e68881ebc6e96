"""A frozen teacher split between the processes (`train.teacher_sharding: fsdp`).

Without sharding, every process holds a whole copy of the teacher (it is frozen and outside DDP).
A teacher too large for one device is instead sharded with PyTorch FSDP2 (`fully_shard`, the engine
under accelerate's FSDP plugin): each process keeps 1/N of every weight, and a forward pass gathers
one block (transformer layer, embeddings) at a time and frees it after use. Only forward passes run
through it, under `no_grad`: nothing is trained, so nothing else of FSDP (gradient reduce-scatter,
optimiser state, sharded checkpoints) is involved, and the student stays in DDP.

The sharded teacher is a second model, built on the meta device (no memory) from the teacher's
config, then filled from the teacher's state dict, each process keeping its slice on its device.
The teacher object itself is left as it is (on the host), so student initialisation from its
layers, its scoring and later stages see a plain model. Every process must run the same forward
passes in the same order (each one is a collective): the engine guarantees that for training
batches; the teacher cache, which gives each process different batches, is refused with sharding.
"""

from __future__ import annotations

import torch
from torch import nn


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules sharded as groups of their own: those the model class says must not be split
    (transformers' `_no_split_modules`: its layers, often its embeddings), outermost first. A block
    whose parameters are tied to a parameter outside it (mBERT's word embeddings and its masked-LM
    decoder) is left to the root group: FSDP gathers a parameter with the group that owns it, so a
    tied weight must live in a group that is gathered whenever either user runs."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    owners: dict[int, set[str]] = {}  # parameter -> the names it has (tied ones have several)
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), set()).add(name)
    blocks, inside = [], []
    for prefix, module in model.named_modules():
        if type(module).__name__ not in names or any(prefix.startswith(p + ".") for p in inside):
            continue
        tied_outside = any(not n.startswith(prefix + ".") for p in module.parameters() for n in owners[id(p)])
        if not tied_outside:
            blocks.append(module)
            inside.append(prefix)
    return blocks


def shard_frozen(model: nn.Module, device: torch.device) -> nn.Module:
    """A copy of the frozen `model` split between the processes of the launch (see the module
    docstring). Its forward is the model's (same outputs, hidden states, attentions); after each
    forward pass every gathered weight is freed again."""
    import copy

    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
    )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    with torch.device("meta"):  # the whole model is never materialised on the device
        shell = type(model)(copy.deepcopy(model.config))
    for block in reversed(shard_blocks(shell)):  # inner groups before the ones that contain them
        fully_shard(block, mesh=mesh)
    fully_shard(shell, mesh=mesh)
    shell.to_empty(device=device)
    # each process gives the full state dict and keeps its own slice of every tensor (no traffic)
    state = model.state_dict()
    set_model_state_dict(shell, state, options=StateDictOptions(full_state_dict=True, strict=True))
    # buffers outside the state dict (position ids) are not sharded: copied as they are
    for name, buffer in model.named_buffers():
        if name not in state:
            owner, _, leaf = name.rpartition(".")
            shell.get_submodule(owner).register_buffer(leaf, buffer.to(device), persistent=False)
    shell.eval().requires_grad_(False)
    # the root group (whatever no block holds: pooler, head, tied embeddings) stays gathered after
    # its forward by FSDP's default (a backward would follow); a frozen teacher has none
    shell.register_forward_hook(lambda module, args, output: module.reshard())
    return shell


def local_parameter_count(model: nn.Module) -> int:
    """Parameter elements held by this process (its slices of a sharded model; all of a plain one)."""
    from torch.distributed.tensor import DTensor

    return sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters())
