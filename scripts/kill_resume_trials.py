"""Kill a small 3-stage run with SIGKILL at random instants, resume it, and compare with an
uninterrupted run.

Each trial starts `cascade-kd run` on the same recipe (the generated demo task, shrunk, with a
full-state checkpoint every 3 steps and every stage reading its teacher from the on-disk cache),
kills it, then runs `--resume` until it finishes, and checks that every model's per-language
scores equal the uninterrupted run's (and, reported beside it, that every saved model's weights
are bit-identical to the uninterrupted run's).

Where the kill lands. Checkpoint writes and teacher-cache builds take milliseconds to a few tenths
of a second, so a uniformly random instant rarely hits them (0 of 12 random kills landed in a
cache build). Trials therefore rotate through three targets (`--target mixed`, the default):
  random      a uniformly random instant in [0.3, 0.95] x the uninterrupted run's duration;
  cache       the instant the k-th stage's teacher cache is being built (k drawn at random; a cache
              directory exists without its meta.json, which is written last);
  checkpoint  the first full-state checkpoint write (a temporary '.name.*' directory in
              RUN_DIR/state) after a random instant in [0.05, 0.9] x the duration.
The run directory is polled every POLL_S seconds. At the chosen instant the run is first frozen
with SIGSTOP, the phase it is in is read from RUN_DIR while it cannot change, and then it gets
SIGKILL: the recorded phase is exactly the state the kill interrupted (for a targeted trial whose
phase ended between the poll and the freeze, the run is continued with SIGCONT and the wait goes
on). Freezing first changes nothing for the run: SIGKILL is delivered to it all the same, only the
observation is exact. Each trial records the phase: during a checkpoint write, during a cache build,
during another atomic write (model directory, metrics), elsewhere, or after the run had finished.
Instants are fractions of how long an uninterrupted run takes; when a run finishes before its kill
(the machine got less loaded since the reference run), the trial is drawn again once within the
duration just seen.

    python scripts/kill_resume_trials.py --trials 20 --out runs/kill-trials
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.helpers: the tests' tiny recipe, which this one starts from
from tests.helpers import tiny_recipe, write_recipe  # noqa: E402

RECIPE = tiny_recipe(
    name="kill-trials",
    data={"max_eval_per_language": 50},
    teacher={"config": {"num_hidden_layers": 4, "num_attention_heads": 4}, "train": {"epochs": 2, "lr": 2.0e-3}},
    # every stage reads its teacher from the on-disk cache, so kills also land in cache builds
    train={"epochs": 2, "lr": 2.0e-3, "checkpoint_every": 3, "teacher_cache": "fp32"},
    cascade={"stages": [{"name": "ta3", "student": {"layers": 3, "freeze_embeddings": True}},
                        {"name": "ta2", "student": {"layers": 2, "freeze_embeddings": True}},
                        {"name": "student1", "student": {"layers": 1, "freeze_embeddings": True}}]},
)

STAGES = 3  # stages in RECIPE, each with its own teacher and so its own cache build
TARGETS = ("random", "cache", "checkpoint")
POLL_S = 0.002


def _command(work: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cascade_kd", "run", str(work / "recipe.yaml"), "--out", str(run_dir), *extra]


def _scores(run_dir: Path) -> list:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return [(m["name"], m["per_language"]) for m in metrics["models"]]


def _weights(run_dir: Path) -> dict:
    """sha256 of every saved model's weight files (teacher and stages)."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.glob("teacher/*.safetensors")) + sorted(run_dir.glob("stages/*/*.safetensors"))}


