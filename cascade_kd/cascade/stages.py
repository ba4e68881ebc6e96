"""The models of a cascade: the teacher (loaded, fine-tuned or trained) and each distilled stage,
each saved to RUN_DIR with its marker once finished, so a resumed run never recomputes it."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch

from cascade_kd.cascade.job import Job
from cascade_kd.cascade.rundir import MARKER, finished_model, foreign_in_model_dir, model_dir, model_dirs
from cascade_kd.cascade.plan import final_spec, learns_from_teacher
from cascade_kd.config.schema import StageConfig, StudentConfig, where
from cascade_kd.losses.base import LossTerm, Reads
from cascade_kd.losses.guides import guided
from cascade_kd.losses.logits import HardLabelCE
from cascade_kd.losses.registry import build_terms
from cascade_kd.students import build_student, count_parameters, family, family_of
from cascade_kd.students.hub import create_model, load_checkpoint, load_model, save_checkpoint, use_attention_outputs
from cascade_kd.training.distributed import barrier, is_main, on_main, process_state
from cascade_kd.training.loop import train
from cascade_kd.training.progress import precision_name
from cascade_kd.training.setup import resolve_precision
from cascade_kd.training.state import saved_stream
from cascade_kd.training.task import DistillationTask, reads_of
from cascade_kd.training.teacher import CachedTeacher, DenseGuides, LiveTeacher
from cascade_kd.training.teacher_cache import CacheRequest, TeacherCache, build_shards, cache_key, finish_cache, plan_cache


def _save_model(job: Job, model, directory: Path, info: dict, projections=None, link_from=()) -> None:
    """Save a finished model (main process only) and drop its training state, which it supersedes.
    `link_from`: directories of models whose identical weight files this one links instead of copying
    (the teacher it was loaded from unchanged; a frozen student's table is its teacher's)."""
    info["params"] = count_parameters(model)  # now, while requires_grad says what this model trained
    if not is_main():
        return
    extra = {}
    if projections is not None and len(projections):
        from safetensors.torch import save

        extra["projections.safetensors"] = save({k: v.detach().cpu().contiguous() for k, v in projections.state_dict().items()})
    # stage.json last, listing the files; what else is in an earlier copy of the directory is kept
    save_checkpoint(model, job.tokenizer, directory, extra_files=extra, record=(MARKER, info),
                    keep=foreign_in_model_dir(directory), link_from=link_from)
    shutil.rmtree(job.state_dir(directory.name), ignore_errors=True)


def _load_finished(job: Job, directory: Path, info: dict):
    """A model the run finished before; a training state a kill left between the model's save and
    the state's removal goes now (the model supersedes it)."""
    if is_main():
        shutil.rmtree(job.state_dir(directory.name), ignore_errors=True)
    return load_checkpoint(directory, job.data.task), info


# Every model of a run draws from a random stream of its own (initialisation, batch order, masks,
# dropped guides): the teacher's is stream 0 of the recipe's seed, stage i's stream i + 1, and the
# direct baseline shares the last stage's (both see the same batches). Seeds are SEED_STRIDE streams
# apart so that no two (seed, model) pairs of a `--seeds` set share one: with seed + i + 1, stage 1
# of seed 0 and stage 0 of seed 1 drew the same, and a grid that trains one model at two positions
# counted one run twice. Seed 0's streams are unchanged by the stride.
SEED_STRIDE = 10_007


def stream_seed(seed: int, index: int) -> int:
    """The random stream of stage `index` (-1: the teacher) of a run with recipe seed `seed`."""
    return seed * SEED_STRIDE + index + 1


def stage_stream(job: Job, name: str, index: int) -> int:
    """The stream a stage draws: stream_seed, or, for a stage resumed mid-way, the one its training
    state recorded, so that the resume draws what the interrupted stage would have; a state written
    before streams were recorded (and the stride) drew seed + index + 1."""
    seed = job.recipe.seed
    resumed, recorded = saved_stream(job.state_dir(name))
    if not resumed:
        return stream_seed(seed, index)
    return recorded if recorded is not None else seed + index + 1


