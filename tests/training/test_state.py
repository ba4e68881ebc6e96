"""An interrupted stage resumes to exactly the weights of an uninterrupted one (CPU, fixed seed)."""

import json
import os

import pytest
import torch
from tests.helpers import tiny_bert
from safetensors import safe_open

from cascade_kd.training import data as stage_data
from cascade_kd.data.encode import encode
from cascade_kd.data.readers import read_examples
from cascade_kd.errors import UserError
from cascade_kd.losses.base import LossTerm
from cascade_kd.losses.logits import HardLabelCE
from cascade_kd.losses.registry import build_terms
from cascade_kd.training.data import StageData
from cascade_kd.training.loop import train
from cascade_kd.training.task import DistillationTask
from cascade_kd.training.teacher import LiveTeacher
from cascade_kd.students import build_student
from cascade_kd.students.hub import use_attention_outputs
from cascade_kd.config.schema import LossConfig, StudentConfig, TrainConfig
from cascade_kd.training.state import (
    BEST,
    FROZEN,
    MODULE,
    Progress,
    changing_tensors,
    frozen_parameters,
    has_state,
    load_state,
    restore,
    save_state,
    saved_stream,
    update_static,
)

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
CFG = TrainConfig(epochs=3, batch_size=16, lr=1e-3, precision="fp32", checkpoint_every=2)


@pytest.fixture(scope="module")
def data(demo_workspace, tokenizer):
    examples = read_examples(demo_workspace / "data" / "de" / "train.conll", fmt="conll", task="token", lang="de", limit=80)
    return encode(examples, tokenizer, task="token", label2id={l: i for i, l in enumerate(LABELS)}, max_length=64)


def _score(model):
    return -float(sum(p.detach().float().pow(2).sum() for p in model.parameters()))  # deterministic in the weights


def _distil(data, state_dir, teacher, freeze=False, cfg=CFG, evaluate=_score):
    """A width-changing distillation stage (projections, dropout RNG, scheduler all in play)."""
    torch.manual_seed(1)
    student = build_student(teacher, StudentConfig(layers=1, init="random", hidden=16, heads=2, embeddings="pca",
                                                   freeze_embeddings=freeze))
    losses = {"kl": LossConfig(temperature=2.0), "hidden_mse": LossConfig(), "attention_mse": LossConfig(head_reduction="mean")}
    task = DistillationTask(student, build_terms(losses, teacher.config, student.config, where="t"), LiveTeacher(teacher))
    use_attention_outputs(teacher, True)
    use_attention_outputs(student, True)
    result = train(task, StageData(data, seed=5), cfg, evaluate=evaluate, state_dir=state_dir)
    return student, task.projections, result


class _Crash(Exception):
    pass


@pytest.mark.parametrize(("crash_at", "freeze"), [(3, False), (7, False), (12, False), (7, True)])
# mid-epoch after a checkpoint, right after an epoch end, late; frozen embeddings (written once)
def test_resume_after_a_crash_gives_identical_weights(data, tmp_path, monkeypatch, crash_at, freeze):
    teacher = tiny_bert(layers=2, hidden=32).eval()
    ref_student, ref_proj, ref = _distil(data, tmp_path / "ref", teacher, freeze)

    calls = {"n": 0}
    real_collate = stage_data.collate

    def crashing_collate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise _Crash
        return real_collate(*args, **kwargs)

    monkeypatch.setattr(stage_data, "collate", crashing_collate)
    with pytest.raises(_Crash):
        _distil(data, tmp_path / "run", teacher, freeze)
    assert has_state(tmp_path / "run")
    assert saved_stream(tmp_path / "run") == (True, 5)  # the stage's stream (StageData's seed), for the resume
    # the frozen table is written once, not at every checkpoint: the whole table when the embeddings
    # are frozen; else the table the rows the data uses are trained over (train.embedding_rows: seen)
    embedding = "student.bert.embeddings.word_embeddings."
    frozen, trained = _keys(tmp_path / "run" / FROZEN), _keys(tmp_path / "run" / MODULE)
    assert embedding + ("weight" if freeze else "frozen") in frozen
    assert not any(k.startswith(embedding) for k in trained) if freeze else embedding + "trained" in trained
    monkeypatch.setattr(stage_data, "collate", real_collate)
    student, proj, result = _distil(data, tmp_path / "run", teacher, freeze)

    assert result.steps == ref.steps and result.history == ref.history
    # the loss curve too: under 200 steps each point is one step's values, saved with the state
    assert result.curve == ref.curve and len(result.curve) == result.steps
    for a, b in ((student, ref_student), (proj, ref_proj)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sb)


