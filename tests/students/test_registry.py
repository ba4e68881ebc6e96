"""The family registry's contract: a new kind of student is one module and one `register` call;
recipes then name it with no other change (config/schema.py reads the registry), and mistakes in
registering are refused rather than silently taking effect."""

import subprocess
import sys

import pytest
from pydantic import BaseModel, Field

from cascade_kd.config.schema import Recipe, StudentConfig
from cascade_kd.errors import RecipeError
from cascade_kd.students import FAMILIES, StudentFamily, register, student_config
from cascade_kd.students.transformer import TransformerFamily
from tests.helpers import line_of, tiny_bert, tiny_recipe, write_recipe


class WideFamily(TransformerFamily):
    """A toy family: a transformer student whose feed-forward block is twice the teacher's."""

    kind = "wide_ffn"
    label = "wide transformer"
    spec_defaults = {"init": "random"}

    def config(self, t_config, spec, *, where: str = "student"):
        config, plan, _ = super().config(t_config, spec.model_copy(update={"intermediate": 2 * t_config.intermediate_size}),
                                         where=where)
        return config, plan, False


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.delitem(FAMILIES, "wide_ffn", raising=False)
    family = register(WideFamily())
    yield family
    FAMILIES.pop("wide_ffn", None)


def test_a_registered_kind_is_a_recipe_value_with_its_defaults_and_keys(wide):
    spec = StudentConfig(kind="wide_ffn", layers=1)
    assert spec.init == "random"  # the family's default, not the transformer's bottom
    teacher = tiny_bert().config
    config, _, _ = student_config(teacher, spec)
    assert config.intermediate_size == 2 * teacher.intermediate_size
    with pytest.raises(ValueError, match="recursions applies to recursive students only"):
        StudentConfig(kind="wide_ffn", layers=1, recursions=1)  # the transformer's keys: spec_rules
    recipe = Recipe.from_dict(tiny_recipe(cascade={"stages": [{"name": "s", "student": {"kind": "wide_ffn", "layers": 1}}]}))
    dumped = recipe.dump()["cascade"]["stages"][0]["student"]
    assert dumped["kind"] == "wide_ffn" and "recursions" not in dumped  # written back as it reads
    assert Recipe.from_dict(recipe.dump()).fingerprint() == recipe.fingerprint()


def test_an_unknown_kind_is_refused_with_the_nearest_one(wide):
    with pytest.raises(RecipeError, match=r"unknown student kind 'wide_fn' \(did you mean 'wide_ffn'\?\)"):
        Recipe.from_dict(tiny_recipe(cascade={"stages": [{"name": "s", "student": {"kind": "wide_fn", "layers": 1}}]}))


def test_a_kind_registered_twice_is_refused_unless_replaced(wide):
    class Copied(TransformerFamily):  # copied from the transformer family, its kind left unchanged
        label = "copy"

    with pytest.raises(ValueError, match="kind 'transformer' is registered already"):
        register(Copied())
    assert type(FAMILIES["transformer"]) is TransformerFamily
    register(WideFamily())  # the same class again (a module imported twice): allowed
    try:
        register(Copied(), replace=True)
        assert type(FAMILIES["transformer"]) is Copied
    finally:
        register(TransformerFamily(), replace=True)


def test_a_family_without_a_kind_or_with_unknown_rules_is_refused():
    class Nameless(StudentFamily):
        pass

    class Odd(TransformerFamily):
        kind = "odd"
        spec_rules = "lstm"

    with pytest.raises(ValueError, match="needs a kind"):
        register(Nameless())
    with pytest.raises(ValueError, match="spec_rules is 'lstm'"):
        register(Odd())
    assert "odd" not in FAMILIES


