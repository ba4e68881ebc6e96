"""Student builders: layer-subset init, fresh configs, PCA embeddings, freezing, saving."""

import pytest
import torch
from transformers import AutoModelForTokenClassification

from cascade_kd.errors import RecipeError
from cascade_kd.students import build_student, count_parameters
from cascade_kd.students.anatomy import embedding_parameters, freeze_embeddings
from cascade_kd.students.hub import save_checkpoint
from cascade_kd.config.schema import StudentConfig
from tests.helpers import tiny_bert, tiny_encoder


def _layer_state(model, i):
    return {k: v for k, v in model.bert.encoder.layer[i].state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("init,expected", [("bottom", [0, 1]), ("top", [2, 3]), ("uniform", [1, 3]), ([1, 4], [0, 3])])
def test_layer_subset_init_copies_exactly_the_chosen_teacher_layers(init, expected):
    teacher = tiny_bert(layers=4)
    student = build_student(teacher, StudentConfig(layers=2, init=init))
    assert student.config.num_hidden_layers == 2
    for j, i in enumerate(expected):
        assert _same(_layer_state(student, j), _layer_state(teacher, i))
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    # a copy, not a shared tensor: training the student must leave the teacher alone
    assert student.bert.embeddings.word_embeddings.weight.data_ptr() != teacher.bert.embeddings.word_embeddings.weight.data_ptr()


def test_bottom_k_matches_transformers_truncation():
    """LightMBERT's init is what from_pretrained(num_hidden_layers=k) keeps: layers 0..k-1."""
    teacher = tiny_bert(layers=4)
    student = build_student(teacher, StudentConfig(layers=3, init="bottom"))
    t_state = teacher.state_dict()
    for key, value in student.state_dict().items():
        assert torch.equal(value, t_state[key]), key


def test_random_init_keeps_embeddings_but_not_layers():
    teacher = tiny_bert(layers=4)
    student = build_student(teacher, StudentConfig(layers=2, init="random"))
    assert not _same(_layer_state(student, 0), _layer_state(teacher, 0))
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    # the head starts fresh as well: a random-init student of the teacher's width copies no classifier
    assert not torch.equal(student.classifier.weight, teacher.classifier.weight)
    fresh = build_student(teacher, StudentConfig(layers=2, init="random", embeddings="random"))
    assert not torch.equal(fresh.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)


def test_pca_embeddings_reproduce_the_teachers_top_components():
    teacher = tiny_bert(layers=2, hidden=32)
    with torch.no_grad():  # give the embedding matrix a clear low-rank structure plus noise
        basis = torch.randn(4, 32)
        teacher.bert.embeddings.word_embeddings.weight.copy_(torch.randn(800, 4) * 5 @ basis + 0.01 * torch.randn(800, 32))
    student = build_student(teacher, StudentConfig(layers=1, init="random", hidden=8, heads=2, embeddings="pca"))
    assert student.config.hidden_size == 8
    w_t = teacher.bert.embeddings.word_embeddings.weight
    w_s = student.bert.embeddings.word_embeddings.weight
    centred = w_t - w_t.mean(0)
    # projections onto the principal axes keep (almost) all the variance of a rank-4 matrix
    assert w_s.pow(2).sum() / centred.pow(2).sum() > 0.999
    # and the first column is the first principal component's score, up to sign
    u, s, v = torch.linalg.svd(centred, full_matrices=False)
    first = u[:, 0] * s[0]
    assert torch.allclose(w_s[:, 0].abs(), first.abs(), atol=1e-3)


def test_width_change_rules():
    teacher = tiny_bert(layers=4, hidden=32, heads=4)
    s = build_student(teacher, StudentConfig(layers=2, init="random", hidden=16, embeddings="random"))
    assert (s.config.hidden_size, s.config.num_attention_heads, s.config.intermediate_size) == (16, 2, 64)
    with pytest.raises(RecipeError, match="cannot be copied"):
        build_student(teacher, StudentConfig(layers=2, init="random", hidden=16))  # embeddings: copy
    with pytest.raises(RecipeError, match="another shape"):
        build_student(teacher, StudentConfig(layers=2, init="bottom", hidden=16, embeddings="random"))
    with pytest.raises(RecipeError, match="more than its teacher"):
        build_student(teacher, StudentConfig(layers=5))
    with pytest.raises(RecipeError, match="teacher has 4"):
        build_student(teacher, StudentConfig(layers=2, init=[1, 7]))


def test_freezing_embeddings_and_counting_parameters():
    model = tiny_bert(layers=2, hidden=32)
    counts = count_parameters(model)
    emb = embedding_parameters(model)
    assert counts["params_embedding"] == sum(p.numel() for p in emb.values())
    assert counts["params_total"] == sum(p.numel() for p in model.parameters())
    frozen = freeze_embeddings(model, ["word"])
    assert frozen == ["bert.embeddings.word_embeddings.weight"]
    assert count_parameters(model)["params_trainable"] == counts["params_total"] - 800 * 32
    freeze_embeddings(model, True)
    assert not model.bert.embeddings.position_embeddings.weight.requires_grad
    assert model.bert.embeddings.LayerNorm.weight.requires_grad  # only the tables are frozen


def test_checkpoint_reloads_in_plain_transformers_with_the_same_logits(tmp_path, tokenizer):
    model = build_student(tiny_bert(layers=3).eval(), StudentConfig(layers=2)).eval()
    model.set_attn_implementation("eager")
    save_checkpoint(model, tokenizer, tmp_path / "ckpt", extra_files={"note.txt": b"x"})
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    reloaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "ckpt").eval()
    batch = tokenizer(["Dada Saso gudonaso"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, reloaded(**batch).logits, atol=1e-6)
    # saving again over an existing checkpoint swaps it atomically
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "note.txt").exists()


@pytest.mark.parametrize("model_type", ["bert", "xlm-roberta", "distilbert"])
def test_other_encoder_families_build_students_and_expose_features(model_type):
    from cascade_kd.students.features import extract_features
    from cascade_kd.students.anatomy import layer_list
    from cascade_kd.students.hub import use_attention_outputs

    teacher = tiny_encoder(model_type)
    student = build_student(teacher, StudentConfig(layers=2, init="top", freeze_embeddings=True)).eval()
    t_name, t_layers = layer_list(teacher)
    _, s_layers = layer_list(student)
    assert _same(s_layers[0].state_dict(), t_layers[2].state_dict())
    narrow = build_student(teacher, StudentConfig(layers=1, init="random", hidden=16, heads=2, intermediate=24, embeddings="pca"))
    ffn = [p for n, p in narrow.named_parameters() if p.dim() == 2 and 24 in p.shape]
    assert ffn, "the narrower student's feed-forward width follows `intermediate`"
    use_attention_outputs(student, True)
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    if model_type == "bert":
        batch["token_type_ids"] = torch.zeros(1, 4, dtype=torch.long)
    f = extract_features(student, batch, hidden=True, attentions=True)
    assert len(f.hidden_states) == 3 and len(f.attentions) == 2 and f.logits.shape == (1, 4, 3)


def test_a_bf16_checkpoint_loads_as_float32(tmp_path, tokenizer):
    from cascade_kd.students.hub import load_checkpoint

    model = tiny_bert(layers=1).to(torch.bfloat16)
    save_checkpoint(model, tokenizer, tmp_path / "bf16")
    assert next(load_checkpoint(tmp_path / "bf16", "token").parameters()).dtype == torch.float32
