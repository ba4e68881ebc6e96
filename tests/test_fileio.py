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