def get_teacher(job: Job):
    """Load, fine-tune or train the teacher; saved to RUN_DIR/teacher."""
    recipe, out = job.recipe, model_dir(job.out, "teacher")
    fingerprint = recipe.fingerprint()
    info = finished_model(out, fingerprint, job.say, key=job.model_keys["teacher"])
    if info is not None:
        job.say("teacher: already trained, loading it (resume)")
        return _load_finished(job, out, info)
    t = recipe.teacher
    seed = stage_stream(job, "teacher", -1)
    torch.manual_seed(seed)
    if t.model is not None:
        model, has_head = load_model(recipe.model_path(t.model), job.data.task, job.data.labels,
                                     trust_remote_code=t.trust_remote_code, where=where(recipe, "teacher", "model"))
    else:
        model = create_model(t.config, job.data.task, job.data.labels, len(job.tokenizer), job.tokenizer.pad_token_id,
                             where=where(recipe, "teacher", "config"))
        has_head = False  # a model made from its config: its head is new
    finetune = t.trains(has_head)
    info = {"recipe": fingerprint, "model_key": job.model_keys["teacher"], "role": "teacher", "trained": finetune}
    if finetune:
        cfg = recipe.teacher_train()
        use_attention_outputs(model, False)
        task = DistillationTask(model, [LossTerm(1.0, HardLabelCE())], logits_at_labels=job.masked_lm)
        train_data, blocks = job.training_data()
        job.say(f"teacher: training {model.config.num_hidden_layers} layers x {model.config.hidden_size} "
                f"for {cfg.epochs:g} epochs on {len(train_data)} examples"
                + (" (masked-LM)" if job.masked_lm else ""))
        with job.monitor("teacher", cfg) as monitor:
            result = train(task, job.stage_data(train_data, blocks, seed), cfg,
                           evaluate=lambda m: job.dev_score(m, cfg), desc="teacher", state_dir=job.state_dir("teacher"),
                           monitor=monitor)
        info.update(dev=result.best_score, best_epoch=result.best_epoch, wall_time_s=result.wall_time_s,
                    tokens_per_s=result.tokens_per_s, steps=result.steps, epochs=cfg.epochs, seed=recipe.seed, stream=seed, examples=len(train_data),
                    history=result.history, curve=result.curve)
    # a finished model of another run (a grid sharing one fine-tuned teacher) saved unchanged: its
    # weight files are linked; a user's own model directory is copied, never linked
    source = Path(recipe.model_path(t.model)) if t.model is not None and not finetune else None
    _save_model(job, model, out, info, link_from=[source] if source and (source / MARKER).is_file() else [])
    return model, info


