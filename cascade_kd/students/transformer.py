"""Transformer students: the teacher's own architecture with fewer (and optionally narrower)
layers, initialised from a subset of the teacher's layers (bottom, top, uniform, an explicit list)
or at random, embeddings copied, projected by PCA to a new width (XtremeDistil) or random."""

from __future__ import annotations

import copy
import re

import torch

from cascade_kd.errors import RecipeError
from cascade_kd.students.anatomy import embedding_parameters, ffn_attr, freeze_embeddings, layer_list, pca_axes
from cascade_kd.students.registry import StudentFamily, register


class TransformerFamily(StudentFamily):
    """Any Hugging Face encoder (BERT, mBERT, XLM-R, DistilBERT, ...), distilled into fewer layers."""

    kind = "transformer"
    layers_from_teacher = True
    label = "transformer"

    def config(self, t_config, spec, *, where: str = "student"):
        """The student's config and the teacher layers that initialise it, with every shape check.

        Used both before training (to check a whole cascade from configs alone) and to build the
        student, so a recipe that cannot be built is refused before the teacher trains.
        Returns (config, chosen 0-based teacher layers or None, whether layers have the teacher's shape).
        """
        t_layers, ffn = t_config.num_hidden_layers, ffn_attr(t_config)
        if spec.layers > t_layers:
            raise RecipeError(
                f"the student has {spec.layers} layers, more than its teacher's {t_layers}",
                where=f"{where}.layers",
                hint="each stage's student must be smaller than that stage's teacher",
            )
        config = copy.deepcopy(t_config)
        config.num_hidden_layers = spec.layers
        width_changes = spec.hidden is not None and spec.hidden != t_config.hidden_size
        if width_changes:
            config.hidden_size = spec.hidden
            config.num_attention_heads = spec.heads or max(1, t_config.num_attention_heads * spec.hidden // t_config.hidden_size)
            setattr(config, ffn, spec.intermediate or 4 * spec.hidden)
        else:
            config.num_attention_heads = spec.heads or t_config.num_attention_heads
            setattr(config, ffn, spec.intermediate or getattr(t_config, ffn))
        if config.hidden_size % config.num_attention_heads:
            raise RecipeError(f"hidden {config.hidden_size} is not a multiple of heads {config.num_attention_heads}",
                              where=f"{where}.heads")
        config.architectures = None
        # weight shapes depend on the widths only: a new head count still lets layers be copied
        same_shape = (config.hidden_size, getattr(config, ffn)) == (t_config.hidden_size, getattr(t_config, ffn))
        chosen = select_layers(spec.init, t_layers, spec.layers, f"{where}.init")
        if chosen is not None and not same_shape:
            raise RecipeError(
                "the student's layers have another shape than the teacher's, so they cannot be copied",
                where=f"{where}.init",
                hint="use init: random with a new hidden/heads/intermediate",
            )
        if spec.embeddings == "copy" and width_changes:
            raise RecipeError(
                f"embeddings cannot be copied into a student of width {spec.hidden} (teacher {t_config.hidden_size})",
                where=f"{where}.embeddings",
                hint="use embeddings: pca (the teacher's projected to the new width) or random",
            )
        return config, chosen, same_shape

    def build(self, teacher, spec, *, where: str = "student"):
        config, chosen, same_shape = self.config(teacher.config, spec, where=where)
        student = type(teacher)(config).float()
        # init: random starts the head (and pooler) fresh too: only the embeddings may come from the teacher
        _initialise(student, teacher, chosen, spec.embeddings, copy_rest=same_shape and chosen is not None)
        freeze_embeddings(student, spec.freeze_embeddings)
        return student

    def direct_spec(self, final, final_config, teacher_config):
        spec = final.model_copy(update={
            "hidden": final_config.hidden_size,
            "heads": final_config.num_attention_heads,
            "intermediate": getattr(final_config, ffn_attr(final_config)),
        })
        if final_config.hidden_size != teacher_config.hidden_size:
            # other width: teacher layers cannot be copied, embeddings are projected instead
            return spec.model_copy(update={"init": "random", "embeddings": "random" if final.embeddings == "random" else "pca"})
        if isinstance(final.init, list):
            return spec.model_copy(update={"init": "bottom"})
        return spec


register(TransformerFamily())


def select_layers(init, teacher_layers: int, student_layers: int, where: str) -> list[int] | None:
    """0-based teacher layer indices that initialise the student, or None for random init."""
    if init == "random":
        return None
    if init == "bottom":
        return list(range(student_layers))
    if init == "top":
        return list(range(teacher_layers - student_layers, teacher_layers))
    if init == "uniform":  # evenly spread, always keeping the last layer
        return [round((k + 1) * teacher_layers / student_layers) - 1 for k in range(student_layers)]
    chosen = [i - 1 for i in init]  # explicit, 1-based in the recipe
    if len(chosen) != student_layers:
        raise RecipeError(f"init lists {len(chosen)} layers but the student has {student_layers}", where=where)
    if max(chosen) >= teacher_layers:
        raise RecipeError(f"init names layer {max(chosen) + 1} but the teacher has {teacher_layers}", where=where)
    return chosen


@torch.no_grad()
def _initialise(student, teacher, chosen: list[int] | None, embeddings: str, copy_rest: bool) -> None:
    t_prefix, _ = layer_list(teacher)
    s_prefix, _ = layer_list(student)
    t_state = teacher.state_dict()
    s_emb = set(embedding_parameters(student))
    layer_key = re.compile(rf"^{re.escape(s_prefix)}\.(\d+)\.(.*)$")
    for key, value in student.state_dict().items():
        match = layer_key.match(key)
        if match:
            if chosen is None:
                continue
            source = f"{t_prefix}.{chosen[int(match.group(1))]}.{match.group(2)}"
        elif key in s_emb or ".embeddings." in f".{key}":
            if embeddings != "copy":
                continue
            source = key
        elif copy_rest:  # head, pooler, final norms: same shapes, so start from the teacher's
            source = key
        else:
            continue
        if source in t_state and t_state[source].shape == value.shape:
            value.copy_(t_state[source])
    if embeddings == "pca":
        _pca_embeddings(student, teacher)


@torch.no_grad()
def _pca_embeddings(student, teacher) -> None:
    """XtremeDistil: project the teacher's embeddings onto their top principal components."""
    t_word = teacher.get_input_embeddings().weight.float()
    mean, axes = pca_axes(t_word, student.config.hidden_size)  # [D_T, D_S]
    t_emb = embedding_parameters(teacher)
    word = student.get_input_embeddings().weight
    word.copy_(((t_word - mean) @ axes).to(word.dtype))
    for name, p in embedding_parameters(student).items():
        if p is word or p.dim() != 2 or name not in t_emb:
            continue
        source = t_emb[name].float()  # position / token type tables share the word axes, uncentred
        p.copy_((source @ axes).to(p.dtype))
