"""Atomic writes leave files and directories with the user's usual permissions, not tempfile's 0600/0700."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap

import pytest

from cascade_kd.fileio import atomic_directory, atomic_write


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_and_directories_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "manifest.json", "{}")
        with atomic_directory(tmp_path / "model") as tmp:
            (tmp / "config.json").write_text("{}")
            (tmp / "model.safetensors").write_text("")
            os.chmod(tmp / "model.safetensors", 0o600)  # as safetensors creates its files
        assert _mode(tmp_path / "manifest.json") == 0o644
        assert _mode(tmp_path / "model") == 0o755
        assert _mode(tmp_path / "model" / "config.json") == 0o644
        assert _mode(tmp_path / "model" / "model.safetensors") == 0o644
        os.umask(0o077)  # a user who wants private files gets them
        atomic_write(tmp_path / "private.json", "{}")
        assert _mode(tmp_path / "private.json") == 0o600
    finally:
        os.umask(old)


def test_replacing_a_directory_keeps_what_came_in_meanwhile_and_a_users_old_named_sibling(tmp_path):
    from cascade_kd.fileio import atomic_directory

    out = tmp_path / "out"
    out.mkdir()
    (out / "model.bin").write_text("old")
    (tmp_path / ".out.old").mkdir()  # a name the swap once used for the old directory: a user's here
    (tmp_path / ".out.old" / "mine.txt").write_text("mine")
    with atomic_directory(out) as tmp:
        (tmp / "model.bin").write_text("new")
        (out / "serve.yaml").write_text("copied in while the writer worked")
    assert (out / "model.bin").read_text() == "new"
    assert (out / "serve.yaml").read_text() == "copied in while the writer worked"
    assert (tmp_path / ".out.old" / "mine.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.old", "out"]  # no temporary folder left


def test_replacing_a_directory_through_a_symbolic_link_writes_where_it_points(tmp_path):
    from cascade_kd.fileio import atomic_directory

    target = tmp_path / "elsewhere" / "state"
    target.mkdir(parents=True)
    link = tmp_path / "state"
    link.symlink_to(target, target_is_directory=True)
    for round_ in ("first", "second"):  # a second save through the link works too
        with atomic_directory(link) as tmp:
            (tmp / "progress.json").write_text(round_)
        assert link.is_symlink() and (target / "progress.json").read_text() == round_


def test_a_directory_is_replaced_in_one_step_where_the_system_can_swap_two_paths(tmp_path, monkeypatch):
    import cascade_kd.fileio as fileio

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "which").write_text("a")
    if not fileio._exchange(a, b):
        pytest.skip("this system or file system cannot swap two paths in one step (renameat2 RENAME_EXCHANGE)")
    assert (b / "which").read_text() == "a" and not (a / "which").exists()
    swaps = []
    real = fileio._exchange
    monkeypatch.setattr(fileio, "_exchange", lambda x, y: swaps.append(real(x, y)) or swaps[-1])
    out = tmp_path / "out"
    for round_ in ("first", "second"):
        with fileio.atomic_directory(out) as tmp:
            (tmp / "progress.json").write_text(round_)
    assert (out / "progress.json").read_text() == "second"
    assert swaps == [True]  # the first write had nothing to swap with; the second swapped in one step
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]


def test_a_writer_killed_between_the_two_renames_leaves_the_old_directory_which_comes_back(tmp_path):
    """Where paths cannot be swapped in one step, a SIGKILL between moving the old directory aside
    and moving the new one in leaves neither in place: the next look at the state puts the old one
    back, and what the dead writer left is removed (a live writer's and a user's siblings are not)."""
    from cascade_kd.training.state import has_state

    state = tmp_path / "state"
    state.mkdir()
    (state / "progress.json").write_text("old")
    (tmp_path / ".state.old").mkdir()  # a user's own folder
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    live = tmp_path / f".state.cascade-kd-{sleeper.pid}@{socket.gethostname()}.abc123"
    live.mkdir()  # a live writer's
    own = tmp_path / f".state.cascade-kd-{os.getpid()}@{socket.gethostname()}.def456"
    own.mkdir()  # a killed writer's whose id this process now has (containers reuse ids)
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        import cascade_kd.fileio as fileio
        fileio._exchange = lambda a, b: False   # as on a system without renameat2
        real = Path.rename
        def rename(self, target):
            if Path(target).name == "state" and ".cascade-kd-old-" not in self.name:
                os.kill(os.getpid(), signal.SIGKILL)   # the old directory is aside, the new one not in
            return real(self, target)
        Path.rename = rename
        with fileio.atomic_directory(Path({str(state)!r})) as tmp:
            (tmp / "progress.json").write_text("new")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not state.exists()
    left = sorted(p.name for p in tmp_path.iterdir() if ".cascade-kd-" in p.name and p not in (live, own))
    assert len(left) == 2 and any(".cascade-kd-old-" in name for name in left)
    try:
        assert has_state(state) and (state / "progress.json").read_text() == "old"
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".state.old", live.name, "state"])
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_directory_put_back_at_the_write_keeps_what_the_writer_does_not_write_again(tmp_path):
    """The caller chose `keep` while the directory lay aside (a writer killed mid-swap): the user's
    entries of the old directory are carried over, the writer's own files replaced."""
    import cascade_kd.fileio as fileio

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = tmp_path / f".model.cascade-kd-old-{dead.pid}@{socket.gethostname()}.abc123" / "dir"
    aside.mkdir(parents=True)
    (aside / "config.json").write_text("old")
    (aside / "notes.txt").write_text("mine")
    with fileio.atomic_directory(tmp_path / "model", keep=[]) as tmp:
        (tmp / "config.json").write_text("new")
    assert (tmp_path / "model" / "config.json").read_text() == "new"
    assert (tmp_path / "model" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")  # a folder's odd entries do not stop recovery
    aside.mkdir(parents=True)
    (aside / "config.json").write_text("old")
    (tmp_path / "model").rename(tmp_path / "elsewhere")
    assert fileio.recover_directory(tmp_path / "model") and (tmp_path / "model" / "config.json").read_text() == "old"
