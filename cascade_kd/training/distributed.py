"""The rules for running on several processes, in one place.

`accelerate launch -m cascade_kd run ...` or `torchrun --nproc_per_node N -m cascade_kd run ...`
starts N copies of the same command; accelerate's `PartialState` reads the launcher's environment
and joins the process group (gloo on CPU, NCCL on GPUs). Every process reads the data and runs
the same cascade; the loop splits each global batch between them (training/data.py, training/task.py). Only the
main process writes (RUN_DIR, checkpoints, metrics, report) and prints; the others wait at a
barrier where they would otherwise read what it has not finished writing.
"""

from __future__ import annotations

from functools import lru_cache

from cascade_kd import errors
from cascade_kd.errors import UserError


@lru_cache(maxsize=1)
def process_state():
    """accelerate's per-process singleton; with no launcher it is a single process and no group."""
    import torch
    from accelerate import PartialState

    # with no GPU (or other accelerator), a launcher's processes must be told to use gloo on CPU;
    # accelerate only does that by itself under `accelerate launch --cpu`
    return PartialState(cpu=not torch.accelerator.is_available())


def num_processes() -> int:
    return process_state().num_processes


def process_index() -> int:
    return process_state().process_index


def is_main() -> bool:
    return process_state().is_main_process


def barrier() -> None:
    """Wait until every process gets here (no-op on one process)."""
    if num_processes() > 1:
        process_state().wait_for_everyone()


def main_say(say):
    """`say` on the main process, silence on the others (one copy of every line in the logs)."""
    return say if is_main() else (lambda *args, **kwargs: None)


def on_main(fn):
    """Run `fn` on the main process only and give every process its result, or raise its
    UserError everywhere (so no process waits at a barrier for one that failed)."""
    if num_processes() == 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    result, error = None, None
    if is_main():
        try:
            result = fn()
        except UserError as err:
            error = (type(err).__name__, err.message, err.where, err.hint)
    result, error = broadcast_object_list([result, error])
    if error is not None:
        raise getattr(errors, error[0], UserError)(error[1], where=error[2], hint=error[3])
    return result
