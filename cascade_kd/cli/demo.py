"""`cascade-kd demo`: the whole job, offline, on a task the project generates itself.

The task is NER in four languages over three scripts (English and German in Latin script, Russian
in Cyrillic, Greek). Each language gets its own made-up lexicon (names, places, organisations,
function words) built from script-specific syllables, and sentences follow templates in which
some words are ambiguous: the same word is a person after one trigger word and a place after
another, with filler words in between, so a model must use context and not only memorise words.
A WordPiece tokenizer is trained on the generated text, so words split into sub-words and the
first-sub-word alignment is exercised as with mBERT.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

SYLLABLES = {
    "latin": "ba be bi bo ka ke ko ri ra ro ta te to na ne no la le lo ma me mi sa se so da de do ga gu".split(),
    "cyrillic": "ба бе би бо ка ке ко ри ра ро та те то на не но ла ле ло ма ме ми са се со да де до га гу".split(),
    "greek": "βα βε βι βο κα κε κο ρι ρα ρο τα τε το να νε νο λα λε λο μα με μι σα σε σο δα δε δο γα γου".split(),
}
LANGUAGES = {"en": "latin", "de": "latin", "ru": "cyrillic", "el": "greek"}
SPLIT_SIZES = {"train": 500, "dev": 150, "test": 200}
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]

DEMO_RECIPE = """\
# The demo recipe: written next to the generated data by `cascade-kd demo`.
name: demo-ner
seed: 0
task:
  type: token
  max_length: 64
data:
  languages: [en, de, ru, el]
  format: conll
  train: data/{lang}/train.conll
  dev: data/{lang}/dev.conll
  test: data/{lang}/test.conll
teacher:
  config: {model_type: bert, num_hidden_layers: 4, hidden_size: 128, num_attention_heads: 4,
           intermediate_size: 256, max_position_embeddings: 64}
  tokenizer: tokenizer
  train: {epochs: 10, lr: 1.0e-3}
train:
  batch_size: 32
  epochs: 6
  lr: 1.0e-3
  precision: fp32
cascade:
  losses:
    kl: {weight: 1.0, temperature: 2.0}
    hidden_mse: {weight: 1.0, layer_map: top_only}
    attention_mse: {weight: 1.0, layer_map: top_only}
  stages:
    - name: ta3
      student: {layers: 3, init: bottom, freeze_embeddings: true}
    - name: ta2
      student: {layers: 2, init: bottom, freeze_embeddings: true}
    - name: student1
      student: {layers: 1, init: bottom, freeze_embeddings: true}
  direct: true
"""


class _Lexicon:
    def __init__(self, rng: random.Random, script: str):
        syl = SYLLABLES[script]

        def words(n, lo, hi):
            out = set()
            while len(out) < n:
                out.add("".join(rng.choice(syl) for _ in range(rng.randint(lo, hi))))
            return sorted(out)

        pool = words(260, 2, 4)
        rng.shuffle(pool)
        self.person, self.place, self.org = pool[:50], pool[50:100], pool[100:130]
        self.ambiguous = pool[130:150]  # a person or a place, depending on the trigger word
        self.fillers = pool[150:230]
        t = pool[230:260]
        self.per_trigger, self.loc_trigger, self.org_trigger = t[:4], t[4:8], t[8:12]
        self.capitalise = script != "greek"  # lower-case Greek: no capital-letter shortcut


def _sentence(rng: random.Random, lex: _Lexicon) -> tuple[list[str], list[str]]:
    tokens, tags = [], []

    def add(words, tag):
        for i, w in enumerate(words):
            tokens.append(w.capitalize() if lex.capitalise and tag != "O" else w)
            tags.append("O" if tag == "O" else ("B-" if i == 0 else "I-") + tag)

    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["PER", "LOC", "ORG"])
        add([rng.choice(lex.fillers) for _ in range(rng.randint(0, 3))], "O")
        trigger = {"PER": lex.per_trigger, "LOC": lex.loc_trigger, "ORG": lex.org_trigger}[kind]
        add([rng.choice(trigger)], "O")
        add([rng.choice(lex.fillers) for _ in range(rng.randint(0, 2))], "O")
        if kind != "ORG" and rng.random() < 0.35:
            entity = [rng.choice(lex.ambiguous)]
        else:
            source = {"PER": lex.person, "LOC": lex.place, "ORG": lex.org}[kind]
            entity = [rng.choice(source) for _ in range(rng.randint(1, 2))]
        add(entity, kind)
    add([rng.choice(lex.fillers) for _ in range(rng.randint(0, 3))], "O")
    return tokens, tags


def generate(directory: Path, seed: int = 0) -> Path:
    """Write data/<lang>/{train,dev,test}.conll, a tokenizer and recipe.yaml; return the recipe.
    `seed` draws the data and is the recipe's seed (its initialisations and batch order)."""
    directory = Path(directory)
    rng = random.Random(seed)
    corpus = []
    for lang, script in LANGUAGES.items():
        lex = _Lexicon(random.Random(f"{seed}-{lang}"), script)
        for split, n in SPLIT_SIZES.items():
            sentences = [_sentence(rng, lex) for _ in range(n)]
            path = directory / "data" / lang / f"{split}.conll"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(
                "\n\n".join("\n".join(f"{t}\t{g}" for t, g in zip(toks, tags)) for toks, tags in sentences) + "\n",
                encoding="utf-8",
            )
            if split == "train":
                corpus += [" ".join(toks) for toks, _ in sentences]
    _train_tokenizer(corpus, directory / "tokenizer")
    recipe = directory / "recipe.yaml"
    recipe.write_text(DEMO_RECIPE.replace("\nseed: 0\n", f"\nseed: {seed}\n", 1), encoding="utf-8")
    return recipe


def _train_tokenizer(corpus: list[str], directory: Path, vocab_size: int = 800) -> None:
    """A small cased WordPiece vocabulary: most made-up words split into 2-3 pieces."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizer

    wp = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
    wp.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=2)
    directory.mkdir(parents=True, exist_ok=True)
    wp.save_model(str(directory))
    # the trainer orders tied pieces by a per-process random hash: sort them so that every
    # generation gives the same token ids (and so the same demo numbers and test weights)
    pieces = (directory / "vocab.txt").read_text(encoding="utf-8").splitlines()
    special = [p for p in pieces if p.startswith("[") and p.endswith("]")]
    pieces = special + sorted(p for p in pieces if p not in special)
    (directory / "vocab.txt").write_text("\n".join(pieces) + "\n", encoding="utf-8")
    vocab = {line: i for i, line in enumerate(pieces)}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=False, strip_accents=False)
    unknown = sum(tokenizer.tokenize(text).count("[UNK]") for text in corpus[:200])
    if unknown:  # the demo is meaningless if words vanish into [UNK]
        raise RuntimeError(f"demo tokenizer maps {unknown} training pieces to [UNK]")
    tokenizer.save_pretrained(directory)


def free_directory(base: Path) -> Path:
    """`base` if it is free, else base-2, base-3, ...: a demo never overwrites an earlier one."""
    candidate, n = base, 1
    while os.path.lexists(candidate) and (not candidate.is_dir() or any(candidate.iterdir())):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate
