"""Output directories: where a command may write, and what it may replace or delete.

The rule, the same for every command that writes (run, pretrain, eval, export, trim):
- it writes into a new or empty directory, or into one that it can prove it wrote: a marker of its
  own, `.cascade-kd.json`, with a schema version, the command, the entries it writes, and a
  fingerprint (a SHA-256 of all that) that a file merely named so does not have;
- it replaces or deletes only the entries its marker lists; inside them, anything cascade-kd did not
  write (a user's file, another command's output with its own marker) is kept;
- it never writes into its own input (the output is not the input directory, nor one that holds it).
Anything else is refused before any work, with one line that names the directory and a fix.

Directories written before markers existed are recognised by the content only cascade-kd writes
(a run's manifest.json with its recipe fingerprint, an export's export.json, a trim's trim.json)
and adopted: see the `legacy` argument of `check_output`, and cascade_kd/cascade/rundir.py.

Paths are checked first (`output_path`): a dangling symbolic link, a link loop, a name too long, a
parent that is a file, a read-only location are each one line, not a traceback. A symbolic link to
a directory stands for that directory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cascade_kd import __version__
from cascade_kd.errors import OutputError
from cascade_kd.fileio import atomic_directory, atomic_write, read_json_record, recover_directory

MARKER = ".cascade-kd.json"
LOCK = ".cascade-kd.lock"
SCHEMA = 1
TOOL = "cascade-kd"
_PLAIN_NAME = re.compile(r"^(?!\.{1,2}$)[^/\x00]+$")

# ---------------------------------------------------------------------------------------------
# The marker


def marker_fingerprint(data: dict) -> str:
    """SHA-256 of the marker's content without its fingerprint (canonical JSON)."""
    body = {k: v for k, v in data.items() if k != "fingerprint"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def make_marker(command: str, entries, **extra) -> dict:
    data = {"tool": TOOL, "schema": SCHEMA, "command": command, "version": __version__,
            "entries": sorted(set(entries) | {MARKER}), **extra}
    data["fingerprint"] = marker_fingerprint(data)
    return data


def write_marker(directory: Path, command: str, entries, **extra) -> dict:
    """Write (atomically) the marker saying that `command` wrote `entries` in `directory`."""
    data = make_marker(command, entries, **extra)
    atomic_write(Path(directory) / MARKER, json.dumps(data, indent=2))
    return data


def read_marker(directory: Path) -> tuple[dict | None, str | None]:
    """(marker, None) for a valid marker; (None, None) when there is none; (None, why) when the
    file is there but is not a marker cascade-kd wrote (damaged, edited, another schema)."""
    path = Path(directory) / MARKER
    if not os.path.lexists(path):
        return None, None
    data, why = read_json_record(path, limit=1 << 20, what="marker")
    if why:
        return None, why
    if not isinstance(data, dict) or data.get("tool") != TOOL:
        return None, "not a cascade-kd marker"
    schema = data.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool) or not 1 <= schema <= SCHEMA:
        return None, f"schema {schema!r}, this version reads schema {SCHEMA}"
    entries = data.get("entries")
    if not isinstance(data.get("command"), str) or not isinstance(entries, list) or not all(
            isinstance(e, str) and _PLAIN_NAME.match(e) for e in entries):
        return None, "its command or entries are malformed"
    if data.get("fingerprint") != marker_fingerprint(data):
        return None, "its fingerprint does not match its content (edited or damaged)"
    return data, None


# ---------------------------------------------------------------------------------------------
# Paths


