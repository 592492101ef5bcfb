"""Writing files so that a failure never leaves a partial one.

:func:`atomic_write` serves model files, results and summaries alike: the
data go to a temporary file beside the target, which is flushed to disk and
renamed over the target only when everything was written. A file it
replaces keeps its permissions; a new one gets the umask's. Problems are
:class:`~anomvae.errors.OutputError`, naming the file.
"""

import contextlib
import errno
import os
import shutil
import stat
import sys
import tempfile

from .errors import OutputError

# What only writing can fail with: storage full, file too large, quota,
# read-only file system (not EIO, which reading an input can raise too).
_STORAGE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


def _cannot_write(path, exc):
    return OutputError(f"cannot write {path}: {exc.strerror or exc}")


@contextlib.contextmanager
def atomic_write(path, mode="w"):
    """Open ``path`` for writing through a temporary file renamed on success.

    On any error the temporary file is removed and ``path`` is left as it
    was. ``"-"`` writes to standard output directly, and a device or a pipe
    (``/dev/stdout``, a FIFO) is written through, since a file renamed over
    it would replace the device itself.

    Raises
    ------
    OutputError
        When the file cannot be created or written.
    """
    text = "b" not in mode
    if path == "-":
        yield sys.stdout if text else sys.stdout.buffer
        return
    path = os.fspath(path)
    newline = "" if text else None
    if os.path.exists(path) and not os.path.isfile(path):
        try:
            handle = open(path, mode, newline=newline)
        except OSError as exc:
            raise _cannot_write(path, exc) from None
        with handle:
            yield handle
        return
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".anomvae-", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    handle = None
    try:
        handle = os.fdopen(fd, mode, newline=newline)
        with contextlib.suppress(OSError):  # some file systems keep no permissions
            os.fchmod(handle.fileno(), replacement_mode(path))
        try:
            yield handle
        except OSError as exc:
            # The file itself could not take the data (a full disk, a size
            # limit); other errors of the caller's block pass through.
            if exc.errno in _STORAGE_ERRORS and not isinstance(exc, OutputError):
                raise _cannot_write(path, exc) from None
            raise
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
        staging = tempfile.mkdtemp(prefix=".anomvae-", dir=target)
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