def test_a_crash_in_the_last_evaluation_evaluates_again_on_resume(data, tmp_path):
    """5 steps an epoch, a checkpoint every 5: the last one is written after the last step and
    before the last epoch's evaluation. A crash inside that evaluation resumed without it, keeping
    the best of the earlier epochs (other weights, a shorter history)."""
    teacher = tiny_bert(layers=2, hidden=32).eval()
    cfg = CFG.model_copy(update={"checkpoint_every": 5})
    ref_student, _, ref = _distil(data, tmp_path / "ref", teacher, cfg=cfg)
    assert ref.steps == 15 and len(ref.history) == 3
    calls = {"n": 0}

    def crashing_score(model):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Crash
        return _score(model)

    with pytest.raises(_Crash):
        _distil(data, tmp_path / "run", teacher, cfg=cfg, evaluate=crashing_score)
    student, _, result = _distil(data, tmp_path / "run", teacher, cfg=cfg)
    assert result.history == ref.history and result.best_epoch == ref.best_epoch
    expected = ref_student.state_dict()
    assert all(torch.equal(student.state_dict()[k], expected[k]) for k in expected)


def test_plain_stage_without_state_dir_writes_nothing(data, tmp_path):
    train(DistillationTask(tiny_bert(layers=1), [LossTerm(1.0, HardLabelCE())]), StageData(data), CFG.model_copy(update={"epochs": 1}))
    assert not any(tmp_path.iterdir())


class _Two(torch.nn.Module):
    """`a` frozen (like a distilled student's embeddings), `b` trained."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
        self.a.requires_grad_(False)
        self.register_buffer("counts", torch.zeros(2))  # persistent: saved with the trained tensors


def _optimiser(model):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _step(model, optimizer, progress):
    model.b(model.a(torch.ones(3, 4))).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    progress.step += 1


def _keys(path):
    with safe_open(str(path), framework="pt") as handle:
        return set(handle.keys())


def test_frozen_weights_are_written_once_and_the_best_only_when_it_is_not_current(tmp_path, monkeypatch):
    import cascade_kd.training.state as state

    written = []
    real_save = state.save_file
    monkeypatch.setattr(state, "save_file", lambda tensors, path: (written.append(os.path.basename(path)),
                                                                   real_save(tensors, path)))
    torch.manual_seed(0)
    model = _Two()
    optimizer, scheduler = _optimiser(model)
    progress = Progress(static=frozen_parameters(model))
    assert progress.static == ["a.bias", "a.weight"]
    directory = tmp_path / "state"

    _step(model, optimizer, progress)
    best = changing_tensors(model, progress)  # an improving evaluation at step 1
    progress.best_step = progress.step
    assert set(best) == {"b.weight", "b.bias", "counts"}
    save_state(directory, model, optimizer, scheduler, progress, best)
    assert _keys(directory / MODULE) == {"b.weight", "b.bias", "counts"}
    assert _keys(directory / FROZEN) == {"a.weight", "a.bias"}
    assert not (directory / BEST).exists()  # the best weights are the module's
    inode = os.stat(directory / FROZEN).st_ino

    fresh = _Two()
    fresh_opt, fresh_sched = _optimiser(fresh)
    loaded, loaded_best = load_state(directory, fresh, fresh_opt, fresh_sched)
    assert loaded.static == progress.static
    assert all(torch.equal(fresh.state_dict()[k], model.state_dict()[k]) for k in model.state_dict())
    assert all(torch.equal(loaded_best[k], best[k]) for k in best)

    _step(model, optimizer, progress)  # not an improvement: the best stays at step 1
    save_state(directory, model, optimizer, scheduler, progress, best)
    assert os.stat(directory / FROZEN).st_ino == inode  # linked, not written again
    assert written.count(FROZEN) == 1 and written.count(BEST) == 1
    loaded, loaded_best = load_state(directory, _Two(), *_optimiser(_Two()))
    assert all(torch.equal(loaded_best[k], best[k]) for k in best)
    assert not torch.equal(best["b.weight"], model.b.weight)


def test_a_parameter_unfrozen_later_leaves_the_static_set_and_the_best_copy_restores_it():
    torch.manual_seed(0)
    model = _Two()
    progress = Progress(static=frozen_parameters(model))
    best = changing_tensors(model, progress)  # taken while `a` was frozen
    a_then = model.a.weight.detach().clone()
    model.a.requires_grad_(True)  # gradual unfreezing reaches `a`
    update_static(progress, model, best)
    assert progress.static == [] and torch.equal(best["a.weight"], a_then)
    with torch.no_grad():
        model.a.weight.add_(1.0)  # what training then does to it
    restore(model, best)
    assert torch.equal(model.a.weight, a_then)


def test_a_state_written_for_another_model_is_refused_with_a_hint(tmp_path):
    model = _Two()
    progress = Progress(static=frozen_parameters(model))
    save_state(tmp_path / "state", model, *_optimiser(model), progress, None)
    other = torch.nn.Sequential(torch.nn.Linear(4, 2))
    with pytest.raises(UserError, match="does not match this stage's model.*delete the directory"):
        load_state(tmp_path / "state", other, *_optimiser(other))


def test_a_state_of_the_same_names_but_other_shapes_is_refused_before_anything_is_restored(tmp_path):
    """train.embedding_rows: seen sizes a table by the data: data changed in place gives the same
    tensor names in other shapes. Refused with a UserError, the module untouched (no half-restore)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    save_state(tmp_path / "state", model, *_optimiser(model), Progress(), None)
    torch.manual_seed(7)
    other = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 5))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(UserError, match=r"other shape, e\.g\. 1\.bias: \(2,\) saved, \(5,\) now"):
        load_state(tmp_path / "state", other, *_optimiser(other))
    assert all(torch.equal(other.state_dict()[k], v) for k, v in before.items())


