"""The public Python API: `import cascade_kd as ckd` is light, and each function does what the
command does, with the same errors (UserError subclasses naming file, line or key)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import cascade_kd as ckd
from tests.helpers import tiny_recipe, write_recipe


def _imports_after(code: str) -> set[str]:
    """Which of torch / transformers a fresh interpreter has imported after running `code`."""
    probe = code + "\nimport sys\nprint('LOADED:', *(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(out.rsplit("LOADED:", 1)[1].split())


def test_importing_the_package_and_reading_a_recipe_load_neither_torch_nor_transformers(tmp_path):
    assert _imports_after("import cascade_kd") == set()
    path = write_recipe(tmp_path, tiny_recipe())
    assert _imports_after(f"import cascade_kd as ckd\nckd.Recipe.from_yaml({str(path)!r})") == set()
    # whereas running anything with models brings them in
    assert _imports_after("import cascade_kd as ckd\nckd.run") == {"torch", "transformers"}
    # what the reports and the command line read of a run's layout and of the deploy outputs
    assert _imports_after("import cascade_kd.evaluation.run_files, cascade_kd.evaluation.findings, "
                          "cascade_kd.deploy.paths") == set()


def test_the_command_line_help_and_a_recipe_error_load_neither_torch_nor_transformers(tmp_path):
    help_code = ("from cascade_kd.cli import main\n"
                 "for argv in (['--help'], ['run', '--help'], ['trim', '--help'], ['pretrain', '--help']):\n"
                 "    try:\n        main(argv)\n    except SystemExit:\n        pass\n")
    assert _imports_after(help_code) == set()
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    assert _imports_after(f"from cascade_kd.cli import main\nassert main(['run', {str(bad)!r}, '--out', 'x']) == 2") == set()


def test_the_public_names_resolve_and_unknown_ones_fail_as_usual():
    for name in ckd.__all__:
        assert getattr(ckd, name) is not None
    assert set(dir(ckd)) >= set(ckd.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        ckd.nonesuch  # noqa: B018


def test_the_commands_defaults_are_the_python_apis():
    """The parser spells its defaults out (importing the API would slow --help): pinned here to the
    defaults of the functions the commands call, and so are the defaults its help texts state."""
    import inspect

    from cascade_kd.cli.app import BACKENDS, _parser
    from cascade_kd.config.pretrain import pretrain_spec
    from cascade_kd.deploy.bench import BACKENDS as BENCH_BACKENDS
    from cascade_kd.deploy.export import INT8_MIN_AGREEMENT
    from cascade_kd.deploy.trim import DEFAULT_MAX_UNK_INCREASE

    assert tuple(BACKENDS) == tuple(BENCH_BACKENDS)

    def defaults(function):
        return {k: p.default for k, p in inspect.signature(function).parameters.items() if p.kind == p.KEYWORD_ONLY}

    def parsed(*argv):
        return vars(_parser().parse_args(list(argv)))

    pretrain = parsed("pretrain", "--text", "t", "--dev", "d", "--languages", "en", "--tokenizer", "k", "--out", "o")
    assert {k: pretrain[k] for k in defaults(pretrain_spec)} == defaults(pretrain_spec)
    bench = parsed("bench", "run")
    api_bench = defaults(ckd.bench)
    assert (bench["batch_sizes"], bench["seq_lens"], bench["repeats"], tuple(bench["backends"])) == (
        list(api_bench["batch_sizes"]), list(api_bench["seq_lens"]), api_bench["repeats"], tuple(api_bench["backends"]))
    assert parsed("trim", "m")["min_count"] == defaults(ckd.trim)["min_count"]
    assert defaults(ckd.trim)["max_unk_increase"] == DEFAULT_MAX_UNK_INCREASE
    assert defaults(ckd.export_onnx)["int8_min_agreement"] == INT8_MIN_AGREEMENT
    helps = {a.dest: a.help for sub in _parser()._subparsers._group_actions[0].choices.values() for a in sub._actions}
    assert f"(default {INT8_MIN_AGREEMENT:g})" in helps["int8_min_agreement"]
    assert f"(default {DEFAULT_MAX_UNK_INCREASE:g})" in helps["max_unk_increase"]


def test_recipe_errors_from_the_api_name_the_file_line_and_key(tmp_path):
    path = write_recipe(tmp_path, tiny_recipe(train={"lerning_rate": 1e-3}))
    with pytest.raises(ckd.RecipeError) as err:
        ckd.Recipe.from_yaml(path)
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "lerning_rate" in text)
    assert err.value.where == f"{path}:{line}: train.lerning_rate" and "did you mean 'lr'" in str(err.value)
    with pytest.raises(ckd.RecipeError) as err:  # from a dict: no lines, still the key
        ckd.Recipe.from_dict(tiny_recipe(train={"epochs": -1}))
    assert "train.epochs" in str(err.value)
    with pytest.raises(TypeError):
        ckd.run(42, tmp_path / "run")


def test_a_recipe_from_a_dict_resolves_paths_against_base_dir(demo_workspace):
    recipe = ckd.Recipe.from_dict(tiny_recipe(), base_dir=demo_workspace)
    assert recipe.base_dir == demo_workspace.resolve()
    assert recipe.model_path("tokenizer") == str(demo_workspace.resolve() / "tokenizer")


def test_run_evaluate_and_load_model_through_the_api(demo_workspace, tmp_path, monkeypatch, capsys):
    recipe = ckd.Recipe.from_dict(tiny_recipe(teacher={"train": {"epochs": 1}}, cascade={"direct": True}),
                                  base_dir=demo_workspace)
    monkeypatch.delenv("CASCADE_KD_QUIET", raising=False)  # the training loop's lines are on, as for a user
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    said = []
    result = ckd.run(recipe, tmp_path / "run", say=said.append)
    # every line, the training loop's included (epochs, steps, embedding rows), goes to `say`; and
    # transformers' own bars (loading and writing weights) are off during the call, back after it
    out, err = capsys.readouterr()
    assert out == "" and any("teacher: epoch 1/1 step" in line for line in said)
    assert "Writing model shards" not in err and "Loading weights" not in err
    assert hf_logging.is_progress_bar_enabled()
    assert any("[model 2 of 2]" in line for line in said) and any("word embeddings:" in line for line in said)
    # one stage is itself the direct baseline: none is trained, and the run says why
    assert any("direct: not trained: with one stage" in line for line in said)
    assert result == json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [m["name"] for m in result["models"]] == ["teacher", "student"]
    with pytest.raises(ckd.UserError, match="RUN_DIR is not empty"):  # the same rule as the command
        ckd.run(recipe, tmp_path / "run", say=lambda m: None)
    again = ckd.run(recipe, tmp_path / "run", resume=True, say=lambda m: None)  # everything finished: only scoring
    assert [m["per_language"] for m in again["models"]] == [m["per_language"] for m in result["models"]]
    scored = ckd.evaluate(tmp_path / "run", split="dev", say=lambda m: None)
    assert scored["split"] == "dev" and (tmp_path / "run" / "eval-dev" / "metrics.json").is_file()
    # the run scored test and dev; eval on dev re-scores the saved models to the same dev averages
    assert result["split"] == "test"
    for before, after in zip(result["models"], scored["models"]):
        assert after["average"] == pytest.approx(before["dev_average"])
    model, tokenizer = ckd.load_model(tmp_path / "run" / "stages" / "student")
    assert model.config.num_hidden_layers == 1 and not model.training and tokenizer.pad_token_id is not None
    with pytest.raises(ckd.UserError):
        ckd.evaluate(tmp_path / "nowhere", recipe=recipe, say=lambda m: None)


def test_eval_on_a_split_the_recipe_lacks_points_to_the_one_it_has(tiny_run):
    import yaml

    recipe = yaml.safe_load((tiny_run / "recipe.yaml").read_text())
    del recipe["data"]["test"]
    with pytest.raises(ckd.RecipeError, match="names no test data") as err:
        ckd.evaluate(tiny_run, recipe=recipe, split="test", say=lambda m: None)
    assert err.value.hint == "score the dev data instead: --split dev (split='dev' in Python)"


def test_report_eval_and_bench_of_an_unfinished_run_say_how_to_go_on(demo_workspace, tmp_path, capsys):
    from cascade_kd.cascade import run_recipe
    from cascade_kd.cli.app import main

    recipe = ckd.Recipe.from_dict(tiny_recipe(teacher={"train": {"epochs": 1}}), base_dir=demo_workspace)
    run_recipe(recipe, tmp_path / "run", until="teacher", say=lambda m: None)  # as if stopped after the teacher
    for command in (["report"], ["eval"], ["bench", "--backends", "fp32"]):
        assert main([command[0], str(tmp_path / "run"), *command[1:]]) == 2
        err = capsys.readouterr().err
        assert "not a finished cascade-kd run" in err and "has not finished" in err and "--resume" in err, command
