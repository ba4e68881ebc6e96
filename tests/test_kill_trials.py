"""The random-kill script in its small form: SIGKILL a real 3-stage run twice at random instants;
each resumed run must end with the uninterrupted run's per-language scores."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "kill_resume_trials.py"


def test_killed_runs_resume_to_identical_metrics(tmp_path):
    spec = importlib.util.spec_from_file_location("kill_resume_trials", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.run_trials(tmp_path, trials=2, seed=0, say=lambda m: None)
    assert summary["identical"] == summary["trials"] == 2, summary["results"]
