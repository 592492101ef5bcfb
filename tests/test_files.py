"""Writing files so that a failure never leaves a partial one."""

import io
import os
import stat
import sys

import pytest

from anomvae.errors import OutputError
from anomvae.files import atomic_write, staged_folder


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    os.chmod(target, 0o640)
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["out.csv"]
    with atomic_write(target) as handle:
        handle.write("new\n")
    assert target.read_text() == "new\n" and os.listdir(tmp_path) == ["out.csv"]
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640  # the replaced file's permissions


def test_atomic_write_names_a_file_it_cannot_write(tmp_path):
    with pytest.raises(OutputError, match=r"cannot write .*no-such-folder/out.csv: No such file or directory"):
        with atomic_write(tmp_path / "no-such-folder" / "out.csv"):
            pass
    assert isinstance(OutputError("x"), OSError)  # callers catching OSError still do


def test_atomic_write_to_standard_output(monkeypatch):
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buffer)
    with atomic_write("-") as handle:
        handle.write("row\n")
    assert buffer.getvalue() == "row\n"


def test_staged_folder_adds_files_only_on_success(tmp_path):
    target = tmp_path / "maps"
    with pytest.raises(RuntimeError):
        with staged_folder(target, "maps") as staging:
            open(os.path.join(staging, "a.png"), "w").close()
            raise RuntimeError("boom")
    assert not target.exists()  # created by the failed block, so removed
    with staged_folder(target, "maps") as staging:
        open(os.path.join(staging, "a.png"), "w").close()
    assert os.listdir(target) == ["a.png"]
    with staged_folder(None) as nothing:
        assert nothing is None


def test_a_full_disk_while_writing_is_an_output_error(tmp_path):
    import errno

    target = tmp_path / "out.csv"
    with pytest.raises(OutputError, match=r"cannot write .*out.csv: No space left on device"):
        with atomic_write(target) as handle:
            handle.write("part")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert os.listdir(tmp_path) == []
    # Other errors of the block are not the file's and pass through as they are.
    with pytest.raises(PermissionError):
        with atomic_write(target):
            raise PermissionError(errno.EACCES, "an input file")
