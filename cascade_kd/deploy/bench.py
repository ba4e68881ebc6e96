"""Speed of every model of a run, measured in one process so ratios compare like with like.

For each model and backend (PyTorch fp32; PyTorch bf16 autocast where the hardware runs it natively;
onnxruntime fp32 and onnxruntime dynamic int8, from an export made and checked on the fly, see
`cascade_kd.deploy.export`), at fixed batch sizes and sequence lengths:
- latency: median wall time of one forward pass over `repeats` rounds, after 2 warm-up passes, on
  random word-piece ids with full attention masks (every position real), so the figure is the
  model's cost alone. At each setting every model and backend is timed in the same rounds, each
  round, after a 50 ms pause, untimed passes of each for 30 ms and then one timed pass, in turn
  (`interleaved_times`), so a machine whose
  speed drifts during the bench moves every figure alike and the ratios hold;
- speed-up against the teacher on the same backend, and each model's fastest backend against the
  teacher's fastest (`best_backends`): the median of the round-by-round ratios (the two passes of
  a ratio timed within the same round), with their quartiles;
- throughput: batch size / median latency, in sequences per second (one stream, no overlap);
- peak memory: how much the resident set (RSS) of the process grew during a few passes apart from
  the timed ones, over what was resident just before them (weights, inputs and sessions already loaded, so excluded):
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
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from cascade_kd.deploy.export import (
    INT8_NAME,
    ONNX_NAME,
    export_model,
    generated_sentences,
    input_names,
    model_tokenizer,
    recipe_items,
    session,
    tokenize,
)
from cascade_kd.deploy.paths import trimmed_copy
from cascade_kd.errors import UserError
from cascade_kd.fileio import weights_size
from cascade_kd.students.anatomy import position_offset
from cascade_kd.students.hub import auto_config, load_checkpoint
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
MEMORY_REPEATS = 3  # passes of each model and backend, apart from the timed ones, that measure memory


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
    collects once, at the end.)"""
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
    with gc_paused():
        for _ in range(repeats):
            started = time.perf_counter()
            run_once()
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), memory_growth(baseline)


