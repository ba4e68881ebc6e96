"""Plugins: student families and losses that another installed package adds, usable by name in any
recipe and any `cascade-kd` command.

A package declares its modules under the entry-point group `cascade_kd.plugins`, e.g. in its
pyproject.toml

    [project.entry-points."cascade_kd.plugins"]
    my_lstm = "my_package.students"

and the module registers what it adds when imported (`cascade_kd.register_family(...)`,
`cascade_kd.register_loss(...)`). They are imported once, when the student families are (any run,
evaluation or export) or when a recipe names a kind or loss that is not built in, so `import
cascade_kd` stays cheap and a plugin that is installed but unused costs nothing on a recipe of
built-in names checked without torch. A plugin that fails to import stops with its entry point,
its distribution and the error, instead of a recipe later saying "unknown student kind".
"""

from __future__ import annotations

from importlib.metadata import entry_points

from cascade_kd.errors import UserError

GROUP = "cascade_kd.plugins"

# name -> "distribution version" of every plugin imported (None: not looked for yet)
LOADED: dict[str, str] | None = None


class PluginError(UserError):
    """An installed plugin failed to import."""


def _distribution(point) -> str:
    return f"{point.dist.name} {point.dist.version}" if point.dist is not None else "an unknown distribution"


def installed_plugins() -> list[tuple[str, str, str]]:
    """(name, module, "distribution version") of each declared plugin, read from the installed
    metadata without importing anything."""
    return [(p.name, p.value, _distribution(p)) for p in sorted(entry_points(group=GROUP), key=lambda p: p.name)]


def load_plugins() -> dict[str, str]:
    """Import every module declared under the `cascade_kd.plugins` entry-point group, once per
    process; returns {entry point name: "distribution version"}. Idempotent and re-entrant: a
    plugin that imports cascade_kd's registries while it loads does not load the plugins again."""
    global LOADED
    if LOADED is not None:
        return LOADED
    LOADED = {}
    for point in sorted(entry_points(group=GROUP), key=lambda p: p.name):
        dist = _distribution(point)
        try:
            point.load()
        except Exception as err:  # noqa: BLE001  (whatever the plugin raises, the user needs its name)
            LOADED = None  # a fixed plugin loads on the next call
            uninstall = f"pip uninstall {point.dist.name}" if point.dist is not None else "uninstall it"
            raise PluginError(f"the plugin {point.name!r} ({point.value}, from {dist}) failed to import: "
                              f"{type(err).__name__}: {err}", where=f"entry point {GROUP}",
                              hint=f"fix the plugin, or `{uninstall}` to run without it") from err
        LOADED[point.name] = dist
    return LOADED
