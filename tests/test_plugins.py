"""Plugins (cascade_kd/plugins.py): a package installed beside cascade-kd adds a student family, a loss
and a model type that the `cascade-kd` command then uses by name, with no import in the user's
code. Each test runs the command in a fresh interpreter, with a toy distribution (its dist-info
and entry point) on PYTHONPATH, as pip would install it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import run_card_code, tiny_bert, tiny_recipe, write_recipe

PLUGIN = '''
"""A toy cascade-kd plugin: a family whose students are a model type of its own, and a loss."""
from transformers import AutoConfig, AutoModelForTokenClassification, BertConfig, BertForTokenClassification

import cascade_kd
from cascade_kd.losses.hidden import HiddenMSE
from cascade_kd.students.transformer import TransformerFamily


class ToyConfig(BertConfig):
    model_type = "toy_bert"


class ToyBertForTokenClassification(BertForTokenClassification):
    config_class = ToyConfig


AutoConfig.register("toy_bert", ToyConfig)
AutoModelForTokenClassification.register(ToyConfig, ToyBertForTokenClassification)


class ToyFamily(TransformerFamily):
    kind = "toy_bert"
    model_type = "toy_bert"
    label = "toy BERT"

    def config(self, t_config, spec, *, where="student"):
        config, chosen, same_shape = super().config(t_config, spec, where=where)
        fields = config.to_dict()
        fields.pop("model_type", None)
        return ToyConfig(**fields), chosen, same_shape


class ToyHiddenMSE(HiddenMSE):
    name = "toy_hidden_mse"


cascade_kd.register_family(ToyFamily())
cascade_kd.register_loss(ToyHiddenMSE)
'''


def _install(site: Path, module_text: str) -> Path:
    """A distribution `toy-plugin 0.1` as pip lays it out: the module and its dist-info, whose
    entry_points.txt declares the module under cascade_kd.plugins."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "toy_plugin.py").write_text(module_text, encoding="utf-8")
    info = site / "toy_plugin-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[cascade_kd.plugins]\ntoy = toy_plugin\n", encoding="utf-8")
    return site


