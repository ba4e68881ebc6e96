"""BiLSTM students (XtremeDistil): outputs and features, padding, Auto round trips, PCA embeddings,
recipe checks (attention losses refused), a recipe run end to end, and the ONNX export."""

import json
import shutil

import pytest
import torch
from tests.helpers import line_of, merge, run_card_code, tiny_bert, tiny_recipe, write_recipe
from pydantic import ValidationError
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

import cascade_kd.students  # noqa: F401  (registers the BiLSTM classes with the Auto classes)
from cascade_kd.students.bilstm import BiLSTMForTokenClassification, reversal_index
from cascade_kd.losses.registry import build_terms
from cascade_kd.errors import RecipeError
from cascade_kd.students.features import extract_features
from cascade_kd.students import build_student, count_parameters
from cascade_kd.students.anatomy import pca_axes
from cascade_kd.students.hub import load_checkpoint, save_checkpoint
from cascade_kd.config.schema import LossConfig, StudentConfig, load_recipe

H = 32  # the teacher's hidden width (tiny_bert)


def _bilstm(teacher=None, task="token", **keys):
    teacher = teacher if teacher is not None else tiny_bert(task=task, layers=2, hidden=H).eval()
    spec = {"kind": "bilstm", "hidden": 12, "embedding_size": 16, "lstm_layers": 2, **keys}
    return build_student(teacher, StudentConfig(**spec))


def _batch():
    ids = torch.tensor([[2, 15, 16, 17, 18, 3], [2, 20, 21, 3, 0, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}


@pytest.mark.parametrize("task", ["token", "sequence"])
def test_outputs_features_and_padding(task):
    model = _bilstm(task=task).eval()
    config = model.config
    assert (config.hidden_size, config.embedding_size, config.lstm_hidden_size, config.lstm_layers) == (H, 16, 12, 2)
    f = extract_features(model, _batch(), hidden=True, attentions=False)  # token_type_ids are accepted, ignored
    assert f.logits.shape == ((2, 6, 7) if task == "token" else (2, 7))
    # one layer to layer maps: (embedding output, BiLSTM output projected to the teacher's width)
    assert f.num_layers == 1 and [h.shape for h in f.hidden_states] == [(2, 6, 16), (2, 6, H)]
    assert torch.equal(f.hidden("last"), f.hidden(1))
    # a sentence's outputs do not depend on the padding it is batched with, in either direction
    ids = _batch()["input_ids"]
    with torch.no_grad():
        alone = model(input_ids=ids[1:2, :4]).logits
        padded = torch.cat([ids[1:2, :4], torch.zeros(1, 9, dtype=torch.long)], 1)
        longer = model(input_ids=padded, attention_mask=(padded != 0).long()).logits
    assert torch.allclose(alone, f.logits[1:2, :4] if task == "token" else f.logits[1:2], atol=1e-6)
    assert torch.allclose(alone, longer[:, :4] if task == "token" else longer, atol=1e-6)
    with pytest.raises(ValueError, match="no attention maps"):
        extract_features(model, _batch(), hidden=True, attentions=True)
    # the reversal is per row, over the real tokens only; pads stay where they are
    assert reversal_index(torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])).tolist() == [
        [2, 1, 0, 3], [3, 2, 1, 0], [0, 1, 2, 3]]


def test_parameters_are_counted_and_the_hidden_loss_needs_no_projection():
    model = _bilstm()
    v, e, u = 800, 16, 12
    lstm = 2 * (4 * u * (e + u) + 8 * u) + 2 * (4 * u * (2 * u + u) + 8 * u)  # two directions per layer
    counts = count_parameters(model)
    assert counts["params_total"] == v * e + lstm + (2 * u * H + H) + (H * 7 + 7)
    assert counts["params_embedding"] == v * e and counts["params_unrolled"] == counts["params_total"]
    teacher = tiny_bert(layers=4, hidden=H)
    terms = build_terms({"hidden_mse": LossConfig(layer_map=[[2, "last"]])}, teacher.config, model.config, where="stage")
    assert terms[0].loss.pairs == [(2, 1)] and terms[0].loss.projections() == {}