@contextmanager
def gc_paused():
    """Python's garbage collector off while timing (as timeit does), back as it was after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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


def torch_runner(model, inputs: dict, bf16: bool):
    """A call that runs one forward pass of `model` on `inputs` (numpy arrays by input name), under
    bf16 autocast when `bf16`: what `interleaved_times` and `timed` time for a PyTorch backend."""
    tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}

    def run_once():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            model(**tensors)

    return run_once


PAUSE_S = 0.05  # idle time before each runner's turn in a round (see interleaved_times)
REWARM_MS = 30.0  # untimed calls of a runner before its timed one, at least one and for at least this long


def interleaved_times(runners: list, repeats: int, warmup: int = 2, pause_s: float = PAUSE_S,
                      rewarm_ms: float = REWARM_MS) -> list[list[float]]:
    """Wall times (ms) of one call of each runner (a forward pass of one model on one backend), round
    by round: after `warmup` calls of each, `repeats` rounds in which each runner, after `pause_s`
    idle, is called untimed (once, and again until `rewarm_ms` have passed), then once timed; the
    order rotated by one place every round, and reversed in every other block of as many rounds as
    there are runners, so each takes every place and no runner always follows the same one. Each
    timed pass costs at least 80 ms more (the pause, the untimed passes): at batch 1, where a pass
    takes a few ms, a bench takes tens of times as long as the timed passes; `--models` shortens it.

    Why interleaved: the runners' figures come from the same stretch of time, so when the machine
    slows down or speeds up during a bench (other tenants, clock changes; up to 30% between runs
    minutes apart on a shared 2-core machine) every model moves alike and their ratios hold. Why
    the pause and the untimed calls: right after another model's pass, its threads (onnxruntime's
    and OpenMP's pools spin a while after a call) still compete for the cores, and the caches hold
    its weights. Measured on 2 cores at batch 1 (a 12-layer and a 3-layer model, onnxruntime int8
    and PyTorch fp32; `benchmarks/interleaving_check.py`, results/interleaving_check.json): with one
    untimed call and no pause, the small model's fp32 medians came out 1.6-1.8x the ones timed one
    model after another; with the pause and 30 ms of untimed calls, within the call-to-call noise of
    either way of timing (at batch 1 on that machine, a third).
    Python's garbage collector is paused while timing, as timeit does."""
    for run in runners:
        for _ in range(warmup):
            run()
    times = [[] for _ in runners]
    with gc_paused():
        for round_ in range(repeats):
            order = [(round_ + place) % len(runners) for place in range(len(runners))]
            for i in order[::-1] if (round_ // len(runners)) % 2 else order:
                if pause_s:
                    time.sleep(pause_s)
                until = time.perf_counter() + rewarm_ms / 1000
                runners[i]()
                while time.perf_counter() < until:
                    runners[i]()
                started = time.perf_counter()
                runners[i]()
                times[i].append((time.perf_counter() - started) * 1000)
    return times


def round_ratios(slow: list[float], fast: list[float]) -> tuple[float, list[float]]:
    """The median of the round-by-round ratios slow[r] / fast[r] (the speed-up: both passes of a
    ratio timed in the same round, so a drift slower than a round cancels), and their first and
    third quartiles (how far it moved between rounds; both the one ratio when there is one round)."""
    ratios = [a / b for a, b in zip(slow, fast)]
    if len(ratios) < 2:
        return ratios[0], ratios * 2
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return median, [q1, q3]


def best_backends(rows: list[dict], rounds: dict) -> None:
    """Per model and setting, its fastest backend by median latency against the teacher's fastest,
    both chosen among the backends both were timed on (the measure a user shipping either one would
    make); the speed-up is the median of the round-by-round ratios of the two, with their quartiles
    (`round_ratios`). `rounds`: (row index, key) -> that runner's times, round by round; the teacher
    is row 0. Written to each row's "best"."""
    teacher = rows[0]["latency_ms"]
    for index, entry in enumerate(rows):
        entry["best"] = {}
        for setting in dict.fromkeys(k.partition("/")[2] for k in entry["latency_ms"]):
            # among the backends both were timed on: a model whose ONNX export failed is not set
            # against the other's onnxruntime figure
            mine = {k: v for k, v in entry["latency_ms"].items() if k.partition("/")[2] == setting and k in teacher}
            theirs = {k: v for k, v in teacher.items() if k in mine}
            if not mine:
                continue
            key, other = min(mine, key=mine.get), min(theirs, key=theirs.get)
            speedup, quartiles = round_ratios(rounds[(0, other)], rounds[(index, key)])
            entry["best"][setting] = {
                "backend": key.partition("/")[0], "latency_ms": mine[key], "teacher_backend": other.partition("/")[0],
                "teacher_latency_ms": theirs[other], "speedup_vs_teacher_best": speedup, "speedup_quartiles": quartiles}


def bench_run(run_dir: Path, *, batch_sizes=(1, 32), seq_lens=(32, 128), repeats: int = 10, backends=BACKENDS,
              models=None, say=print) -> dict:
    """Latency, throughput, memory and size of every model of a finished run on every backend (CPU),
    with latency ratios against the teacher on the same backend and setting, and each model's
    fastest backend against the teacher's fastest. At each setting every model and backend is timed
    in the same interleaved rounds (`interleaved_times`), so all of its figures share one stretch of
    time. `models`: the names of the models to time beside the teacher (default all; 'NAME (trimmed)'
    for a trimmed copy, which NAME alone also brings)."""
    import json

    batch_sizes, seq_lens = list(batch_sizes), list(seq_lens)  # read more than once below
    for flag, values in (("--batch-sizes", batch_sizes), ("--seq-lens", seq_lens), ("--repeats", [repeats])):
        if not values or not all(_whole_number_from_1(v) for v in values):
            raise UserError(f"bench {flag} {' '.join(map(str, values)) or '(none)'}: every value must be a whole "
                            "number of at least 1", hint="e.g. --batch-sizes 1 32 --seq-lens 64 --repeats 10")
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    teacher_dir = run_dir / metrics["models"][0]["path"]
    usable = _usable_positions(auto_config(teacher_dir))
    if usable is not None and min(seq_lens) > usable:  # nothing to compare: refused before any timing
        raise UserError(f"bench --seq-lens {' '.join(map(str, seq_lens))}: the teacher has only {usable} usable "
                        "positions, so no setting can be timed", where=str(teacher_dir),
                        hint=f"pass lengths of at most {usable}")
    chosen = _models_to_time(run_dir, metrics, models)  # an unknown name: refused before any timing
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
    rows, contestants = [], []  # contestants: (row index, row, model, input names, settings, {backend: (make, make_memory)})
    with tempfile.TemporaryDirectory(prefix="cascade-kd-bench-") as tmp:
        # every model loaded, exported and given its sessions first: the timing below interleaves them
        for index, (row, directory) in enumerate(chosen):
            model = load_checkpoint(directory, metrics["task"])
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
            makers = {b: (lambda inputs, m=model, bf16=b == "bf16": torch_runner(m, inputs, bf16), None)
                      for b in active if b in TORCH_BACKENDS}
            if any(b in ORT_BACKENDS for b in active):
                onnx_dir = Path(tmp) / f"onnx-{index}"
                try:
                    info = export_model(directory, onnx_dir, int8="ort-int8" in active, check_examples=64,
                                        int8_min_agreement=0.0, say=lambda m: None)
                except Exception as err:  # noqa: BLE001 - no export or a failed check: say why, go on
                    entry["onnx_error"] = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
                    say(f"bench: {row['name']}: no onnxruntime figures: {err}")
                else:
                    entry["onnx_check"] = {k: {"agreement": info[k]["agreement"], "max_abs_diff": info[k]["max_abs_diff"]}
                                           for k in ("fp32", "int8") if k in info}
                    entry["onnx_check"]["inputs"] = info["check_inputs"]
                    for backend in (b for b in active if b in ORT_BACKENDS):
                        path = onnx_dir / (ONNX_NAME if backend == "ort-fp32" else INT8_NAME)
                        entry["size_mb_by_backend"][backend] = path.stat().st_size / 2**20
                        # memory on a session without the arena, made only while it is measured
                        makers[backend] = (ort_runner(session(path, threads)),
                                           lambda inputs, path=path: ort_runner(session(path, threads, arena=False))(inputs))
            rows.append(entry)
            contestants.append((len(rows) - 1, entry, model, input_names(model, model_tokenizer(directory)), settings,
                                {b: makers[b] for b in active if b in makers}))  # in the order of `active`
        rounds = _time_every_setting(contestants, batch_sizes, seq_lens, repeats, say)
        del contestants, model, makers  # every model and session goes before the folder of exports
    gc.collect()
    teacher = rows[0]["latency_ms"]
    for index, entry in enumerate(rows):  # against the teacher on the same backend and setting
        ratios = {k: round_ratios(rounds[(0, k)], rounds[(index, k)]) for k in entry["latency_ms"] if k in teacher}
        entry["speedup_vs_teacher"] = {k: median for k, (median, _) in ratios.items()}
        entry["speedup_quartiles"] = {k: quartiles for k, (_, quartiles) in ratios.items()}
    best_backends(rows, rounds)
    for entry in rows:
        say(f"bench: {entry['name']}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in entry["latency_ms"].items())
            + "".join(f"; skipped {s}" for s in sorted(set(entry.get("skipped", [])))))
    memory_note = (f"RSS growth during {MEMORY_REPEATS} passes apart from the timed ones, over the RSS just before "
                   "them (weights and inputs excluded; onnxruntime on an arena-less session)") if memory_baseline() \
        is not None else "not measured: needs Linux /proc/self/clear_refs"
    return {"device": "cpu", "threads": threads, "repeats": repeats,
            "input": "random word-piece ids, full attention mask; tokenisation excluded (timed separately)",
            "timing": f"interleaved: at each setting every model and backend in the same rounds, each after a {PAUSE_S * 1000:.0f} ms "
                      f"pause and {REWARM_MS:.0f} ms of untimed passes, then one timed pass per round, the order rotated every "
                      "round and reversed every other block of rounds; latency: median over the rounds; speed-up: median of the "
                      "round-by-round ratios",
            "backends": active, "skipped_backends": skipped_backends,
            "ort_threads": f"onnxruntime intra-op threads = torch threads ({threads}), 1 inter-op thread",
            "memory": memory_note, "load_average_1min": {"start": load_start, "end": _load_average()},
            "tokenization_ms": tokenization["ms"], "tokenization_input": tokenization["input"],
            "models": rows}


def _time_every_setting(contestants: list, batch_sizes, seq_lens, repeats: int, say) -> dict:
    """Latency (median of the interleaved rounds), throughput and peak memory of every model and
    backend at every setting, written into each row; returns (row index, key) -> the rounds' times."""
    rounds = {}
    for batch in batch_sizes:
        for seq in seq_lens:
            here = [(index, entry, backend, make, make_memory, random_inputs(model.config, names, batch, seq))
                    for index, entry, model, names, settings, makers in contestants if (batch, seq) in settings
                    for backend, (make, make_memory) in makers.items()]
            if not here:
                continue
            say(f"bench: b{batch} s{seq}: {len(here)} model-backend pairs, {repeats} interleaved rounds")
            times = interleaved_times([make(inputs) for *_, make, _, inputs in here], repeats)
            for (index, entry, backend, make, make_memory, inputs), mine in zip(here, times):
                key = f"{backend}/b{batch}/s{seq}"
                entry["latency_ms"][key] = statistics.median(mine)
                entry["throughput_seq_s"][key] = batch / (entry["latency_ms"][key] / 1000)
                rounds[(index, key)] = mine
                # memory apart from the timing (onnxruntime: on its session without a memory arena)
                entry["peak_mem_mb"][key] = timed((make_memory or make)(inputs), repeats=MEMORY_REPEATS, warmup=1)[1]
    return rounds


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


def _models_to_time(run_dir: Path, metrics: dict, wanted=None) -> list[tuple[dict, Path]]:
    """Every saved model of the run (or those named in `wanted`), each followed by its trimmed copy
    where `cascade-kd trim` made one in its default place (MODEL_DIR/trimmed, named 'NAME (trimmed)'):
    what a user ships is timed beside what the run trained. The teacher comes first, always: ratios
    are against it. A name the run does not have is a UserError that lists the ones it has."""
    models = []
    for row in metrics["models"]:
        directory = run_dir / row["path"]
        models.append((row, directory))
        trimmed = trimmed_copy(directory)
        if trimmed is not None:
            models.append(({**row, "name": f"{row['name']} (trimmed)"}, trimmed))
    if wanted is None:
        return models
    names = [row["name"] for row, _ in models]
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise UserError(f"bench --models {' '.join(unknown)}: no model of {'that name' if len(unknown) == 1 else 'those names'} "
                        "in the run", where=str(run_dir / "metrics.json"), hint="the run's models: " + ", ".join(names))
    keep = set(wanted) | {f"{name} (trimmed)" for name in wanted}
    return [models[0]] + [(row, directory) for row, directory in models[1:] if row["name"] in keep]


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def ort_runner(sess):
    """For an onnxruntime session, a maker of calls like `torch_runner`'s: given the inputs (those the
    graph does not take are left out), a call that runs the session once on them."""
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


BEST_CAPTION = ("Each model's fastest backend against the teacher's fastest, per setting: the speed-up is the median "
                "of the round-by-round ratios of the two, in brackets their first and third quartiles.")


def best_section(bench: dict) -> list[str]:
    """['', caption, '', table] for a report, or [] for results from before it was measured."""
    table = best_table(bench)
    return ["", BEST_CAPTION, "", table] if table else []


def best_table(bench: dict) -> str:
    """Markdown: per model and setting, its fastest backend against the teacher's fastest (the
    speed-up a user choosing the best way to run each would see), with the ratio's quartiles over
    the interleaved rounds; '' for results from before it was measured."""
    rows = [m for m in bench["models"] if m.get("best")]
    if not rows:
        return ""
    settings = list(dict.fromkeys(s for m in rows for s in m["best"]))
    lines = ["| model | " + " | ".join(f"fastest {s.replace('/', ' ')}: backend, ms, speed-up (quartiles)"
                                      for s in settings) + " |", "|---|" + "---|" * len(settings)]
    for m in rows:
        cells = []
        for s in settings:
            b = m["best"].get(s)
            if b is None:
                cells.append("—")
            elif m is bench["models"][0]:
                cells.append(f"{BACKEND_LABELS.get(b['backend'], b['backend'])}, {b['latency_ms']:.2f}")
            else:
                q1, q3 = b["speedup_quartiles"]
                teacher_best = bench["models"][0].get("best", {}).get(s, {}).get("backend")
                against = (f" vs the teacher's {BACKEND_LABELS.get(b['teacher_backend'], b['teacher_backend'])}"
                           if b["teacher_backend"] != teacher_best else "")  # e.g. this model's ONNX export failed
                cells.append(f"{BACKEND_LABELS.get(b['backend'], b['backend'])}, {b['latency_ms']:.2f}, "
                             f"**{b['speedup_vs_teacher_best']:.2f}x** ({q1:.2f}-{q3:.2f}){against}")
        lines.append(f"| {m['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tokenization_line(bench: dict) -> str:
    """One sentence: tokenisation time per setting, or '' for results from before it was measured."""
    if not bench.get("tokenization_ms"):
        return ""
    figures = ", ".join(f"{k.replace('/', ' ')} {v:.2f} ms" for k, v in bench["tokenization_ms"].items())
    return f"Tokenisation (not in the figures above), median per batch: {figures}; input: {bench['tokenization_input']}."
