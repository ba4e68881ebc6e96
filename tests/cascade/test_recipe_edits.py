"""Which models a recipe edit touches (plan.model_keys), and the training states a resume with an
edit drops (rundir.prepare_edited_resume)."""

import json

from cascade_kd.cascade.plan import model_keys
from cascade_kd.cascade.rundir import prepare_edited_resume, recipe_text
from cascade_kd.config.schema import Recipe
from tests.helpers import merge, tiny_recipe

BASE = tiny_recipe(cascade={"stages": [{"name": "s2", "student": {"layers": 2}},
                                       {"name": "s1", "student": {"layers": 1}}], "direct": True})


def keys(changes: dict | None = None) -> dict:
    return model_keys(Recipe.from_dict(merge(BASE, changes or {})).dump())


def changed(changes: dict) -> list[str]:
    before, after = keys(), keys(changes)
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


def test_every_model_has_a_key():
    assert list(keys()) == Recipe.from_dict(BASE).cascade.model_names() == ["teacher", "s2", "s1", "direct"]


def test_an_edit_changes_the_keys_of_the_models_that_read_it():
    assert changed({"cascade": {"stages": {1: {"train": {"lr": 1e-3}}}}}) == ["direct", "s1"]
    assert changed({"cascade": {"stages": {0: {"student": {"layers": 3}}}}}) == ["direct", "s1", "s2"]
    assert changed({"cascade": {"losses": {"kl": {"weight": 2.0}}}}) == ["direct", "s1", "s2"]
    assert changed({"cascade": {"direct": False}}) == ["direct"]
    assert changed({"train": {"lr": 1e-3}}) == ["direct", "s1", "s2", "teacher"]  # every model trains with it
    assert changed({"teacher": {"train": {"epochs": 2}}}) == ["direct", "s1", "s2", "teacher"]
    assert changed({"seed": 3}) == ["direct", "s1", "s2", "teacher"]
    assert changed({"data": {"max_train_per_language": 7}}) == ["direct", "s1", "s2", "teacher"]


def test_what_trains_nothing_changes_no_key():
    assert changed({"name": "renamed"}) == []
    assert changed({"license": "mit", "train": {"report_to": ["tensorboard"]}}) == []


def test_a_stage_appended_adds_its_key_and_changes_the_direct_baselines_only():
    stages = BASE["cascade"]["stages"] + [{"name": "s0", "student": {"layers": 1, "hidden": 32}}]
    assert changed({"cascade": {"stages": stages}}) == ["direct", "s0"]


def test_a_resume_with_an_edit_drops_the_training_states_of_the_changed_models(tmp_path):
    recipe = Recipe.from_dict(BASE, base_dir=tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"recipe_fingerprint": recipe.fingerprint(),
                                                        "recipe": recipe.dump()}))
    for name in ("teacher", "s2", "s1", "direct"):
        (tmp_path / "state" / name).mkdir(parents=True)
        (tmp_path / "state" / name / "progress.json").write_text("{}")
    prepare_edited_resume(tmp_path, Recipe.from_dict(merge(BASE, {"name": "renamed"}), base_dir=tmp_path))
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["direct", "s1", "s2", "teacher"]
    edited = merge(BASE, {"cascade": {"stages": {1: {"train": {"lr": 1e-3}}}}})
    prepare_edited_resume(tmp_path, Recipe.from_dict(edited, base_dir=tmp_path))
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["s2", "teacher"]


def test_the_keys_an_edit_is_compared_with_are_the_manifests_not_the_editable_recipe_yaml(tmp_path):
    from cascade_kd.cascade.rundir import resolved_dump

    recipe = Recipe.from_dict(BASE, base_dir=tmp_path)
    edited = Recipe.from_dict(merge(BASE, {"cascade": {"stages": {1: {"train": {"lr": 1e-3}}}}}), base_dir=tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"recipe_fingerprint": recipe.fingerprint(), "recipe": recipe.dump(),
                                                        "model_keys": model_keys(resolved_dump(recipe))}))
    (tmp_path / "recipe.yaml").write_text(recipe_text(edited))  # RUN_DIR/recipe.yaml edited in place
    for name in ("s1", "direct"):
        (tmp_path / "state" / name).mkdir(parents=True)
    prepare_edited_resume(tmp_path, edited)
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


def test_keys_hash_resolved_paths_so_the_recipe_as_run_is_the_same_recipe(tmp_path):
    from cascade_kd.cascade.rundir import resolved_dump
    from cascade_kd.config.schema import load_recipe

    (tmp_path / "r.yaml").write_text(recipe_text(Recipe.from_dict(BASE, base_dir=tmp_path)))  # absolute paths
    relative, as_run = Recipe.from_dict(BASE, base_dir=tmp_path), load_recipe(tmp_path / "r.yaml")
    assert relative.fingerprint() != as_run.fingerprint()  # the paths are written otherwise
    assert model_keys(resolved_dump(relative)) == model_keys(resolved_dump(as_run))
    moved = Recipe.from_dict(BASE, base_dir=tmp_path / "elsewhere")  # the same relative paths, other files
    assert model_keys(resolved_dump(moved))["teacher"] != model_keys(resolved_dump(relative))["teacher"]