def output_path(path: str | os.PathLike, *, flag: str = "--out") -> Path:
    """Check that `path` can be an output directory (it need not exist); a symbolic link stands
    for its target, which is returned. An OutputError says what is wrong otherwise."""
    path = Path(path)
    where = str(path)
    try:
        if path.is_symlink():
            target = os.readlink(path)
            try:
                path = path.resolve(strict=True)
            except FileNotFoundError:
                raise OutputError(f"{flag} is a symbolic link to {target!r}, which does not exist", where=where,
                                  hint="point the link at a directory, remove it, or choose another path") from None
            except RuntimeError:  # Python < 3.13 reports a loop so
                raise OutputError(f"{flag} is a symbolic link loop", where=where,
                                  hint="remove the link, or choose another path") from None
        probe = path
        while True:  # the nearest ancestor that exists
            try:
                info = probe.stat()
                break
            except (FileNotFoundError, NotADirectoryError):
                if probe.parent == probe:
                    raise
                probe = probe.parent
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputError(f"{flag} goes through a symbolic link loop", where=where,
                              hint="remove the link, or choose another path") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise OutputError(f"{flag} has a name too long for the file system", where=where,
                              hint="choose a shorter name") from None
        raise OutputError(f"cannot use {flag}: {exc.strerror or exc}", where=where) from None
    except ValueError as exc:  # a NUL character
        raise OutputError(f"cannot use {flag}: {exc}", where=where) from None
    if not stat.S_ISDIR(info.st_mode):
        if probe == path:
            raise OutputError(f"{flag} exists and is not a directory", where=where,
                              hint="give a directory, new or empty (or one cascade-kd wrote)")
        raise OutputError(f"{flag} cannot be created: {probe} is a file, not a directory", where=where,
                          hint="choose a path whose parent folders are directories")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} is in a location that cannot be written: {probe} is read-only", where=where,
                          hint="choose a location you can write to")
    return path


def make_directory(path: Path) -> None:
    """mkdir -p, with an OutputError instead of a traceback (read-only, no space, not permitted)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the directory: {exc.strerror or exc}", where=str(path),
                          hint="choose a location you can write to") from None


def same_or_inside(inner: Path, outer: Path) -> bool:
    """Whether `inner` is `outer` or lies inside it (symbolic links resolved)."""
    inner, outer = Path(os.path.realpath(inner)), Path(os.path.realpath(outer))
    return inner == outer or outer in inner.parents


def check_not_input(out: Path, inputs: dict[str, Path], *, flag: str = "--out") -> None:
    """Refuse an output that is one of the command's inputs, or a directory holding one."""
    for what, path in inputs.items():
        if path is not None and same_or_inside(path, out):
            raise OutputError(f"{flag} would write into the {what} it reads ({path})", where=str(out),
                              hint=f"choose an {flag} outside {path}")


# ---------------------------------------------------------------------------------------------
# What is in a directory


@dataclass
class Found:
    """What an output directory holds: `state` is new, empty, own (our marker, this command),
    legacy (ours by content, written before markers), other (another command's marker),
    damaged (a marker that does not check out) or foreign (not written by cascade-kd)."""

    path: Path
    state: str
    marker: dict | None = None
    why: str | None = None
    entries: list[str] = field(default_factory=list)

    @property
    def ours(self) -> bool:
        return self.state in ("own", "legacy")


def inspect(path: Path, command: str, *, legacy: Callable[[Path], bool] | None = None) -> Found:
    """Classify `path` for `command`. `legacy(path)` says whether a directory without a marker
    holds content only `command` writes (then it is ours, as written by an earlier version)."""
    recover_directory(Path(path))  # an output a killed swap left aside is classified as what it is
    if not os.path.lexists(path):
        return Found(path, "new")
    try:  # the empty lock file a run leaves is no content (anything else of that name is)
        entries = sorted(e for e in os.listdir(path) if e != LOCK or not _lock_file(path / e))
    except OSError as exc:
        raise OutputError(f"cannot list the directory: {exc.strerror or exc}", where=str(path)) from None
    if not entries:
        return Found(path, "empty")
    marker, why = read_marker(path)
    if marker is not None:
        return Found(path, "own" if marker["command"] == command else "other", marker, entries=entries)
    if legacy is not None and legacy(path):
        return Found(path, "legacy", why=why, entries=entries)
    return Found(path, "damaged" if why else "foreign", why=why, entries=entries)


def refuse_unless_ours(found: Found, command: str, *, flag: str = "--out") -> None:
    """The one-line refusal for a directory that is not new, empty or ours."""
    where = str(found.path)
    if found.state == "other":
        raise OutputError(f"{flag} holds the output of `cascade-kd {found.marker['command']}`, not of {command}: "
                          "nothing there is replaced", where=where, hint=f"choose a new or empty {flag}")
    if found.state == "damaged":
        raise OutputError(f"{flag} holds a {MARKER} that cascade-kd cannot trust ({found.why}), so it cannot tell "
                          "which files there are its own: nothing there is replaced", where=where,
                          hint=f"choose a new or empty {flag}")
    if found.state == "foreign":
        shown = ", ".join(found.entries[:4]) + (", ..." if len(found.entries) > 4 else "")
        raise OutputError(f"{flag} is not empty ({shown}) and was not written by cascade-kd {command}: nothing "
                          "there is replaced", where=where, hint=f"choose a new or empty {flag}")


