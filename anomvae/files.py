"""Writing files so that a failure never leaves a partial one.

:func:`atomic_write` serves model files, results and summaries alike: the
data go to a temporary file beside the target, which is flushed to disk and
renamed over the target only when everything was written. A file it
replaces keeps its permissions; a new one gets the umask's. Problems are
:class:`~anomvae.errors.OutputError`, naming the file.

The temporary file is named ``.anomvae-<target>.<pid>-<random>.tmp``
(``<target>`` is the target's name, cut at 48 characters; ``<pid>`` the
writing process), so that one left behind by a process killed outright
(SIGKILL, a power cut) says what it was for. The next successful write to
the same target removes such leftovers once their process has ended and
they have not changed for a minute; a concurrent writer's file is left
alone. :func:`staged_folder` stages into ``.anomvae-<what>.<pid>-<random>.tmp``.

:func:`check_outputs` refuses an output path that is empty or names one
of the command's inputs, before anything is read or written.
"""

import contextlib
import errno
import os
import re
import shutil
import stat
import sys
import tempfile
import time

from .errors import OutputError

# What only writing can fail with: storage full, file too large, quota,
# read-only file system (not EIO, which reading an input can raise too).
STORAGE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


# Leftover temporary files untouched for this long (seconds), whose process
# has ended, are removed by the next write to their target.
LEFTOVER_AGE = 60


def _cannot_write(path, exc):
    return OutputError(f"cannot write {path}: {exc.strerror or exc}")


@contextlib.contextmanager
def storage_errors(path):
    """Turn the output's own failures (a full disk, a size limit) into an
    :class:`OutputError` naming ``path``; other errors of the caller's
    block pass through as they are."""
    try:
        yield
    except OSError as exc:
        if exc.errno in STORAGE_ERRNOS and not isinstance(exc, OutputError):
            raise _cannot_write(path, exc) from None
        raise


def check_outputs(outputs, inputs):
    """Refuse output paths that are empty, name one of the inputs, or name
    one another.

    An output names an input when both resolve to the same path or are the
    same file (a hard link, a symbolic link): writing it would destroy the
    input. Standard input and output (``"-"``), None, inputs that do not
    exist (a glob pattern) and inputs that are neither files nor folders (a
    terminal, a pipe) never count as the same. Two outputs name one another
    when they are the same path or file, or both ``"-"`` (standard output):
    one would replace, or be mixed into, the other.

    Parameters
    ----------
    outputs : dict
        What each path is for the user (``"-o"``, ``"DATA"``), mapped to the
        path.
    inputs : dict
        The same for the inputs; a list of paths stands for every file it
        holds (the images of a folder or glob pattern), and each is checked.

    Raises
    ------
    OutputError
        Naming the option and the file.
    """
    for what, output in outputs.items():
        if output is not None and not os.fspath(output):
            raise OutputError(f"{what} is an empty name; give a path")
        for source_what, sources in inputs.items():
            for source in _each(output, sources):
                if _same_file(output, source):
                    raise OutputError(f"{what} {output} would overwrite {source_what} {source}; "
                                      "write to another file")
    given = [(what, os.fspath(output)) for what, output in outputs.items() if output is not None]
    for i, (what, output) in enumerate(given):
        for other_what, other in given[:i]:
            if _same_output(output, other):
                raise OutputError(f"{other_what} and {what} name the same file ({other}); give each its own")


def _same_output(output, other):
    """Whether two outputs are one file: both ``"-"``, the same path, or
    the same existing file. A device (``/dev/null``) may take several."""
    if "-" in (output, other):
        return output == other
    try:
        found = os.stat(output)
    except (OSError, ValueError):
        found = None
    if found is not None and not (stat.S_ISREG(found.st_mode) or stat.S_ISDIR(found.st_mode)):
        return False
    return os.path.realpath(output) == os.path.realpath(other) or _same_file(output, other)


def _each(output, sources):
    """The paths of one input: a path, or a list of existing files, which
    only an existing ``output`` can name (this spares a stat per file)."""
    if not isinstance(sources, (list, tuple)):
        return [sources]
    return sources if output is not None and output != "-" and os.path.lexists(output) else []


def _same_file(output, source):
    if output is None or source is None or "-" in (output, source):
        return False
    try:
        found = os.stat(source)
    except (OSError, ValueError):
        return False
    if not (stat.S_ISREG(found.st_mode) or stat.S_ISDIR(found.st_mode)):
        return False  # /dev/stdin and /dev/stdout can be one terminal
    if os.path.realpath(output) == os.path.realpath(source):
        return True
    try:
        return os.path.samestat(os.stat(output), found)
    except (OSError, ValueError):
        return False


def _temp_stem(name):
    # Cut, so that the whole temporary name stays within 255 bytes.
    return f".anomvae-{name[:48]}."


def _temp_prefix(path, name=None):
    """``.anomvae-<name>.<pid>-``, the start of the temporary name this
    process gives a file for ``path`` (``name``: the target's by default)."""
    return f"{_temp_stem(name or os.path.basename(path))}{os.getpid()}-"


