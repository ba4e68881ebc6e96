"""The recipes in examples/ are valid and their real data loads (../shared/data)."""

from pathlib import Path

import pytest

from cascade_kd.cascade import prepare
from cascade_kd.config.schema import load_recipe
from tests.helpers import shared_data

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name,languages,scripts", [("panx-ner.yaml", 10, 6), ("sib200-topic.yaml", 41, 13)])
def test_example_recipe_loads_its_real_data(name, languages, scripts):
    shared_data("tokenizers", "mbert-cased")
    recipe = load_recipe(EXAMPLES / name)
    job = prepare(recipe, Path("unused"), say=lambda m: None)
    assert len(job.data.languages) == languages
    assert set(job.encoded) == {"train", "dev", "test"}
    assert len(job.tokenizer) == 119547
    unk = job.tokenizer.unk_token_id
    for lang, (_, encoded) in job.encoded["dev"].items():
        pieces = [i for e in encoded for i in e.input_ids]
        assert pieces.count(unk) / len(pieces) < 0.05, lang  # the mBERT vocabulary covers every script
    if name.startswith("sib200"):
        assert len({l.split("_")[1] for l in recipe.data.languages}) == scripts
        assert sum(len(x) for x, _ in job.encoded["test"].values()) == 41 * 204
