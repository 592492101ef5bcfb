"""Writing files so that a failure never leaves a partial one."""

import contextlib
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


def test_temporary_names_say_their_target_and_writer(tmp_path):
    with atomic_write(tmp_path / "results.csv") as handle:
        (name,) = os.listdir(tmp_path)
        handle.write("x\n")
    assert name.startswith(f".anomvae-results.csv.{os.getpid()}-") and name.endswith(".tmp")
    with staged_folder(tmp_path / "maps", "heatmaps") as staging:
        assert os.path.basename(staging).startswith(f".anomvae-heatmaps.{os.getpid()}-")


def _ended_process_id():
    import subprocess

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_leftovers_of_ended_writers_are_swept_by_the_next_write(tmp_path):
    import time

    from anomvae.files import LEFTOVER_AGE

    gone, old = _ended_process_id(), time.time() - LEFTOVER_AGE - 5
    names = {
        "swept": f".anomvae-out.csv.{gone}-abc_1234.tmp",  # an ended writer's, unchanged for long
        "fresh": f".anomvae-out.csv.{gone}-def_5678.tmp",  # changed a moment ago
        "live": f".anomvae-out.csv.{os.getpid()}-ghi_9012.tmp",  # a writer still running
        "other": f".anomvae-out.csv.bak.{gone}-jkl_3456.tmp",  # another target's
    }
    for key, name in names.items():
        (tmp_path / name).write_text("partial")
        if key != "fresh":
            os.utime(tmp_path / name, (old, old))
    with atomic_write(tmp_path / "out.csv") as handle:
        handle.write("new\n")
    assert sorted(os.listdir(tmp_path)) == sorted(["out.csv", *(names[k] for k in ("fresh", "live", "other"))])
    # A failed write sweeps nothing.
    os.utime(tmp_path / names["fresh"], (old, old))
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "out.csv"):
        raise RuntimeError("boom")
    assert names["fresh"] in os.listdir(tmp_path)


def test_outputs_that_name_an_input_are_refused(tmp_path, monkeypatch):
    from anomvae.files import check_outputs

    data = tmp_path / "data.csv"
    data.write_text("a\n1\n")
    os.link(data, tmp_path / "hard.csv")
    os.symlink(data, tmp_path / "soft.csv")
    monkeypatch.chdir(tmp_path)
    for same in (data, "data.csv", "./sub/../data.csv", tmp_path / "hard.csv", "soft.csv"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(OutputError, match=f"-o {same} would overwrite DATA {data}"):
            check_outputs({"-o": same, "--summary-json": None}, {"MODEL": "-", "DATA": data})
    with pytest.raises(OutputError, match="--heatmaps sub would overwrite DATA"):
        check_outputs({"--heatmaps": "sub"}, {"DATA": tmp_path / "sub"})
    with pytest.raises(OutputError, match="--summary-json is an empty name"):
        check_outputs({"-o": "-", "--summary-json": ""}, {"DATA": data})
    # Standard input and output, inputs that are not there (a glob) and
    # devices (one terminal can be both /dev/stdin and /dev/stdout) are never the same.
    check_outputs({"-o": "-"}, {"DATA": "-"})
    check_outputs({"-o": "other.csv"}, {"DATA": data, "IMAGES": "*.png"})
    check_outputs({"-o": os.devnull}, {"DATA": os.devnull})
    assert (tmp_path / "data.csv").read_text() == "a\n1\n"


def test_an_output_naming_one_of_the_files_of_an_input_is_refused(tmp_path):
    from anomvae.files import check_outputs

    (tmp_path / "images").mkdir()
    files = [tmp_path / "images" / name for name in ("a.png", "b.png")]
    for path in files:
        path.write_bytes(b"image")
    os.link(files[1], tmp_path / "hard.png")
    inputs = {"DATA": tmp_path / "images", "an image of DATA": files}
    for same, named in ((files[0], files[0]), (tmp_path / "hard.png", files[1])):
        with pytest.raises(OutputError, match=f"-o {same} would overwrite an image of DATA {named}"):
            check_outputs({"-o": same}, inputs)
    # A new file in the folder replaces none of them.
    check_outputs({"-o": tmp_path / "images" / "scores.csv", "--summary-json": "-"}, inputs)


def test_an_empty_name_is_an_output_error():
    with pytest.raises(OutputError, match="empty file name"), atomic_write(""):
        pass


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("size", [10, 1_000_000])  # kept in the buffer until closed, or written at once
@pytest.mark.parametrize("mode", ["w", "wb"])
def test_a_full_device_is_an_output_error(size, mode):
    with pytest.raises(OutputError, match="^cannot write /dev/full: No space left on device$"):
        with atomic_write("/dev/full", mode) as handle:
            handle.write(("x" if mode == "w" else b"x") * size)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_standard_output_on_a_full_device_is_an_output_error(monkeypatch):
    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        with pytest.raises(OutputError, match="^cannot write standard output: No space left on device$"):
            with atomic_write("-") as handle:
                handle.write("row\n")  # buffered: the end of the block flushes it
        monkeypatch.undo()
        with contextlib.suppress(OSError):
            full.close()


def test_outputs_that_name_one_another_are_refused(tmp_path, monkeypatch):
    from anomvae.files import check_outputs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out.csv").write_text("a\n")
    os.symlink("out.csv", tmp_path / "link.csv")
    for first, second in [("out.csv", "./out.csv"), ("new.json", "sub/../new.json"), ("-", "-"),
                          ("out.csv", tmp_path / "link.csv")]:
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(OutputError, match=r"-o and --summary-json name the same file \("):
            check_outputs({"-o": first, "--heatmaps": None, "--summary-json": second}, {})
    check_outputs({"-o": "-", "--summary-json": "s.json", "--metrics-file": "m.prom"}, {})
    check_outputs({"-o": os.devnull, "--summary-json": os.devnull}, {})
