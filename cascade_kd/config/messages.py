"""Error messages about a recipe: where (file, line, key path), what, and a suggestion."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from cascade_kd.errors import RecipeError


# what other tools (e.g. Hugging Face's TrainingArguments) call a key: suggested when no key is close
_ALIASES = {
    "learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs",
    "train_batch_size": "batch_size", "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size", "gradient_accumulation_steps": "grad_accum",
    "max_seq_length": "max_length",
}


def suggest(key: str, valid) -> str:
    valid = [str(v) for v in valid]
    near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
    if not near:  # e.g. lerning_rate -> learning_rate -> lr
        aliases = {alias: name for alias, name in _ALIASES.items() if name in valid}
        alias = difflib.get_close_matches(str(key), list(aliases), n=1, cutoff=0.75)
        near = [aliases[alias[0]]] if alias else []
    return f"did you mean {near[0]!r}?" if near else f"valid keys: {', '.join(map(str, valid))}"



def short(value, width: int = 60) -> str:
    """repr() of a value from the recipe, cut to `width` characters: messages stay one short line."""
    text = repr(value)
    return text if len(text) <= width else text[:width] + "..."



def key_text(keys) -> str:
    """A dotted key path; a key that is not plain printable text (a newline in a quoted key) is shown
    as its repr, so that the message stays one line."""
    return ".".join(str(k) if str(k).isprintable() and len(str(k)) <= 60 else short(str(k)) for k in keys)



def place(source: str, lines: dict, keys: tuple, names: dict | None = None, prefix: str = "") -> str:
    """How a message says where a key path is: 'file:line: a.b.c' (the line of the key, else of its
    nearest parent; `prefix` is a dotted path above `keys`, outside `lines`). For a recipe a command
    builds from its flags, `names` maps keys to the flags that set them ('train.lr': '--lr'): the
    flag of the key or of its nearest parent is named instead, as the user never saw the recipe."""
    key = ".".join(filter(None, [prefix, key_text(keys)])) or "(top level)"
    parts = key.split(".")
    for cut in range(len(parts), 0, -1):
        if ".".join(parts[:cut]) in (names or {}):
            return names[".".join(parts[:cut])]
    line = next((lines[keys[:cut]] for cut in range(len(keys), -1, -1) if keys[:cut] in lines), None)
    return f"{source}:{line}: {key}" if line else f"{source}: {key}"


def where(recipe, *keys) -> str:
    """'file:line: a.b.c' for a key path of a loaded recipe (for errors found after parsing); the
    flag that set it for a recipe built from a command's flags (`place`)."""
    return place(recipe._source, getattr(recipe, "_lines", {}), tuple(keys), getattr(recipe, "_names", {}))



def _section_with(root: type[BaseModel], key) -> str | None:
    """The top-level section of the recipe (task, data, teacher, ...) that has `key`, if one does."""
    for name, field in getattr(root, "model_fields", {}).items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel) and key in model.model_fields:
            return name
    return None


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of `loc`, for 'did you mean' suggestions. A key of
    a mapping of named sections (`losses: {kl: ...}`) is a name, not a field, and is stepped over."""
    model: Any = root
    named = False  # the previous part led into a dict of models: this part is a name
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        if named:
            named = False
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return None
        named = getattr(field.annotation, "__origin__", None) is dict or any(
            getattr(a, "__origin__", None) is dict for a in getattr(field.annotation, "__args__", ()) or ())
        model = _find_model(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _find_model(annotation) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _find_model(arg)
        if found is not None:
            return found
    return None



def to_recipe_error(err: ValidationError, lines: dict | None, source: str, prefix: str = "", *, root: type[BaseModel],
                    names: dict | None = None) -> RecipeError:
    """One RecipeError for pydantic's errors: the first one, with the file, the line and the key path
    (or the flag that set it: `names`, see `place`)."""
    errors = err.errors()
    # a mistyped key is also reported as a missing one (stagess: -> stages missing): name the typo
    # (invalid_key: a key that is not a string, such as `1:` or `~:`, is just as unknown)
    first = next((e for e in errors if e["type"] in ("extra_forbidden", "invalid_key")), errors[0])
    # drop pydantic's union tags ("list[int]", "literal['a']"), but not a key of the file that has a "["
    loc: tuple = ()
    for p in first["loc"]:
        if not (isinstance(p, str) and "[" in p) or (lines is not None and loc + (p,) in lines):
            loc += (p,)
    lines = lines or {}
    where = place(source, lines, loc, names, prefix)
    hint = None
    if first["type"] in ("extra_forbidden", "invalid_key"):
        owner = _model_at(root, loc)
        message = f"unknown key {short(loc[-1])}"
        home = _section_with(root, loc[-1]) if len(loc) == 2 else None
        if home is not None and home != loc[0]:  # a key put in the wrong section: say where it goes
            hint = f"{loc[-1]!r} belongs in the {home} section: {home}.{loc[-1]}"
        elif owner is not None:
            hint = suggest(loc[-1], list(owner.model_fields))
    elif first["type"] == "missing":
        message = "required key is missing"
    else:
        message = first["msg"].removeprefix("Value error, ")
        if isinstance(first.get("input"), dict) and lines:  # e.g. unknown loss 'x': point at the key x
            named = [k for k in first["input"] if isinstance(k, str) and repr(k) in message and loc + (k,) in lines]
            if named:
                where = place(source, lines, loc + (named[0],), names, prefix)
        if "input" in first and first["type"] not in ("value_error",) and not isinstance(first["input"], dict):
            message += f" (got {short(first['input'])})"
    return RecipeError(message, where=where, hint=hint)
