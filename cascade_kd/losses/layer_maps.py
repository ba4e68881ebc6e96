"""Layer references and layer maps: which student layer learns from which teacher layer.

One numbering for every feature (see cascade_kd/students/features.py):

    0 or "embeddings"        the embedding output (hidden states only)
    1 .. L                   the output / attention of transformer layer k (1-based)
    "last" or -1             layer L; -2 is layer L-1, and so on

A map is a list of (teacher_layer, student_layer) pairs in that numbering.
"""

from __future__ import annotations

from cascade_kd.errors import RecipeError

LayerRef = int | str


def resolve_layer(ref: LayerRef, num_layers: int, *, feature: str = "hidden", where: str = "layer") -> int:
    """Turn a symbolic layer reference into a layer number in 0..L (hidden) or 1..L (attention)."""
    if isinstance(ref, bool):  # bool is an int subclass: reject it explicitly
        raise RecipeError(f"layer reference {ref!r} is not a layer", where=where)
    if isinstance(ref, str):
        name = ref.strip().lower()
        if name in ("embeddings", "emb", "embedding"):
            index = 0
        elif name in ("last", "top"):
            index = num_layers
        else:
            try:
                index = int(name)
            except ValueError:
                raise RecipeError(
                    f"unknown layer reference {ref!r}",
                    where=where,
                    hint="use an integer, a negative index, 'embeddings' or 'last'",
                ) from None
            return resolve_layer(index, num_layers, feature=feature, where=where)
    elif isinstance(ref, int):
        index = num_layers + 1 + ref if ref < 0 else ref
    else:
        raise RecipeError(f"layer reference {ref!r} is neither an integer nor a name", where=where)
    lowest = 0 if feature == "hidden" else 1
    if index == 0 and feature == "attention":
        raise RecipeError(
            f"attention layer {ref!r} does not exist: the embeddings (layer 0) have no attention map "
            f"(attention layers are 1 to {num_layers})",
            where=where,
            hint="pair the embeddings in a hidden-state loss (hidden_mse, hidden_cos) instead",
        )
    if not lowest <= index <= num_layers:
        what = "hidden states 0 (embeddings) to" if feature == "hidden" else "attention layers 1 to"
        raise RecipeError(
            f"layer {ref!r} is out of range: the model has {num_layers} layers ({what} {num_layers})",
            where=where,
        )
    return index


def layer_pairs(
    strategy: str | list,
    teacher_layers: int,
    student_layers: int,
    *,
    feature: str = "hidden",
    where: str = "layer_map",
) -> list[tuple[int, int]]:
    """Resolve a layer-map strategy (or an explicit list of [teacher, student] pairs).

    top_only     last <-> last (LightMBERT, MiniLM)
    uniform      student k <-> teacher round(k * L_T / L_S), k = 1..L_S (TinyBERT's i <-> i*k,
                 generalised with rounding when L_T is not a multiple of L_S); hidden maps also
                 pair the embeddings 0 <-> 0
    top_aligned  student k <-> teacher L_T - L_S + k (XtremeDistilTransformers: the student's
                 states against the teacher's top L_S+1 states); for hidden, k = 0..L_S
    skip2        student k <-> teacher 2k (MiniALBERT)
    """
    if isinstance(strategy, list):
        pairs = []
        for i, pair in enumerate(strategy):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise RecipeError(
                    f"entry {i} is {pair!r}, expected a [teacher_layer, student_layer] pair", where=where
                )
            t = resolve_layer(pair[0], teacher_layers, feature=feature, where=f"{where}[{i}][0] (teacher)")
            s = resolve_layer(pair[1], student_layers, feature=feature, where=f"{where}[{i}][1] (student)")
            pairs.append((t, s))
        if not pairs:
            raise RecipeError("an explicit layer map needs at least one pair", where=where)
        return pairs

    first = 0 if feature == "hidden" else 1
    if strategy == "top_only":
        return [(teacher_layers, student_layers)]
    if strategy == "uniform":
        pairs = [(round(k * teacher_layers / student_layers), k) for k in range(1, student_layers + 1)]
        return ([(0, 0)] if feature == "hidden" else []) + pairs
    if strategy == "top_aligned":
        if student_layers > teacher_layers:
            raise RecipeError(
                f"top_aligned needs a student no deeper than its teacher "
                f"({student_layers} > {teacher_layers} layers)",
                where=where,
            )
        offset = teacher_layers - student_layers
        return [(offset + k, k) for k in range(first, student_layers + 1)]
    if strategy == "skip2":
        if 2 * student_layers > teacher_layers:
            raise RecipeError(
                f"skip2 maps student layer k to teacher layer 2k: a {student_layers}-layer student "
                f"needs a teacher with at least {2 * student_layers} layers, not {teacher_layers}",
                where=where,
            )
        return ([(0, 0)] if feature == "hidden" else []) + [(2 * k, k) for k in range(1, student_layers + 1)]
    raise RecipeError(
        f"unknown layer map {strategy!r}",
        where=where,
        hint="use top_only, uniform, top_aligned, skip2 or a list of [teacher, student] pairs",
    )


def check_layer_names(strategy: str | list, *, where: str = "layer_map") -> None:
    """Check what the references of a layer map name, without knowing the models' depths (for a loss
    section that no stage uses, or that a weight of 0 switches off): each is an integer, a name of
    the numbering above, or an integer written as text, never a boolean. Ranges are checked per
    stage, by `layer_pairs`."""
    if not isinstance(strategy, list):
        return  # a named strategy: the schema allows the known ones only
    for i, pair in enumerate(strategy):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RecipeError(f"entry {i} is {pair!r}, expected a [teacher_layer, student_layer] pair", where=where)
        for j, ref in enumerate(pair):
            if isinstance(ref, bool) or not isinstance(ref, int):
                # a depth beyond any model: only what the reference names is checked here
                resolve_layer(ref, 10**9, where=f"{where}[{i}][{j}] ({'teacher' if j == 0 else 'student'})")