@pytest.mark.parametrize("task", ["token", "sequence"])
def test_save_pretrained_and_auto_reload_give_identical_logits(tmp_path, tokenizer, task):
    model = _bilstm(task=task).eval()
    save_checkpoint(model, tokenizer, tmp_path / "bilstm")
    assert json.loads((tmp_path / "bilstm" / "config.json").read_text())["model_type"] == "cascade_kd_bilstm"
    auto = AutoModelForTokenClassification if task == "token" else AutoModelForSequenceClassification
    reloaded, info = auto.from_pretrained(tmp_path / "bilstm", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(reloaded) is type(model)
    again = load_checkpoint(tmp_path / "bilstm", task)
    with torch.no_grad():
        expected = model(**_batch()).logits
        assert torch.equal(reloaded.eval()(**_batch()).logits, expected)
        assert torch.equal(again(**_batch()).logits, expected)
    assert count_parameters(again) == count_parameters(model)


def test_embeddings_start_from_the_teachers():
    teacher = tiny_bert(layers=2, hidden=H)
    with torch.no_grad():  # a clear rank-4 structure plus noise, as in test_models' PCA test
        basis = torch.randn(4, H)
        teacher.bert.embeddings.word_embeddings.weight.copy_(torch.randn(800, 4) * 5 @ basis + 0.01 * torch.randn(800, H))
    w_t = teacher.bert.embeddings.word_embeddings.weight
    pca = _bilstm(teacher, embedding_size=8)  # auto: pca, as the widths differ
    w_s = pca.get_input_embeddings().weight
    mean, axes = pca_axes(w_t, 8)
    assert torch.allclose(w_s, (w_t - mean) @ axes, atol=1e-5)
    centred = w_t - w_t.mean(0)
    assert w_s.pow(2).sum() / centred.pow(2).sum() > 0.999  # the top components keep the variance
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)
    assert torch.allclose(w_s[:, 0].abs(), (u[:, 0] * s[0]).abs(), atol=1e-3)
    assert torch.equal(pca.classifier.weight, teacher.classifier.weight)  # the head, where shapes match
    copied = _bilstm(teacher, embedding_size=None, freeze_embeddings=True)  # default width min(300, 32): copy
    assert torch.equal(copied.get_input_embeddings().weight, w_t)
    assert not copied.get_input_embeddings().weight.requires_grad
    assert not torch.equal(_bilstm(teacher, embedding_size=None, embeddings="random").get_input_embeddings().weight, w_t)
    with pytest.raises(RecipeError, match="cannot be copied"):
        _bilstm(teacher, embeddings="copy")
    with pytest.raises(RecipeError, match="at most the teacher's 32"):
        _bilstm(teacher, embedding_size=48)
    # a BiLSTM teacher of the same shape passes on everything; other students cannot follow it
    again = _bilstm(pca, embedding_size=8)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), pca.state_dict().values()))
    with pytest.raises(RecipeError, match="BiLSTM teacher"):
        build_student(pca, StudentConfig(layers=1))


def test_gradual_unfreezing_sees_head_and_projection_then_each_bilstm_layer_top_down_then_embeddings():
    from cascade_kd.training.setup import unfreeze_groups

    model = _bilstm()
    module = {id(p): name.rsplit(".", 1)[0].removesuffix(".forward_lstm").removesuffix(".backward_lstm")
              for name, p in model.named_parameters()}
    groups = [sorted({module[id(p)] for p in group}) for group in unfreeze_groups(model)]
    assert groups == [["bilstm.projection", "classifier"], ["bilstm.encoder.layers.1"], ["bilstm.encoder.layers.0"],
                      ["bilstm.embeddings.word_embeddings"]]


def test_student_keys():
    spec = StudentConfig(kind="bilstm")
    assert (spec.layers, spec.lstm_layers, spec.embeddings) == (1, 1, "auto")
    for keys, message in [({"layers": 2}, "lstm_layers"), ({"init": "bottom"}, "init does not apply"),
                          ({"heads": 2}, "heads does not apply"), ({"freeze_embeddings": ["position"]}, "word embeddings only")]:
        with pytest.raises(ValidationError, match=message):
            StudentConfig(kind="bilstm", **keys)
    with pytest.raises(ValidationError, match="BiLSTM students only"):
        StudentConfig(layers=1, lstm_layers=2)


# a transformer assistant, then a BiLSTM student with a transformer direct baseline
TINY = tiny_recipe(
    name="tiny-bilstm",
    task={"max_length": 32},
    data={"max_train_per_language": 64, "max_eval_per_language": 24},
    teacher={"train": {"epochs": 1, "lr": None}},
    cascade={"losses": {"kl": {"weight": 1.0, "temperature": 2.0},
                        "hidden_mse": {"weight": 1.0, "layer_map": [[1, "last"]]}},
             "stages": [{"name": "ta", "student": {"layers": 1}},
                        {"name": "lstm", "student": {"kind": "bilstm", "hidden": 16, "embedding_size": 24,
                                                     "freeze_embeddings": True}}],
             "direct": True},
)


def _check(tmp_path, recipe: dict) -> None:
    from cascade_kd.cascade import check_cascade

    loaded = load_recipe(write_recipe(tmp_path, recipe))
    spec = dict(loaded.teacher.config)
    check_cascade(loaded, AutoConfig.for_model(spec.pop("model_type"), **spec))


