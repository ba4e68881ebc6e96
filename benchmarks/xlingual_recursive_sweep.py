"""The MiniALBERT settings tried for benchmarks/xlingual.py (RESULTS.md, issue 16): its recursive
student on PAN-X zero-shot at the small grid's sizes, seed 0, with four learning-rate / layer-map /
initialisation choices, each scored on English dev (the selection split) and the held-out split.

    python benchmarks/xlingual.py --small --settings panx-zs      # first: the teacher it loads
    python benchmarks/xlingual_recursive_sweep.py [--out runs/xlingual-small] [NAME ...]

Each variant is the grid's own recursive recipe with the keys below changed, run in
OUT/recursive-sweep/NAME (resumable); a table is printed at the end.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import cascade_kd as ckd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xlingual  # noqa: E402

# name -> (learning rate, layer map of the hidden and attention losses, initialisation)
VARIANTS = {
    "lr1e-4": (1.0e-4, "top_only", "mean"),  # the grid's first setting, which did not learn
    "lr5e-4": (5.0e-4, "top_only", "mean"),
    "lr5e-4-skip2": (5.0e-4, "skip2", "mean"),
    "lr1e-3-skip2": (1.0e-3, "skip2", "mean"),  # the grid's setting now
    "lr5e-4-layer6": (5.0e-4, "top_only", "layer:6"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"variants to run (default all): {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=xlingual.ROOT / "runs" / "xlingual-small",
                        help="the small grid's output (its panx-zs teacher is loaded)")
    parser.add_argument("--teacher", type=Path, default=xlingual.ROOT / "teachers" / "multilingual-e5-small")
    args = parser.parse_args()
    grid_args = argparse.Namespace(out=args.out.resolve(), teacher=args.teacher, mode="small", settings=["panx-zs"],
                                   repeats=1)
    (job,) = [j for j in xlingual.grid(grid_args, xlingual.SIZES["small"]) if j.name == "panx-zs/seed0/recursive"]
    unknown = [n for n in args.names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}: choose from {', '.join(VARIANTS)}")
    rows = []
    for name in args.names or list(VARIANTS):
        lr, layer_map, init = VARIANTS[name]
        recipe = copy.deepcopy(job.recipe)
        recipe["name"] = f"recursive-{name}"
        stage = recipe["cascade"]["stages"][0]
        stage["train"] = {"lr": lr}
        stage["student"]["init"] = init
        recipe["cascade"]["losses"] = {k: ({**v, "layer_map": layer_map} if "layer_map" in v else v)
                                       for k, v in recipe["cascade"]["losses"].items()}
        started = time.perf_counter()
        run_dir = args.out / "recursive-sweep" / name
        metrics = ckd.run(recipe, run_dir, resume=True, say=lambda m: None)
        row = next(m for m in metrics["models"] if m["role"] != "teacher")
        dev = xlingual.read_json(run_dir / row["path"] / "stage.json")["dev"]  # the best epoch's, on English dev
        rows.append((name, dev, row["average_seen"], row["average_zero_shot"], time.perf_counter() - started))
    print("| variant | English dev F1 | held-out en | held-out zero-shot | wall s |")
    print("|---|---:|---:|---:|---:|")
    for name, dev, seen, zero, wall in rows:
        print(f"| {name} | {100 * dev:.1f} | {100 * seen:.1f} | {100 * zero:.1f} | {wall:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