def _code_fingerprint() -> str:
    """A hash of the cascade_kd sources the runs import: a reference made by other code is not
    reused, and a trial during which the code changed (the tree edited meanwhile) is flagged."""
    import cascade_kd

    root = Path(cascade_kd.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _saved_progress(run_dir: Path) -> bool:
    """Whether anything resumable existed: a finished model or a stage's training state."""
    names = {name for _, dirs, files in os.walk(run_dir) for name in dirs + files}
    return "stage.json" in names or "progress.json" in names


def _listing(directory: Path) -> list[Path]:
    """The entries of `directory`; empty if it does not exist (or vanished while being read)."""
    try:
        return list(directory.iterdir())
    except OSError:
        return []


def _cache_dirs(run_dir: Path) -> list[Path]:
    return [d for d in _listing(run_dir / "cache") if d.is_dir() and not d.name.startswith(".")]


def _cache_building(run_dir: Path) -> bool:
    """A teacher cache directory exists without its meta.json (written last): a build is under way."""
    return any(not (d / "meta.json").is_file() for d in _cache_dirs(run_dir))


def _checkpoint_writing(run_dir: Path) -> bool:
    """A full-state checkpoint is being written: its temporary (or replaced) directory is in RUN_DIR/state."""
    return any(p.name.startswith(".") for p in _listing(run_dir / "state"))


def _temporaries(run_dir: Path) -> bool:
    """Any atomic write under way: a temporary file or directory (a name starting with '.') in RUN_DIR."""
    return any(name.startswith(".") for _, dirs, files in os.walk(run_dir) for name in dirs + files)


def _phase(run_dir: Path) -> str:
    if _cache_building(run_dir):  # includes writing a shard or meta.json
        return "cache build"
    if _checkpoint_writing(run_dir):
        return "checkpoint write"
    return "other write" if _temporaries(run_dir) else "elsewhere"


def _all_stopped(pid: int) -> bool:
    """Every thread of `pid` is stopped (or the process is gone), from /proc."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    for task in tasks:
        try:
            state = Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in "TtZX":
            return False
    return True


def _freeze(process: subprocess.Popen) -> bool:
    """SIGSTOP the run and wait until it is stopped; False if it had already finished."""
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGSTOP)
    if not Path("/proc").is_dir():
        time.sleep(0.05)
    else:
        deadline = time.monotonic() + 5
        while not _all_stopped(process.pid) and time.monotonic() < deadline:
            time.sleep(0.0005)
    return process.poll() is None


def _freeze_when(process: subprocess.Popen, ready, in_phase) -> bool:
    """Poll until `ready()` and `in_phase()`, freeze the run, and keep it frozen if it is still in
    the phase (True); otherwise continue it and go on waiting. False if the run finished first."""
    while process.poll() is None:
        if ready() and in_phase():
            if not _freeze(process):
                return False
            if in_phase():
                return True
            process.send_signal(signal.SIGCONT)  # the phase ended between the poll and the freeze
        time.sleep(POLL_S)
    return False


def run_trials(out: Path, trials: int, seed: int = 0, say=print, target: str = "mixed") -> dict:
    from cascade_kd.cli.demo import generate

    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    if not (work / "data").is_dir():
        generate(work, seed=0)
    write_recipe(work, RECIPE)
    env = {**os.environ, "CASCADE_KD_QUIET": "1", "HF_HUB_OFFLINE": "1"}

    reference, code = out / "reference", _code_fingerprint()
    made_by = out / "reference-code"
    if not (reference / "metrics.json").is_file() or not made_by.is_file() or made_by.read_text() != code:
        started = time.perf_counter()
        subprocess.run(_command(work, reference, "--overwrite"), env=env, check=True, capture_output=True)
        (out / "reference-seconds").write_text(str(time.perf_counter() - started))
        made_by.write_text(code)
    duration = float((out / "reference-seconds").read_text())
    expected, expected_weights = _scores(reference), _weights(reference)
    say(f"reference run: {duration:.1f} s; test scores "
        + "; ".join(f"{name} " + " ".join(f"{lang} {v:g}" for lang, v in per.items()) for name, per in expected))

    rng = random.Random(seed)
    pace = duration  # how long an uninterrupted run takes now; random instants are drawn within it
    results = []
    for trial in range(trials):
        aim = TARGETS[trial % len(TARGETS)] if target == "mixed" else target
        run_dir = out / f"trial-{trial}"
        code_before = _code_fingerprint()
        for attempt in (1, 2):
            shutil.rmtree(run_dir, ignore_errors=True)  # not --overwrite's removal: it would look like a cache build
            process = subprocess.Popen(_command(work, run_dir, "--overwrite"), env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started = time.perf_counter()
            if aim == "random":
                kill_at = rng.uniform(0.3, 0.95) * pace
                aimed, deadline = f"{kill_at:.1f} s", started + kill_at
                while process.poll() is None and time.perf_counter() < deadline:
                    time.sleep(min(POLL_S * 10, max(0.0, deadline - time.perf_counter())))
                frozen = _freeze(process)
            elif aim == "cache":
                build = rng.randint(1, STAGES)
                aimed = f"cache build {build}"
                frozen = _freeze_when(process, lambda d=run_dir, k=build: len(_cache_dirs(d)) >= k,
                                      lambda d=run_dir: _cache_building(d))
            else:
                not_before = started + rng.uniform(0.05, 0.9) * pace
                aimed = f"checkpoint write after {not_before - started:.1f} s"
                frozen = _freeze_when(process, lambda t=not_before: time.perf_counter() >= t,
                                      lambda d=run_dir: _checkpoint_writing(d))
            if frozen or attempt == 2:
                break
            # the run finished before the kill (the machine got faster than during the reference
            # run): draw again, once, within the duration just seen
            pace = time.perf_counter() - started
            say(f"trial {trial}: the run finished in {pace:.1f} s, before {aimed}: drawing again")
        killed_at = time.perf_counter() - started
        if frozen:  # read while the run cannot change anything: exactly what the kill interrupts
            phase, during_write, had_progress = _phase(run_dir), _temporaries(run_dir), _saved_progress(run_dir)
        else:
            phase, during_write, had_progress = "after the run finished", False, _saved_progress(run_dir)
        process.send_signal(signal.SIGKILL)
        process.wait()
        resumed = subprocess.run(_command(work, run_dir, "--resume"), env=env, capture_output=True, text=True, check=False)
        identical = resumed.returncode == 0 and _scores(run_dir) == expected
        same_weights = resumed.returncode == 0 and _weights(run_dir) == expected_weights
        code_changed = not code_before == _code_fingerprint() == code
        results.append({"trial": trial, "target": aim, "aimed_at": aimed, "kill_at_s": round(killed_at, 3), "attempts": attempt,
                        "phase": phase, "during_write": during_write, "during_cache_build": phase == "cache build",
                        "during_checkpoint_write": phase == "checkpoint write", "had_progress": had_progress,
                        "finished_before_kill": not frozen, "resume_rc": resumed.returncode,
                        "identical": identical, "identical_weights": same_weights, "code_changed": code_changed,
                        "error": resumed.stderr[-300:] if resumed.returncode else ""})
        say(f"trial {trial} ({aim}: {aimed}): killed at {killed_at:.2f} s "
            + {"other write": "during another write", "elsewhere": "elsewhere",
               "after the run finished": "after the run had finished"}.get(phase, f"during a {phase}")
            + f"{'' if had_progress else ' (before any checkpoint)'}: {'identical' if identical else 'DIFFERENT'}"
            + ("" if same_weights else ", weights DIFFERENT")
            + (" (cascade_kd's code changed during this trial: not comparable)" if code_changed else ""))
    count = lambda key, value=True: sum(r[key] == value for r in results)
    summary = {"trials": trials, "identical": count("identical"), "identical_weights": count("identical_weights"),
               "killed_during_write": count("during_write"),
               "killed_during_checkpoint_write": count("phase", "checkpoint write"),
               "killed_during_cache_build": count("phase", "cache build"),
               "killed_during_other_write": count("phase", "other write"),
               "killed_elsewhere": count("phase", "elsewhere"),
               "finished_before_kill": count("phase", "after the run finished"),
               "killed_after_a_checkpoint": count("had_progress"), "code_changed": count("code_changed"),
               "targets": {aim: count("target", aim) for aim in TARGETS},
               "reference_seconds": duration, "results": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    say(f"{summary['identical']} of {trials} resumed runs identical to the uninterrupted run "
        f"({summary['identical_weights']} with bit-identical weights; "
        f"{summary['killed_after_a_checkpoint']} killed after a checkpoint existed"
        + (f"; in {summary['code_changed']} the package's code changed meanwhile" if summary["code_changed"] else "") + ")")
    say(f"kills: {summary['killed_during_checkpoint_write']} during a checkpoint write, "
        f"{summary['killed_during_cache_build']} during a teacher-cache build, "
        f"{summary['killed_during_other_write']} during another write, {summary['killed_elsewhere']} elsewhere, "
        f"{summary['finished_before_kill']} after the run had finished; aimed: "
        + ", ".join(f"{n} {aim}" for aim, n in summary["targets"].items() if n))
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/kill-trials"))
    parser.add_argument("--target", choices=("mixed", *TARGETS), default="mixed",
                        help="where kills land: mixed (default) rotates random instants, cache builds and checkpoint writes")
    args = parser.parse_args()
    summary = run_trials(args.out, args.trials, args.seed, target=args.target)
    return 0 if summary["identical"] == summary["identical_weights"] == summary["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
