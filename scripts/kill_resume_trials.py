"""Kill a small 3-stage run with SIGKILL at random instants, resume it, and compare with an
uninterrupted run.

Each trial starts `cascade-kd run` on the same recipe (the generated demo task, shrunk, with a
full-state checkpoint every 3 steps so that kills often land during checkpoint writes), kills it
at a random instant within the uninterrupted run's duration, then runs `--resume` until it
finishes, and checks that every model's per-language scores equal the uninterrupted run's. A kill
counts as "during a write" when a temporary file or directory (a name starting with '.') existed
in RUN_DIR at that instant, and "during a cache build" when a teacher cache directory existed
without its meta.json (written last).

    python scripts/kill_resume_trials.py --trials 20 --out runs/kill-trials
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

RECIPE = """\
name: kill-trials
seed: 0
task: {type: token, max_length: 48}
data:
  languages: [en, ru]
  format: conll
  train: data/{lang}/train.conll
  dev: data/{lang}/dev.conll
  test: data/{lang}/test.conll
  max_train_per_language: 200
  max_eval_per_language: 50
teacher:
  config: {model_type: bert, num_hidden_layers: 4, hidden_size: 32, num_attention_heads: 4,
           intermediate_size: 64, max_position_embeddings: 64}
  tokenizer: tokenizer
  train: {epochs: 2, lr: 2.0e-3}
# every stage reads its teacher from the on-disk cache, so kills also land in cache builds
train: {batch_size: 32, epochs: 2, lr: 2.0e-3, precision: fp32, checkpoint_every: 3, teacher_cache: fp32}
cascade:
  stages:
    - {name: ta3, student: {layers: 3, freeze_embeddings: true}}
    - {name: ta2, student: {layers: 2, freeze_embeddings: true}}
    - {name: student1, student: {layers: 1, freeze_embeddings: true}}
  direct: false
"""


def _command(work: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cascade_kd", "run", str(work / "recipe.yaml"), "--out", str(run_dir), *extra]


def _scores(run_dir: Path) -> list:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return [(m["name"], m["per_language"]) for m in metrics["models"]]


def _saved_progress(run_dir: Path) -> bool:
    """Whether anything resumable existed: a finished model or a stage's training state."""
    return run_dir.exists() and (any(run_dir.rglob("stage.json")) or any(run_dir.rglob("progress.json")))


def _cache_building(run_dir: Path) -> bool:
    cache = run_dir / "cache"
    return cache.is_dir() and any(d.is_dir() and not (d / "meta.json").is_file() for d in cache.iterdir())


def _temporaries(run_dir: Path) -> bool:
    return run_dir.exists() and any(p.name.startswith(".") for p in run_dir.rglob("*"))


def run_trials(out: Path, trials: int, seed: int = 0, say=print) -> dict:
    from cascade_kd.demo import generate

    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    if not (work / "data").is_dir():
        generate(work, seed=0)
    (work / "recipe.yaml").write_text(RECIPE)
    env = {**os.environ, "CASCADE_KD_QUIET": "1", "HF_HUB_OFFLINE": "1"}

    reference = out / "reference"
    if not (reference / "metrics.json").is_file():
        started = time.perf_counter()
        subprocess.run(_command(work, reference, "--overwrite"), env=env, check=True, capture_output=True)
        (out / "reference-seconds").write_text(str(time.perf_counter() - started))
    duration = float((out / "reference-seconds").read_text())
    expected = _scores(reference)
    say(f"reference run: {duration:.1f} s")

    rng = random.Random(seed)
    results = []
    for trial in range(trials):
        run_dir = out / f"trial-{trial}"
        process = subprocess.Popen(_command(work, run_dir, "--overwrite"), env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_at = rng.uniform(0.3, 0.95) * duration
        time.sleep(kill_at)
        during_write, during_cache = _temporaries(run_dir), _cache_building(run_dir)
        had_progress = _saved_progress(run_dir)
        finished_first = process.poll() is not None
        process.send_signal(signal.SIGKILL)
        process.wait()
        resumed = subprocess.run(_command(work, run_dir, "--resume"), env=env, capture_output=True, text=True)
        identical = resumed.returncode == 0 and _scores(run_dir) == expected
        results.append({"trial": trial, "kill_at_s": round(kill_at, 2), "during_write": during_write, "during_cache_build": during_cache,
                        "had_progress": had_progress,
                        "finished_before_kill": finished_first, "resume_rc": resumed.returncode,
                        "identical": identical, "error": resumed.stderr[-300:] if resumed.returncode else ""})
        say(f"trial {trial}: killed at {kill_at:.1f} s{' during a write' if during_write else ''}"
            f"{' during a cache build' if during_cache else ''}{'' if had_progress else ' (before any checkpoint)'}: "
            f"{'identical' if identical else 'DIFFERENT'}")
    summary = {"trials": trials, "identical": sum(r["identical"] for r in results),
               "killed_during_write": sum(r["during_write"] for r in results),
               "killed_during_cache_build": sum(r["during_cache_build"] for r in results),
               "killed_after_a_checkpoint": sum(r["had_progress"] for r in results),
               "reference_seconds": duration, "results": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    say(f"{summary['identical']} of {trials} resumed runs identical to the uninterrupted run "
        f"({summary['killed_after_a_checkpoint']} killed after a checkpoint existed, "
        f"{summary['killed_during_write']} during a write, {summary['killed_during_cache_build']} during a teacher-cache build)")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/kill-trials"))
    args = parser.parse_args()
    summary = run_trials(args.out, args.trials, args.seed)
    return 0 if summary["identical"] == summary["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
