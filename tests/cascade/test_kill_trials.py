"""The random-kill script in its small form: SIGKILL a real 3-stage run twice, once at a random
instant and once inside a teacher-cache build; each resumed run must end with the uninterrupted
run's per-language scores and bit-identical weights."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kill_resume_trials.py"


def test_killed_runs_resume_to_identical_metrics(tmp_path):
    spec = importlib.util.spec_from_file_location("kill_resume_trials", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.run_trials(tmp_path, trials=2, seed=0, say=lambda m: None)
    assert summary["identical"] == summary["identical_weights"] == summary["trials"] == 2, summary["results"]
    # the second trial waits for a cache build and freezes the run inside it (checked while frozen) before the kill
    assert [r["target"] for r in summary["results"]] == ["random", "cache"]
    assert summary["results"][1]["phase"] == "cache build", summary["results"]
