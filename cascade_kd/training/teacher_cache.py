"""Teacher outputs on disk: computed once, read back every epoch and by every student of the same teacher.

A distillation stage runs its frozen teacher on every batch of every epoch: the same inputs, the
same outputs each time. With `train.teacher_cache: bf16` (or fp16, fp32) the stage first runs the
teacher once over the training set, stores exactly what its losses need (logits; the hidden states
and attention maps of the teacher layers named by its layer maps) and reads them back instead.

- Never stale: the cache lives in RUN_DIR/cache/<key>, where `key` hashes everything the outputs
  depend on: the teacher's weights and config, the encoded inputs (so tokenizer, data and
  max_length), the features asked for and the dtype. Any change gives another key, so a different
  teacher or data can never read an old cache, and the direct baseline reuses the first stage's
  cache when it has the same teacher and losses.
- Resumable: the build writes shards of SHARD_EXAMPLES examples, each atomically (a present shard
  is a complete one); an interrupted build resumes at the missing shards; meta.json, written last,
  marks the cache complete. Under several processes each builds its share of the shards.
- Disk: the size is computed and printed before anything is written, and a disk that cannot hold
  it is an error, not a crash halfway.
- Memory-mapped: shards are safetensors files opened with `safe_open`, so only the rows a batch
  needs are read and the cache may be larger than RAM.

Per shard, each feature is one tensor of the shard's examples' unpadded rows, concatenated
(`logits` [tokens, C] or [examples, C], `hidden.L` [tokens, D], `attention.L` [sum of H*T*T]),
with `token_offsets` and `attention_offsets` saying where each example starts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from array import array
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from cascade_kd.data.encode import Encoded, collate, eval_batches
from cascade_kd.errors import UserError
from cascade_kd.students.features import Features, extract_features
from cascade_kd.fileio import atomic_write

SHARD_EXAMPLES = 1024
FORMAT = 1  # bumped whenever the layout changes: part of the key, so old caches are never misread
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
META = "meta.json"
CACHED_FEATURES = ("logits", "hidden", "attention")  # what a cache holds (CacheRequest); not query/key/value states


@dataclass(frozen=True)
class CacheRequest:
    """What a stage's losses read from the teacher, in the single layer numbering of features.py."""

    logits: bool
    hidden: tuple[int, ...]  # hidden-state indices, 0 = embedding output
    attention: tuple[int, ...]  # attention layers, 1..L
    dtype: str = "bf16"  # how the outputs are stored
    precision: str = "fp32"  # how the teacher computes them (fp32, bf16 or fp16 autocast), as it would live


