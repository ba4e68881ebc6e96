"""Speed of every model of a run, measured in one process so ratios compare like with like.

For each model and backend (PyTorch fp32; PyTorch bf16 autocast where the hardware runs it natively;
onnxruntime fp32 and onnxruntime dynamic int8, from an export made and checked on the fly, see
`cascade_kd.deploy.export`), at fixed batch sizes and sequence lengths:
- latency: median wall time of one forward pass over `repeats` passes after 2 warm-up passes, on
  random word-piece ids with full attention masks (every position real), so the figure is the
  model's cost alone;
- throughput: batch size / median latency, in sequences per second (one stream, no overlap);
- peak memory: how much the resident set (RSS) of the process grew during the timed passes, over
  what was resident just before them (weights, inputs and sessions already loaded, so excluded):
  the activations and workspace a forward pass needs. Linux only (/proc): before each measurement
  freed heap memory is handed back to the OS (glibc malloc_trim) and the kernel's RSS high-water
  mark is reset (/proc/self/clear_refs), so memory kept by an earlier, larger pass does not hide a
  later one. onnxruntime keeps its own memory arena, which would hide every pass after the first,
  so its memory is measured on a second session with the arena off (its latency on the default one);
- size on disk of the weights each backend loads (safetensors; model.onnx; model.int8.onnx).
Tokenisation is timed separately with the run's tokenizer (the teacher's): a batch of the run's
dev sentences (generated ones when the data cannot be found) truncated and padded to the length.
onnxruntime runs with as many intra-op threads as torch (`torch.get_num_threads()`) and one
inter-op thread, so both backends get the same cores.
"""

from __future__ import annotations

import ctypes
import gc
import operator
import os
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from cascade_kd.deploy.export import (
    INT8_NAME,
    ONNX_NAME,
    _tokenizer,
    export_model,
    generated_sentences,
    input_names,
    recipe_items,
    session,
    tokenize,
)
from cascade_kd.errors import UserError
from cascade_kd.fileio import weight_files, weights_size
from cascade_kd.students.anatomy import position_offset
from cascade_kd.students.hub import load_checkpoint
from cascade_kd.training.setup import resolve_precision


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



TORCH_BACKENDS = ("fp32", "bf16")
ORT_BACKENDS = ("ort-fp32", "ort-int8")
BACKENDS = TORCH_BACKENDS + ORT_BACKENDS
MEMORY_REPEATS = 3  # timed passes of the arena-less onnxruntime session that measures memory


# ---------------------------------------------------------------------------------------------
# Memory: growth of the resident set over a measurement (Linux)


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def memory_baseline() -> float | None:
    """Hand freed heap memory back to the OS, reset the RSS high-water mark; the RSS now (MB), or
    None where the kernel cannot reset the mark (not Linux, or no /proc/self/clear_refs). (No
    gc.collect() here: a full collection takes ~0.2 s with torch and transformers loaded; bench_run
    collects once per model.)"""
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return None
    rss, peak = _status_mb("VmRSS"), _status_mb("VmHWM")
    if rss is None or peak is None or peak > rss + 1:  # the mark was not reset
        return None
    return rss


def memory_growth(baseline: float | None) -> float | None:
    """MB the resident set peaked above `baseline` since memory_baseline()."""
    peak = _status_mb("VmHWM")
    return None if baseline is None or peak is None else max(0.0, peak - baseline)


def timed(run_once, *, repeats: int, warmup: int = 2) -> tuple[float, float | None]:
    """(median ms of `repeats` calls after `warmup` calls, RSS growth in MB during the timed calls).
    Python's garbage collector is paused while timing, as timeit does."""
    for _ in range(warmup):
        run_once()
    baseline = memory_baseline()
    times = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            started = time.perf_counter()
            run_once()
            times.append((time.perf_counter() - started) * 1000)
    finally:
        if enabled:
            gc.enable()
    return statistics.median(times), memory_growth(baseline)


# ---------------------------------------------------------------------------------------------
# Inputs and tokenisation


