"""Atomic writes leave files and directories with the user's usual permissions, not tempfile's 0600/0700."""

from __future__ import annotations

import os
import stat

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