def _cli(args: list, *, site: Path | None, cwd: Path, code: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    paths = [str(Path(__file__).resolve().parents[1])] + ([str(site)] if site else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "cascade_kd", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def workspace(demo_workspace, tmp_path) -> Path:
    for name in ("data", "tokenizer"):
        shutil.copytree(demo_workspace / name, tmp_path / name)
    recipe = tiny_recipe(data={"max_train_per_language": 64, "max_eval_per_language": 16},
                         teacher={"train": {"epochs": 1}},
                         cascade={"losses": {"kl": {"weight": 1.0}, "toy_hidden_mse": {"weight": 1.0}},
                                  "stages": [{"name": "toy", "student": {"kind": "toy_bert", "layers": 1}}]})
    write_recipe(tmp_path, recipe)
    return tmp_path


def test_an_installed_plugins_family_loss_and_model_type_work_from_the_command_line(workspace):
    site = _install(workspace / "site", PLUGIN)
    done = _cli(["run", "recipe.yaml", "--out", "run"], site=site, cwd=workspace)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((workspace / "run" / "metrics.json").read_text())
    assert [m["kind"] for m in metrics["models"]] == ["transformer", "toy_bert"]
    stage = json.loads((workspace / "run" / "stages" / "toy" / "stage.json").read_text())
    assert "toy_hidden_mse" in json.dumps(stage)  # the plugin's loss trained it
    assert json.loads((workspace / "run" / "stages" / "toy" / "config.json").read_text())["model_type"] == "toy_bert"
    assert json.loads((workspace / "run" / "manifest.json").read_text())["plugins"] == [
        {"name": "toy", "module": "toy_plugin", "distribution": "toy-plugin 0.1"}]
    assert "toy (toy-plugin 0.1)" in (workspace / "run" / "report.html").read_text()  # the provenance table
    # its card's code loads it in a new interpreter: the card says to load the plugins first
    folder = workspace / "run" / "stages" / "toy"
    assert "load_plugins()  # the installed cascade-kd plugins: one registers 'toy_bert'" in (folder / "README.md").read_text()
    done = run_card_code(folder, [str(Path(__file__).resolve().parents[1]), str(site)])
    assert done.returncode == 0, done.stderr[-3000:]
    # a new process reads the saved toy_bert model back: only the plugin registers that model type
    done = _cli(["eval", "run", "--split", "dev", "--out", "eval"], site=site, cwd=workspace)
    assert done.returncode == 0, done.stderr[-3000:]
    rescored = {m["name"]: m for m in json.loads((workspace / "eval" / "metrics.json").read_text())["models"]}
    trained = {m["name"]: m for m in metrics["models"]}
    assert rescored["toy"]["average"] == pytest.approx(trained["toy"]["dev_average"], abs=1e-6)
    # ... from Python too, with no recipe to name the plugin's kind
    code = textwrap.dedent("""
        import cascade_kd as ckd
        from cascade_kd.students.hub import config_from_spec
        model, _ = ckd.load_model('run/stages/toy')
        config = config_from_spec({"model_type": "toy_bert", "num_hidden_layers": 1}, "token", ["O", "B-PER"], 50, 0)
        print(type(model).__name__, type(config).__name__)
    """)
    done = _cli([], site=site, cwd=workspace, code=code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["ToyBertForTokenClassification", "ToyConfig"]  # teacher.config too
    # and a model of the plugin's type is a teacher of a recipe of built-in names (kept: it has the head)
    teacher_only = tiny_recipe(data={"max_train_per_language": 64, "max_eval_per_language": 16},
                               teacher={"model": "run/stages/toy", "config": None, "train": {"epochs": 1}}, cascade=None)
    write_recipe(workspace, teacher_only, "teacher.yaml")
    done = _cli(["run", "teacher.yaml", "--out", "from_toy"], site=site, cwd=workspace)
    assert done.returncode == 0, done.stderr[-3000:]
    scored = json.loads((workspace / "from_toy" / "metrics.json").read_text())["models"][0]
    assert scored["dev_average"] == pytest.approx(trained["toy"]["dev_average"], abs=1e-6)


def test_without_the_plugin_its_kind_is_unknown_and_a_broken_plugin_is_named(workspace):
    done = _cli(["run", "recipe.yaml", "--out", "run"], site=None, cwd=workspace)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "unknown student kind 'toy_bert'" in done.stderr
    site = _install(workspace / "site", "raise ImportError('needs the frobnicator')\n")
    done = _cli(["run", "recipe.yaml", "--out", "run"], site=site, cwd=workspace)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert f"{site / 'toy_plugin.py'}:1: the plugin 'toy' (toy_plugin, from toy-plugin 0.1) failed to import: " \
           "ImportError: needs the frobnicator" in message
    assert "pip uninstall toy-plugin" in message
    assert not (workspace / "run").exists()  # refused before anything was written
    (site / "toy_plugin.py").write_text("import sys\nsys.exit('not on this machine')\n")  # exits: still named
    done = _cli(["run", "recipe.yaml", "--out", "run"], site=site, cwd=workspace)
    assert done.returncode == 2 and "toy_plugin.py:2: the plugin 'toy'" in done.stderr, done.stderr
    assert "SystemExit: not on this machine" in done.stderr
    # a model of transformers' own type is read without importing the (broken) plugins
    tiny_bert().save_pretrained(workspace / "bert")
    code = ("from cascade_kd import plugins\nfrom cascade_kd.students.hub import load_checkpoint\n"
            "load_checkpoint('bert', 'token')\nassert plugins.LOADED is None\n")
    done = _cli([], site=site, cwd=workspace, code=code)
    assert done.returncode == 0, done.stderr[-3000:]
    done = _cli(["--version"], site=site, cwd=workspace)  # lists the plugins without importing them
    assert done.returncode == 0 and done.stdout.splitlines()[1:] == ["plugin toy: toy_plugin (from toy-plugin 0.1)"]


def test_built_in_names_never_import_an_installed_plugin(tmp_path):
    """A recipe of built-in kinds and losses is checked without torch and without the plugins;
    loading them is idempotent and lists them by distribution."""
    site = _install(tmp_path / "site", PLUGIN)
    code = textwrap.dedent("""
        import sys
        from cascade_kd.config import schema
        schema.loss_names("kl"); schema.kind_rules("transformer")
        assert "toy_plugin" not in sys.modules and "torch" not in sys.modules
        assert schema.kind_rules("toy_bert") == "transformer" and "toy_plugin" in sys.modules
        from cascade_kd.plugins import load_plugins
        assert load_plugins() == [("toy", "toy_plugin", "toy-plugin 0.1")] and load_plugins() is load_plugins()
        assert "toy_hidden_mse" in schema.loss_names("toy_hidden_mse")
    """)
    done = _cli([], site=site, cwd=tmp_path, code=code)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_hub_model_of_a_plugins_type_loads_the_plugins_once_its_type_is_unknown(monkeypatch):
    """For a hub name there is no config.json to read first: the first attempt's "unrecognized"
    error loads the plugins and tries again; a plugin that fails then is said beside that error."""
    from transformers import AutoConfig

    from cascade_kd import plugins
    from cascade_kd.plugins import PluginError
    from cascade_kd.students import hub

    calls = []

    def from_pretrained(name, **kwargs):
        calls.append(name)
        if len(calls) == 1:
            raise ValueError("Unrecognized model in someone/toy-model. Should have a `model_type` key")
        return "config"

    monkeypatch.setattr(AutoConfig, "from_pretrained", from_pretrained)
    monkeypatch.setattr(plugins, "LOADED", None)
    monkeypatch.setattr(hub, "load_plugins", lambda: calls.append("plugins"))
    assert hub.auto_config("someone/toy-model") == "config"
    assert calls == ["someone/toy-model", "plugins", "someone/toy-model"]

    def broken():
        raise PluginError("the plugin 'toy' (toy_plugin, from toy-plugin 0.1) failed to import: ImportError: x")

    calls.clear()
    monkeypatch.setattr(hub, "load_plugins", broken)
    with pytest.raises(ValueError, match=r"^Unrecognized model in someone/toy-model.*could not be imported: the plugin "
                                         r"'toy'"):
        hub.auto_config("someone/toy-model")
    calls.clear()
    monkeypatch.setattr(plugins, "LOADED", [])  # loaded already: the error is the model's own
    with pytest.raises(ValueError, match="^Unrecognized model"):
        hub.auto_config("someone/toy-model")


def test_the_example_plugin_package_works_as_an_installed_plugin(tmp_path):
    """examples/plugin, installed as pip would (its dist-info declaring the entry point of its
    pyproject.toml): its kind and option are checked from a recipe, and it builds its students."""
    import re

    example = Path(__file__).resolve().parents[1] / "examples" / "plugin"
    text = (example / "pyproject.toml").read_text()  # read as text: tomllib is Python 3.11+
    name, version = (re.search(rf'^{key} = "(.+)"$', text, re.M).group(1) for key in ("name", "version"))
    points = re.search(r'^\[project\.entry-points\."cascade_kd\.plugins"\]\n((?:\w+ = ".+"\n)+)', text, re.M).group(1)
    info = tmp_path / "site" / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[cascade_kd.plugins]\n" + points.replace('"', ""))
    code = textwrap.dedent("""
        from transformers import BertConfig
        from cascade_kd.config.schema import StudentConfig
        from cascade_kd.errors import RecipeError
        from cascade_kd.students import student_config
        spec = StudentConfig(kind="ffn_ratio", layers=2, options={"ratio": 1.5})
        config, _, _ = student_config(BertConfig(hidden_size=64, num_attention_heads=2, intermediate_size=256), spec)
        assert config.intermediate_size == 96 and config.num_hidden_layers == 2 and spec.init == "random"
        try:
            StudentConfig(kind="ffn_ratio", layers=2, options={"ration": 1.5})
        except ValueError as err:
            assert "unknown key 'ration' of kind 'ffn_ratio' (did you mean 'ratio'?)" in str(err), err
        else:
            raise AssertionError("a misspelt option passed")
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(example.parents[1]), str(example), str(tmp_path / "site")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([sys.executable, "-m", "cascade_kd", "--version"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert "plugin ffn_ratio: ckd_ffn_ratio (from ckd-ffn-ratio 0.1.0)" in done.stdout
