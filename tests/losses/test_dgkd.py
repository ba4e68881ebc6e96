"""Densely guided distillation (DGKD): which guides a batch keeps, how their logit terms combine,
the recipe checks, and a tiny cascade whose last stage learns from every larger model."""

import math
import random
import shutil

import pytest

from tests import helpers
import torch

from cascade_kd.cascade import run_recipe
from cascade_kd.data.encode import encode
from cascade_kd.data.readers import read_examples
from cascade_kd.losses.base import Reads, TeacherFeatures
from cascade_kd.losses.guides import DenseGuidance, guided
from cascade_kd.losses.registry import build_terms
from cascade_kd.students.features import Features
from cascade_kd.training.data import StageData
from cascade_kd.training.loop import train
from cascade_kd.training.task import DistillationTask, weighted_losses
from cascade_kd.training.teacher import DenseGuides, LiveTeacher, kept_guides
from cascade_kd.config.schema import LossConfig, TrainConfig, load_recipe
from tests.helpers import tiny_bert
from tests.helpers import edit_recipe, fails, line_of, tiny_recipe, write_recipe

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


# --- which guides a batch keeps -------------------------------------------------------------


@pytest.mark.parametrize("n,drop", [(1, 0), (2, 1), (3, 1), (3, 2), (5, 2)])
def test_exactly_drop_guides_are_dropped(n, drop):
    for step in range(50):
        kept = kept_guides(n, drop, seed=7, step=step)
        assert len(kept) == n - drop and len(set(kept)) == len(kept)
        assert kept == sorted(kept) and all(0 <= k < n for k in kept)


def test_the_choice_is_a_pure_function_of_seed_and_step_and_leaves_global_rngs_alone():
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    a = [kept_guides(4, 2, seed=3, step=s) for s in range(40)]
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state
    torch.manual_seed(123)
    random.seed(456)  # the global RNGs do not matter
    assert a == [kept_guides(4, 2, seed=3, step=s) for s in range(40)]
    assert len({tuple(k) for k in a}) > 1  # varies across steps
    assert a != [kept_guides(4, 2, seed=4, step=s) for s in range(40)]  # and with the seed
    assert kept_guides(3, 0, seed=0, step=5) == [0, 1, 2]
    with pytest.raises(ValueError):
        kept_guides(2, 2, seed=0, step=0)


@pytest.fixture(scope="module")
def train_data(demo_workspace, tokenizer):
    examples = read_examples(demo_workspace / "data" / "en" / "train.conll", fmt="conll", task="token", lang="en", limit=64)
    return encode(examples, tokenizer, task="token", label2id={l: i for i, l in enumerate(LABELS)}, max_length=64)


def test_train_runs_exactly_the_kept_guides_in_every_batch(train_data):
    guides = [tiny_bert(layers=n) for n in (3, 2, 2)]  # the teacher, then two earlier students
    student = tiny_bert(layers=1)
    calls = []
    student.register_forward_hook(lambda *_: calls.append([]))  # the student runs first in each batch
    for k, guide in enumerate(guides):
        guide.register_forward_hook(lambda *_, k=k: calls[-1].append(k))
    terms = guided(build_terms({"kl": LossConfig(temperature=2.0)}, guides[-1].config, student.config, where="t"))
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-3, precision="fp32", warmup_ratio=0.0, checkpoint_every=None)
    frozen = DenseGuides([LiveTeacher(g) for g in guides], teacher=2, drop=1, seed=5)
    result = train(DistillationTask(student, terms, frozen), StageData(train_data, seed=5), cfg)
    assert result.steps == len(calls) == 8
    for step, called in enumerate(calls):
        assert sorted(called) == kept_guides(3, 1, seed=5, step=step) and len(called) == 2  # each kept guide once
    assert len({tuple(c) for c in calls}) > 1
    assert all(not p.requires_grad for g in guides for p in g.parameters())


# --- sum vs mean ----------------------------------------------------------------------------


