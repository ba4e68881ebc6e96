"""Every bad input is reported before any training starts: one line on stderr, exit code 2, no traceback.

Each test copies the demo task (data/, tokenizer/, recipe.yaml) to tmp_path, breaks one thing and
calls the CLI in-process. The line must say where (file:line or the recipe key), what was
expected and, where obvious, how to fix it. Training is patched to fail the test, so every case
must be caught in the checking phase; RUN_DIR must stay untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests import helpers

from tests.helpers import edit_data_line, edit_recipe, fails, first_token_line, line_of  # noqa: F401

DEMO_LABELS = "[O, B-PER, I-PER, B-LOC, I-LOC, B-ORG, I-ORG]"


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    """Any case that reaches training has failed: the checks must catch it first."""
    helpers.refuse_training(monkeypatch)


# --- 1. unknown / mistyped keys -------------------------------------------------------------


@pytest.mark.parametrize("old,new,needle,key,suggestion", [
    ("  lr: 1.0e-3\n  precision", "  lerning_rate: 1.0e-3\n  precision", "lerning_rate:", "train.lerning_rate", "lr"),
    ("  stages:", "  stagess:", "stagess:", "cascade.stagess", "stages"),
    ("student: {layers: 2,", "student: {layer: 2,", "layer: 2", "cascade.stages.1.student.layer", "layers"),
    ("kl: {weight: 1.0, temperature: 2.0}", "kl: {weight: 1.0, temprature: 2.0}", "temprature",
     "cascade.losses.kl.temprature", "temperature"),
    # teacher.train is a free mapping, checked against the train keys (not only when the teacher trains)
    ("train: {epochs: 10, lr: 1.0e-3}", "train: {epochs: 10, lrr: 1.0e-3}", "lrr:", "teacher.train.lrr", "lr"),
], ids=["train.lerning_rate", "cascade.stagess", "student.layer", "losses.kl.temprature", "teacher.train.lrr"])
def test_unknown_key_names_line_and_suggests_nearest(capsys, ws, old, new, needle, key, suggestion):
    recipe = edit_recipe(ws, old, new)
    msg = fails(capsys, ws)
    bad = key.rsplit(".", 1)[-1]
    assert f"{recipe}:{line_of(recipe, needle)}: {key}" in msg
    assert f"unknown key {bad!r}" in msg
    assert f"did you mean {suggestion!r}?" in msg


def test_a_key_of_another_section_says_which_section_it_belongs_in(capsys, ws):
    recipe = edit_recipe(ws, "  test: data/{lang}/test.conll\n", "  test: data/{lang}/test.conll\n  labels_file: labels.txt\n")
    msg = fails(capsys, ws)
    assert f"{recipe}:{line_of(recipe, 'labels_file')}: data.labels_file: unknown key 'labels_file'" in msg
    assert "'labels_file' belongs in the task section: task.labels_file" in msg


def test_unknown_key_far_from_any_lists_the_valid_keys(capsys, ws):
    recipe = edit_recipe(ws, "  batch_size: 32", "  zzz: 32")
    msg = fails(capsys, ws)
    assert f"{recipe}:{line_of(recipe, 'zzz')}: train.zzz" in msg
    assert "valid keys:" in msg and "batch_size" in msg


def test_an_unknown_init_names_every_form_it_may_take(capsys, ws):
    recipe = edit_recipe(ws, "student: {layers: 2, init: bottom,", "student: {layers: 2, init: bottm,")
    msg = fails(capsys, ws)
    assert f"{recipe}:{line_of(recipe, 'init: bottm')}: cascade.stages.1.student.init" in msg
    assert "init 'bottm' is none of the forms" in msg and "[1, 4, 8]" in msg and "layer:K" in msg


# --- 2. wrong types -------------------------------------------------------------------------


def test_wrong_type_names_line_key_and_expected_type(capsys, ws):
    recipe = edit_recipe(ws, "  epochs: 6", "  epochs: many")
    msg = fails(capsys, ws)
    assert f"{recipe}:{line_of(recipe, 'epochs: many')}: train.epochs" in msg
    assert "valid number" in msg and "'many'" in msg


def test_wrong_type_in_a_stage_train_override(capsys, ws):
    recipe = edit_recipe(ws, "student: {layers: 2, init: bottom, freeze_embeddings: true}",
                         "student: {layers: 2, init: bottom, freeze_embeddings: true}\n      train: {batch_size: lots}")
    msg = fails(capsys, ws)
    assert f"{recipe}:{line_of(recipe, 'batch_size: lots')}:" in msg
    assert "train.batch_size" in msg and "valid integer" in msg and "'lots'" in msg


# --- 3. recipe file -------------------------------------------------------------------------


def test_missing_recipe_file(capsys, ws):
    missing = ws / "no-such-recipe.yaml"
    msg = fails(capsys, ws, recipe=missing)
    assert str(missing) in msg and "not found" in msg


def test_invalid_yaml_reports_the_line(capsys, ws):
    recipe = edit_recipe(ws, "  epochs: 6", " epochs: 6")  # one space short
    msg = fails(capsys, ws)
    assert f"{recipe}:{line_of(recipe, ' epochs: 6')}:" in msg
    assert "not valid YAML" in msg and "indentation" in msg


def test_invalid_yaml_unclosed_bracket_names_where_it_opened(capsys, ws):
    recipe = edit_recipe(ws, "  epochs: 6", "  epochs: [6")
    msg = fails(capsys, ws)
    assert f"{recipe}:" in msg and "not valid YAML" in msg
    assert f"starts on line {line_of(recipe, 'epochs: [6')}" in msg


# --- 4-7. data files ------------------------------------------------------------------------


def test_missing_data_file_is_named(capsys, ws):
    path = ws / "data" / "de" / "train.conll"
    path.unlink()
    msg = fails(capsys, ws)
    assert str(path) in msg and "not found" in msg
    assert "data.train" in msg  # the recipe key that names it


def test_a_missing_label_file_names_the_recipe_key_and_where_paths_start(capsys, ws):
    recipe = edit_recipe(ws, "  type: token\n", "  type: token\n  labels_file: labels.txt\n")
    msg = fails(capsys, ws)
    assert f"{ws / 'labels.txt'}: the label file is not found" in msg
    assert f"check {recipe}:{line_of(recipe, 'labels_file')}: task.labels_file" in msg and str(ws) in msg


def test_a_tokenizer_neither_here_nor_in_the_offline_cache_is_one_short_line(capsys, ws):
    recipe = edit_recipe(ws, "  tokenizer: tokenizer\n", "  tokenizer: tokk\n")
    msg = fails(capsys, ws)
    assert f"{recipe}:{line_of(recipe, 'tokk')}: teacher.tokenizer" in msg
    assert "no tokenizer at 'tokk': no such local directory, and offline (HF_HUB_OFFLINE)" in msg
    assert "huggingface.co" not in msg


def test_malformed_data_row_names_file_and_line(capsys, ws):
    path = ws / "data" / "ru" / "dev.conll"
    n = first_token_line(path, after=5)
    token = path.read_text(encoding="utf-8").split("\n")[n - 1].split("\t")[0]
    edit_data_line(path, n, token)  # a token without its tag
    msg = fails(capsys, ws)
    assert f"{path}:{n}:" in msg
    assert "expected a token and a tag" in msg


def test_label_outside_the_recipe_label_set(capsys, ws):
    edit_recipe(ws, "  max_length: 64\n", f"  max_length: 64\n  labels: {DEMO_LABELS}\n")
    path = ws / "data" / "de" / "dev.conll"
    n = first_token_line(path, after=7)
    token = path.read_text(encoding="utf-8").split("\n")[n - 1].split("\t")[0]
    edit_data_line(path, n, f"{token}\tB-MISC")
    msg = fails(capsys, ws)
    assert f"{path}:{n}:" in msg  # the tag's own line, not the sentence's first
    assert "'B-MISC'" in msg and "task.labels" in msg


def test_language_lacking_a_label(capsys, ws):
    path = ws / "data" / "el" / "train.conll"
    path.write_text(path.read_text(encoding="utf-8").replace("I-ORG", "B-ORG"), encoding="utf-8")
    recipe = ws / "recipe.yaml"
    msg = fails(capsys, ws)
    assert f"{recipe}:{line_of(recipe, 'train: data/')}: data.train" in msg
    assert "labels differ between languages" in msg and "'el'" in msg and "I-ORG" in msg
    assert "task.labels" in msg  # the fix


def test_language_with_an_extra_label(capsys, ws):
    path = ws / "data" / "de" / "train.conll"
    n = first_token_line(path, after=3)
    token = path.read_text(encoding="utf-8").split("\n")[n - 1].split("\t")[0]
    edit_data_line(path, n, f"{token}\tB-MISC")
    msg = fails(capsys, ws)
    assert "labels differ between languages" in msg and "'de'" in msg and "B-MISC" in msg
    assert f"{path}:{n}" in msg


def test_empty_dev_split(capsys, ws):
    path = ws / "data" / "ru" / "dev.conll"
    path.write_text("", encoding="utf-8")
    msg = fails(capsys, ws)
    assert str(path) in msg and "no examples" in msg


# --- cross-lingual recipes: data.train_languages (docs/cross-lingual.md) ----------------------

LANGUAGES = "  languages: [en, de, ru, el]\n"


def test_a_training_language_without_its_training_file(capsys, ws):
    recipe = edit_recipe(ws, LANGUAGES, LANGUAGES + "  train_languages: [en, ru]\n")
    (ws / "data" / "el" / "train.conll").unlink()  # el is zero-shot: its training file is not needed
    path = ws / "data" / "ru" / "train.conll"
    path.unlink()
    msg = fails(capsys, ws)
    assert f"{path}: train file of 'ru' not found" in msg
    assert f"{recipe}:{line_of(recipe, 'train: data/')}: data.train" in msg


def test_a_training_language_missing_from_a_train_mapping(capsys, ws):
    recipe = edit_recipe(ws, LANGUAGES, LANGUAGES + "  train_languages: [en, ru]\n")
    edit_recipe(ws, "  train: data/{lang}/train.conll\n", "  train: {en: data/en/train.conll}\n")
    msg = fails(capsys, ws)
    assert f"{recipe}:{line_of(recipe, 'train: {en:')}: data.train: no train file for language 'ru'" in msg


def test_a_missing_training_file_suggests_train_languages(capsys, ws):
    """Without data.train_languages every language trains: a missing file may mean a zero-shot language."""
    (ws / "data" / "el" / "train.conll").unlink()
    msg = fails(capsys, ws)
    assert "train file of 'el' not found" in msg and "list the languages that do in data.train_languages" in msg


@pytest.mark.parametrize("split", ["dev", "test"])
def test_a_zero_shot_language_without_its_evaluation_file(capsys, ws, split):
    recipe = edit_recipe(ws, LANGUAGES, LANGUAGES + "  train_languages: [en]\n")
    path = ws / "data" / "ru" / f"{split}.conll"
    path.unlink()
    msg = fails(capsys, ws)
    assert f"{path}: {split} file of 'ru' not found" in msg
    assert f"{recipe}:{line_of(recipe, f'{split}: data/')}: data.{split}" in msg
    assert "train_languages" not in msg  # an evaluation file is needed whatever trains


@pytest.mark.parametrize("listed,message", [
    ("[en, fr]", "'fr' is not among data.languages (the evaluation languages)"),
    ("[fr, pt, en]", "'fr', 'pt' are not among data.languages"),
    ("[en, en]", "data.train_languages has duplicates"),
    ("[]", "at least 1 item"),
], ids=["one-unknown", "two-unknown", "duplicates", "empty"])
def test_train_languages_must_be_evaluation_languages(capsys, ws, listed, message):
    recipe = edit_recipe(ws, LANGUAGES, LANGUAGES + f"  train_languages: {listed}\n")
    msg = fails(capsys, ws)
    assert f"{recipe}:{line_of(recipe, 'train_languages:')}: data.train_languages" in msg
    assert message in msg


def test_select_on_takes_train_languages_or_all(capsys, ws):
    recipe = edit_recipe(ws, LANGUAGES, LANGUAGES + "  select_on: dev\n")
    msg = fails(capsys, ws)
    assert f"{recipe}:{line_of(recipe, 'select_on:')}: data.select_on" in msg
    assert "'train_languages' or 'all'" in msg


# --- 8-11, 13. the cascade ------------------------------------------------------------------


@pytest.mark.parametrize("old,new,stage,layers,teacher_layers", [
    ("student: {layers: 3,", "student: {layers: 5,", "ta3", 5, 4),  # deeper than the 4-layer teacher
    ("student: {layers: 2,", "student: {layers: 4,", "ta2", 4, 3),  # deeper than the previous stage
], ids=["stage1-vs-teacher", "stage2-vs-stage1"])
def test_student_deeper_than_its_teacher(capsys, ws, old, new, stage, layers, teacher_layers):
    recipe = edit_recipe(ws, old, new)
    msg = fails(capsys, ws)
    assert f"{recipe}:{line_of(recipe, new)}:" in msg and ".student.layers" in msg
    assert f"stage {stage!r} has {layers} layers, more than its teacher's {teacher_layers}" in msg


def test_layer_map_past_the_last_layer(capsys, ws):
    recipe = edit_recipe(ws, "hidden_mse: {weight: 1.0, layer_map: top_only}",
                         "hidden_mse: {weight: 1.0, layer_map: [[9, 1]]}")
    msg = fails(capsys, ws)
    # the line of the loss in cascade.losses, where the map is written
    assert f"{recipe}:{line_of(recipe, 'hidden_mse:')}: cascade.losses.hidden_mse.layer_map" in msg
    assert "layer 9 is out of range" in msg and "4 layers" in msg


def test_attention_layer_map_cannot_name_the_embeddings(capsys, ws):
    recipe = edit_recipe(ws, "attention_mse: {weight: 1.0, layer_map: top_only}",
                         "attention_mse: {weight: 1.0, layer_map: [[embeddings, 1]]}")
    msg = fails(capsys, ws)
    assert f"{recipe}:{line_of(recipe, 'attention_mse:')}: cascade.losses.attention_mse.layer_map" in msg
    assert "'embeddings'" in msg and "no attention map" in msg


def test_unequal_heads_without_head_reduction(capsys, ws):
    recipe = edit_recipe(ws, "student: {layers: 3, init: bottom,", "student: {layers: 3, heads: 2, init: bottom,")
    msg = fails(capsys, ws)
    assert f"{recipe}:{line_of(recipe, 'attention_mse:')}: cascade.losses.attention_mse" in msg
    assert "4 heads" in msg and "2" in msg and "'ta3'" in msg
    assert "head_reduction: mean" in msg


def test_unequal_heads_of_the_direct_baseline_are_checked_up_front(capsys, ws):
    # the stages agree (ta3 averages heads, later stages keep its 2), but the direct baseline
    # distils the final 2-head student from the 4-head teacher with head-by-head attention
    recipe = edit_recipe(
        ws, "student: {layers: 3, init: bottom, freeze_embeddings: true}",
        "student: {layers: 3, heads: 2, init: bottom, freeze_embeddings: true}\n"
        "      losses: {kl: {weight: 1.0}, attention_mse: {weight: 1.0, head_reduction: mean}}")
    msg = fails(capsys, ws)
    assert "direct baseline" in msg and "head_reduction: mean" in msg
    assert f"{recipe}:{line_of(recipe, 'attention_mse: {weight: 1.0, layer_map')}:" in msg


def test_unknown_loss_name_suggests_the_nearest(capsys, ws):
    recipe = edit_recipe(ws, "hidden_mse: {weight: 1.0,", "hiden_mse: {weight: 1.0,")
    msg = fails(capsys, ws)
    assert f"{recipe}:{line_of(recipe, 'hiden_mse:')}:" in msg
    assert "unknown loss 'hiden_mse'" in msg and "did you mean 'hidden_mse'?" in msg


# --- 12, 14. RUN_DIR ------------------------------------------------------------------------


def test_non_empty_run_dir_is_refused_and_left_alone(capsys, ws):
    out = ws / "run"
    out.mkdir()
    (out / "notes.txt").write_text("precious", encoding="utf-8")
    msg = fails(capsys, ws, run_dir_untouched=False)
    assert str(out) in msg and "RUN_DIR is not empty" in msg
    assert "--resume" in msg and "--overwrite" in msg
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text(encoding="utf-8") == "precious"


def test_resume_with_a_changed_recipe_is_refused(capsys, ws):
    out = ws / "run"
    out.mkdir()
    manifest = json.dumps({"recipe_fingerprint": "0123456789abcdef"})
    (out / "manifest.json").write_text(manifest, encoding="utf-8")
    msg = fails(capsys, ws, "--resume", run_dir_untouched=False)
    assert str(out / "manifest.json") in msg and "recipe changed" in msg
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]
    assert (out / "manifest.json").read_text(encoding="utf-8") == manifest


# --- the real process -----------------------------------------------------------------------


def test_real_process_exits_2_with_one_line_and_no_traceback(ws):
    recipe = edit_recipe(ws, "  lr: 1.0e-3\n  precision", "  lerning_rate: 1.0e-3\n  precision")
    out = ws / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "cascade_kd", "run", str(recipe), "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=ws, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {recipe}:{line_of(recipe, 'lerning_rate')}: train.lerning_rate: unknown key 'lerning_rate' "
        "(did you mean 'lr'?)"
    ]
    assert not out.exists()


def test_overwrite_never_deletes_a_directory_that_is_not_a_run(capsys, ws):
    (ws / "run").mkdir()
    keep = ws / "run" / "notes.txt"
    keep.write_text("mine")
    msg = fails(capsys, ws, "--overwrite", run_dir_untouched=False)
    assert "needs a cascade-kd run" in msg and "nothing there is replaced" in msg and keep.read_text() == "mine"


def test_sequences_longer_than_the_position_table(capsys, ws):
    edit_recipe(ws, "max_length: 64", "max_length: 100")
    msg = fails(capsys, ws)
    assert "task.max_length" in msg and "64 position embeddings" in msg and "max_length <= 64" in msg


def test_demo_seed_draws_the_data_and_seeds_the_recipe_and_a_negative_one_is_refused(tmp_path, capsys):
    from cascade_kd.cli.app import main
    from cascade_kd.cli.demo import generate
    from cascade_kd.config.schema import load_recipe

    assert load_recipe(generate(tmp_path / "s3", seed=3)).seed == 3  # the seed of training too, not only of the data
    assert (tmp_path / "s3" / "data" / "en" / "train.conll").read_text() != \
        (generate(tmp_path / "s4", seed=4).parent / "data" / "en" / "train.conll").read_text()
    with pytest.raises(SystemExit) as stop:  # argparse: one usage line and the reason, exit code 2
        main(["demo", "--out", str(tmp_path / "never"), "--seed", "-1"])
    assert stop.value.code == 2 and "seeds are 0 to 2**32 - 1" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("seeds", [[], ["--seeds", "0", "1"]], ids=["one run", "seeds"])
def test_resume_and_overwrite_together_are_refused(capsys, ws, seeds):
    msg = fails(capsys, ws, "--resume", "--overwrite", *seeds)
    assert "--resume and --overwrite together: choose one" in msg