def test_built_in_names_are_checked_without_torch_and_others_import_the_registries():
    code = ("import sys; from cascade_kd.config import schema as s\n"
            "s.loss_names('kl'); s.kind_rules('bilstm')\n"
            "assert 'torch' not in sys.modules, 'a built-in name imported torch'\n"
            "assert 'nope' not in s.loss_names('nope') and s.kind_rules('nope') is None\n"
            "assert 'cascade_kd.losses.registry' in sys.modules and 'cascade_kd.students.registry' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_registered_family_trains_through_a_recipe_and_is_reported_by_its_kind(wide, demo_workspace, tmp_path):
    import json
    import shutil

    from cascade_kd.cascade import run_recipe

    for name in ("data", "tokenizer"):
        shutil.copytree(demo_workspace / name, tmp_path / name)
    recipe = tiny_recipe(data={"test": None, "max_train_per_language": 100}, teacher={"train": {"epochs": 1}},
                         cascade={"stages": [{"name": "s", "student": {"kind": "wide_ffn", "layers": 1}},
                                             {"name": "more", "student": "previous", "train": {"epochs": 1}}]})
    metrics = run_recipe(Recipe.from_dict(recipe, base_dir=tmp_path), tmp_path / "run", say=lambda m: None)
    assert [m["kind"] for m in metrics["models"]] == ["transformer", "wide_ffn", "wide_ffn"]  # `previous`: s's kind
    teacher = json.loads((tmp_path / "run" / "teacher" / "config.json").read_text())
    student = json.loads((tmp_path / "run" / "stages" / "s" / "config.json").read_text())
    assert student["intermediate_size"] == 2 * teacher["intermediate_size"] and student["num_hidden_layers"] == 1
    card = (tmp_path / "run" / "stages" / "s" / "README.md").read_text()
    assert "## How to use" in card and "import cascade_kd" not in card  # a BERT model: plain transformers loads it


class ScaledOptions(BaseModel):
    """The toy family's own keys (`student.options`); no `extra="forbid"`: cascade-kd checks the keys."""

    ffn_scale: int = Field(2, ge=1)


class ScaledFamily(TransformerFamily):
    """A toy family with a key of its own: the feed-forward width as a multiple of the teacher's."""

    kind = "scaled_ffn"
    spec_defaults = {"init": "random"}
    options_model = ScaledOptions

    def config(self, t_config, spec, *, where: str = "student"):
        wider = spec.model_copy(update={"intermediate": spec.options["ffn_scale"] * t_config.intermediate_size})
        config, plan, _ = super().config(t_config, wider, where=where)
        return config, plan, False


@pytest.fixture
def scaled():
    family = register(ScaledFamily())
    yield family
    FAMILIES.pop("scaled_ffn", None)


def _scaled_recipe(options) -> dict:
    student = {"kind": "scaled_ffn", "layers": 1, **({"options": options} if options is not None else {})}
    return tiny_recipe(cascade={"stages": [{"name": "s", "student": student}]})


def test_a_familys_own_keys_are_checked_filled_and_keyed(scaled, tmp_path, monkeypatch):
    from cascade_kd.cascade.plan import model_keys

    default, three = Recipe.from_dict(_scaled_recipe(None)), Recipe.from_dict(_scaled_recipe({"ffn_scale": 3}))
    assert default.cascade.stages[0].student.options == {"ffn_scale": 2}  # what the family reads: defaults filled
    # dump() writes the values away from their defaults only, and reads back as written
    assert "options" not in default.dump()["cascade"]["stages"][0]["student"]
    assert three.dump()["cascade"]["stages"][0]["student"]["options"] == {"ffn_scale": 3}
    for recipe in (default, three):
        assert Recipe.from_dict(recipe.dump()).fingerprint() == recipe.fingerprint()
    assert Recipe.from_dict(_scaled_recipe({"ffn_scale": 2})).fingerprint() == default.fingerprint()
    assert model_keys(three.dump())["teacher"] == model_keys(default.dump())["teacher"]
    assert model_keys(three.dump())["s"] != model_keys(default.dump())["s"]  # a changed option retrains its stage
    teacher = tiny_bert().config
    config, _, _ = student_config(teacher, three.cascade.stages[0].student)
    assert config.intermediate_size == 3 * teacher.intermediate_size
    # a release of the family that adds a key (with its default) leaves fingerprints and keys as they were
    before = (three.fingerprint(), model_keys(three.dump()))

    class ScaledOptionsV2(ScaledOptions):
        dropout_boost: float = 0.0

    monkeypatch.setattr(ScaledFamily, "options_model", ScaledOptionsV2)
    again = Recipe.from_dict(_scaled_recipe({"ffn_scale": 3}))
    assert again.cascade.stages[0].student.options == {"ffn_scale": 3, "dropout_boost": 0.0}
    assert (again.fingerprint(), model_keys(again.dump())) == before
    # mistakes, at their line
    path = write_recipe(tmp_path, _scaled_recipe({"ffn_scal": 3}))
    with pytest.raises(RecipeError, match=r"unknown key 'ffn_scal' of kind 'scaled_ffn' \(did you mean "
                                          r"'ffn_scale'\?\)") as err:
        Recipe.from_yaml(path)
    assert err.value.where == f"{path}:{line_of(path, 'ffn_scal:')}: cascade.stages.0.student.options.ffn_scal"
    path = write_recipe(tmp_path, _scaled_recipe({"ffn_scale": 0}))
    with pytest.raises(RecipeError, match="'ffn_scale': Input should be greater than or equal to 1") as err:
        Recipe.from_yaml(path)
    assert err.value.where == f"{path}:{line_of(path, 'ffn_scale:')}: cascade.stages.0.student.options.ffn_scale"


def test_options_are_refused_where_a_kind_declares_none(wide):
    with pytest.raises(ValueError, match="kind transformer takes none"):
        StudentConfig(layers=1, options={"ffn_scale": 2})
    with pytest.raises(RecipeError, match="student kind 'wide_ffn' takes no options"):
        Recipe.from_dict(tiny_recipe(cascade={"stages": [
            {"name": "s", "student": {"kind": "wide_ffn", "layers": 1, "options": {"ffn_scale": 2}}}]}))
    assert "options" not in Recipe.from_dict(tiny_recipe()).dump()["cascade"]["stages"][0]["student"]

    class Odd(TransformerFamily):
        kind = "odd_options"
        options_model = dict

    with pytest.raises(ValueError, match="options_model is <class 'dict'>: give a pydantic model"):
        register(Odd())

    class Aliased(BaseModel):
        ffn_scale: int = Field(2, alias="ffnScale")

    Odd.options_model = Aliased
    with pytest.raises(ValueError, match="options_model gives ffn_scale an alias"):
        register(Odd())  # read as ffnScale, written back as ffn_scale: the recipe as run would not read back
    assert "odd_options" not in FAMILIES


def test_options_that_would_not_read_back_or_hash_alike_are_refused(scaled, monkeypatch, tmp_path):
    from typing import Optional

    from pydantic import computed_field

    class Rich(ScaledOptions):
        boosts: list[float] = []
        mode: Optional[str] = None

        @computed_field
        @property
        def doubled(self) -> int:
            return 2 * self.ffn_scale

    monkeypatch.setattr(ScaledFamily, "options_model", Rich)
    recipe = Recipe.from_dict(_scaled_recipe({"ffn_scale": 3, "boosts": [0.5, 1.0]}))
    assert recipe.cascade.stages[0].student.options == {"ffn_scale": 3, "boosts": [0.5, 1.0], "mode": None}
    written = recipe.dump()["cascade"]["stages"][0]["student"]["options"]
    assert written == {"ffn_scale": 3, "boosts": [0.5, 1.0]}  # no computed field: it is not a key
    assert Recipe.from_dict(recipe.dump()).fingerprint() == recipe.fingerprint()
    with pytest.raises(RecipeError, match=r"'boosts': \[0.5, nan\] is not finite"):
        Recipe.from_dict(_scaled_recipe({"boosts": [0.5, float("nan")]}))
    path = write_recipe(tmp_path, _scaled_recipe({"boosts": [0.5, "many"]}))
    with pytest.raises(RecipeError, match=r"'boosts'\[1\]: Input should be a valid number") as err:
        Recipe.from_yaml(path)  # an item's error points at the line of its key
    assert err.value.where == f"{path}:{line_of(path, 'boosts:')}: cascade.stages.0.student.options.boosts"

    class Inner(BaseModel):
        rank: int = 4

    for odd in (dict(inner=(Inner, Inner())), dict(tags=(Optional[set[str]], None)), dict(table=(dict, {}))):
        from pydantic import create_model

        class Odd(TransformerFamily):
            kind = "odd_keys"
            options_model = create_model("OddOptions", **odd)

        with pytest.raises(ValueError, match=f"{next(iter(odd))} must be a bool, int, float, str"):
            register(Odd())
    assert "odd_keys" not in FAMILIES
