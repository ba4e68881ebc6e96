"""Files in and out.

Writes are atomic: a crash at any instant leaves either the old or the new file or directory,
never a half-written one (temporary sibling, fsync, rename, fsync of the parent). A directory is
replaced in one step where the system can swap two paths (Linux's renameat2 RENAME_EXCHANGE);
elsewhere in two renames, and a process killed between them leaves the old directory under a
temporary name that the next write (or `recover_directory`) puts back. A directory that
is replaced keeps the entries the caller names (`keep`): what cascade-kd did not write there is
carried into the new directory, never deleted. A full disk or a read-only location is an
`OutputError` (one line, exit code 2), not a traceback. The temporary siblings come from `tempfile`,
which creates files 0600 and directories 0700; what is renamed into place is a run's output, to be
shared like any file the user writes: it gets the permissions `open()` and `mkdir()` would give
(0666 and 0777 less the umask).

Reads of user files go through `read_input`: only regular files are read (a FIFO would block for
ever, a character device such as /dev/zero never ends), and at most `limit` bytes.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from cascade_kd.errors import OutputError, UserError

# errno values that mean "this location cannot take the write", whatever the file
_FULL = {errno.ENOSPC, errno.EDQUOT}
_REFUSED = {errno.EROFS, errno.EACCES, errno.EPERM}


def output_problem(exc: BaseException) -> str | None:
    """What an exception raised by a write says about the location (disk full, read-only), or
    None when it says something else. Libraries that write in native code (safetensors) report
    the OS error in their message only."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code in _FULL or "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text:
        return "no space left on the device"
    if code in _REFUSED or "Read-only file system" in text:
        return f"cannot write there ({os.strerror(code) if code in _REFUSED else 'read-only file system'})"
    return None


def raise_output_error(exc: BaseException, path: Path) -> None:
    """Re-raise the failure of a write to `path` as an OutputError: a full disk, a read-only
    location, or any other OSError (a directory where the file goes, a name too long...)."""
    problem = output_problem(exc)
    if problem is not None:
        hint = ("free some space and run the command again (a run continues with --resume; finished "
                "models are kept)" if "space" in problem else "choose a location you can write to")
        raise OutputError(f"{problem} while writing", where=str(path), hint=hint) from None
    if isinstance(exc, OSError):
        raise OutputError(f"cannot write: {exc.strerror or exc}", where=str(path)) from None


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
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        shared_mode(Path(tmp))
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8") if isinstance(text, str) else text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise_output_error(exc, path)
        raise


# Temporary siblings of a directory being replaced carry the writer's process id and host, so that
# what a killed writer left can be told from what a live one is writing (on this host: a shared
# file system's other hosts are left alone).
def _temp_prefix(directory: Path, *, old: bool = False) -> str:
    return f".{directory.name}.cascade-kd-{'old-' if old else ''}{os.getpid()}@{socket.gethostname()}."