def distil_stage(job: Job, name: str, stage: StageConfig, teacher, index: int, *, spec: StudentConfig | None = None,
                 guides: list | None = None, previous=None):
    """Build the student from `teacher` (or continue `previous`, the chain's previous model, with
    `student: previous`), distil it, save the best dev checkpoint. With `guides` (a dense stage: the
    chain's models up to `teacher`), the logit losses learn from all of them."""
    recipe = job.recipe
    out = model_dir(job.out, name)
    info = finished_model(out, recipe.fingerprint(), job.say, key=job.model_keys[name])
    if info is not None:
        job.say(f"{name}: already distilled, loading it (resume)")
        return _load_finished(job, out, info)
    stage_where = where(recipe, "cascade", "stages", index)
    seed = stage_stream(job, name, index)
    torch.manual_seed(seed)
    student_spec = spec or stage.student  # the direct baseline's spec is derived from the final stage's (direct_spec)
    # the spec that built the student: a previous stage's when this one trains that student further
    built_by = final_spec(recipe.cascade.stages[:index]) if student_spec == "previous" else student_spec
    if student_spec == "previous":
        # the previous stage's student, trained further (its saved copy stays as it was), with the
        # parameters frozen that the spec which built it froze
        student = copy.deepcopy(previous).float().requires_grad_(True)
        family(built_by.kind).refreeze(student, built_by)
    else:
        student = build_student(teacher, student_spec, where=f"{stage_where}.student")
    cfg = recipe.stage_train(index)
    terms = build_terms(recipe.stage_losses(stage), teacher.config, student.config, where=stage_where)
    if guides:  # dense guidance: the losses on the teacher's logits learn from every guide
        terms = guided(terms, stage.guide_reduction)
    student_reads, teacher_reads = reads_of(terms)
    needs_attn = bool(student_reads.attention or teacher_reads.attention)
    use_attention_outputs(teacher, needs_attn)
    use_attention_outputs(student, needs_attn)
    params = count_parameters(student)
    job.say(f"{name}: {family_of(student).shape(student.config)} from {family_of(teacher).shape(teacher.config)}; losses "
            + ", ".join(f"{t.name}*{t.weight:g}" for t in terms)
            + f"; {params['params_trainable']:,} of {params['params_total']:,} parameters trainable"
            + (f"; dense guidance from {len(guides)} models, {stage.drop_guides} dropped per batch, "
               f"{'summed' if stage.guide_reduction == 'sum' else 'averaged'}" if guides else ""))
    with_transfer = bool(job.transfer) and learns_from_teacher(recipe, stage)  # the teacher labels the transfer text
    train_data, blocks = job.training_data(with_transfer)
    if with_transfer:
        job.say(f"  {name}: + {sum(len(enc) for _, enc in job.transfer.values()):,} unlabelled transfer examples "
                f"({', '.join(job.transfer)}), labelled by the teacher")
    frozen = frozen_side(job, teacher, teacher_reads, cfg, train_data, guides, stage.drop_guides, seed)
    task = DistillationTask(student, terms, frozen, logits_at_labels=job.masked_lm)
    # a stage with no task-output loss (representation only, XtremeDistil's first stage) leaves the
    # head untrained: its dev score says nothing, so the last epoch is kept instead of the best one
    selects = student_reads.logits
    if not selects:
        job.say(f"  {name}: no logit or label loss: the last epoch's weights are kept (no selection on dev)")
    with job.monitor(name, cfg) as monitor:
        result = train(task, job.stage_data(train_data, blocks, seed), cfg,
                       evaluate=(lambda m: job.dev_score(m, cfg)) if selects else None, desc=name,
                       state_dir=job.state_dir(name), monitor=monitor)
    use_attention_outputs(student, False)
    use_attention_outputs(teacher, False)
    info = {"recipe": recipe.fingerprint(), "model_key": job.model_keys[name], "role": "direct" if name == "direct" else "stage",
            "teacher": teacher.config.num_hidden_layers, "dev": result.best_score, "best_epoch": result.best_epoch,
            "wall_time_s": result.wall_time_s, "tokens_per_s": result.tokens_per_s, "steps": result.steps,
            "epochs": cfg.epochs, "seed": recipe.seed, "stream": seed, "examples": len(train_data),
            "with_transfer": with_transfer,  # the teacher-labelled transfer text among the examples
            # what the model card describes; none for a previous stage's student trained further
            "student": None if student_spec == "previous" else student_spec.model_dump(mode="json"),
            "kind": built_by.kind,  # the family that built it (for `previous`, the stage that did)
            "losses": [{"name": t.name, "weight": t.weight, "pairs": [list(p) for p in getattr(t.loss, "pairs", [])]}
                       for t in terms],
            "history": result.history, "curve": result.curve}
    _save_model(job, student, out, info, task.projections, link_from=[p for p in model_dirs(job.out) if p != out])
    return student, info


def frozen_side(job: Job, teacher, reads: Reads, cfg, train_data, guides: list | None, drop: int, seed: int):
    """What the student learns from, frozen and kept out of DDP: the stage's teacher run live, or
    its outputs read from the cache (`teacher_cache`); with dense guidance, every guide (the
    chain's larger models, run live, the teacher as above)."""
    frozen = LiveTeacher(teacher)
    if cfg.teacher_cache != "off" and reads:
        frozen = CachedTeacher(teacher_cache(job, teacher, reads, cfg, train_data), teacher)
    if guides:
        frozen = DenseGuides([frozen if g is teacher else LiveTeacher(g) for g in guides],
                             teacher=next(k for k, g in enumerate(guides) if g is teacher), drop=drop, seed=seed)
    return frozen


def teacher_cache(job: Job, teacher, reads: Reads, cfg, train_data) -> TeacherCache:
    """The stage teacher's outputs on `train_data` (what the losses `reads` of it), built (or
    completed) in RUN_DIR/cache/<key>.

    The main process computes the key and checks the disk; every process then builds its share of
    the missing shards; the main process marks the cache complete."""
    precision = resolve_precision(cfg.precision)
    request = CacheRequest(
        logits=reads.logits, hidden=reads.hidden, attention=reads.attention,
        dtype=cfg.teacher_cache, precision=precision_name(precision),
    )
    token_task = job.data.task == "token"

    def plan():
        directory = job.out / "cache" / cache_key(teacher, train_data, request)
        return directory, plan_cache(teacher.config, [len(x) for x in train_data], request, directory,
                                     token_task=token_task, say=job.say)

    directory, missing = on_main(plan)
    state = process_state()
    build_shards(teacher, train_data, request, directory, missing[state.process_index :: state.num_processes],
                 token_task=token_task, pad_id=job.pad_id, batch_size=cfg.eval_batch_size, device=state.device)
    barrier()  # every process's shards are written
    if is_main() and not (directory / "meta.json").is_file():
        finish_cache(directory, request, len(train_data))
    barrier()
    return TeacherCache(directory, request, teacher.config, token_task)
