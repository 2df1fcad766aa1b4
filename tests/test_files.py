"""Atomic writes: all or nothing, with the permissions open() would give."""
import os

import pytest

from spp_det.files import write_atomic


def test_write_atomic_replaces_whole_files_with_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "sub" / "x.bin"
        write_atomic(path, b"first")
        write_atomic(path, b"second")
        assert path.read_bytes() == b"second"
        assert path.stat().st_mode & 0o777 == 0o644  # mkstemp alone would leave 0600
        assert [p.name for p in path.parent.iterdir()] == ["x.bin"]  # no temp file left
    finally:
        os.umask(old)


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    write_atomic(path, b"old")

    def broken(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]
