"""The dedicated fuzz run: every data reader, the recipe loader, teacher configs, damaged model
directories and the output directories of every command that writes, with N generated cases each
(default 2,000), the CLI with N/10, then a count per target.

It runs the fuzz tests with CASCADE_KD_FUZZ=N; they tally every case into a JSON report, which this
script prints:

    python scripts/fuzz_inputs.py                  # 2,000 cases per target
    python scripts/fuzz_inputs.py --cases 200 --seed 1
    python scripts/fuzz_inputs.py --only outdir model-dir --cases 500   # some targets (see TESTS)

"parsed" cases returned examples, a Recipe, a config that builds and runs, a model that runs, or
(output directories) a command that went ahead, and passed the checks on them; "UserError" cases
raised the package's one-line error (and its message passed the checks); "other exception" counts
cases that raised anything else, a bug. Exit status: pytest's (0 when every property held).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = {  # a short name (for --only) -> the fuzz test file
    "readers": "tests/data/test_fuzz_readers.py",
    "recipe": "tests/config/test_fuzz_recipe.py",
    "teacher-config": "tests/config/test_fuzz_teacher_config.py",
    "model-dir": "tests/students/test_fuzz_model_files.py",
    "outdir": "tests/cli/test_fuzz_output_dirs.py",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000, help="cases per reader and for the recipe loader")
    parser.add_argument("--seed", type=int, help="hypothesis seed, for a reproducible run")
    parser.add_argument("--only", nargs="+", choices=sorted(TESTS), help="these fuzz targets only (default: all)")
    args = parser.parse_args()
    tests = [TESTS[name] for name in (args.only or TESTS)]

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "tally.json"
        env = {**os.environ, "CASCADE_KD_FUZZ": str(args.cases), "CASCADE_KD_FUZZ_REPORT": str(report),
               "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
        if args.seed is not None:
            command.append(f"--hypothesis-seed={args.seed}")
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        tally = json.loads(report.read_text()) if report.is_file() else {}

    outcomes = ["parsed", "UserError", "other exception"]
    print(f"{'target':<30}{'cases':>8}" + "".join(f"{o:>17}" for o in outcomes))
    for target in sorted(tally):
        counts = tally[target]
        print(f"{target:<30}{counts.get('cases', 0):>8}" + "".join(f"{counts.get(o, 0):>17}" for o in outcomes))
    failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "(no pytest output)"
    other = sum(c.get("other exception", 0) for c in tally.values())
    print(f"\nuncaught exceptions: {other}; failed properties: {len(failed)}; pytest: {summary}; "
          f"wall time {wall:.0f} s")
    for line in failed:
        print(line)
    if proc.returncode not in (0, 1) or failed:  # a collection error, or the details of a failure
        print(proc.stdout[-5000:], proc.stderr[-2000:], sep="\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
