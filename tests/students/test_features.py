"""The adaptor: one layer numbering for hidden states and attentions, and layer maps at their edges."""

import pytest
import torch
from tests.helpers import tiny_bert

from cascade_kd.errors import RecipeError
from cascade_kd.losses.layer_maps import layer_pairs, resolve_layer
from cascade_kd.students.features import extract_features


def test_symbolic_names_resolve_in_one_numbering():
    assert resolve_layer("embeddings", 12) == 0
    assert resolve_layer("last", 12) == 12
    assert resolve_layer(-1, 12) == 12
    assert resolve_layer(-12, 12) == 1
    assert resolve_layer(-13, 12, feature="hidden") == 0  # the embeddings, counted from the top
    assert resolve_layer("6", 12) == 6
    assert resolve_layer(1, 12, feature="attention") == 1


@pytest.mark.parametrize("ref,feature", [(13, "hidden"), (-14, "hidden"), (0, "attention"), ("embeddings", "attention"), ("top2", "hidden"), (True, "hidden")])
def test_out_of_range_or_unknown_references_are_errors(ref, feature):
    with pytest.raises(RecipeError):
        resolve_layer(ref, 12, feature=feature)


def test_hidden_and_attention_of_layer_k_come_from_the_same_layer():
    """The classic off-by-one: hidden_states has L+1 entries, attentions L; layer k must mean layer k."""
    model = tiny_bert(layers=3).eval()
    model.set_attn_implementation("eager")
    batch = {"input_ids": torch.tensor([[2, 5, 6, 7, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    out = model(**batch, output_hidden_states=True, output_attentions=True)
    f = extract_features(model, batch, hidden=True, attentions=True)
    assert f.num_layers == 3
    assert torch.equal(f.hidden("embeddings"), out.hidden_states[0])
    assert torch.equal(f.hidden("last"), out.hidden_states[3])
    assert torch.equal(f.attention("last"), out.attentions[2])
    assert torch.equal(f.hidden(2), out.hidden_states[2]) and torch.equal(f.attention(2), out.attentions[1])
    assert f.attention(1).shape == (1, 4, 5, 5)


def test_layer_maps():
    assert layer_pairs("top_only", 12, 6) == [(12, 6)]
    assert layer_pairs("uniform", 12, 4) == [(0, 0), (3, 1), (6, 2), (9, 3), (12, 4)]
    assert layer_pairs("uniform", 12, 4, feature="attention") == [(3, 1), (6, 2), (9, 3), (12, 4)]
    assert layer_pairs("uniform", 4, 3, feature="attention") == [(1, 1), (3, 2), (4, 3)]  # rounded, ends at the top
    assert layer_pairs("top_aligned", 12, 6) == [(6, 0), (7, 1), (8, 2), (9, 3), (10, 4), (11, 5), (12, 6)]
    assert layer_pairs("top_aligned", 12, 6, feature="attention")[0] == (7, 1)
    assert layer_pairs("skip2", 12, 6, feature="attention") == [(2, 1), (4, 2), (6, 3), (8, 4), (10, 5), (12, 6)]
    assert layer_pairs([["last", -1], [6, "embeddings"]], 12, 6) == [(12, 6), (6, 0)]
    # edges: a 1-layer student, equal depths
    assert layer_pairs("uniform", 4, 1, feature="attention") == [(4, 1)]
    assert layer_pairs("top_aligned", 4, 4, feature="hidden")[0] == (0, 0)


@pytest.mark.parametrize("strategy,t,s,feature", [
    ([[13, 1]], 12, 6, "hidden"),            # past the teacher's last layer
    ([[12, 7]], 12, 6, "hidden"),            # past the student's last layer
    ([["embeddings", 1]], 12, 6, "attention"),
    ([[1]], 12, 6, "hidden"),                # not a pair
    ([], 12, 6, "hidden"),
    ("skip2", 8, 6, "hidden"),               # needs a 12-layer teacher
    ("top_aligned", 4, 6, "hidden"),
    ("bottom_up", 12, 6, "hidden"),          # unknown strategy
])
def test_bad_layer_maps_are_recipe_errors(strategy, t, s, feature):
    with pytest.raises(RecipeError):
        layer_pairs(strategy, t, s, feature=feature)


# ---------------------------------------------------------------- query / key / value states


def _bert(attn: str):
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=3)
    model = BertForTokenClassification(config).eval()
    model.set_attn_implementation(attn)
    return model


QKV_BATCH = {"input_ids": torch.tensor([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}


def _no_hooks(model) -> bool:
    """No hook is left on a query/key/value projection. (transformers 5 keeps hooks of its own on
    layers and attention modules, to capture hidden states and attentions; those stay.)"""
    from cascade_kd.students.features import attention_layers, qkv_projections

    return all(not proj._forward_hooks for layer in attention_layers(model)
               for proj in qkv_projections(layer).values())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_qkv_of_layer_k_is_its_projection_of_hidden_state_k_minus_1(attn):
    model = _bert(attn)
    with torch.no_grad():
        f = extract_features(model, QKV_BATCH, hidden=True, attentions=False, qkv_layers=[1, 2, 3])
        assert sorted(f.qkv) == [1, 2, 3]
        for k, layer in enumerate(model.bert.encoder.layer, start=1):
            states = f.relation_states(k)
            assert set(states) == {"query", "key", "value"}
            for kind in ("query", "key", "value"):
                expected = getattr(layer.attention.self, kind)(f.hidden(k - 1))
                assert states[kind].shape == (2, 5, 16)
                assert torch.allclose(states[kind], expected, atol=1e-6), (k, kind)
    assert f.relation_states("last") is f.qkv[3] and f.relation_states(-1) is f.qkv[3]
    assert _no_hooks(model)


def test_qkv_only_the_layers_asked_for_and_symbolic_refs():
    model = _bert("sdpa")
    f = extract_features(model, QKV_BATCH, hidden=False, attentions=False, qkv_layers=["last", 1])
    assert sorted(f.qkv) == [1, 3] and f.num_layers == 3
    assert f.relation_states(-1)["value"].requires_grad  # a student's states stay in the graph
    with pytest.raises(ValueError, match="layer 2 were not captured"):
        f.relation_states(2)
    with pytest.raises(RecipeError):
        extract_features(model, QKV_BATCH, hidden=False, attentions=False, qkv_layers=[4])
    plain = extract_features(model, QKV_BATCH, hidden=True, attentions=False)
    assert plain.qkv is None
    with pytest.raises(ValueError, match="not captured"):
        plain.relation_states(1)
    assert _no_hooks(model)


def test_hooks_are_removed_when_the_forward_pass_fails():
    model = _bert("sdpa")
    with pytest.raises(IndexError):
        extract_features(model, {"input_ids": torch.tensor([[2, 99]]), "attention_mask": torch.ones(1, 2)},
                         hidden=False, attentions=False, qkv_layers=[1])  # token 99 is past the vocabulary
    assert _no_hooks(model)


def test_qkv_of_distilbert():
    from transformers import DistilBertConfig, DistilBertForTokenClassification

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=50, dim=16, n_layers=2, n_heads=2, hidden_dim=32,
                              max_position_embeddings=16, num_labels=3)
    model = DistilBertForTokenClassification(config).eval()
    with torch.no_grad():
        f = extract_features(model, QKV_BATCH, hidden=True, attentions=False, qkv_layers=[1, "last"])
    attention = model.distilbert.transformer.layer[1].attention
    for kind, proj in (("query", attention.q_lin), ("key", attention.k_lin), ("value", attention.v_lin)):
        assert torch.allclose(f.relation_states(2)[kind], proj(f.hidden(1)), atol=1e-6)
    assert _no_hooks(model)


def test_qkv_of_a_recursive_student_are_per_step():
    from cascade_kd.students import build_student
    from cascade_kd.config.schema import StudentConfig

    teacher = tiny_bert(layers=4, hidden=32).eval()
    model = build_student(teacher, StudentConfig(kind="recursive", recursions=3, embedding_size=16, adapter_reduction=4))
    model.eval()
    base = model.base_model
    with torch.no_grad():
        f = extract_features(model, QKV_BATCH, hidden=True, attentions=False, qkv_layers=[1, 2, 3])
        queries = [f.relation_states(k)["query"] for k in (1, 2, 3)]
        for k in (1, 2, 3):  # step k's attention reads hidden state k-1 through step k's adapter
            x = base.attention_adapters[k - 1](f.hidden(k - 1))
            for kind in ("query", "key", "value"):
                expected = getattr(base.shared_layer.attention.self, kind)(x)
                assert torch.allclose(f.relation_states(k)[kind], expected, atol=1e-6), (k, kind)
    assert not torch.allclose(queries[0], queries[1]) and not torch.allclose(queries[1], queries[2])
    assert _no_hooks(model)


def test_a_model_without_qkv_projections_is_a_clear_error():
    from cascade_kd.students.features import qkv_projections

    with pytest.raises(ValueError, match="Sequential"):
        qkv_projections(torch.nn.Sequential(torch.nn.Linear(2, 2)))


# --- masked-LM heads: logits at selected positions only (extract_features(logits=...)) ----------


def _masked_lm_models():
    from transformers import BertConfig, BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM, XLMRobertaConfig, XLMRobertaForMaskedLM

    torch.manual_seed(0)
    small = dict(vocab_size=120, max_position_embeddings=40)
    return [
        BertForMaskedLM(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, **small)),
        XLMRobertaForMaskedLM(XLMRobertaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                               intermediate_size=32, pad_token_id=1, **small)),
        DistilBertForMaskedLM(DistilBertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=32, **small)),
    ]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["bert", "xlm-r", "distilbert"])
def test_masked_lm_logits_at_selected_positions_equal_the_full_heads(index):
    model = _masked_lm_models()[index].eval()
    ids = torch.randint(5, 120, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    chosen = torch.zeros(3, 9, dtype=torch.bool)
    chosen[0, 2] = chosen[1, 4] = chosen[2, 0] = chosen[2, 7] = True
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        feats = extract_features(model, batch, hidden=True, attentions=False, logits=chosen)
        none = extract_features(model, batch, hidden=True, attentions=False, logits=False)
    assert feats.logits.shape == (4, 120)
    torch.testing.assert_close(feats.logits, full[chosen], rtol=1e-5, atol=1e-5)
    assert none.logits is None and len(none.hidden_states) == 3  # the vocabulary head skipped, the encoder not
    torch.testing.assert_close(none.hidden_states[-1], feats.hidden_states[-1])
