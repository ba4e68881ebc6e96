"""`cascade-kd export`: ONNX (fp32 and int8) from a finished tiny run, checked against PyTorch."""

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'cascade-kd[export]')")

from cascade_kd.cli.app import main
from cascade_kd.deploy.export import FP32_ATOL, INT8_MIN_AGREEMENT, generated_batches, session
from cascade_kd.students.hub import load_checkpoint


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """The run's student exported with --int8 through the command line."""
    out = tmp_path_factory.mktemp("export") / "student-onnx"
    rc = main(["export", str(tiny_run / "stages" / "student"), "--onnx", "--int8", "--out", str(out)])
    assert rc == 0
    return out


def _torch_logits(model, batch: dict) -> np.ndarray:
    with torch.inference_mode():
        return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()


def test_fp32_predictions_equal_pytorch_and_int8_agrees(exported, tiny_run, capsys):
    info = json.loads((exported / "export.json").read_text())
    assert "dev split" in info["check_inputs"]  # found through RUN_DIR/recipe.yaml
    assert info["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert info["fp32"]["positions"] > 500
    assert info["fp32"]["agreement"] == 1.0 and info["fp32"]["max_abs_diff"] <= FP32_ATOL
    assert info["int8"]["agreement"] >= INT8_MIN_AGREEMENT
    assert info["int8"]["size_mb"] < info["fp32"]["size_mb"]
    assert {"model.onnx", "model.int8.onnx", "config.json", "tokenizer.json", "export.json"} <= {p.name for p in exported.iterdir()}
    # independently of the export's own check: real dev sentences, padded batches, every real position
    from transformers import AutoTokenizer

    from cascade_kd.data.readers import read_examples

    tokenizer = AutoTokenizer.from_pretrained(exported)  # the export folder serves on its own
    dev = read_examples(tiny_run.parent / "data" / "ru" / "dev.conll", fmt="conll", task="token", lang="ru", limit=24)
    enc = tokenizer([e.tokens for e in dev], is_split_into_words=True, padding=True, truncation=True, max_length=48, return_tensors="np")
    batch = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    model = load_checkpoint(tiny_run / "stages" / "student", "token")
    real = batch["attention_mask"].astype(bool)
    ref = _torch_logits(model, batch)[real]
    fp32 = session(exported / "model.onnx").run(["logits"], batch)[0][real]
    int8 = session(exported / "model.int8.onnx").run(["logits"], batch)[0][real]
    assert np.abs(fp32 - ref).max() <= FP32_ATOL
    assert (fp32.argmax(-1) == ref.argmax(-1)).all()
    assert (int8.argmax(-1) == ref.argmax(-1)).mean() >= INT8_MIN_AGREEMENT


def test_dynamic_batch_and_sequence_axes(exported, tiny_run):
    """The trace used batch 2 x length 11; other batch sizes and lengths, with padding, still match."""
    model = load_checkpoint(tiny_run / "stages" / "student", "token")
    fp32, int8 = session(exported / "model.onnx"), session(exported / "model.int8.onnx")
    assert [tuple(i.shape) for i in fp32.get_inputs()] == [("batch", "sequence")] * 3
    assert tuple(fp32.get_outputs()[0].shape)[:2] == ("batch", "sequence")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    for batch in generated_batches(model.config, names, seed=3, sizes=((1, 3), (5, 23), (33, 60))):
        ref = _torch_logits(model, batch)
        out = fp32.run(["logits"], batch)[0]
        assert out.shape == ref.shape == (*batch["input_ids"].shape, model.config.num_labels)
        real = batch["attention_mask"].astype(bool)
        assert np.abs(out[real] - ref[real]).max() <= FP32_ATOL
        assert int8.run(["logits"], batch)[0].shape == ref.shape


def test_an_existing_export_is_not_overwritten(exported, tiny_run, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in exported.iterdir()}
    rc = main(["export", str(tiny_run / "stages" / "student"), "--onnx", "--out", str(exported)])
    assert rc == 2
    assert "already exists" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in exported.iterdir()} == before
    # the default place, MODEL_DIR/onnx; then --overwrite replaces it (here without int8)
    copy = exported.parent / "copy"
    shutil.copytree(tiny_run / "stages" / "student", copy)
    assert main(["export", str(copy), "--onnx", "--int8"]) == 0
    assert (copy / "onnx" / "model.int8.onnx").is_file()
    assert main(["export", str(copy), "--onnx"]) == 2
    assert main(["export", str(copy), "--onnx", "--overwrite"]) == 0
    assert (copy / "onnx" / "model.onnx").is_file() and not (copy / "onnx" / "model.int8.onnx").exists()
    assert not [p for p in copy.iterdir() if p.name.startswith(".onnx")]  # no temporary left behind