def test_summed_kl_is_twice_the_mean_with_two_identical_guides():
    terms = build_terms({"kl": LossConfig(temperature=1.0)}, tiny_bert("seq").config, tiny_bert("seq").config, where="t")
    mask = torch.ones(1, 1, dtype=torch.bool)
    student = Features(torch.tensor([[0.0, 0.0]]), None, None, mask)
    guide = Features(torch.tensor([[0.0, math.log(3.0)]]), None, None, mask)  # p = (1/4, 3/4) against (1/2, 1/2)
    by_hand = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    batch = {"labels": torch.tensor([0])}
    one = weighted_losses(terms, student, TeacherFeatures(guide), batch)["loss"]
    two = TeacherFeatures(guide, [guide, guide])
    summed = weighted_losses(guided(terms, "sum"), student, two, batch)["loss"]
    mean = weighted_losses(guided(terms, "mean"), student, two, batch)["loss"]
    alone = weighted_losses(guided(terms), student, TeacherFeatures(guide), batch)["loss"]  # no guides: the teacher
    assert float(one) == pytest.approx(by_hand) and float(alone) == float(one)
    assert float(summed) == pytest.approx(2 * by_hand) and float(mean) == pytest.approx(by_hand)
    assert float(summed) == pytest.approx(2 * float(mean))


def test_dense_guidance_wraps_the_losses_on_teacher_logits_and_nothing_else():
    config = tiny_bert(layers=2).config
    losses = {name: LossConfig() for name in ("kl", "ce", "logit_mse", "hidden_mse")}
    terms = guided(build_terms(losses, config, config, where="t"), "mean")
    assert [type(t.loss).__name__ for t in terms] == ["DenseGuidance", "HardLabelCE", "DenseGuidance", "HiddenMSE"]
    assert [t.name for t in terms] == list(losses)
    for term in (terms[0], terms[2]):  # every guide's logits; of the teacher as such, nothing
        assert term.loss.guide_reads == Reads(logits=True) and term.loss.teacher_reads is None
    with pytest.raises(ValueError, match="logits only"):
        DenseGuidance(terms[3].loss)


def test_a_dropped_teacher_runs_only_for_the_losses_that_read_more_than_its_logits(train_data):
    from cascade_kd.data.encode import collate

    guides = [tiny_bert(layers=n) for n in (3, 2)]
    ran = []
    for k, guide in enumerate(guides):
        guide.register_forward_hook(lambda *_, k=k: ran.append(k))
    batch = collate(train_data[:4], 0)
    dropped = next(step for step in range(50) if kept_guides(2, 1, seed=0, step=step) == [1])  # the teacher (0) dropped
    frozen = DenseGuides([LiveTeacher(g) for g in guides], teacher=0, drop=1, seed=0)
    logits_only = frozen.features(batch, None, dropped, Reads(), Reads(logits=True), True)
    assert ran == [1] and logits_only.teacher is None and len(logits_only.guides) == 1
    ran.clear()
    with_hidden = frozen.features(batch, None, dropped, Reads(hidden=(3,)), Reads(logits=True), True)
    assert ran == [0, 1] and with_hidden.teacher.hidden_states is not None
    assert with_hidden.guides == [with_hidden.guides[0]] and with_hidden.guides[0].hidden_states is None


# --- recipe checks, through the CLI, before any training ------------------------------------

@pytest.fixture
def refuse_training(monkeypatch):
    """As in test_cli_errors: reaching training fails the test (for the recipe-check tests only)."""
    helpers.refuse_training(monkeypatch)


pytestmark_checks = pytest.mark.usefixtures("refuse_training")

TA2 = "student: {layers: 2, init: bottom, freeze_embeddings: true}"  # stage 1 of the demo: 2 guides


@pytestmark_checks
def test_dropping_every_guide_is_refused(capsys, ws):
    recipe = edit_recipe(ws, TA2, TA2 + "\n      guides: dense\n      drop_guides: 2")
    msg = fails(capsys, ws)
    assert f"{recipe}:{line_of(recipe, 'drop_guides: 2')}: cascade.stages.1.drop_guides" in msg
    assert "2 guide(s)" in msg and "drop_guides <= 1" in msg


