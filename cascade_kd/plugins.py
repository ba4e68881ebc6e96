"""Plugins: student families, losses and model types that another installed package adds, usable by
name in any recipe and any `cascade-kd` command.

A package declares its modules under the entry-point group `cascade_kd.plugins`, e.g. in its
pyproject.toml

    [project.entry-points."cascade_kd.plugins"]
    my_lstm = "my_package.students"

and the module registers what it adds when imported (`cascade_kd.register_family(...)`,
`cascade_kd.register_loss(...)`, transformers' `AutoConfig.register(...)`). They are imported once
per process, and only when something is not found among the built-in names: a recipe's student
kind or loss, or the model type of a model being read (students/hub.py, `auto_config` and
`ensure_model_type`). So `import cascade_kd` stays cheap, and a plugin that is installed but not
needed is never imported: a broken one does not stop runs that do not use it. A plugin that fails
to import stops the command with its entry point, its distribution, the file and line that
failed, and the error, instead of a recipe later saying "unknown student kind".
"""

from __future__ import annotations

import traceback
from importlib.metadata import entry_points
from pathlib import Path

from cascade_kd.errors import UserError

GROUP = "cascade_kd.plugins"

# (name, module, "distribution version") of every plugin imported; None: not looked for yet
LOADED: list[tuple[str, str, str]] | None = None


class PluginError(UserError):
    """An installed plugin failed to import."""


def _distribution(point) -> str:
    return f"{point.dist.name} {point.dist.version}" if point.dist is not None else "an unknown distribution"


def installed_plugins() -> list[tuple[str, str, str]]:
    """(name, module, "distribution version") of each declared plugin, read from the installed
    metadata without importing anything."""
    found = entry_points(group=GROUP)
    return sorted(((p.name, p.value, _distribution(p)) for p in found), key=lambda t: (t[0], t[2]))


def _failed_at(err: BaseException, point) -> str:
    """The file and line where a plugin's import failed: the innermost frame that is neither
    importlib's nor this module's; the entry point itself where there is none (a module that is
    not there, an attribute it lacks)."""
    ours = str(Path(__file__).resolve())
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith("<frozen")
              and "importlib" not in Path(f.filename).parts and str(Path(f.filename).resolve()) != ours]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else f"entry point {GROUP}: {point.name} = {point.value}"


def load_plugins() -> list[tuple[str, str, str]]:
    """Import every module declared under the `cascade_kd.plugins` entry-point group, once per
    process; returns (name, module, "distribution version") of each. A call made while the plugins
    are being imported (by a plugin, at its import) returns those imported so far, without
    importing them again."""
    global LOADED
    if LOADED is not None:
        return LOADED
    LOADED = []
    for point in sorted(entry_points(group=GROUP), key=lambda p: (p.name, _distribution(p))):
        dist = _distribution(point)
        try:
            point.load()
        except (Exception, SystemExit) as err:  # whatever the plugin raises (or exits with), its name comes first
            LOADED = None  # a fixed plugin loads on the next call
            lines = str(err).strip().splitlines()
            uninstall = f"pip uninstall {point.dist.name}" if point.dist is not None else "uninstall it"
            raise PluginError(f"the plugin {point.name!r} ({point.value}, from {dist}) failed to import: "
                              f"{type(err).__name__}" + (f": {lines[0]}" if lines else ""), where=_failed_at(err, point),
                              hint=f"fix the plugin, or `{uninstall}` to run without it") from None
        LOADED.append((point.name, point.value, dist))
    return LOADED