def _leftover_pattern(path):
    """The temporary names of any process's writes to ``path``; group 1 is the process id."""
    return re.compile(re.escape(_temp_stem(os.path.basename(path))) + r"(\d+)-[a-z0-9_]+\.tmp")


def sweep_leftovers(path):
    """Remove the temporary files that earlier writes to ``path`` left
    behind: those of a process that is no longer running, unchanged for
    :data:`LEFTOVER_AGE` seconds. Errors are ignored."""
    directory = os.path.dirname(os.path.abspath(path))
    pattern = _leftover_pattern(path)
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or _running(int(match[1])):
            continue
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime \
                    > LEFTOVER_AGE:
                os.unlink(entry.path)


def _running(pid):
    """Whether process ``pid`` runs on this machine (False where that cannot be told)."""
    if os.name != "posix":
        return False  # os.kill(pid, 0) would signal it there; the age alone decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    except (OSError, OverflowError, ValueError):
        return False
    return True


@contextlib.contextmanager
def atomic_write(path, mode="w"):
    """Open ``path`` for writing through a temporary file renamed on success.

    On any error the temporary file is removed and ``path`` is left as it
    was. ``"-"`` writes to standard output directly, and a device or a pipe
    (``/dev/stdout``, a FIFO) is written through, since a file renamed over
    it would replace the device itself; both are flushed before the block
    ends, so that a full device fails here. A successful write removes the
    target's leftover temporary files (:func:`sweep_leftovers`).

    Raises
    ------
    OutputError
        When the file cannot be created or written (an empty ``path``, a
        full disk or device, a size limit): "cannot write ``path``: reason".
    """
    text = "b" not in mode
    if path == "-":
        stream = sys.stdout if text else sys.stdout.buffer
        with storage_errors("standard output"):
            yield stream
            stream.flush()  # a full disk behind it shows here, not at exit
        return
    path = os.fspath(path)
    if not path:
        raise OutputError("cannot write to an empty file name")
    newline = "" if text else None
    if os.path.exists(path) and not os.path.isfile(path):
        yield from _write_through(path, mode, newline)
        return
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=directory)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    handle = None
    try:
        handle = os.fdopen(fd, mode, newline=newline)
        with contextlib.suppress(OSError):  # some file systems keep no permissions
            os.fchmod(handle.fileno(), replacement_mode(path))
        with storage_errors(path):
            yield handle
        try:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            os.replace(tmp, path)
        except OSError as exc:
            raise _cannot_write(path, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            if handle is None:
                os.close(fd)
            else:
                handle.close()
        _remove(tmp)
        raise
    sweep_leftovers(path)


def _write_through(path, mode, newline):
    """Write to a device or a pipe as it is: renaming a file over it would
    replace the device itself."""
    try:
        handle = open(path, mode, newline=newline)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        with storage_errors(path):
            yield handle
        try:
            handle.close()  # flushes: a full device may say so only now
        except BrokenPipeError:
            raise  # the reader went away, as for standard output
        except OSError as exc:
            raise _cannot_write(path, exc) from None
    finally:
        with contextlib.suppress(OSError):
            handle.close()  # a failed block: what is still buffered is dropped


def _remove(path):
    with contextlib.suppress(OSError):
        os.unlink(path)


def replacement_mode(path):
    """Permission bits for a file written under a temporary name and renamed
    to ``path``: those of the file it replaces, else what a plain ``open``
    would give (0o666 less the umask). ``mkstemp`` alone gives 0o600."""
    try:
        # Read and write bits only: setuid, setgid and sticky bits are not
        # carried over to a file this process now owns.
        return stat.S_IMODE(os.stat(path).st_mode) & 0o777
    except OSError:
        pass
    return 0o666 & ~_umask()


def _umask():
    # Reading the umask means setting it; /proc tells it without that
    # (Linux), so threads never see a changed umask there.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_folder(target, what="files"):
    """A hidden temporary folder inside ``target`` (created if need be) whose
    files move up into ``target`` only when the block succeeds; on any error
    it is removed, and so is ``target`` if this created it, so a failed
    command adds no file. Inside ``target``, the move never crosses file
    systems and needs no more rights than writing there. None gives None.

    Raises
    ------
    OutputError
        "cannot write ``what`` to ``target``" when the folder cannot be
        created or written.
    """
    if target is None:
        yield None
        return
    target = os.path.abspath(target)
    created = not os.path.isdir(target)
    try:
        os.makedirs(target, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=_temp_prefix(target, re.sub(r"[^\w-]", "_", what)), suffix=".tmp",
                                   dir=target)
    except OSError as exc:
        raise folder_error(target, what, exc) from None
    succeeded = False
    try:
        yield staging
        try:
            for name in sorted(os.listdir(staging)):
                os.replace(os.path.join(staging, name), os.path.join(target, name))
        except OSError as exc:
            raise folder_error(target, what, exc) from None
        succeeded = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not succeeded:
            with contextlib.suppress(OSError):
                os.rmdir(target)  # only if empty


def folder_error(folder, what, exc):
    """The :class:`OutputError` for ``what`` that cannot be written into ``folder``."""
    return OutputError(f"cannot write {what} to {os.path.abspath(folder)}: {exc.strerror or exc}")