def random_inputs(config, names: list[str], batch: int, seq: int) -> dict:
    """Random word-piece ids (the same for every model and backend at a setting), full attention."""
    generator = torch.Generator().manual_seed(0)
    low = min(1000, config.vocab_size // 2)  # skip the special tokens at the start of most vocabularies
    ids = torch.randint(low, config.vocab_size, (batch, seq), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "token_type_ids" in names:
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return {k: v.numpy() for k, v in inputs.items()}


def tokenization_ms(run_dir: Path, metrics: dict, batch_sizes, seq_lens, repeats: int) -> dict:
    """Median time to tokenise a batch (truncated and padded to the length) with the run's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / metrics["models"][0]["path"])
    wanted = max(batch_sizes) * (repeats + 2)
    items, source = None, None
    if (run_dir / "recipe.yaml").is_file():
        try:
            source, items = recipe_items(run_dir / "recipe.yaml", wanted)
        except Exception as exc:  # noqa: BLE001 - data moved or unreadable: time generated sentences instead
            source = f"generated sentences (the run's data could not be read: {str(exc).splitlines()[0]})"
    if not items:
        items = generated_sentences(tokenizer, wanted)
        source = source or "generated sentences (no recipe.yaml in the run)"
    task = "token" if items and isinstance(items[0], list) else metrics["task"]
    out = {}
    for batch in batch_sizes:
        for seq in seq_lens:  # a different batch of sentences on every pass (warm-up included)
            chunks = iter([[items[(i * batch + j) % len(items)] for j in range(batch)] for i in range(repeats + 2)])

            def run_once(chunks=chunks, seq=seq):
                tokenize(tokenizer, next(chunks), task, seq, ["input_ids"], padding="max_length")

            out[f"b{batch}/s{seq}"] = timed(run_once, repeats=repeats)[0]
    return {"ms": out, "input": f"{source}; truncated and padded to the sequence length; "
            f"{'fast' if getattr(tokenizer, 'is_fast', False) else 'slow'} tokenizer {type(tokenizer).__name__}"}


# ---------------------------------------------------------------------------------------------
# The run


def _available_backends(backends) -> tuple[list[str], dict[str, str]]:
    skipped = {}
    if "bf16" in backends and resolve_precision("auto") != "bf16":
        skipped["bf16"] = "this CPU has no native bf16 (AMX or AVX-512 BF16); emulated bf16 is slower than fp32"
    if any(b in ORT_BACKENDS for b in backends):
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            for b in ORT_BACKENDS:
                if b in backends:
                    skipped[b] = "onnxruntime is not installed (pip install 'cascade-kd[export]')"
    return [b for b in backends if b not in skipped], skipped


def _torch_runner(model, inputs: dict, bf16: bool):
    tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}

    def run_once():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            model(**tensors)

    return run_once


def bench_run(run_dir: Path, *, batch_sizes=(1, 32), seq_lens=(32, 128), repeats: int = 10, backends=BACKENDS,
              say=print) -> dict:
    """Latency, throughput, memory and size of every model of a finished run on every backend (CPU),
    with latency ratios against the teacher on the same backend and setting."""
    import json

    batch_sizes, seq_lens = list(batch_sizes), list(seq_lens)  # read more than once below
    for flag, values in (("--batch-sizes", batch_sizes), ("--seq-lens", seq_lens), ("--repeats", [repeats])):
        if not values or not all(_whole_number_from_1(v) for v in values):
            raise UserError(f"bench {flag} {' '.join(map(str, values)) or '(none)'}: every value must be a whole "
                            "number of at least 1", hint="e.g. --batch-sizes 1 32 --seq-lens 64 --repeats 10")
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    teacher_dir = run_dir / metrics["models"][0]["path"]
    from transformers import AutoConfig

    usable = _usable_positions(AutoConfig.from_pretrained(teacher_dir))
    if usable is not None and min(seq_lens) > usable:  # nothing to compare: refused before any timing
        raise UserError(f"bench --seq-lens {' '.join(map(str, seq_lens))}: the teacher has only {usable} usable "
                        "positions, so no setting can be timed", where=str(teacher_dir),
                        hint=f"pass lengths of at most {usable}")
    active, skipped_backends = _available_backends(list(backends))
    for backend, reason in skipped_backends.items():
        say(f"bench: skipping {backend}: {reason}")
    load_start = _load_average()
    if load_start is not None and load_start > 0.5 * (os.cpu_count() or 1):
        say(f"bench: note: load average {load_start:.1f} on {os.cpu_count()} cores: other processes compete for the "
            "CPU, so timings will be noisy")
    tokenization = tokenization_ms(run_dir, metrics, batch_sizes, seq_lens, repeats)
    say("bench: tokenisation " + ", ".join(f"{k} {v:.2f} ms" for k, v in tokenization["ms"].items()))
    threads = torch.get_num_threads()
    rows = []
    for row, directory in _models_to_time(run_dir, metrics):
        model = load_checkpoint(directory, metrics["task"])
        names = input_names(model, _tokenizer(directory))
        usable = _usable_positions(model.config)
        size = weights_size(directory) / 2**20
        entry = {"name": row["name"], "size_mb": size, "latency_ms": {}, "throughput_seq_s": {}, "peak_mem_mb": {},
                 "size_mb_by_backend": {b: size for b in active if b in TORCH_BACKENDS}}
        settings = []
        for batch in batch_sizes:
            for seq in seq_lens:
                if usable is not None and seq > usable:
                    entry.setdefault("skipped", []).append(f"s{seq}: only {usable} usable position embeddings")
                else:
                    settings.append((batch, seq))
        onnx_dir = None
        with tempfile.TemporaryDirectory(prefix="cascade-kd-bench-") as tmp:
            for backend in active:  # PyTorch first; each onnxruntime session lives only while it is measured
                if backend in TORCH_BACKENDS:
                    make, make_memory = (lambda inputs, m=model, bf16=backend == "bf16": _torch_runner(m, inputs, bf16)), None
                else:
                    if onnx_dir is None and "onnx_error" not in entry:
                        try:
                            info = export_model(directory, Path(tmp) / "onnx", int8="ort-int8" in active, check_examples=64,
                                                int8_min_agreement=0.0, say=lambda m: None)
                            onnx_dir = Path(tmp) / "onnx"
                        except Exception as err:  # noqa: BLE001 - no export or a failed check: say why, go on
                            entry["onnx_error"] = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
                            say(f"bench: {row['name']}: no onnxruntime figures: {err}")
                        else:
                            entry["onnx_check"] = {k: {"agreement": info[k]["agreement"], "max_abs_diff": info[k]["max_abs_diff"]}
                                                   for k in ("fp32", "int8") if k in info}
                            entry["onnx_check"]["inputs"] = info["check_inputs"]
                    if onnx_dir is None:
                        continue
                    path = onnx_dir / (ONNX_NAME if backend == "ort-fp32" else INT8_NAME)
                    entry["size_mb_by_backend"][backend] = path.stat().st_size / 2**20
                    make, make_memory = _ort_runner(session(path, threads)), _ort_runner(session(path, threads, arena=False))
                for batch, seq in settings:
                    key = f"{backend}/b{batch}/s{seq}"
                    inputs = random_inputs(model.config, names, batch, seq)
                    entry["latency_ms"][key], peak = timed(make(inputs), repeats=repeats)
                    if make_memory is not None:
                        peak = timed(make_memory(inputs), repeats=min(repeats, MEMORY_REPEATS), warmup=1)[1]
                    entry["throughput_seq_s"][key] = batch / (entry["latency_ms"][key] / 1000)
                    entry["peak_mem_mb"][key] = peak
                del make, make_memory
        say(f"bench: {row['name']}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in entry["latency_ms"].items())
            + "".join(f"; skipped {s}" for s in sorted(set(entry.get("skipped", [])))))
        rows.append(entry)
        del model
        gc.collect()  # the model and its sessions go before the next one is measured
    teacher = rows[0]["latency_ms"]
    for entry in rows:
        entry["speedup_vs_teacher"] = {k: teacher[k] / v for k, v in entry["latency_ms"].items() if k in teacher}
    memory_note = ("RSS growth during the timed passes over the RSS just before them (weights and inputs excluded; "
                   "onnxruntime on an arena-less session)") if memory_baseline() is not None else (
                   "not measured: needs Linux /proc/self/clear_refs")
    return {"device": "cpu", "threads": threads, "repeats": repeats,
            "input": "random word-piece ids, full attention mask; tokenisation excluded (timed separately)",
            "backends": active, "skipped_backends": skipped_backends,
            "ort_threads": f"onnxruntime intra-op threads = torch threads ({threads}), 1 inter-op thread",
            "memory": memory_note, "load_average_1min": {"start": load_start, "end": _load_average()},
            "tokenization_ms": tokenization["ms"], "tokenization_input": tokenization["input"],
            "models": rows}


def _whole_number_from_1(value) -> bool:
    try:
        return not isinstance(value, bool) and operator.index(value) >= 1  # int and numpy ints, not 2.0 or "2"
    except TypeError:
        return False


def _usable_positions(config) -> int | None:
    """How long a sequence a model's position table holds (None: no table, a BiLSTM: any length).
    RoBERTa-style models use positions before the first token."""
    limit = getattr(config, "max_position_embeddings", None)
    return None if not limit else limit - position_offset(config)


def _models_to_time(run_dir: Path, metrics: dict) -> list[tuple[dict, Path]]:
    """Every saved model of the run, each followed by its trimmed copy where `cascade-kd trim` made
    one in its default place (MODEL_DIR/trimmed, named 'NAME (trimmed)'): what a user ships is timed
    beside what the run trained. The teacher comes first: ratios are against it."""
    models = []
    for row in metrics["models"]:
        directory = run_dir / row["path"]
        models.append((row, directory))
        trimmed = directory / "trimmed"
        if (trimmed / "trim.json").is_file() and weight_files(trimmed):
            models.append(({**row, "name": f"{row['name']} (trimmed)"}, trimmed))
    return models


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _ort_runner(sess):
    feed_names = {i.name for i in sess.get_inputs()}

    def make(inputs: dict):
        feed = {k: v for k, v in inputs.items() if k in feed_names}
        return lambda: sess.run(None, feed)

    return make


def _key(key: str) -> tuple[str, str]:
    """'ort-int8/b32/s128' -> ('ort-int8', 'b32 s128')."""
    backend, _, setting = key.partition("/")
    return backend, setting.replace("/", " ")


BACKEND_LABELS = {"fp32": "PyTorch fp32", "bf16": "PyTorch bf16 autocast", "ort-fp32": "onnxruntime fp32",
                  "ort-int8": "onnxruntime int8"}


def bench_table(bench: dict) -> str:
    """Markdown: one row per model and backend, one latency column per setting (with the speed-up vs
    the teacher on the same backend), then throughput and peak memory at the largest setting."""
    keys = list(dict.fromkeys(k for m in bench["models"] for k in m["latency_ms"]))
    backends = list(dict.fromkeys(_key(k)[0] for k in keys))
    settings = list(dict.fromkeys(_key(k)[1] for k in keys))
    largest = max(settings, key=lambda s: int(s.split()[0][1:]) * int(s.split()[1][1:])) if settings else ""
    head = ["model", "backend", "size (MB)"] + [f"{s} ms" for s in settings] + [f"seq/s {largest}", f"peak MB {largest}", "agreement"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for m in bench["models"]:
        for backend in backends:
            cells = []
            for s in settings:
                k = f"{backend}/{s.replace(' ', '/')}"
                ratio = m.get("speedup_vs_teacher", {}).get(k)
                cells.append("—" if k not in m["latency_ms"] else f"{m['latency_ms'][k]:.2f}"
                             + (f" ({ratio:.1f}x)" if ratio else ""))
            k = f"{backend}/{largest.replace(' ', '/')}"
            throughput = m.get("throughput_seq_s", {}).get(k)
            peak = m.get("peak_mem_mb", {}).get(k)
            size = m.get("size_mb_by_backend", {}).get(backend, m["size_mb"] if backend in TORCH_BACKENDS else None)
            check = m.get("onnx_check", {}).get({"ort-fp32": "fp32", "ort-int8": "int8"}.get(backend, ""), None)
            agreement = (f"{100 * check['agreement']:.1f}% (max diff {check['max_abs_diff']:.1g})" if check
                         else "reference" if backend == "fp32" else "—")
            cells += [f"{throughput:.0f}" if throughput else "—", f"{peak:.1f}" if peak is not None else "—", agreement]
            lines.append(f"| {m['name']} | {BACKEND_LABELS.get(backend, backend)} | "
                         + (f"{size:.2f}" if size is not None else "—") + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tokenization_line(bench: dict) -> str:
    """One sentence: tokenisation time per setting, or '' for results from before it was measured."""
    if not bench.get("tokenization_ms"):
        return ""
    figures = ", ".join(f"{k.replace('/', ' ')} {v:.2f} ms" for k, v in bench["tokenization_ms"].items())
    return f"Tokenisation (not in the figures above), median per batch: {figures}; input: {bench['tokenization_input']}."
