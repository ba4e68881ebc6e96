"""Atomic writes: a crash at any instant leaves either the old or the new file or directory,
never a half-written one (temporary sibling, fsync, rename, fsync of the parent).

The temporary siblings come from `tempfile`, which creates files 0600 and directories 0700 (private,
as a temporary file should be). What is renamed into place is a run's output, to be shared like any
file the user writes: it gets the permissions `open()` and `mkdir()` would give (0666 and 0777 less
the umask)."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    # no os.getumask before Python 3.13: set and restore (the usual idiom; the window is two calls)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def shared_mode(path: Path, *, directory: bool = False) -> None:
    """Give `path` the permissions a plain open() or mkdir() would have given it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def atomic_write(path: Path, text: str | bytes) -> None:
    """Write text (or bytes) to a temporary file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        shared_mode(Path(tmp))
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8") if isinstance(text, str) else text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(directory: Path):
    """Yield a temporary directory to fill; on success it replaces `directory` in one rename."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        shared_mode(tmp, directory=True)
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as handle:
                    os.fsync(handle.fileno())
        for f in tmp.rglob("*"):  # some writers create private files (safetensors: 0600)
            if f.is_file() and not f.is_symlink():
                shared_mode(f)
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
        tmp.rename(directory)
        fsync_directory(directory.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
