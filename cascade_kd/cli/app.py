"""The `cascade-kd` command: run, demo, eval, bench, export, trim, pretrain.

Any problem with the user's input is printed as one line (what, where, how to fix) and exits
with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from cascade_kd.errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cascade-kd", description="Distil multilingual encoders through cascades of teacher assistants.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a recipe: teacher, every stage, the direct baseline, the report")
    run.add_argument("recipe", type=Path)
    run.add_argument("--out", type=Path, required=True, help="RUN_DIR for checkpoints, metrics.json and report.md")
    run.add_argument("--resume", action="store_true", help="continue a run in RUN_DIR; finished models are not redone")
    run.add_argument("--overwrite", action="store_true", help="replace a non-empty RUN_DIR")

    demo = sub.add_parser("demo", help="the whole job offline on a generated 4-language NER task (a few minutes)")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="workspace (a free name is chosen if taken)")
    demo.add_argument("--seed", type=int, default=0)

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
    from cascade_kd.cli.pretrain import add_arguments as pretrain_arguments

    pretrain_arguments(pre)

    bench = sub.add_parser("bench", help="latency, throughput, memory and size of every model of a run against its "
                           "teacher (CPU; PyTorch fp32/bf16, onnxruntime fp32/int8)")
    bench.add_argument("run_dir", type=Path)
    bench.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    bench.add_argument("--seq-lens", type=int, nargs="+", default=[32, 128])
    bench.add_argument("--repeats", type=int, default=10)
    bench.add_argument("--backends", nargs="+", choices=["fp32", "bf16", "ort-fp32", "ort-int8"],
                       default=["fp32", "bf16", "ort-fp32", "ort-int8"],
                       help="PyTorch fp32, PyTorch bf16 autocast, onnxruntime fp32, onnxruntime dynamic int8 (default: all)")

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

    from cascade_kd.deploy.trim import add_arguments as trim_arguments

    trim = sub.add_parser("trim", help="keep only the word pieces the chosen languages' training data use: a "
                          "standalone smaller model + tokenizer, with a per-language coverage report")
    trim_arguments(trim)
    return p


def _say(message: str) -> None:
    print(message, flush=True)


def _cmd_run(args) -> None:
    from cascade_kd.config.schema import load_recipe

    recipe = load_recipe(args.recipe)  # before importing torch: a recipe typo is reported at once

    from cascade_kd.cascade import run_recipe
    from cascade_kd.evaluation.report import report_table

    from cascade_kd.training.distributed import is_main

    metrics = run_recipe(recipe, args.out, resume=args.resume, overwrite=args.overwrite, say=_say)
    if is_main():
        print("\n" + report_table(metrics))
        print(f"\nRUN_DIR: {args.out}  (report.md, metrics.json, teacher/, stages/)")


def _cmd_demo(args) -> None:
    from cascade_kd.cascade import run_recipe
    from cascade_kd.cli.demo import free_directory, generate
    from cascade_kd.config.schema import load_recipe
    from cascade_kd.evaluation.report import report_table

    workspace = free_directory(args.out)
    recipe_path = generate(workspace, seed=args.seed)
    _say(f"demo: generated a 4-language NER task (en, de, ru, el; 3 scripts) in {workspace}")
    recipe = load_recipe(recipe_path)
    run_dir = workspace / "run"
    metrics = run_recipe(recipe, run_dir, say=_say)
    print("\n" + report_table(metrics))
    print(f"\nRUN_DIR: {run_dir}  (report.md, metrics.json, teacher/, stages/); recipe: {recipe_path}")


def _cmd_eval(args) -> None:
    from cascade_kd.cascade import evaluate_run
    from cascade_kd.config.schema import load_recipe
    from cascade_kd.evaluation.report import report_table

    recipe_path = args.recipe or args.run_dir / "recipe.yaml"
    recipe = load_recipe(recipe_path)
    out = args.out or args.run_dir / f"eval-{args.split}"
    parallel = None
    if args.parallel is not None:
        from cascade_kd.evaluation.retrieval import tatoeba_pairs

        if args.parallel_limit is not None and args.parallel_limit < 1:
            raise UserError(f"--parallel-limit {args.parallel_limit} is not a positive number of pairs")
        if args.parallel_languages is not None and not args.parallel_languages.strip(" ,"):
            raise UserError("--parallel-languages is empty", hint="give codes such as deu,fra, or leave the flag out for all")
        parallel = tatoeba_pairs(args.parallel, args.parallel_languages, limit=args.parallel_limit)
    elif args.parallel_languages or args.parallel_limit:
        raise UserError("--parallel-languages and --parallel-limit need --parallel (the folder of parallel text)")
    metrics = evaluate_run(recipe, args.run_dir, split=args.split, out=out, say=_say, parallel=parallel)
    print("\n" + report_table(metrics))
    if parallel:
        from cascade_kd.evaluation.retrieval import markdown_table

        print("\n" + markdown_table(metrics["retrieval"]["summary"]))
    print(f"\nwritten: {out}/metrics.json, {out}/report.md")


def _cmd_bench(args) -> None:
    import json

    from cascade_kd.deploy.bench import bench_run, bench_table
    from cascade_kd.evaluation.report import write_outputs

    from cascade_kd.cascade.rundir import is_run
    from cascade_kd.cascade.run import read_metrics

    path = args.run_dir / "metrics.json"
    if not path.is_file() or not is_run(args.run_dir):  # bench adds its table to the run's own report
        raise UserError("no metrics.json: not a finished cascade-kd run", where=str(args.run_dir))
    read_metrics(path)  # a damaged metrics.json: one line, before any timing
    result = bench_run(args.run_dir, batch_sizes=args.batch_sizes, seq_lens=args.seq_lens, repeats=args.repeats,
                       backends=args.backends, say=_say)
    metrics = json.loads(path.read_text())
    metrics["latency"] = result
    write_outputs(args.run_dir, metrics)  # metrics.json and report.md gain the latency table
    print("\n" + bench_table(result))


def _cmd_pretrain(args) -> None:
    from cascade_kd.cascade import run_recipe
    from cascade_kd.cli.pretrain import recipe_from_args
    from cascade_kd.evaluation.report import report_table

    from cascade_kd.training.distributed import is_main

    recipe = recipe_from_args(args)
    metrics = run_recipe(recipe, args.out, resume=args.resume, overwrite=args.overwrite, say=_say)
    if is_main():
        print("\n" + report_table(metrics))
        print(f"\nmasked-LM teacher: {args.out / 'teacher'}  (the recipe as run: {args.out / 'recipe.yaml'})")


def _cmd_trim(args) -> None:
    from cascade_kd.deploy.trim import run_from_args

    report = run_from_args(args, say=_say)
    out = args.out or args.model_dir / "trimmed"
    print(f"written: {out} (vocabulary {report['vocab_before']:,} -> {report['vocab_after']:,} pieces; "
          f"{len(report['warnings'])} warning(s); details in trim.json)")


def _cmd_export(args) -> None:
    from cascade_kd.deploy.export import INT8_MIN_AGREEMENT, export_model

    minimum = INT8_MIN_AGREEMENT if args.int8_min_agreement is None else args.int8_min_agreement
    if not 0 <= minimum <= 1:
        raise UserError(f"--int8-min-agreement {minimum} is not a fraction between 0 and 1")
    info = export_model(args.model_dir, args.out, int8=args.int8, overwrite=args.overwrite, check_data=args.check_data,
                        check_examples=args.check_examples, int8_min_agreement=minimum, say=_say)
    out = args.out or args.model_dir / "onnx"
    sizes = ", ".join(f"{name} {info[k]['size_mb']:.2f} MB" for k, name in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")) if k in info)
    print(f"written: {out} ({sizes}; inputs {', '.join(info['inputs'])}; dynamic batch and sequence axes)")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = _parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress lines say what is happening
    handler = {"run": _cmd_run, "demo": _cmd_demo, "eval": _cmd_eval, "bench": _cmd_bench, "export": _cmd_export,
               "trim": _cmd_trim, "pretrain": _cmd_pretrain}[args.command]
    previous = _terminate_as_interrupt()
    try:
        handler(args)
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