def test_missing_or_invalid_model_dir_exits_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nowhere"), "--onnx"]) == 2
    assert "no such model directory" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--onnx"]) == 2
    assert "no config.json" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"]}')
    assert main(["export", str(tmp_path), "--onnx"]) == 2
    assert "export cannot take a model whose config.json architectures are ['BertModel']" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{not json")
    assert main(["export", str(tmp_path), "--onnx"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"architectures": ["BertForTokenClassification"], "model_type": "bert"}')
    assert main(["export", str(tmp_path), "--onnx"]) == 2
    assert "no model.safetensors" in capsys.readouterr().err
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    assert main(["export", str(tmp_path), "--onnx"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors is damaged" in err and "not a safetensors file" in err
    assert not (tmp_path / "onnx").exists()


def test_a_mismatch_beyond_tolerance_exits_2_and_writes_nothing(tiny_run, tmp_path, capsys, monkeypatch):
    from cascade_kd.deploy import export

    real_compare = export.compare
    monkeypatch.setattr(export, "compare", lambda *a: {**real_compare(*a), "max_abs_diff": 0.5})
    assert main(["export", str(tiny_run / "teacher"), "--onnx", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "does not reproduce PyTorch" in err and "tolerance 0.001" in err
    assert not (tmp_path / "bad").exists() and not list(tmp_path.iterdir())
    monkeypatch.setattr(export, "compare", real_compare)
    rc = main(["export", str(tiny_run / "teacher"), "--onnx", "--int8", "--int8-min-agreement", "1.0001",
               "--out", str(tmp_path / "q")])
    assert rc == 2 and "not a fraction" in capsys.readouterr().err


def test_sequence_models_outside_a_run_use_generated_ids_or_check_data(tmp_path, tokenizer, capsys):
    """A sequence classifier saved by hand (no run around it), a DistilBERT without token types, and
    --check-data with a text file."""
    from tests.helpers import tiny_bert
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    bert = tiny_bert("sequence", layers=2, num_labels=3).eval()
    bert.config.architectures = [type(bert).__name__]
    bert.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    assert main(["export", str(tmp_path / "bert"), "--onnx", "--int8", "--int8-min-agreement", "0"]) == 0
    info = json.loads((tmp_path / "bert" / "onnx" / "export.json").read_text())
    assert info["task"] == "sequence" and info["check_inputs"].startswith("generated")
    assert tuple(session(tmp_path / "bert" / "onnx" / "model.onnx").get_outputs()[0].shape) == ("batch", 3)
    lines = tmp_path / "sentences.txt"
    lines.write_text("the first sentence\nanother one here\n\nand a third\n")
    assert main(["export", str(tmp_path / "bert"), "--onnx", "--check-data", str(lines), "--out", str(tmp_path / "b2")]) == 0
    info = json.loads((tmp_path / "b2" / "export.json").read_text())
    assert "sentences.txt (3 lines)" in info["check_inputs"] and info["fp32"]["positions"] == 3

    torch.manual_seed(0)
    distil = DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=800, dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=64, num_labels=2)).eval()
    distil.config.architectures = [type(distil).__name__]
    distil.save_pretrained(tmp_path / "distil")
    assert main(["export", str(tmp_path / "distil"), "--onnx"]) == 0
    info = json.loads((tmp_path / "distil" / "onnx" / "export.json").read_text())
    assert info["inputs"] == ["input_ids", "attention_mask"] and info["fp32"]["max_abs_diff"] <= FP32_ATOL


def test_score_rates_pytorch_and_each_exported_file_per_language_with_the_runs_scoring(tiny_run, tmp_path, capsys):
    """--score: the same per-language scores for PyTorch as the run's metrics.json (the same code),
    the fp32 file's equal to them (its predictions are PyTorch's), and the int8 file's scored too."""
    out = tmp_path / "scored"
    rc = main(["export", str(tiny_run / "stages" / "student"), "--onnx", "--int8", "--out", str(out), "--score"])
    assert rc == 0, capsys.readouterr().err
    scores = json.loads((out / "export.json").read_text())["scores"]
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    student = next(m for m in metrics["models"] if m["name"] == "student")
    assert scores["split"] == metrics["split"] and scores["recipe"] == str(tiny_run / "recipe.yaml")
    per_backend = scores["per_backend"]
    assert set(per_backend) == {"pytorch", "onnx_fp32", "onnx_int8"}
    assert per_backend["pytorch"] == pytest.approx(student["per_language"], abs=1e-12)
    assert per_backend["onnx_fp32"] == pytest.approx(per_backend["pytorch"], abs=1e-12)
    assert set(per_backend["onnx_int8"]) == set(metrics["languages"])
    assert all(0 <= v <= 1 for v in per_backend["onnx_int8"].values())
    lang, drop = scores["largest_drop"]["onnx_int8"]
    assert drop == pytest.approx(100 * (per_backend["pytorch"][lang] - per_backend["onnx_int8"][lang]))
    assert "onnx_int8 scores" in capsys.readouterr().out


@pytest.mark.parametrize("score, message", [("missing.yaml", "no such recipe to score with"),
                                            (None, "not inside a run directory")])
def test_a_bad_score_recipe_exits_2_before_exporting(tiny_run, tmp_path, capsys, score, message):
    model = tiny_run / "stages" / "student"
    if score is None:  # a copy of the model outside its run: no recipe to default to
        model = tmp_path / "copy"
        shutil.copytree(tiny_run / "stages" / "student", model)
    out = tmp_path / "out"
    rc = main(["export", str(model), "--onnx", "--out", str(out), "--score", *([str(tmp_path / score)] if score else [])])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_the_api_scores_with_a_recipe_given_as_an_object_or_a_dict(tiny_run, tmp_path):
    """`score=` takes a recipe the way every API function does: a path, a Recipe or a dict."""
    import yaml

    import cascade_kd as ckd

    metrics = json.loads((tiny_run / "metrics.json").read_text())
    student = next(m for m in metrics["models"] if m["name"] == "student")
    as_object = ckd.Recipe.from_yaml(tiny_run / "recipe.yaml")
    as_dict = yaml.safe_load((tiny_run / "recipe.yaml").read_text())  # its paths are absolute
    for name, recipe in (("object", as_object), ("dict", as_dict)):
        info = ckd.export_onnx(tiny_run / "stages" / "student", tmp_path / name, score=recipe, say=lambda m: None)
        assert info["scores"]["per_backend"]["pytorch"] == pytest.approx(student["per_language"], abs=1e-12)
        assert info["scores"]["recipe"] == (str(tiny_run / "recipe.yaml") if name == "object" else "<dict>")
