"""The adaptor: one layer numbering for hidden states and attentions, and layer maps at their edges."""

import pytest
import torch

from cascade_kd.errors import RecipeError
from cascade_kd.features import extract_features, layer_pairs, resolve_layer
from conftest import tiny_bert


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