@pytestmark_checks
@pytest.mark.parametrize("extra,key", [("drop_guides: 1", "drop_guides"), ("guide_reduction: mean", "guide_reduction")])
def test_dense_settings_on_a_chain_stage_are_refused(capsys, ws, extra, key):
    recipe = edit_recipe(ws, TA2, TA2 + "\n      " + extra)
    msg = fails(capsys, ws)
    assert f"{recipe}:{line_of(recipe, extra)}: cascade.stages.1.{key}" in msg
    assert "guides: chain" in msg and "guides: dense" in msg


@pytestmark_checks
def test_dense_without_a_logit_loss_is_refused(capsys, ws):
    recipe = edit_recipe(ws, TA2, TA2 + "\n      guides: dense\n      losses: {hidden_mse: {weight: 1.0}}")
    msg = fails(capsys, ws)
    assert f"{recipe}:{line_of(recipe, 'guides: dense')}: cascade.stages.1.guides" in msg
    assert "neither kl nor logit_mse" in msg


# --- end to end -----------------------------------------------------------------------------

# a 4-layer teacher, two assistants, and a final stage densely guided by all three (one dropped per batch)
TINY = tiny_recipe(
    name="dgkd",
    data={"test": None, "max_train_per_language": 150, "max_eval_per_language": 40},
    teacher={"config": {"num_hidden_layers": 4, "num_attention_heads": 4}, "train": {"epochs": 2, "lr": 2.0e-3}},
    train={"lr": 2.0e-3},
    cascade={"stages": [{"name": "s3", "student": {"layers": 3}},
                        {"name": "s2", "student": {"layers": 2}},
                        {"name": "s1", "student": {"layers": 1}, "guides": "dense", "drop_guides": 1}],
             "direct": True},
)


def test_a_dense_last_stage_runs_end_to_end_and_on_resume(demo_workspace, tmp_path):
    for name in ("data", "tokenizer"):
        shutil.copytree(demo_workspace / name, tmp_path / name)
    recipe = load_recipe(write_recipe(tmp_path, TINY))
    said = []
    metrics = run_recipe(recipe, tmp_path / "run", say=said.append)
    assert [m["name"] for m in metrics["models"]] == ["teacher", "s3", "s2", "s1", "direct"]
    dense = [line for line in said if "dense guidance" in line]
    assert len(dense) == 1 and dense[0].startswith("s1:")  # the direct baseline stays chain
    assert "dense guidance from 3 models, 1 dropped per batch, summed" in dense[0]
    # the earlier stages are loaded from disk on resume, and still guide the dense stage
    shutil.rmtree(tmp_path / "run" / "stages" / "s1")
    said.clear()
    metrics = run_recipe(recipe, tmp_path / "run", resume=True, say=said.append)
    assert any(line.startswith("s2: already distilled") for line in said)
    assert any("dense guidance from 3 models" in line for line in said)
    assert all(math.isfinite(m["average"]) for m in metrics["models"])


def test_chain_stages_hash_and_read_back_as_before(demo_workspace):
    from cascade_kd.cascade.rundir import recipe_text as _recipe_text
    from cascade_kd.config.schema import parse_recipe

    text = (demo_workspace / "recipe.yaml").read_text()
    recipe = parse_recipe(text, base_dir=demo_workspace)
    assert all("guides" not in stage for stage in recipe.dump()["cascade"]["stages"])
    assert parse_recipe(_recipe_text(recipe)).cascade == recipe.cascade  # RUN_DIR/recipe.yaml loads back
    dense = parse_recipe(text.replace("{layers: 1, init: bottom, freeze_embeddings: true}",
                                      "{layers: 1, init: bottom, freeze_embeddings: true}\n      guides: dense"))
    assert dense.fingerprint() != recipe.fingerprint()
    assert parse_recipe(_recipe_text(dense)).cascade == dense.cascade
