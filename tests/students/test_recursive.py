"""Recursive students (MiniALBERT): one shared layer, per-step adapters, adapter-only tuning, Auto
round trips, features, initialisation from the teacher, and a recipe stage end to end."""

import json
import shutil

import pytest
import torch
from tests.helpers import line_of, merge, tiny_bert, tiny_recipe, write_recipe
from pydantic import ValidationError
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

import cascade_kd  # noqa: F401  (registers the recursive classes with the Auto classes)
from cascade_kd.losses.registry import build_terms
from cascade_kd.training.setup import make_optimizer
from cascade_kd.errors import RecipeError
from cascade_kd.students.features import extract_features
from cascade_kd.students import build_student, count_parameters
from cascade_kd.students.anatomy import pca_axes
from cascade_kd.students.hub import load_checkpoint, save_checkpoint, use_attention_outputs
from cascade_kd.config.schema import LossConfig, StudentConfig, TrainConfig

H, F = 32, 64  # tiny_bert: hidden 32, feed-forward 2 * hidden


def _recursive(teacher=None, **keys):
    teacher = teacher if teacher is not None else tiny_bert(layers=4, hidden=H).eval()
    spec = {"kind": "recursive", "recursions": 3, "embedding_size": 16, "adapter_reduction": 4, **keys}
    return build_student(teacher, StudentConfig(**spec))


