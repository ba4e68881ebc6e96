"""The cascade: plan (checks from configs), job (data and tokenizer), stages (teacher and students),
RUN_DIR (manifest, markers, resume) and the run that ties them together."""

from cascade_kd.cascade.job import Job, prepare
from cascade_kd.cascade.plan import check_cascade, direct_spec, final_spec
from cascade_kd.cascade.rundir import MARKER
from cascade_kd.cascade.run import evaluate_run, run_recipe, score_models
from cascade_kd.cascade.stages import distil_stage, get_teacher

__all__ = ["MARKER", "Job", "check_cascade", "direct_spec", "distil_stage", "evaluate_run", "final_spec", "get_teacher",
           "prepare", "run_recipe", "score_models"]
