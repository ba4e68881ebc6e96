"""`pretrain_recipe` (ckd.pretrain_recipe): the masked-LM teacher's recipe from a model shape, the
very recipe `cascade-kd pretrain` runs with the same flags, checked before anything runs."""

from __future__ import annotations

import pytest

import cascade_kd as ckd
from cascade_kd.cli.app import _parser
from cascade_kd.cli.pretrain import recipe_from_args

FILES = ("text/train-{lang}.txt", "text/dev-{lang}.txt", ["en", "ru"], "tokenizer")
FLAGS = ["pretrain", "--text", FILES[0], "--dev", FILES[1], "--languages", *FILES[2], "--tokenizer", FILES[3],
         "--out", "never"]


def test_the_defaults_and_every_keyword_give_the_recipe_the_command_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plain = ckd.pretrain_recipe(*FILES)
    assert plain.dump() == recipe_from_args(_parser().parse_args(FLAGS)).dump()
    assert plain.fingerprint() == recipe_from_args(_parser().parse_args(FLAGS)).fingerprint()
    shaped = ckd.pretrain_recipe(*FILES, layers=3, hidden=64, heads=2, intermediate=100, max_length=600, epochs=2.5,
                                 lr=1e-3, batch_size=8, mask_probability=0.2, language_alpha=0.3, max_per_language=50,
                                 seed=7, model_type="bert")
    flags = FLAGS + ["--layers", "3", "--hidden", "64", "--heads", "2", "--intermediate", "100", "--max-length", "600",
                     "--epochs", "2.5", "--lr", "1e-3", "--batch-size", "8", "--mask-probability", "0.2",
                     "--language-alpha", "0.3", "--max-per-language", "50", "--seed", "7"]
    assert shaped.fingerprint() == recipe_from_args(_parser().parse_args(flags)).fingerprint() != plain.fingerprint()
    spec = recipe_from_args(_parser().parse_args(flags)).dump()
    assert spec["teacher"]["config"] == {"model_type": "bert", "num_hidden_layers": 3, "hidden_size": 64,
                                         "num_attention_heads": 2, "intermediate_size": 100,
                                         "max_position_embeddings": 602}  # max_length + [CLS] and [SEP]
    assert spec["data"]["language_alpha"] == 0.3 and spec["data"]["max_train_per_language"] == 50
    assert recipe_from_args(_parser().parse_args(FLAGS)).dump()["data"].get("language_alpha") is None
    # a recipe like any other: task mlm, plain text, no cascade; relative paths against base_dir
    assert plain.task.type == "mlm" and plain.data.format == "text" and plain.cascade.stages == []
    (tmp_path / "x" / "tokenizer").mkdir(parents=True)  # a local folder, not a hub name
    assert ckd.pretrain_recipe(*FILES, base_dir=tmp_path / "x").model_path("tokenizer") == str(tmp_path / "x" / "tokenizer")


@pytest.mark.parametrize("shape, message", [
    ({"hidden": 64, "heads": 3}, "hidden 64 is not a multiple of heads 3"),
    ({"layers": 0}, "layers 0 is not a positive number"),
    ({"max_length": -5}, "max_length -5 is not a positive number"),
])
def test_a_bad_shape_is_a_user_error_naming_the_keyword(shape, message):
    with pytest.raises(ckd.UserError, match=message):
        ckd.pretrain_recipe(*FILES, **shape)


def test_a_bad_training_value_is_a_recipe_error_naming_the_recipe_key():
    with pytest.raises(ckd.RecipeError, match="train.lr"):
        ckd.pretrain_recipe(*FILES, lr=-1)
    with pytest.raises(ckd.RecipeError, match="data.language_alpha"):
        ckd.pretrain_recipe(*FILES, language_alpha=7)


def test_a_recipe_built_from_flags_names_the_flag_in_its_errors(tmp_path):
    """`names` (a command's flags): errors name the flag of the key or of its nearest parent, at
    validation and after it (`where`); keys no flag sets keep the source and key path."""
    from cascade_kd.config.messages import where

    spec = ckd.pretrain_recipe(*FILES).dump()
    names = {"train.lr": "--lr", "teacher.config": "--config", "data.train": "--text"}
    with pytest.raises(ckd.RecipeError) as err:
        ckd.Recipe.from_dict({**spec, "train": {**spec["train"], "lr": -1}}, source="cmd", names=names)
    assert err.value.where == "--lr" and "greater than 0" in err.value.message
    with pytest.raises(ckd.RecipeError) as err:
        ckd.Recipe.from_dict({**spec, "seed": -1}, source="cmd", names=names)
    assert err.value.where == "cmd: seed"
    recipe = ckd.Recipe.from_dict(spec, source="cmd", names=names)
    assert where(recipe, "teacher", "config", "hidden_size") == "--config"  # the nearest named parent
    assert where(recipe, "data", "train") == "--text" and where(recipe, "data", "dev") == "cmd: data.dev"
    assert where(ckd.Recipe.from_dict(spec, source="cmd"), "train", "lr") == "cmd: train.lr"


def test_a_missing_file_of_a_recipe_dict_says_where_relative_paths_start(tmp_path):
    """A recipe given as a dict has no folder of its own: the hint names base_dir, not 'the recipe's folder'."""
    from cascade_kd.data.task import load_task_data

    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "dev-en.txt").write_text("a b c\n")
    recipe = ckd.pretrain_recipe("text/train-{lang}.txt", "text/dev-{lang}.txt", ["en"], "tok", base_dir=tmp_path)
    with pytest.raises(ckd.UserError) as err:
        load_task_data(recipe)
    assert "train file of 'en' not found" in err.value.message
    assert err.value.hint == f"check pretrain_recipe: data.train; relative paths start from {tmp_path.resolve()}"


def test_a_path_like_model_reference_is_read_under_base_dir_never_the_current_folder(tmp_path, monkeypatch):
    """'./x' missing under base_dir stays a path there (and is reported there), even when the current
    folder has an x; 'owner/name' is a hub id unless base_dir holds that folder."""
    base, cwd = tmp_path / "recipes", tmp_path / "cwd"
    base.mkdir()
    (cwd / "x").mkdir(parents=True)
    monkeypatch.chdir(cwd)
    recipe = ckd.pretrain_recipe(*FILES, base_dir=base)
    assert recipe.model_path("./x") == str(base.resolve() / "x")
    assert recipe.model_path("owner/name") == "owner/name"
    (base / "owner" / "name").mkdir(parents=True)
    assert recipe.model_path("owner/name") == str(base.resolve() / "owner" / "name")