def _batch():
    ids = torch.tensor([[2, 15, 16, 17, 18, 3], [2, 20, 21, 3, 0, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def _step(model, i, x):
    """Recursion step i (0-based) applied to x, as RecursiveModel.forward does it."""
    base, layer = model.base_model, model.base_model.shared_layer
    x = base.attention_adapters[i](x)
    x, _ = layer.attention(x, None)
    x = base.ffn_adapters[i](x)
    return layer.output(layer.intermediate(x), x)


def test_the_shared_layer_is_one_set_of_weights_counted_once():
    model = _recursive(init="random")
    r = model.config.num_hidden_layers
    with torch.no_grad():  # non-zero adapters, so that every step's mapping is its own
        for p in model.base_model.attention_adapters.parameters():
            p.normal_(0, 0.1)
    shared = 4 * (H * H + H) + 2 * 2 * H + (H * F + F) + (F * H + H)  # q, k, v, out; two norms; feed-forward
    counts = count_parameters(model)
    assert counts["params_total"] == sum(p.numel() for p in model.parameters())
    assert counts["params_unrolled"] - counts["params_total"] == (r - 1) * shared
    assert sum("shared_layer" in k for k in model.state_dict()) == 16  # one copy of its 16 tensors
    model.train(False)
    with torch.no_grad():
        hidden = model(**_batch(), output_hidden_states=True).hidden_states
        before = [_step(model, i, hidden[i]) for i in range(r)]
    # one SGD step on a loss that reads the FIRST step's output only ...
    loss = model(**_batch(), output_hidden_states=True).hidden_states[1].pow(2).mean()
    loss.backward()
    base = model.base_model
    for i in range(1, r):  # the later steps' own weights are not in that loss
        assert all(p.grad is None for p in [*base.attention_adapters[i].parameters(), *base.ffn_adapters[i].parameters()])
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 1.0 * p.grad
        # ... changes what EVERY step computes from the same input: all steps apply the same weights
        for i in range(r):
            assert (_step(model, i, hidden[i]) - before[i]).abs().max() > 1e-4, f"step {i + 1} did not change"


def test_adapters_are_per_step():
    model = _recursive(init="random")
    base, r, a = model.base_model, 3, H // 4
    adapters = list(base.attention_adapters) + list(base.ffn_adapters)
    assert len(adapters) == 2 * r
    tensors = [p for ad in adapters for p in ad.parameters()]
    assert len({p.data_ptr() for p in tensors}) == len(tensors) == 2 * r * 6  # no two steps share an adapter
    assert count_parameters(model)["params_adapters"] == 2 * r * (H * a + a + a * H + H + 2 * H)
    # a fresh adapter is LayerNorm(x): its up-projection starts at zero
    assert all(torch.count_nonzero(ad.up.weight) == 0 for ad in adapters)


def test_adapter_only_training_changes_adapters_and_head_and_nothing_else():
    model = _recursive(train_only="adapters").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tunable = lambda name: "_adapters." in name or name.startswith("classifier.")
    counts = count_parameters(model)
    assert counts["params_trainable"] == sum(p.numel() for n, p in model.named_parameters() if tunable(n))
    assert counts["params_trainable"] == counts["params_adapters"] + H * 7 + 7
    optimizer = make_optimizer(model, TrainConfig(lr=1e-2))
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 2 * 3 * 6 + 2  # frozen ones are not in it
    batch = _batch()
    labels = torch.randint(0, 7, batch["input_ids"].shape, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    for key, value in after.items():
        if tunable(key):
            assert not torch.equal(value, before[key]), f"{key} did not train"
        else:
            assert torch.equal(value, before[key]), f"{key} changed"


@pytest.mark.parametrize("task", ["token", "sequence"])
def test_save_pretrained_and_auto_reload_give_identical_logits(tmp_path, tokenizer, task):
    teacher = tiny_bert(task=task, layers=4, hidden=H).eval()
    model = _recursive(teacher, init="layer:2").eval()
    with torch.no_grad():  # train-like adapters, so the round trip is not of zeros
        for p in model.base_model.ffn_adapters.parameters():
            p.normal_(0, 0.1)
    save_checkpoint(model, tokenizer, tmp_path / "rec")
    from safetensors import safe_open

    with safe_open(tmp_path / "rec" / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert sum("shared_layer" in k for k in keys) == 16 and len(keys) == len(set(keys))
    auto = AutoModelForTokenClassification if task == "token" else AutoModelForSequenceClassification
    reloaded, info = auto.from_pretrained(tmp_path / "rec", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(reloaded) is type(model)
    again = load_checkpoint(tmp_path / "rec", task)
    with torch.no_grad():
        expected = model(**_batch()).logits
        assert torch.equal(reloaded.eval()(**_batch()).logits, expected)
        assert torch.equal(again(**_batch()).logits, expected)


def test_features_have_r_plus_1_hidden_states_and_r_attentions():
    model = _recursive().eval()
    use_attention_outputs(model, True)
    f = extract_features(model, _batch(), hidden=True, attentions=True)
    assert f.num_layers == 3 and len(f.hidden_states) == 4 and len(f.attentions) == 3
    assert all(h.shape == (2, 6, H) for h in f.hidden_states)  # entry 0: the projected embeddings
    probs = f.attention("last")
    assert probs.shape == (2, 4, 6, 6)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 6))
    assert probs[1, :, :, 4:].abs().max() == 0  # padding is never attended to
    use_attention_outputs(model, False)  # sdpa: same logits
    with torch.no_grad():
        assert torch.allclose(model(**_batch()).logits, f.logits, atol=1e-5)
    # layer maps see the recursion steps as layers: skip2 pairs step k with teacher layer 2k (MiniALBERT)
    teacher = tiny_bert(layers=6, hidden=H)
    terms = build_terms({"hidden_mse": LossConfig(layer_map="skip2"), "attention_mse": LossConfig(layer_map="skip2")},
                        teacher.config, model.config, where="stage")
    assert terms[0].loss.pairs == [(0, 0), (2, 1), (4, 2), (6, 3)] and terms[1].loss.pairs == [(2, 1), (4, 2), (6, 3)]


def test_initialisation_from_the_teacher():
    teacher = tiny_bert(layers=4, hidden=H).eval()
    layers = teacher.bert.encoder.layer
    one = _recursive(teacher, init="layer:3", embedding_size=None)
    for key, value in one.base_model.shared_layer.state_dict().items():
        assert torch.equal(value, layers[2].state_dict()[key]), key
    mean = _recursive(teacher, init="mean", embedding_size=None)
    for key, value in mean.base_model.shared_layer.state_dict().items():
        assert torch.allclose(value, sum(layer.state_dict()[key] for layer in layers) / 4, atol=1e-6), key
    # same width: embeddings, their norm and the head are the teacher's; no projection
    t_emb, s_emb = teacher.bert.embeddings, mean.base_model.embeddings
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm"):
        for a, b in zip(getattr(t_emb, name).parameters(), getattr(s_emb, name).parameters()):
            assert torch.equal(a, b)
    assert mean.base_model.embedding_projection is None
    assert torch.equal(mean.classifier.weight, teacher.classifier.weight)
    # narrower embeddings: the teacher's projected onto its principal axes, then Linear(16 -> 32)
    narrow = _recursive(teacher, init="mean")
    w = t_emb.word_embeddings.weight
    mu, axes = pca_axes(w, 16)
    assert torch.allclose(narrow.base_model.embeddings.word_embeddings.weight, (w - mu) @ axes, atol=1e-5)
    assert narrow.base_model.embedding_projection.weight.shape == (H, 16)
    # only where shapes match
    with pytest.raises(RecipeError, match="another shape"):
        _recursive(teacher, init="mean", hidden=16, heads=2)
    with pytest.raises(RecipeError, match="teacher has 4"):
        _recursive(teacher, init="layer:5")
    with pytest.raises(RecipeError, match="cannot be copied"):
        _recursive(teacher, embeddings="copy")
    with pytest.raises(ValidationError, match="for transformer students"):
        StudentConfig(kind="recursive", recursions=2, init="bottom")
    with pytest.raises(ValidationError, match="recursive students only"):
        StudentConfig(layers=2, adapter_reduction=4)
    with pytest.raises(RecipeError, match="recursive teacher"):
        build_student(mean, StudentConfig(layers=1))
    # DistilBERT names its layer tensors differently: they are mapped onto BERT's
    from tests.helpers import tiny_encoder

    distil = tiny_encoder("distilbert")
    from_distil = build_student(distil, StudentConfig(kind="recursive", recursions=2, init="layer:2"))
    d_layer = distil.distilbert.transformer.layer[1]
    shared = from_distil.base_model.shared_layer
    assert torch.equal(shared.attention.self.query.weight, d_layer.attention.q_lin.weight)
    assert torch.equal(shared.attention.output.LayerNorm.bias, d_layer.sa_layer_norm.bias)
    assert torch.equal(shared.output.dense.weight, d_layer.ffn.lin2.weight)
    # a recursive teacher passes on its shared layer, adapters and projection unchanged
    with torch.no_grad():
        for p in narrow.base_model.ffn_adapters.parameters():
            p.normal_(0, 0.1)
    again = _recursive(narrow)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), narrow.state_dict().values()))


# a MiniALBERT student (shared layer, adapters, PCA embeddings), then the same shape tuned on its adapters only
TINY = tiny_recipe(
    name="tiny-recursive",
    task={"max_length": 32},
    data={"max_train_per_language": 64, "max_eval_per_language": 24},
    teacher={"config": {"num_hidden_layers": 4, "num_attention_heads": 4}, "train": {"epochs": 1, "lr": None}},
    train={"lr": 2.0e-3},
    cascade={"losses": {"kl": {"weight": 1.0, "temperature": 2.0},
                        "hidden_mse": {"weight": 1.0, "layer_map": "skip2"},
                        "attention_mse": {"weight": 1.0, "layer_map": "skip2"}},
             "stages": [{"name": "mini", "student": {"kind": "recursive", "recursions": 2, "embedding_size": 16,
                                                     "adapter_reduction": 4, "init": "mean"}},
                        {"name": "tuned", "student": {"kind": "recursive", "recursions": 2, "train_only": "adapters"},
                         "losses": {"kl": {"weight": 1.0}}}],
             "direct": True},
)


def test_a_recipe_with_recursive_stages_runs_end_to_end(demo_workspace, tmp_path):
    from cascade_kd.cascade import run_recipe
    from cascade_kd.config.schema import load_recipe

    for name in ("data", "tokenizer"):
        shutil.copytree(demo_workspace / name, tmp_path / name)
    recipe = load_recipe(write_recipe(tmp_path, TINY))
    assert recipe.cascade.stages[1].student.init == "mean" and recipe.cascade.stages[1].student.embeddings == "auto"
    metrics = run_recipe(recipe, tmp_path / "run", say=lambda m: None)
    rows = {m["name"]: m for m in json.loads((tmp_path / "run" / "metrics.json").read_text())["models"]}
    assert [rows[n]["kind"] for n in ("teacher", "mini", "tuned", "direct")] == ["transformer"] + ["recursive"] * 3
    for name in ("mini", "tuned", "direct"):
        assert rows[name]["layers"] == 2 and rows[name]["params_unrolled"] > rows[name]["params_total"]
    assert rows["teacher"]["params_unrolled"] == rows["teacher"]["params_total"]
    tuned = rows["tuned"]
    assert tuned["params_trainable"] == tuned["params_adapters"] + 32 * len(metrics["labels"]) + len(metrics["labels"])
    assert rows["mini"]["params_trainable"] == rows["mini"]["params_total"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "unrolled params" in report and "| tuned | student | 2 (1 shared) |" in report
    # adapter-only tuning left everything but the adapters and the head exactly as the stage before
    mini = AutoModelForTokenClassification.from_pretrained(tmp_path / "run" / "stages" / "mini").state_dict()
    for key, value in load_checkpoint(tmp_path / "run" / "stages" / "tuned", "token").state_dict().items():
        if "_adapters." not in key and not key.startswith("classifier."):
            assert torch.equal(value, mini[key]), key


@pytest.mark.parametrize("stage,changes,key,message", [  # key: the one the error names
    (0, {"embedding_size": 48}, "embedding_size", "pca keeps at most the teacher's 32"),
    (0, {"init": "layer:5"}, "init", "teacher has 4"),
    (0, {"init": None, "hidden": 48, "heads": 4}, "init", "cannot be copied"),
    (0, {"adapter_reduction": 64}, "adapter_reduction", "leaves no adapter width"),
    (1, {"kind": None, "recursions": None, "train_only": None, "layers": 1}, "kind", "recursive teacher"),
])
def test_check_cascade_refuses_bad_recursive_students_before_training(tmp_path, stage, changes, key, message):
    from transformers import AutoConfig

    from cascade_kd.cascade import check_cascade
    from cascade_kd.config.schema import load_recipe

    path = write_recipe(tmp_path, merge(TINY, {"cascade": {"stages": {stage: {"student": changes}}}}))
    recipe = load_recipe(path)
    spec = dict(recipe.teacher.config)
    with pytest.raises(RecipeError, match=message) as err:
        check_cascade(recipe, AutoConfig.for_model(spec.pop("model_type"), **spec))
    # the student's line (below its stage's name), and the student key at fault
    name = recipe.cascade.stages[stage].name
    assert err.value.where == f"{path}:{line_of(path, f'name: {name}') + 1}: cascade.stages.{stage}.student.{key}"