def check_output(path, command: str, *, overwrite: bool = False, rewrite: bool = False,
                 inputs: dict[str, Path] | None = None, legacy: Callable[[Path], bool] | None = None,
                 flag: str = "--out", exists_message: str | None = None) -> Found:
    """Everything `command` must know before writing to `path`, without changing anything there.

    New or empty: fine. Ours (our marker for `command`, or a `legacy` directory): fine with
    `overwrite`, or `rewrite` (a command that replaces its own files without being asked, eval);
    else refused with `exists_message`. Anything else: refused. Returns what was found, with the
    checked path (a symbolic link resolved) as `found.path`."""
    out = output_path(path, flag=flag)
    check_not_input(out, inputs or {}, flag=flag)
    found = inspect(out, command, legacy=legacy)
    refuse_unless_ours(found, command, flag=flag)
    if found.ours and not (overwrite or rewrite):
        raise OutputError(exists_message or f"{flag} already holds a cascade-kd {command} output", where=str(out),
                          hint="give --overwrite to replace it (only the files cascade-kd wrote there), or choose another "
                               + flag)
    return found


def foreign_entries(found: Found, owned: Callable[[str], bool]) -> list[str]:
    """The entries of an (our) output directory that its command did not write: kept on replacing it."""
    path = found.path
    if found.state == "own":  # what its marker lists; these outputs are flat, so a directory is never theirs
        listed = set(found.marker["entries"])
        ours = [e for e in found.entries if e in listed and not _real_dir(path / e)]
    else:
        ours = [e for e in found.entries if owned(e) and not _real_dir(path / e)]
    return [e for e in found.entries if e not in ours]


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _lock_file(path: Path) -> bool:
    """Whether `path` is what a run's lock leaves: an empty regular file (not a link, not a folder)."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size == 0


# ---------------------------------------------------------------------------------------------
# Deleting what we wrote, and only that


def remove_written(directory: Path, entries, owns: Callable[[Path], Callable[[str], bool] | None]) -> list[Path]:
    """Delete the `entries` of `directory` that cascade-kd wrote; returns what was kept.

    Inside a listed directory, `owns(dir)` says which of its names are ours (None: all of them); a
    directory with another command's marker is kept whole (an export of a model, an eval's scores),
    as is anything that is not ours. Symbolic links are removed as links, never followed."""
    kept: list[Path] = []
    for name in entries:
        if name in (MARKER, LOCK):
            continue
        path = Path(directory) / name
        if not os.path.lexists(path):
            continue
        if path.is_dir() and not path.is_symlink():
            kept += _remove_tree(path, owns)
        else:
            path.unlink()
    return kept


def _remove_tree(directory: Path, owns) -> list[Path]:
    if read_marker(directory)[0] is not None:
        return [directory]  # another command's output: not this one's to delete
    ours = owns(directory)
    kept: list[Path] = []
    for child in sorted(directory.iterdir()):
        if ours is not None and not ours(child.name):
            kept.append(child)
        elif child.is_dir() and not child.is_symlink():
            kept += _remove_tree(child, owns)
        else:
            child.unlink()
    if not any(directory.iterdir()):
        directory.rmdir()
    return kept


@contextmanager
def replace_output(found: Found, command: str, owned: Callable[[str], bool]):
    """Write a command's output directory whole: yield a temporary directory to fill; on success
    the command's marker (listing what was written) is added and the directory swapped in at once.
    An earlier output's entries that its command did not write (`foreign_entries`) are carried over."""
    keep = foreign_entries(found, owned) if found.ours else ()
    with atomic_directory(found.path, keep=keep) as tmp:
        yield tmp
        (tmp / MARKER).write_text(json.dumps(make_marker(command, [p.name for p in tmp.iterdir()]), indent=2))


def info_file_with(path: Path, key: str) -> bool:
    """Whether `path` is a JSON object holding `key`: how an output written before markers (an
    export's export.json, a trim's trim.json) is recognised."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
        return isinstance(info, dict) and key in info
    except (OSError, ValueError, UnicodeDecodeError, TypeError):
        return False
