"""Several processes (torchrun, gloo on CPU) give the one-process result.

The engine splits each global batch between processes and weights every loss term by its share
of the batch's items, so that DDP's gradient average is the one-process gradient. Tested at two
levels: the weighting itself, by hand, on every loss term; and a whole tiny cascade on 2 processes
against the same recipe on 1, including a kill of the 2-process run resumed on 1 process. Two of
the stages (and the direct baseline) shard their teachers between the processes (FSDP), the others
keep a whole copy on each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cascade_kd.data.encode import IGNORE
from cascade_kd.losses.attention import AttentionKL, AttentionMSE
from cascade_kd.losses.base import LossTerm, TeacherFeatures
from cascade_kd.losses.hidden import HiddenMSE
from cascade_kd.losses.logits import HardLabelCE, LogitMSE, SoftLogitKL
from cascade_kd.students.features import Features
from cascade_kd.training.data import batch_share
from cascade_kd.training.task import share_scales, weighted_losses
from tests.helpers import line_of, merge, tiny_recipe, write_recipe

# Weights after training on 2 processes differ from 1 process only by the order of float sums;
# over ~100 optimiser steps that stays far below this (1e-4 observed).
WEIGHT_TOLERANCE = 1e-3


def test_batch_share_splits_every_member_once_and_pads_short_batches():
    members = list(range(7))
    shares = [batch_share(members, r, 3) for r in range(3)]
    assert sorted(i for share, _ in shares for i in share) == members
    assert all(real for _, real in shares)
    share, real = batch_share([5], 1, 2)  # fewer members than processes: a weight-0 stand-in
    assert share == [5] and not real


class _Terms:
    """What share_scales needs of the task: its terms' units."""

    def __init__(self, terms):
        self.terms = terms

    def units(self, batch):
        return torch.stack([t.loss.units(batch) for t in self.terms])


class _FakeAccelerator:
    """What share_scales needs from accelerate: the process count and an all-reduce (here: the sum
    over the simulated processes, given in advance)."""

    def __init__(self, n: int, total: torch.Tensor):
        self.num_processes, self._total = n, total

    def reduce(self, tensor, reduction):
        return self._total.clone()


def _features(logits, hidden, attention, mask):
    return Features(logits=logits, hidden_states=hidden, attentions=attention, attention_mask=mask.bool())