def test_fp16s_loss_scale_and_the_precision_are_saved_and_restored(data, tmp_path, monkeypatch):
    """Under fp16 (a GPU without bf16) the loss scale grows as steps pass without overflow: a resume
    goes on from the saved scale and growth counter, not from the initial ones. CPU has no fp16
    scaler, so one is given to the accelerator here."""
    import cascade_kd.training.loop as loop

    scalers = []
    real = loop.make_accelerator

    def with_scaler(*args, **kwargs):
        accelerator = real(*args, **kwargs)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2)
        scalers.append(accelerator.scaler)
        return accelerator

    monkeypatch.setattr(loop, "make_accelerator", with_scaler)
    teacher = tiny_bert(layers=2, hidden=32).eval()
    _distil(data, tmp_path / "ref", teacher)
    reference = scalers[-1].state_dict()
    assert reference["scale"] > 2.0**8  # it grew: something to carry over

    calls = {"n": 0}
    real_collate = stage_data.collate

    def crashing_collate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 12:
            raise _Crash
        return real_collate(*args, **kwargs)

    monkeypatch.setattr(stage_data, "collate", crashing_collate)
    with pytest.raises(_Crash):
        _distil(data, tmp_path / "run", teacher)
    saved = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert saved["precision"] == "fp32" and saved["scaler"]["scale"] > 2.0**8
    monkeypatch.setattr(stage_data, "collate", real_collate)
    _distil(data, tmp_path / "run", teacher)
    assert scalers[-1].state_dict() == reference


def test_every_process_resumes_with_its_own_random_state(tmp_path):
    """Under DDP each process draws its own dropout: the main process's checkpoint holds every
    process's random state, and each takes its own back (a state from fewer processes: the main one's)."""
    from cascade_kd.training.state import rng_state

    model = _Two()
    states = []
    for seed in (11, 12, 13):  # ranks 0, 1, 2
        torch.manual_seed(seed)
        states.append(rng_state())
    torch.set_rng_state(states[0]["cpu"])  # the main process writes
    save_state(tmp_path / "state", model, *_optimiser(model), Progress(processes=3), None, states)
    for rank in (0, 1, 2):
        torch.manual_seed(99)
        load_state(tmp_path / "state", model, *_optimiser(model), rank=rank)
        assert torch.equal(torch.get_rng_state(), states[rank]["cpu"]), rank
    torch.manual_seed(99)
    load_state(tmp_path / "state", model, *_optimiser(model), rank=3)  # a process the state did not know
    assert torch.equal(torch.get_rng_state(), states[0]["cpu"])
