"""XtremeDistil's staged schedule as a recipe: a student trained further by later stages
(`student: previous`), taught by the original teacher (`teacher: original`), with gradual top-down
unfreezing (`train.unfreeze: gradual`)."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file

from cascade_kd.cascade import run_recipe
from cascade_kd.data.encode import IGNORE, Encoded
from cascade_kd.errors import RecipeError
from cascade_kd.losses.base import LossTerm
from cascade_kd.losses.logits import HardLabelCE
from cascade_kd.training.data import StageData
from cascade_kd.training.loop import train
from cascade_kd.training.setup import unfreeze_groups
from cascade_kd.training.task import DistillationTask
from cascade_kd.students.anatomy import freeze_embeddings
from cascade_kd.config.schema import TrainConfig, load_recipe
from tests.helpers import line_of, merge, tiny_bert, tiny_recipe, write_recipe


def _student():
    model = tiny_bert("token", layers=3)
    freeze_embeddings(model, True)
    return model


def _data(n=24):
    rng = random.Random(0)
    out = []
    for _ in range(n):
        t = rng.randint(3, 12)
        out.append(Encoded([rng.randint(5, 799) for _ in range(t)], [0] * t,
                           [rng.randint(0, 6) if rng.random() < 0.8 else IGNORE for _ in range(t)]))
    return out


def test_groups_run_top_down_and_leave_out_frozen_parameters():
    model = _student()
    groups = unfreeze_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    described = [sorted({names[id(p)].split(".weight")[0].split(".bias")[0] for p in g}) for g in groups]
    assert described[0] == ["classifier"]
    assert len(groups) == 5  # head, layer 2, layer 1, layer 0, embeddings
    for k, layer in zip((1, 2, 3), (2, 1, 0)):
        assert all(f"encoder.layer.{layer}." in names[id(p)] for p in groups[k])
    # the frozen embedding matrices are in no group: only the embeddings' LayerNorm is left to unfreeze
    assert described[4] == ["bert.embeddings.LayerNorm"]


@pytest.mark.parametrize("epochs, changed_layers", [(1, []), (2, [2]), (3, [2, 1])])
def test_gradual_unfreezing_trains_exactly_the_scheduled_groups(epochs, changed_layers):
    model = _student()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=epochs, batch_size=8, lr=1e-2, precision="fp32", unfreeze="gradual", checkpoint_every=None)
    train(DistillationTask(model, [LossTerm(1.0, HardLabelCE())]), StageData(_data()), cfg)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {k for k in changed if k.startswith("classifier")} == {"classifier.weight", "classifier.bias"}
    for layer in range(3):
        touched = any(k.startswith(f"bert.encoder.layer.{layer}.") for k in changed)
        assert touched == (layer in changed_layers), (layer, sorted(changed))
    assert not any("embeddings" in k for k in changed)


# XtremeDistil's stages on one student: representation, then logits, then hard labels
RECIPE = tiny_recipe(
    name="xtremedistil",
    data={"test": None, "max_train_per_language": 150, "max_eval_per_language": 40},
    teacher={"config": {"num_hidden_layers": 3, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128},
             "train": {"epochs": 3, "lr": 2.0e-3}},
    train={"epochs": 2, "lr": 2.0e-3},
    cascade={"direct": False, "stages": [
        # 1: representation: a narrower student's last state (projected) against teacher layer 2
        {"name": "repr",
         "student": {"layers": 2, "hidden": 32, "heads": 2, "intermediate": 64, "init": "random", "embeddings": "pca",
                     "freeze_embeddings": True},
         "losses": {"hidden_mse": {"layer_map": [[2, "last"]]}}},
        # 2: logits from the original teacher, the same student trained further, top-down unfreezing
        {"name": "logits", "student": "previous", "teacher": "original", "losses": {"kl": {"temperature": 2.0}},
         "train": {"unfreeze": "gradual", "epochs": 2}},
        # 3: hard labels
        {"name": "labels", "student": "previous", "losses": {"ce": {}}, "train": {"unfreeze": "gradual", "epochs": 1}},
    ]},
)


def test_a_staged_recipe_continues_one_student_through_its_stages(demo_workspace, tmp_path):
    for name in ("data", "tokenizer"):
        shutil.copytree(demo_workspace / name, tmp_path / name)
    lines = []
    metrics = run_recipe(load_recipe(write_recipe(tmp_path, RECIPE)), tmp_path / "run", say=lines.append)
    # stage 2 is taught by the 3-layer original teacher, not by stage 1's 2-layer student
    assert any(line.startswith("logits: 2 layers x 32 from 3 layers x 64") for line in lines), lines
    weights = {name: load_file(str(tmp_path / "run" / "stages" / name / "model.safetensors"))
               for name in ("repr", "logits", "labels")}
    # stage 3 trained only the head (one epoch of gradual unfreezing): the rest is stage 2's model
    for key, value in weights["labels"].items():
        if not key.startswith("classifier"):
            assert torch.equal(value, weights["logits"][key]), key
    assert not torch.equal(weights["labels"]["classifier.weight"], weights["logits"]["classifier.weight"])
    # stage 2 continued stage 1's student: its frozen embeddings are stage 1's, its top layer moved
    emb = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(weights["logits"][emb], weights["repr"][emb])
    # its top layer trained in its second epoch only: it moved if that epoch's weights were kept (best dev)
    best_epoch = json.loads((tmp_path / "run" / "stages" / "logits" / "stage.json").read_text())["best_epoch"]
    top = "bert.encoder.layer.1.output.dense.weight"
    assert torch.equal(weights["logits"][top], weights["repr"][top]) == (best_epoch == 1)
    assert torch.equal(weights["logits"]["bert.encoder.layer.0.output.dense.weight"],
                       weights["repr"]["bert.encoder.layer.0.output.dense.weight"])
    assert [m["name"] for m in metrics["models"]] == ["teacher", "repr", "logits", "labels"]


def test_the_first_stage_cannot_continue_a_previous_student(tmp_path):
    path = write_recipe(tmp_path, merge(RECIPE, {"cascade": {"stages": {0: {"student": "previous"}}}}))
    with pytest.raises(RecipeError, match="the first stage has no previous student") as err:
        load_recipe(path)
    assert err.value.where == f"{path}:{line_of(path, 'cascade:')}: cascade"  # the section's own check