def cache_key(teacher, train_data: list[Encoded], request: CacheRequest) -> str:
    """A hash of everything the cached outputs depend on. The batch size they were computed with
    (train.eval_batch_size) is left out on purpose: padding is masked, so it moves them by float
    rounding only, and runs that differ in nothing else share one cache."""
    digest = hashlib.sha256(f"format {FORMAT} shard {SHARD_EXAMPLES};".encode())
    # the config minus what saving a model writes into it (save_pretrained sets `architectures`)
    config = {k: v for k, v in teacher.config.to_dict().items() if k not in ("architectures", "_name_or_path", "transformers_version")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(teacher.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for ex in train_data:
        digest.update(array("q", ex.input_ids).tobytes())
        digest.update(b"|" if ex.token_type_ids is None else array("q", ex.token_type_ids).tobytes())
        digest.update(b";")
    digest.update(json.dumps(asdict(request), sort_keys=True).encode())
    return digest.hexdigest()[:24]


def estimate_bytes(teacher_config, lengths: list[int], request: CacheRequest, token_task: bool) -> int:
    """Bytes the cache will take on disk (tensor data; headers are negligible)."""
    itemsize = torch.empty((), dtype=DTYPES[request.dtype]).element_size()
    tokens, squares = sum(lengths), sum(t * t for t in lengths)
    elements = 0
    if request.logits:
        elements += (tokens if token_task else len(lengths)) * teacher_config.num_labels
    elements += len(request.hidden) * tokens * teacher_config.hidden_size
    elements += len(request.attention) * squares * teacher_config.num_attention_heads
    offsets = 2 * 8 * (len(lengths) + 2 * (len(lengths) // SHARD_EXAMPLES + 1))
    return elements * itemsize + offsets


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def plan_cache(teacher_config, lengths: list[int], request: CacheRequest, directory: Path, *, token_task: bool,
               say=print) -> list[int]:
    """Check the disk and say what will be written (main process); returns the missing shards."""
    directory = Path(directory)
    if (directory / META).is_file():
        return []
    needed = estimate_bytes(teacher_config, lengths, request, token_task)
    directory.mkdir(parents=True, exist_ok=True)
    shards = range((len(lengths) + SHARD_EXAMPLES - 1) // SHARD_EXAMPLES)
    missing = [s for s in shards if not _shard_path(directory, s).is_file()]
    say(f"  teacher cache: {len(lengths)} examples, {_human(needed)} on disk ({request.dtype}), "
        f"{len(missing)} of {len(shards)} shard(s) to compute, in {directory}")
    free = shutil.disk_usage(directory).free
    if free < needed * 1.05 * len(missing) / max(1, len(shards)):
        raise UserError(f"the teacher cache needs {_human(needed)} but only {_human(free)} is free", where=str(directory),
                        hint="free disk space, cache fewer features (layer maps), or set train.teacher_cache: off")
    return missing


def _shard_path(directory: Path, shard: int) -> Path:
    return Path(directory) / f"shard-{shard:05d}.safetensors"


def build_shards(teacher, train_data: list[Encoded], request: CacheRequest, directory: Path, shards: list[int], *,
                 token_task: bool, pad_id: int, batch_size: int, device) -> None:
    """Compute and atomically write `shards` (a present shard file is complete and skipped)."""
    from safetensors.torch import save

    teacher.to(device).eval()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(request.precision)  # autocast for these; fp32 runs plain
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=dtype) if dtype else nullcontext()
    for s in shards:
        if _shard_path(directory, s).is_file():
            continue
        start = s * SHARD_EXAMPLES
        members = list(range(start, min(len(train_data), start + SHARD_EXAMPLES)))
        tensors = _shard_tensors(teacher, [train_data[i] for i in members], request, token_task, pad_id, batch_size,
                                 device, autocast)
        atomic_write(_shard_path(directory, s), save(tensors))


def build_cache(teacher, train_data: list[Encoded], request: CacheRequest, directory: Path, *, token_task: bool,
                pad_id: int, batch_size: int, device, say=print) -> None:
    """One process: plan, compute every missing shard, mark complete."""
    missing = plan_cache(teacher.config, [len(x) for x in train_data], request, directory, token_task=token_task, say=say)
    build_shards(teacher, train_data, request, directory, missing, token_task=token_task, pad_id=pad_id,
                 batch_size=batch_size, device=device)
    if not (Path(directory) / META).is_file():
        finish_cache(directory, request, len(train_data))


def finish_cache(directory: Path, request: CacheRequest, count: int) -> None:
    """Mark the cache complete, once every shard is there (after every process wrote its own)."""
    absent = [s for s in range((count + SHARD_EXAMPLES - 1) // SHARD_EXAMPLES) if not _shard_path(directory, s).is_file()]
    if absent:
        raise RuntimeError(f"teacher cache {directory}: shard(s) {absent} missing, not marking it complete")
    atomic_write(Path(directory) / META, json.dumps({"examples": count, "shard_examples": SHARD_EXAMPLES,
                                                     "request": asdict(request)}, indent=2))


@torch.no_grad()
def _shard_tensors(teacher, examples: list[Encoded], request: CacheRequest, token_task: bool, pad_id: int,
                   batch_size: int, device, autocast) -> dict[str, torch.Tensor]:
    dtype = DTYPES[request.dtype]
    rows: dict[str, list] = {"logits": [None] * len(examples)}
    rows.update({f"hidden.{l}": [None] * len(examples) for l in request.hidden})
    rows.update({f"attention.{l}": [None] * len(examples) for l in request.attention})
    for batch_ids in eval_batches([len(x) for x in examples], batch_size):  # by length: least padding
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in batch_ids], pad_id).items()}
        with autocast:
            out = extract_features(teacher, batch, hidden=bool(request.hidden), attentions=bool(request.attention),
                                   logits=request.logits)
        for b, i in enumerate(batch_ids):
            t = len(examples[i])
            if request.logits:
                rows["logits"][i] = (out.logits[b, :t] if token_task else out.logits[b : b + 1]).to(dtype).cpu()
            for l in request.hidden:
                rows[f"hidden.{l}"][i] = out.hidden_states[l][b, :t].to(dtype).cpu()
            for l in request.attention:
                rows[f"attention.{l}"][i] = out.attentions[l - 1][b, :, :t, :t].reshape(-1).to(dtype).cpu()
    lengths = torch.tensor([len(x) for x in examples])
    tensors = {
        "token_offsets": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        "attention_offsets": torch.cat([torch.zeros(1, dtype=torch.long), (lengths * lengths * teacher.config.num_attention_heads).cumsum(0)]),
    }
    for name, parts in rows.items():
        if parts[0] is not None:
            tensors[name] = torch.cat(parts).contiguous()
    return tensors


class TeacherCache:
    """Reads a complete cache: `features(indices, ...)` is what `extract_features(teacher, batch)` gave."""

    def __init__(self, directory: Path, request: CacheRequest, teacher_config, token_task: bool):
        from safetensors import safe_open

        directory = Path(directory)
        meta = json.loads((directory / META).read_text())
        if meta["request"] != json.loads(json.dumps(asdict(request))) or meta["shard_examples"] != SHARD_EXAMPLES:
            raise ValueError(f"{directory} holds another request's cache")  # the key prevents this
        self.request, self.token_task = request, token_task
        self.layers, self.heads = teacher_config.num_hidden_layers, teacher_config.num_attention_heads
        count = (meta["examples"] + SHARD_EXAMPLES - 1) // SHARD_EXAMPLES
        self.shards = [safe_open(str(_shard_path(directory, s)), framework="pt") for s in range(count)]
        self.token_offsets = [h.get_tensor("token_offsets").tolist() for h in self.shards]
        self.attention_offsets = [h.get_tensor("attention_offsets").tolist() for h in self.shards]

    def features(self, indices: list[int], attention_mask: torch.Tensor) -> Features:
        """The teacher's features for the examples `indices` (a batch, padded like `attention_mask`)."""
        width, device = attention_mask.shape[1], attention_mask.device
        dtype = DTYPES[self.request.dtype]
        logits, hidden, attention = None, {}, {}
        for b, i in enumerate(indices):
            s, j = divmod(i, SHARD_EXAMPLES)
            handle, (a, z) = self.shards[s], self.token_offsets[s][j : j + 2]
            t = z - a
            if self.request.logits:
                row = handle.get_slice("logits")[a:z] if self.token_task else handle.get_slice("logits")[j : j + 1]
                if logits is None:
                    shape = (len(indices), width, row.shape[-1]) if self.token_task else (len(indices), row.shape[-1])
                    logits = torch.zeros(shape, dtype=dtype)
                if self.token_task:
                    logits[b, :t] = row
                else:
                    logits[b] = row[0]
            for l in self.request.hidden:
                row = handle.get_slice(f"hidden.{l}")[a:z]
                hidden.setdefault(l, torch.zeros(len(indices), width, row.shape[-1], dtype=dtype))[b, :t] = row
            if self.request.attention:
                p, q = self.attention_offsets[s][j : j + 2]
                for l in self.request.attention:
                    row = handle.get_slice(f"attention.{l}")[p:q].view(self.heads, t, t)
                    attention.setdefault(l, torch.zeros(len(indices), self.heads, width, width, dtype=dtype))[b, :, :t, :t] = row
        # full-length tuples in the usual numbering; layers no loss asked for are None
        hidden_states = tuple(hidden[l].to(device) if l in hidden else None for l in range(self.layers + 1)) if hidden else None
        attentions = tuple(attention[l].to(device) if l in attention else None for l in range(1, self.layers + 1)) if attention else None
        return Features(logits=logits.to(device) if logits is not None else None, hidden_states=hidden_states,
                        attentions=attentions, attention_mask=attention_mask.bool())