@pytest.mark.parametrize("changes,key,line,message", [
    ({"losses": {"hidden_mse": None, "attention_mse": {"weight": 1.0}}}, "cascade.losses.attention_mse",
     ("attention_mse:", 0), "attention_mse compares attention maps, but the student is a BiLSTM"),
    ({"losses": {"hidden_mse": {"layer_map": "uniform"}}}, "cascade.losses.hidden_mse.layer_map",
     ("hidden_mse:", 0), "layer 0, the embeddings of a BiLSTM, which are 24 wide, not its hidden width 32"),
    ({"stages": TINY["cascade"]["stages"] + [{"name": "after", "student": {"layers": 1}}]},
     "cascade.stages.2.student.kind", ("name: after", 1), "transformer student cannot be built from a BiLSTM"),
])
def test_check_cascade_refuses_what_a_bilstm_cannot_do_before_training(tmp_path, changes, key, line, message):
    _check(tmp_path, TINY)
    with pytest.raises(RecipeError, match=message) as err:
        _check(tmp_path, merge(TINY, {"cascade": changes}))
    path = tmp_path / "recipe.yaml"
    needle, below = line  # the line the error names: of the loss, or of the stage's student (below its name)
    assert err.value.where == f"{path}:{line_of(path, needle) + below}: {key}"


@pytest.fixture(scope="module")
def bilstm_run(demo_workspace, tmp_path_factory):
    from cascade_kd.cascade import run_recipe

    root = tmp_path_factory.mktemp("bilstm_run")
    for name in ("data", "tokenizer"):
        shutil.copytree(demo_workspace / name, root / name)
    run_recipe(load_recipe(write_recipe(root, TINY)), root / "run", say=lambda m: None)
    return root / "run"


def test_a_recipe_with_a_bilstm_stage_and_direct_baseline_runs(bilstm_run):
    rows = {m["name"]: m for m in json.loads((bilstm_run / "metrics.json").read_text())["models"]}
    assert [rows[n]["kind"] for n in ("teacher", "ta", "lstm", "direct")] == ["transformer"] * 2 + ["bilstm"] * 2
    assert rows["lstm"]["params_total"] == rows["direct"]["params_total"]  # the direct baseline has the same shape
    assert rows["lstm"]["params_trainable"] == rows["lstm"]["params_total"] - rows["lstm"]["params_embedding"]
    assert "| lstm | student | BiLSTM | 32 |" in (bilstm_run / "report.md").read_text()
    for name, custom in (("stages/lstm", True), ("stages/ta", False)):  # a model type cascade_kd registers
        assert ("import cascade_kd.students  # registers" in (bilstm_run / name / "README.md").read_text()) is custom, name
    # the recipe as run reads back the same (for --resume, eval, export)
    as_run, original = load_recipe(bilstm_run / "recipe.yaml"), load_recipe(bilstm_run.parent / "recipe.yaml")
    assert as_run.cascade.stages == original.cascade.stages and as_run.dump()["cascade"] == original.dump()["cascade"]
    for name, teacher in (("lstm", "stages/ta"), ("direct", "teacher")):
        student = AutoModelForTokenClassification.from_pretrained(bilstm_run / "stages" / name)
        assert isinstance(student, BiLSTMForTokenClassification) and student.config.lstm_hidden_size == 16
        # frozen embeddings: still its teacher's word embeddings projected onto their top 24 axes
        w_t = load_checkpoint(bilstm_run / teacher, "token").get_input_embeddings().weight
        mean, axes = pca_axes(w_t, 24)
        assert torch.allclose(student.get_input_embeddings().weight, (w_t - mean) @ axes, atol=1e-5)


def test_the_model_cards_code_runs_as_written_in_a_fresh_interpreter(bilstm_run):
    """The card's "How to use" block, copied as a user would, loads the BiLSTM (a model type only
    cascade_kd registers) and labels a sentence; it once imported `cascade_kd` alone, which
    registers nothing, and failed with "Unrecognized model identifier"."""
    done = run_card_code(bilstm_run / "stages" / "lstm")
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_saved_bilstm_exports_to_onnx_and_matches_pytorch(bilstm_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from cascade_kd.deploy.export import export_model

    info = export_model(bilstm_run / "stages" / "lstm", tmp_path / "onnx", int8=True, say=lambda m: None)
    assert info["inputs"] == ["input_ids", "attention_mask"]
    assert "dev split" in info["check_inputs"]  # real, padded batches of several shapes
    assert info["fp32"]["max_abs_diff"] < 1e-4 and info["fp32"]["agreement"] == 1.0
    assert info["int8"]["agreement"] >= 0.95
