"""Does `cascade-kd bench`'s interleaved timing give the same figures as timing one model after
another, and does its pause matter? A check on one finished run, batch 1 (where it matters most).

    python benchmarks/interleaving_check.py RUN_DIR [--model s3] [--repeats 20] [--calls 2] [--out FILE]

Times the run's teacher and one of its models (a trimmed copy, MODEL_DIR/trimmed, where there is
one) on onnxruntime int8 and PyTorch fp32 at batch 1, sequence 64, `--calls` times each way:
- one after another: each runner's `repeats` passes in a row (`timed`, what `bench` did before);
- interleaved without a pause (`interleaved_times(..., pause_s=0)`);
- interleaved after a 50 ms pause, with one untimed call before the timed one;
- interleaved as `bench` does it (the pause, then untimed calls for 30 ms).
Prints the medians and the teacher/model ratios, and writes them to `--out`
(default benchmarks/results/interleaving_check.json). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cascade_kd.deploy.bench import PAUSE_S, REWARM_MS, interleaved_times, ort_runner, random_inputs, timed, torch_runner  # noqa: E402
from cascade_kd.deploy.export import INT8_NAME, export_model, input_names, model_tokenizer, session  # noqa: E402
from cascade_kd.students.hub import load_checkpoint  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "interleaving_check.json"


def runners(directory: Path, task: str, onnx_dir: Path) -> dict:
    """The model's int8 onnxruntime session and PyTorch fp32 forward on its batch-1 inputs."""
    model = load_checkpoint(directory, task)
    inputs = random_inputs(model.config, input_names(model, model_tokenizer(directory)), 1, 64)
    if not (onnx_dir / INT8_NAME).is_file():
        export_model(directory, onnx_dir, int8=True, check_examples=16, int8_min_agreement=0.0, say=lambda m: None)
    return {"ort-int8": ort_runner(session(onnx_dir / INT8_NAME))(inputs), "fp32": torch_runner(model, inputs, False)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--model", default="s3", help="stage name of the model to time against the teacher")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--calls", type=int, default=2, help="times each way is measured")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON file for the figures (default {RESULTS.name})")
    args = parser.parse_args(argv)
    metrics = json.loads((args.run_dir / "metrics.json").read_text())
    student = args.run_dir / "stages" / args.model
    student = student / "trimmed" if (student / "trimmed" / "trim.json").is_file() else student
    with tempfile.TemporaryDirectory() as tmp:
        every = {}
        for who, directory in (("teacher", args.run_dir / "teacher"), ("student", student)):
            for backend, run in runners(directory, metrics["task"], Path(tmp) / who).items():
                every[f"{who} {backend}"] = run
        names, calls = list(every), []
        started = time.perf_counter()
        for call in range(args.calls):
            ways = {"one after another": [timed(every[n], repeats=args.repeats)[0] for n in names]}
            for label, pause, rewarm in (("interleaved, no pause", 0.0, 0.0),
                                         (f"interleaved, {PAUSE_S * 1000:.0f} ms pause", PAUSE_S, 0.0),
                                         (f"interleaved, pause, {REWARM_MS:.0f} ms untimed", PAUSE_S, REWARM_MS)):
                ways[label] = [statistics.median(t) for t in interleaved_times(list(every.values()), args.repeats,
                                                                                  pause_s=pause, rewarm_ms=rewarm)]
            for way, medians in ways.items():
                row = dict(zip(names, medians))
                ratios = {b: row[f"teacher {b}"] / row[f"student {b}"] for b in ("ort-int8", "fp32")}
                calls.append({"call": call, "way": way, "median_ms": row, "teacher_over_student": ratios})
                print(f"call {call} {way:28s} " + "  ".join(f"{n} {v:6.2f}" for n, v in row.items())
                      + "  ratio " + "  ".join(f"{b} {r:.2f}" for b, r in ratios.items()))
    result = {"run": str(args.run_dir), "model": str(student.relative_to(args.run_dir)), "batch": 1, "seq": 64,
              "repeats": args.repeats, "threads": torch.get_num_threads(), "wall_s": time.perf_counter() - started,
              "calls": calls}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