def test_weighted_shares_reproduce_the_one_process_gradient_for_every_term():
    torch.manual_seed(0)
    B, T, C, D, H = 5, 6, 4, 8, 2
    lengths = torch.tensor([6, 2, 5, 3, 4])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    labels = torch.randint(0, C, (B, T))
    labels[torch.rand(B, T) < 0.3] = IGNORE
    labels[mask == 0] = IGNORE
    batch = {"attention_mask": mask, "labels": labels}

    def attn():
        a = torch.rand(B, H, T, T).masked_fill(mask[:, None, None, :] == 0, -1e9)
        return a.softmax(-1)

    s_logits = torch.randn(B, T, C, requires_grad=True)
    s_hidden = torch.randn(B, T, D, requires_grad=True)
    s_attn_raw = torch.randn(B, H, T, T, requires_grad=True)
    t_logits, t_hidden, t_attn = torch.randn(B, T, C), torch.randn(B, T, D), attn()
    terms = [
        LossTerm(0.5, HardLabelCE()),
        LossTerm(1.0, SoftLogitKL(temperature=2.0, positions="labelled")),
        LossTerm(0.3, LogitMSE(positions="tokens")),
        LossTerm(1.0, HiddenMSE(pairs=[(1, 1)])),
        LossTerm(2.0, AttentionMSE(head_reduction="none", pairs=[(1, 1)])),
        LossTerm(1.5, AttentionKL(head_reduction="none", pairs=[(1, 1)])),
    ]

    def loss_on(rows, scales=None):
        s_attn = s_attn_raw[rows].masked_fill(mask[rows][:, None, None, :] == 0, -1e9).softmax(-1)
        s = _features(s_logits[rows], (s_hidden[rows], s_hidden[rows]), (s_attn,), mask[rows])
        t = _features(t_logits[rows], (t_hidden[rows], t_hidden[rows]), (t_attn[rows],), mask[rows])
        sub = {k: v[rows] for k, v in batch.items()}
        return weighted_losses(terms, s, TeacherFeatures(t), sub, scales)["loss"], sub

    params = (s_logits, s_hidden, s_attn_raw)
    full, _ = loss_on(list(range(B)))
    expected = torch.autograd.grad(full, params)

    n = 2
    shares = [batch_share(list(range(B)), r, n)[0] for r in range(n)]
    subs = [loss_on(rows)[1] for rows in shares]
    total = sum(_Terms(terms).units(sub).float() for sub in subs)
    averaged = [torch.zeros_like(p) for p in params]
    for rows, sub in zip(shares, subs):
        scales = share_scales(_FakeAccelerator(n, total), _Terms(terms), sub, real=True)
        loss, _ = loss_on(rows, scales)
        for acc, g in zip(averaged, torch.autograd.grad(loss, params)):
            acc += g / n  # what DDP does: the mean of the processes' gradients
    for got, want in zip(averaged, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


# --- whole runs -------------------------------------------------------------------------------

RECIPE = tiny_recipe(
    name="mp",
    data={"test": None, "max_train_per_language": 120, "max_eval_per_language": 40},
    # no dropout: the one- and two-process runs must draw no random numbers that differ
    teacher={"config": {"num_hidden_layers": 3, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
             "train": {"epochs": 2, "lr": 2.0e-3}},
    # 15 does not split evenly between 2 processes; grad_accum and a checkpoint interval are exercised too
    train={"batch_size": 15, "epochs": 2, "lr": 2.0e-3, "checkpoint_every": 4, "grad_accum": 2},
    cascade={
        "losses": {"kl": {"weight": 1.0, "positions": "tokens"}, "hidden_mse": {"weight": 1.0},
                   "attention_kl": {"weight": 1.0}, "ce": {"weight": 0.5}},
        "stages": [
            # long enough (128 steps, a checkpoint every 4) for the kill test to land inside it
            {"name": "ta", "student": {"layers": 2, "freeze_embeddings": True}, "train": {"epochs": 8}},
            # the two guides (teacher and ta) sharded between the processes (FSDP), the student in DDP
            {"name": "student", "student": {"layers": 1}, "guides": "dense", "drop_guides": 1,
             "train": {"teacher_sharding": "fsdp"}},
            # representation only (the head gets no gradient), narrower (a projection), gradual unfreezing;
            # a sharded teacher again (and for the direct baseline, which trains with the final stage's settings)
            {"name": "repr",
             "student": {"layers": 1, "hidden": 16, "heads": 2, "intermediate": 32, "init": "random", "embeddings": "pca"},
             "losses": {"hidden_mse": {}}, "train": {"unfreeze": "gradual", "teacher_sharding": "fsdp"}},
        ],
        "direct": True,
    },
)


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", CASCADE_KD_QUIET="0", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _torchrun(root: Path, out: str, *extra: str, wait: bool = True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cascade_kd", "run", "recipe.yaml", "--out", out, *extra]
    if wait:
        return subprocess.run(cmd, cwd=root, env=_env(), capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, cwd=root, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _cli(root: Path, out: str, *extra: str):
    cmd = [sys.executable, "-m", "cascade_kd", "run", "recipe.yaml", "--out", out, *extra]
    return subprocess.run(cmd, cwd=root, env=_env(), capture_output=True, text=True, timeout=300)


def _max_weight_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys()
    return max((x[k].float() - y[k].float()).abs().max().item() for k in x)


def _files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*"))


MODELS = ["teacher", "stages/ta", "stages/student", "stages/repr", "stages/direct"]


@pytest.fixture(scope="module")
def workspace(demo_workspace, tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    for name in ("data", "tokenizer"):
        shutil.copytree(demo_workspace / name, root / name)
    write_recipe(root, RECIPE)
    one = _cli(root, "one")
    assert one.returncode == 0, one.stderr
    return root


def test_two_processes_end_with_the_weights_of_one_and_write_each_output_once(workspace):
    two = _torchrun(workspace, "two")
    assert two.returncode == 0, two.stdout + two.stderr
    for model in MODELS:
        assert _max_weight_difference(workspace / "one" / model, workspace / "two" / model) < WEIGHT_TOLERANCE, model
    # exactly one copy of each output: the same files as the one-process run, nothing per process
    assert _files(workspace / "two") == _files(workspace / "one")
    log = two.stdout
    assert log.count("data: 2 languages") == 1  # the main process speaks, once
    assert "2 process(es), global batch 15 (about 7 per process) x 2 accumulated = 30 examples per optimiser step" in log
    # ta: a whole teacher on each process; student: both guides sharded; repr and direct: the teacher sharded
    sharded = [line for line in log.splitlines() if "sharded between 2 processes (FSDP)" in line]
    assert [line.split(":")[0].strip() for line in sharded] == ["student", "repr", "direct"], sharded
    assert "teachers sharded" in sharded[0] and "teacher sharded" in sharded[1]


def test_a_killed_two_process_run_resumes_on_one_process(workspace):
    run = workspace / "killed"
    proc = _torchrun(workspace, "killed", wait=False)
    state = run / "state" / "ta" / "progress.json"
    deadline = time.monotonic() + 240
    while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    # the launcher's workers run in their own sessions: kill them by their command line, then the launcher
    pattern = "cascade_kd run recipe.yaml --out killed"
    subprocess.run(["pkill", "-9", "-f", pattern], check=False)
    proc.kill()
    proc.wait()
    while subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0:  # until they are gone
        time.sleep(0.05)
    assert state.is_file(), "the run ended before the assistant's first checkpoint:\n" + (proc.stdout.read() or "")[-3000:]
    assert not (run / "stages" / "ta" / "stage.json").exists(), "the kill came after the assistant finished"
    from safetensors import safe_open

    with safe_open(str(run / "state" / "ta" / "rng.safetensors"), framework="pt") as rng:
        assert {"cpu", "cpu.rank1"} <= set(rng.keys())  # each process's random state, gathered by the main one
    resumed = _cli(workspace, "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "written by 2 process(es), resumed on 1" in resumed.stdout
    for model in MODELS:
        assert _max_weight_difference(workspace / "one" / model, run / model) < WEIGHT_TOLERANCE, model


def test_a_global_batch_smaller_than_the_process_count_is_refused_before_training(workspace):
    small = write_recipe(workspace, merge(RECIPE, {"train": {"batch_size": 1}}), "small.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cascade_kd", "run", "small.yaml", "--out", "small"]
    result = subprocess.run(cmd, cwd=workspace, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    line = line_of(small, "batch_size: 1")
    assert f"small.yaml:{line}: train.batch_size: batch_size 1 is smaller than the 2 processes launched" in result.stderr
    assert not (workspace / "small").exists()
