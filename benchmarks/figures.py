"""The results page's figures, drawn from the cross-lingual benchmark's saved results.

    python benchmarks/figures.py [--out docs/images]

Reads `benchmarks/results/xlingual.json` (the full mode: PAN-X) and `xlingual_small.json` (whose
SIB-200 zero-shot runs have the full mode's sizes) and writes one SVG per figure, with the report's
own plotting functions (`cascade_kd.evaluation.plots`): per-language retention heatmaps (English
first, then the zero-shot languages from the teacher's best to its worst) and the per-language
difference between a cascade and direct distillation of the same shape, as the benchmark's
comparison (`ckd.compare`, matched by seed) computed it. Nothing is trained, timed or compared
here: the figures show what the results files hold, means over the seeds they hold, and each
title says how many. A model, comparison or setting missing from a file is left out, and said.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
from pathlib import Path

from cascade_kd.evaluation.plots import differences, retention_heatmap

RESULTS = Path(__file__).resolve().parent / "results"
DOCS_IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"

# (file, setting, task's name, models shown in the heatmap)
HEATMAPS = {
    "xlingual-panx-zero-shot-retention.svg": (
        "xlingual.json", "panx-zs", "PAN-X NER (F1)",
        ["12→6", "12→6→3", "12→6 + transfer text", "12→6→3 + transfer text", "BiLSTM (XtremeDistil)"]),
    "xlingual-sib200-zero-shot-retention.svg": (
        "xlingual_small.json", "sib-zs", "SIB-200 topics (accuracy)",
        ["12→6", "12→6→3", "12→6 + transfer text", "12→6→3 + transfer text", "BiLSTM (XtremeDistil)"]),
}
# (file, setting, task's name, the comparison: its "what" in the setting's "pairs")
DIFFERENCES = {
    "xlingual-sib200-cascade-vs-direct.svg": ("xlingual_small.json", "sib-zs", "SIB-200, 701 English sentences",
                                              "12→6→3 against 12→3 direct"),
    "xlingual-panx-cascade-vs-direct.svg": ("xlingual.json", "panx-zs", "PAN-X, 20,000 English sentences",
                                            "12→6→3 against 12→3 direct"),
}


def load(name: str, setting: str, results: Path) -> dict | None:
    return read_settings(results / name).get(setting)


@functools.cache
def read_settings(path: Path) -> dict:
    """A results file's settings, read once however many figures draw from it ({} if absent)."""
    return json.loads(path.read_text(encoding="utf-8"))["settings"] if path.is_file() else {}


def language_order(entry: dict) -> list[str]:
    """The training languages, then the others from the teacher's best score to its worst."""
    teacher = entry["models"]["teacher"]["per_language"]
    seen = [lang for lang in entry["languages"] if lang in entry["train_languages"]]
    rest = [lang for lang in entry["languages"] if lang not in seen]
    return seen + sorted(rest, key=lambda lang: -teacher[lang]["mean"])


def mean_retention(model: dict, lang: str) -> float | None:
    values = [s["retention_per_language"][lang] for s in model["seeds"].values()
              if s.get("retention_per_language", {}).get(lang) is not None]
    return statistics.mean(values) if values else None


def retention_rows(entry: dict, wanted: list[str]) -> tuple[list[str], list[str], list[list[float | None]], list[int | None]]:
    """The models of `wanted` the entry holds, the language order, each model's mean retention per
    language and the column of its worst zero-shot language."""
    shown = [m for m in wanted if m in entry["models"]]
    langs = language_order(entry)
    values = [[mean_retention(entry["models"][m], lang) for lang in langs] for m in shown]
    zero_shot = [j for j, lang in enumerate(langs) if lang not in entry["train_languages"]]
    worst = [min((j for j in zero_shot if row[j] is not None), key=lambda j: row[j], default=None) for row in values]
    return shown, langs, values, worst


def heatmap(entry: dict, task: str, wanted: list[str], say) -> str:
    """`say` is told of each wanted model the results lack (the figure is drawn without it)."""
    shown, langs, values, worst = retention_rows(entry, wanted)
    for missing in [m for m in wanted if m not in shown]:
        say(f"{missing!r} is not in the results yet: left out")
    seeds = [len(entry["models"][m]["seeds"]) for m in shown]
    rows = [f"{m} · {n} seed{'s' if n > 1 else ''}" for m, n in zip(shown, seeds)]
    title = f"{task}, zero-shot from English: share of the teacher's score kept, per language (mean over seeds)"
    return retention_heatmap(rows, langs, values, title, worst=worst)


class NotTrained(Exception):
    """What a figure needs is not in the results yet."""


def difference_values(entry: dict, what: str) -> tuple[list[str], list[str], list[list[float]]]:
    """The comparison `what` of the entry's pairs: its seeds, the language order, and per language
    the difference in points on each of those seeds (the comparison's own figures, paired by seed)."""
    pair = next((p for p in entry.get("pairs", []) if p["what"] == what), None)
    if pair is None:
        raise NotTrained(f"no comparison {what!r} yet (it needs two or more finished runs of its config)")
    if "per_language" not in pair:
        raise NotTrained(f"no per-language differences for {what!r} (kept since 2026-12-06: python "
                         "benchmarks/xlingual.py --collect-only adds them where the runs are there to compare)")
    seeds = [str(s) for s in pair["seeds"]]
    # a language where no seed has a difference (neither model scored there) has no bar
    values = {lang: [v for s in seeds if (v := pair["per_language"].get(lang, {}).get(s)) is not None]
              for lang in language_order(entry)}
    langs = [lang for lang, v in values.items() if v]
    if not langs:  # no seed both models ran (or no value on any): nothing to draw, the old figure stays
        raise NotTrained(f"seed on which both sides of {what!r} have scores")
    return seeds, langs, [values[lang] for lang in langs]


def difference(entry: dict, task: str, what: str) -> str:
    seeds, langs, per_seed = difference_values(entry, what)
    means = [statistics.mean(v) for v in per_seed]
    sds = [statistics.stdev(v) if len(v) > 1 else None for v in per_seed]
    cascade, _, direct = what.partition(" against ")
    title = f"{task}: {cascade} minus {direct}, points per language (seeds {', '.join(seeds)}: bars the mean, dots each seed)"
    return differences(langs, means, title, "points", sds=sds, per_seed=per_seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DOCS_IMAGES, help="folder for the SVG files (default: docs/images)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the results files")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    drawings = [(name, file, setting,
                 lambda e, name=name, task=task, wanted=wanted: heatmap(e, task, wanted, say=lambda m: print(f"{name}: {m}")))
                for name, (file, setting, task, wanted) in HEATMAPS.items()]
    for name, (file, setting, task, what) in DIFFERENCES.items():
        drawings.append((name, file, setting, lambda e, task=task, what=what: difference(e, task, what)))
    for name, file, setting, draw in drawings:
        entry = load(file, setting, args.results)
        if entry is None:
            print(f"{name}: skipped, no {setting!r} results in {args.results / file}")
            continue
        try:
            svg = draw(entry)
        except NotTrained as missing:
            print(f"{name}: skipped, {setting!r}: {missing}")
            continue
        target = args.out / name
        tmp = target.with_suffix(".svg.tmp")
        tmp.write_text(svg, encoding="utf-8")
        tmp.replace(target)
        print(f"{name}: {len(svg) / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
