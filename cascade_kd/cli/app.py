"""The `cascade-kd` command: run, demo, eval, bench, export, trim, pretrain, report, compare.

A thin layer over the Python API (cascade_kd/api.py). Building the parser imports neither torch nor
transformers, so `--help` and argument errors answer at once; each command imports what it needs.
Any problem with the user's input is printed as one line (what, where, how to fix) and exits with
code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from cascade_kd.deploy.paths import INT8_NAME, ONNX_NAME, export_dir, trim_dir
from cascade_kd.errors import UserError
from cascade_kd.training.progress import print_line as _say  # the terminal's say: training lines stay above the bar

BACKENDS = ["fp32", "bf16", "ort-fp32", "ort-int8"]  # as cascade_kd.deploy.bench.BACKENDS (checked by a test)


def _seed(text: str) -> int:
    """A seed flag: a whole number of at least 0 (argparse's one-line error otherwise, exit code 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value < 2**32:  # the recipe's range (torch takes 64 bits; 32 is the usual range)
        raise argparse.ArgumentTypeError(f"{value} is out of range: seeds are 0 to 2**32 - 1")
    return value


class _Version(argparse.Action):
    """--version: the package's version and the plugins installed beside it (read from their
    metadata, not imported: a broken plugin still lets the version print)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from cascade_kd import __version__
        from cascade_kd.plugins import installed_plugins

        found = installed_plugins()
        sys.stdout.write(f"cascade-kd {__version__}\n" + "".join(
            f"plugin {name}: {value} (from {dist})\n" for name, value, dist in found))
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cascade-kd", description="Distil multilingual encoders through cascades of teacher assistants.")
    p.add_argument("--version", action=_Version, help="the version, and the plugins installed (cascade_kd.plugins)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a recipe: teacher, every stage, the direct baseline, the report")
    run.add_argument("recipe", type=Path)
    run.add_argument("--out", type=Path, help="RUN_DIR for checkpoints, metrics.json and report.md (required unless "
                     "--dry-run)")
    run.add_argument("--resume", action="store_true", help="continue a run in RUN_DIR; finished models are not redone")
    run.add_argument("--overwrite", action="store_true", help="replace a non-empty RUN_DIR")
    run.add_argument("--dry-run", action="store_true", help="make every check a run makes before training and print "
                     "the plan (each model's shape, parameters, epochs, losses); write nothing")
    run.add_argument("--seeds", type=_seed, nargs="+", metavar="SEED",
                     help="run the recipe once per seed, each in OUT/seed<S>, and write the aggregate (mean ± sd, "
                     "cascade against direct seed by seed) to OUT/report.html, report.md and aggregate.json")

    rep = sub.add_parser("report", help="rebuild RUN_DIR/report.html and the model cards (README.md) of a finished "
                         "run, or the report of a comparison directory")
    rep.add_argument("run_dir", type=Path)

    cmp = sub.add_parser("compare", help="compare finished runs: seeds of one recipe (mean ± sd) or recipes that "
                         "differ in a choice (differences matched by seed, seeds won)")
    cmp.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    cmp.add_argument("--out", type=Path, required=True, help="where to write aggregate.json, report.md, report.html")

    demo = sub.add_parser("demo", help="the whole job offline on a generated 4-language NER task (a few minutes)")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="workspace (a free name is chosen if taken)")
    demo.add_argument("--seed", type=_seed, default=0,
                      help="draws the generated data and is the recipe's seed (initialisations, batch order)")

    ev = sub.add_parser("eval", help="re-score every saved model of a run on the splits a recipe names")
    ev.add_argument("run_dir", type=Path)
    ev.add_argument("--recipe", type=Path, help="recipe naming the data (default: RUN_DIR/recipe.yaml)")
    ev.add_argument("--split", choices=["dev", "test"], default="test")
    ev.add_argument("--out", type=Path, help="where to write metrics.json and report.md (default RUN_DIR/eval-SPLIT)")
    ev.add_argument("--parallel", type=Path, help="also measure cross-lingual sentence retrieval on parallel text: a "
                    "folder in Tatoeba layout (tatoeba.xxx-eng.xxx / .eng), e.g. ../shared/data/tatoeba")
    ev.add_argument("--parallel-languages", help="comma-separated codes of that folder (e.g. deu,fra,cmn); default: all")
    ev.add_argument("--parallel-limit", type=int, help="at most this many sentence pairs per language")

    pre = sub.add_parser("pretrain", help="train a masked-LM encoder from scratch on plain text (a general teacher "
                         "for machines without pretrained weights); the model lands in OUT/teacher")
    pre.add_argument("--text", required=True, help="training text per language: a path template with {lang}, "
                     "one example per line (e.g. corpus/train-{lang}.txt)")
    pre.add_argument("--dev", required=True, help="dev text per language, same form (masked-token accuracy is scored there)")
    pre.add_argument("--languages", nargs="+", required=True, help="the language codes that fill {lang}")
    pre.add_argument("--tokenizer", required=True, help="tokenizer directory or hub name (e.g. ../shared/data/tokenizers/mbert-cased)")
    pre.add_argument("--out", type=Path, required=True, help="RUN_DIR: the model lands in RUN_DIR/teacher")
    pre.add_argument("--model-type", default="bert", help="a transformers model type with a masked-LM head (default bert)")
    pre.add_argument("--layers", type=int, default=4)
    pre.add_argument("--hidden", type=int, default=256)
    pre.add_argument("--heads", type=int, default=4)
    pre.add_argument("--intermediate", type=int, help="feed-forward width (default 4 x hidden)")
    pre.add_argument("--max-length", type=int, default=128)
    pre.add_argument("--epochs", type=float, default=3)
    pre.add_argument("--lr", type=float, default=5e-4)
    pre.add_argument("--batch-size", type=int, default=32)
    pre.add_argument("--mask-probability", type=float, default=0.15)
    pre.add_argument("--language-alpha", type=float, help="temperature sampling of languages (e.g. 0.3); default: as the data comes")
    pre.add_argument("--max-per-language", type=int, help="at most this many training lines per language")
    pre.add_argument("--seed", type=_seed, default=0)
    pre.add_argument("--resume", action="store_true", help="continue an interrupted pretraining run in --out")
    pre.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")

    bench = sub.add_parser("bench", help="latency, throughput, memory and size of every model of a run against its "
                           "teacher (CPU; PyTorch fp32/bf16, onnxruntime fp32/int8)")
    bench.add_argument("run_dir", type=Path)
    bench.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    bench.add_argument("--seq-lens", type=int, nargs="+", default=[32, 128])
    bench.add_argument("--repeats", type=int, default=10)
    bench.add_argument("--backends", nargs="+", choices=BACKENDS, default=BACKENDS,
                       help="PyTorch fp32, PyTorch bf16 autocast, onnxruntime fp32, onnxruntime dynamic int8 (default: all)")
    bench.add_argument("--models", nargs="+", metavar="NAME",
                       help="time only these models beside the teacher (names as in the report; default: all)")

    export = sub.add_parser("export", help="export a saved model to ONNX (and int8), checked against PyTorch")
    export.add_argument("model_dir", type=Path, help="a saved model: RUN_DIR/teacher or RUN_DIR/stages/NAME")
    export.add_argument("--onnx", action="store_true", required=True, help="export to ONNX (the one format so far)")
    export.add_argument("--int8", action="store_true", help="also write an onnxruntime dynamic int8 copy")
    export.add_argument("--out", type=Path, help="output folder (default MODEL_DIR/onnx)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing export")
    export.add_argument("--check-data", type=Path, help="inputs for the check: a recipe (its dev split) or a text "
                        "file, one example per line (default: the run's dev data, else generated ids)")
    export.add_argument("--check-examples", type=int, default=256, help="how many examples the check uses")
    export.add_argument("--int8-min-agreement", type=float, default=None,
                        help="minimum argmax agreement of int8 with PyTorch fp32, 0-1 (default 0.95)")
    export.add_argument("--score", nargs="?", const=True, default=None, metavar="RECIPE",
                        help="also score PyTorch and each exported file per language on the held-out split of "
                        "RECIPE (default: the run's own recipe.yaml); the scores go to export.json")

    trim = sub.add_parser("trim", help="keep only the word pieces the chosen languages' training data use: a "
                          "standalone smaller model + tokenizer, with a per-language coverage report")
    trim.add_argument("model_dir", type=Path, help="a saved model: RUN_DIR/teacher or RUN_DIR/stages/NAME")
    trim.add_argument("--recipe", type=Path, help="recipe naming the data (default: RUN_DIR/recipe.yaml)")
    trim.add_argument("--languages", nargs="+", help="languages whose training text decides the kept pieces "
                      "(default: the recipe's training languages)")
    trim.add_argument("--min-count", type=int, default=1, help="keep pieces seen at least this often (default 1)")
    trim.add_argument("--max-unk-increase", type=float, default=None,
                      help="percentage points of held-out [UNK] a chosen language may gain before a WARNING (default 1)")
    trim.add_argument("--strict", action="store_true", help="fail (exit 2, nothing written) on such a warning")
    trim.add_argument("--no-score", action="store_true", help="skip scoring the original and trimmed model")
    trim.add_argument("--no-transfer", action="store_true", help="keep the pieces of the labelled training text "
                      "only, not those of the recipe's data.transfer text")
    trim.add_argument("--out", type=Path, help="output folder (default MODEL_DIR/trimmed)")
    trim.add_argument("--overwrite", action="store_true", help="replace an existing trimmed model")
    return p


def _cmd_run(args) -> None:
    from cascade_kd.config import Recipe

    if args.out is None and not args.dry_run:
        raise UserError("run needs --out RUN_DIR", hint="or --dry-run to check the recipe and print its plan only")
    recipe = Recipe.from_yaml(args.recipe)  # before importing torch: a recipe typo is reported at once
    _quiet_transformers()

    from cascade_kd import api
    from cascade_kd.evaluation.report import report_table
    from cascade_kd.training.distributed import is_main, main_say

    if args.dry_run:
        from cascade_kd.cascade.dry_run import plan_table

        if args.seeds is not None:
            raise UserError("--dry-run checks one run: leave --seeds out (every seed's run has the same plan)")
        rows = api.dry_run(recipe, args.out, resume=args.resume, overwrite=args.overwrite, say=main_say(_say))
        if is_main():
            flags = "".join(f" --{f}" for f in ("resume", "overwrite") if getattr(args, f))
            print("\n" + plan_table(rows) + "\n\nDry run: every check passed; nothing was written. Run it with "
                  + (f"--out {args.out}{flags}" if args.out else "--out RUN_DIR") + ".")
        return
    if args.seeds is not None:
        from cascade_kd.evaluation.compare_report import pairs_table

        aggregate = api.run_seeds(recipe, args.out, args.seeds, resume=args.resume, overwrite=args.overwrite, say=_say)
        if is_main():
            if aggregate["pairs"]:
                print("\n" + pairs_table(aggregate["pairs"]))
            print(f"\nOUT: {args.out}  (report.html, report.md, aggregate.json; one RUN_DIR per seed: seed<S>/)")
        return
    metrics = api.run(recipe, args.out, resume=args.resume, overwrite=args.overwrite, say=_say)
    if is_main():
        print("\n" + report_table(metrics))
        print(f"\nRUN_DIR: {args.out}  ({_run_files(args.out)})")


def _run_files(run_dir: Path) -> str:
    """What a finished run holds, for its closing line (a teacher-only run has no stages/)."""
    names = ("report.html", "report.md", "metrics.json", "teacher/", "stages/")
    return ", ".join(n for n in names if (Path(run_dir) / n.rstrip("/")).exists())


def _cmd_demo(args) -> None:
    from cascade_kd import api
    from cascade_kd.cli.demo import free_directory, generate
    from cascade_kd.evaluation.report import report_table

    workspace = free_directory(args.out)
    recipe_path = generate(workspace, seed=args.seed)
    _say(f"demo: generated a 4-language NER task (en, de, ru, el; 3 scripts) in {workspace}")
    run_dir = workspace / "run"
    metrics = api.run(recipe_path, run_dir, say=_say)
    print("\n" + report_table(metrics))
    print(f"\nRUN_DIR: {run_dir}  ({_run_files(run_dir)}); recipe: {recipe_path}")


def _cmd_eval(args) -> None:
    from cascade_kd import api
    from cascade_kd.cascade.rundir import eval_dir
    from cascade_kd.evaluation.report import report_table
    from cascade_kd.evaluation.retrieval import markdown_table

    out = eval_dir(args.run_dir, args.split, args.out)
    metrics = api.evaluate(args.run_dir, recipe=args.recipe, split=args.split, out=out, parallel=args.parallel,
                           parallel_languages=args.parallel_languages, parallel_limit=args.parallel_limit, say=_say)
    print("\n" + report_table(metrics))
    if "retrieval" in metrics:
        print("\n" + markdown_table(metrics["retrieval"]["summary"]))
    print(f"\nwritten: {out}/metrics.json, {out}/report.md")


def _cmd_bench(args) -> None:
    from cascade_kd import api
    from cascade_kd.deploy.bench import bench_table, best_section

    result = api.bench(args.run_dir, batch_sizes=args.batch_sizes, seq_lens=args.seq_lens, repeats=args.repeats,
                       backends=args.backends, models=args.models, say=_say)
    print("\n".join(["", bench_table(result), *best_section(result)]))


def _cmd_pretrain(args) -> None:
    from cascade_kd.cli.pretrain import recipe_from_args

    recipe = recipe_from_args(args)  # its errors name the flags (Recipe names)
    _quiet_transformers()

    from cascade_kd import api
    from cascade_kd.evaluation.report import report_table
    from cascade_kd.training.distributed import is_main

    metrics = api.run(recipe, args.out, resume=args.resume, overwrite=args.overwrite, say=_say)
    if is_main():
        print("\n" + report_table(metrics))
        print(f"\nmasked-LM teacher: {args.out / 'teacher'}  (the recipe as run: {args.out / 'recipe.yaml'})")


def _cmd_trim(args) -> None:
    from cascade_kd import api

    options = {} if args.max_unk_increase is None else {"max_unk_increase": args.max_unk_increase}
    report = api.trim(args.model_dir, args.out, recipe=args.recipe, languages=args.languages, min_count=args.min_count,
                      score=not args.no_score, strict=args.strict, overwrite=args.overwrite,
                      with_transfer=not args.no_transfer, say=_say, **options)
    out = trim_dir(args.model_dir, args.out)
    print(f"written: {out} (vocabulary {report['vocab_before']:,} -> {report['vocab_after']:,} pieces; "
          f"{len(report['warnings'])} warning(s); details in trim.json)")


def _cmd_export(args) -> None:
    from cascade_kd import api

    options = {} if args.int8_min_agreement is None else {"int8_min_agreement": args.int8_min_agreement}
    info = api.export_onnx(args.model_dir, args.out, int8=args.int8, overwrite=args.overwrite,
                           check_data=args.check_data, check_examples=args.check_examples, score=args.score,
                           say=_say, **options)
    out = export_dir(args.model_dir, args.out)
    sizes = ", ".join(f"{name} {info[k]['size_mb']:.2f} MB" for k, name in (("fp32", ONNX_NAME), ("int8", INT8_NAME)) if k in info)
    print(f"written: {out} ({sizes}; inputs {', '.join(info['inputs'])}; dynamic batch and sequence axes)")


def _cmd_report(args) -> None:
    from cascade_kd import api

    written = api.report(args.run_dir)
    print(f"written: {', '.join(str(p) for p in written)}")


def _cmd_compare(args) -> None:
    from cascade_kd import api
    from cascade_kd.evaluation.compare_report import pairs_table

    aggregate = api.compare(args.run_dirs, args.out)
    if aggregate["pairs"]:
        print(pairs_table(aggregate["pairs"]))
    print(f"\nwritten: {args.out / 'report.html'}, report.md, aggregate.json ({len(aggregate['variants'])} variant(s))")


COMMANDS = {"run": _cmd_run, "demo": _cmd_demo, "eval": _cmd_eval, "bench": _cmd_bench, "export": _cmd_export,
            "trim": _cmd_trim, "pretrain": _cmd_pretrain, "report": _cmd_report, "compare": _cmd_compare}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = _parser().parse_args(argv)
    previous = _terminate_as_interrupt()
    try:
        if args.command not in ("run", "pretrain"):  # those read the recipe first, before the heavy imports
            _quiet_transformers()
        COMMANDS[args.command](args)
    except UserError as err:
        rank = os.environ.get("RANK", "0")  # under a launcher, say which process failed
        print(f"error{'' if rank == '0' else f' (process {rank})'}: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as stop:
        print(f"{'terminated' if isinstance(stop, Terminated) else 'interrupted'}: finished models are kept; "
              "continue with --resume", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130
    except OSError as exc:  # a write that no check could foresee: the disk filled, the location went read-only
        from cascade_kd.fileio import output_problem

        if output_problem(exc) is None:
            raise
        print(f"error: {output_problem(exc)}{f': {exc.filename}' if exc.filename else ''} (free some space or choose "
              "another location, then run the command again; a run continues with --resume)", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress lines say what is happening


class Terminated(BaseException):
    """SIGTERM, raised where the program is (like KeyboardInterrupt for SIGINT), so that every
    atomic write in progress cleans up and the same 'continue with --resume' line is printed."""


def _terminate_as_interrupt():
    """Turn SIGTERM into `Terminated` (in the main thread, when nobody else handles it); returns
    the handler to restore, or None."""
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return None

    def stop(signum, frame):
        raise Terminated()

    return signal.signal(signal.SIGTERM, stop)


if __name__ == "__main__":
    sys.exit(main())