def _alive(pid: int) -> bool:
    """Whether another process with this id runs. This process's own id on a leftover is a killed
    writer's, reused (containers number their processes alike every start): cascade-kd writes one
    directory at a time, so no writer of this process is at work while it looks. Off POSIX (where
    os.kill would end the process) every other id counts as alive: nothing is removed there."""
    if pid == os.getpid():
        return False
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def recover_directory(directory: Path) -> bool:
    """Put back what a writer of `directory` killed mid-swap left (only the two-rename swap has such
    a moment), and remove the temporary siblings of writers that are gone. Siblings of a live
    process or of another host, or not named by cascade-kd, are left alone. Returns whether the
    directory was put back. Callers that decide which entries of `directory` to keep call it first."""
    directory = Path(directory)
    pattern = re.compile(rf"\.{re.escape(directory.name)}\.cascade-kd-(old-)?(\d+)@(.+)\.[a-z0-9_]+")
    try:
        names = os.listdir(directory.parent)
    except OSError:
        return False
    host = socket.gethostname()
    found = []
    for name in names:  # the names first: a folder's other entries are never looked at
        match = pattern.fullmatch(name)
        if match is None or match.group(3) != host or _alive(int(match.group(2))):
            continue
        try:
            found.append((os.lstat(directory.parent / name).st_mtime, name, bool(match.group(1))))
        except OSError:  # gone meanwhile (another process recovering too)
            continue
    restored = False
    for _, name, is_old in sorted(found, reverse=True):  # the newest old copy first
        sibling = directory.parent / name
        if not sibling.is_dir() or sibling.is_symlink():
            continue
        if is_old and (sibling / "dir").is_dir() and not os.path.lexists(directory):
            try:
                (sibling / "dir").rename(directory)  # its replacement never arrived
                restored = True
            except OSError:
                continue
        shutil.rmtree(sibling, ignore_errors=True)
    return restored


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _renameat2():
    """The C library's renameat2, or None (not Linux, or a C library without it: glibc < 2.28)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths `a` and `b` in one step (Linux renameat2 with RENAME_EXCHANGE); False where
    this system or file system cannot (or a sandbox refuses the call: EPERM under some seccomp
    profiles), and the caller swaps in two renames, which report a real problem themselves."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.ENOENT:  # one of the two is not there: nothing a second way would fix
        raise OSError(code, os.strerror(code), str(b))
    return False


@contextmanager
def atomic_directory(directory: Path, *, keep: Iterable[str] = ()):
    """Yield a temporary directory to fill; on success it replaces `directory` in one rename.

    `keep`: names of entries of the existing `directory` that are not the writer's (a user's file,
    another command's output): they are moved into the new directory just before the swap, and
    moved back if the swap fails, so replacing a directory never deletes them. A kept name that the
    writer writes too is an OutputError, and nothing is written. An entry that appears in
    `directory` while the writer works (a file copied in meanwhile) is carried over too.

    A symbolic link to a directory stands for that directory: the new one is swapped in where the
    link points, and the link stays."""
    directory = Path(directory)
    if directory.is_symlink() and directory.is_dir():
        directory = directory.resolve()
    restored = recover_directory(directory)  # callers that choose `keep` have recovered already
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(directory), dir=directory.parent))
    except OSError as exc:
        raise_output_error(exc, directory)
        raise
    try:  # what was there when the writer started: anything else found at the swap came in meanwhile
        at_start = set(os.listdir(directory)) if directory.is_dir() else set()
    except OSError:
        at_start = set()
    keep = list(keep)
    # a directory put back just now was not there when the caller chose `keep`: what of it the
    # writer does not write again is carried over
    put_back = sorted(at_start - set(keep)) if restored else []
    moved: list[str] = []
    old = None
    swapped = False
    try:
        shared_mode(tmp, directory=True)
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as handle:
                    os.fsync(handle.fileno())
        for f in tmp.rglob("*"):  # some writers create private files (safetensors: 0600)
            if f.is_file() and not f.is_symlink() and f.stat().st_nlink == 1:  # a hard link keeps its source's mode
                shared_mode(f)
        fsync_directory(tmp)  # its entries are on disk before it is renamed into place
        if directory.exists():
            keep += [name for name in sorted(os.listdir(directory)) if name not in at_start and name not in keep]
            keep += [name for name in put_back if not os.path.lexists(tmp / name) and name not in keep]
            clash = sorted(name for name in keep if os.path.lexists(directory / name) and os.path.lexists(tmp / name))
            if clash:  # a file the writer did not write before, but writes now: it is not the writer's to replace
                raise OutputError(f"{directory} holds {', '.join(clash[:3])}, which cascade-kd did not write there "
                                  "and would now replace: nothing was written", where=str(directory / clash[0]),
                                  hint="move it away, or choose another output folder")
            for name in keep:
                if os.path.lexists(directory / name):
                    os.rename(directory / name, tmp / name)
                    moved.append(name)
            if _exchange(tmp, directory):  # one step: the old directory now lies at tmp
                swapped = True
                fsync_directory(directory.parent)
                shutil.rmtree(tmp, ignore_errors=True)
                return
            # a fresh name of our own for the old directory (a sibling a user named so is never touched)
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(directory, old=True), dir=directory.parent)) / "dir"
            directory.rename(old)
        tmp.rename(directory)
        swapped = True
        fsync_directory(directory.parent)
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)
    except BaseException as exc:
        if not swapped:
            if old is not None and old.exists() and not directory.exists():
                old.rename(directory)  # the swap failed half-way: the old directory goes back first
            for name in moved:  # then what was carried over
                if directory.exists() and not os.path.lexists(directory / name):
                    os.rename(tmp / name, directory / name)
        if isinstance(exc, OSError):
            raise_output_error(exc, directory)
        if output_problem(exc) is not None and not isinstance(exc, UserError):  # e.g. safetensors' own error
            raise_output_error(exc, directory)
        if isinstance(exc, Exception) and not isinstance(exc, UserError) and _nearly_full(tmp):
            # torch.save's writer reports a full disk as "unexpected pos ..." or "iostream error", no errno
            raise OutputError(f"no space left on the device while writing ({type(exc).__name__}: "
                              f"{(str(exc).strip().splitlines() or [''])[0][:100]})", where=str(directory),
                              hint="free some space and run the command again (a run continues with --resume; "
                                   "finished models are kept)") from None
        raise
    finally:
        if not swapped:
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None and not old.exists():
                shutil.rmtree(old.parent, ignore_errors=True)


def _nearly_full(path: Path, margin: int = 1 << 20) -> bool:
    """Whether the file system of `path` has less than `margin` bytes left (for this user)."""
    try:
        info = os.statvfs(path)
    except OSError:
        return False
    blocks = info.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else info.f_bavail
    return blocks * info.f_frsize < margin


# ---------------------------------------------------------------------------------------------
# Reading user files


def read_input(path: str | os.PathLike, *, limit: int | None = None, error: type[UserError] = UserError,
               what: str = "file") -> bytes:
    """The bytes of a regular file, or `error` (a UserError subclass) naming the path: not found,
    a directory, not a regular file (FIFO, device, socket), larger than `limit` bytes, unreadable."""
    where = str(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} not found", where=where, hint="check the path") from None
    except (OSError, ValueError) as exc:  # a name too long, a symlink loop, a NUL in the path
        raise error(f"cannot read the {what}: {getattr(exc, 'strerror', None) or exc}", where=where) from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"is a directory, expected a {what}", where=where, hint=f"give the path of the {what} inside it")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(info.st_mode) else "a character device" if stat.S_ISCHR(info.st_mode)
                else "a block device" if stat.S_ISBLK(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode)
                else "not a regular file")
        raise error(f"is {kind}, not a regular file", where=where, hint=f"give a regular {what} (a pipe or device is not read)")
    if limit is not None and info.st_size > limit:
        raise error(f"the {what} is {info.st_size:,} bytes, more than the {limit:,} a {what} may have", where=where,
                    hint=f"is this the right {what}?")
    try:
        with open(path, "rb") as handle:
            data = handle.read() if limit is None else handle.read(limit + 1)
    except OSError as exc:
        raise error(f"cannot read the {what}: {exc.strerror or exc}", where=where) from None
    if limit is not None and len(data) > limit:  # it grew while being read
        raise error(f"the {what} is more than {limit:,} bytes", where=where)
    return data


def read_json_record(path: str | os.PathLike, *, limit: int, what: str) -> tuple[object, str | None]:
    """(the parsed JSON, None) of a small record the tool wrote (a marker, a manifest, stage.json),
    read with `read_input`'s checks; (None, why) when it cannot be read or is not JSON, so that a
    damaged record is reported by its caller rather than raised."""
    try:
        return json.loads(read_input(path, limit=limit, what=what).decode("utf-8")), None
    except UserError as err:
        return None, err.message
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"not JSON ({type(exc).__name__})"


def weight_files(directory: Path) -> list[Path]:
    """A saved model's safetensors weight files: model.safetensors, or its shards."""
    return sorted(p for p in Path(directory).glob("model*.safetensors"))


def files_digest(files: Iterable[Path]) -> str:
    """The sha256 of some files of one folder: their names and bytes, in name order."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def weights_size(directory: Path) -> int:
    """Bytes of a saved model's weights, one file or shards (a hard-linked shard counted in full)."""
    return sum(p.stat().st_size for p in weight_files(directory))


def looks_like_path(reference: str) -> bool:
    """A model or tokenizer reference that can only be a local path, never a hub id: absolute, ./ ../
    ~ or another leading dot, a backslash or a drive letter, or more than one '/' (hub ids are 'name'
    or 'owner/name', and never start with a dot)."""
    return (reference.startswith(("/", ".", "~")) or "\\" in reference or reference.count("/") > 1
            or (len(reference) > 2 and reference[0].isalpha() and reference[1] == ":" and reference[2] in "\\/"))
