"""cascade-kd: distil multilingual encoders through cascades of teacher assistants.

    import cascade_kd as ckd

    recipe = ckd.Recipe.from_yaml("recipe.yaml")
    result = ckd.run(recipe, "runs/x", resume=True)   # the content of runs/x/metrics.json
    ckd.evaluate("runs/x", split="test")
    ckd.export_onnx("runs/x/stages/student", int8=True)
    ckd.run(ckd.pretrain_recipe("text/train-{lang}.txt", "text/dev-{lang}.txt", ["en", "de"], "tokenizer"),
            "runs/pretrain")                          # a masked-LM teacher from scratch

Building blocks for your own loop: `build_student` (a student from a teacher and a spec),
`StudentFamily` and `register_family` (a new kind of student), `Loss` and `register_loss` (a new
loss a recipe can name), `Features`/`extract_features` (any model's outputs as named features);
the built-in losses are classes in `cascade_kd.losses`. The names are loaded on first use, so `import cascade_kd` (and the command line's --help)
stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute)
_EXPORTS = {
    "Recipe": ("cascade_kd.config", "Recipe"),
    "run": ("cascade_kd.api", "run"),
    "dry_run": ("cascade_kd.api", "dry_run"),
    "pretrain_recipe": ("cascade_kd.config.pretrain", "pretrain_recipe"),
    "evaluate": ("cascade_kd.api", "evaluate"),
    "bench": ("cascade_kd.api", "bench"),
    "export_onnx": ("cascade_kd.api", "export_onnx"),
    "trim": ("cascade_kd.api", "trim"),
    "load_model": ("cascade_kd.api", "load_model"),
    "run_seeds": ("cascade_kd.api", "run_seeds"),
    "compare": ("cascade_kd.api", "compare"),
    "report": ("cascade_kd.api", "report"),
    "build_student": ("cascade_kd.students", "build_student"),
    "StudentFamily": ("cascade_kd.students", "StudentFamily"),
    "register_family": ("cascade_kd.students", "register"),
    "Loss": ("cascade_kd.losses.base", "Loss"),
    "register_loss": ("cascade_kd.losses.registry", "register"),
    "count_parameters": ("cascade_kd.students", "count_parameters"),
    "Features": ("cascade_kd.students.features", "Features"),
    "extract_features": ("cascade_kd.students.features", "extract_features"),
    "UserError": ("cascade_kd.errors", "UserError"),
    "RecipeError": ("cascade_kd.errors", "RecipeError"),
    "DataError": ("cascade_kd.errors", "DataError"),
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # once loaded, a plain attribute
        return value
    raise AttributeError(f"module 'cascade_kd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
