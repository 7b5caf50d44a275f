"""Durable files: atomic write-then-rename with fsync, and a writability probe."""

import contextlib
import os
import secrets
from pathlib import Path

from fedsk.exceptions import RequestError

__all__ = ["StorageError", "atomic_write", "check_writable"]


class StorageError(RequestError):
    """The state directory cannot be written (disk full, read-only, permissions).

    Answered as a 4xx refusal: nothing was half-written, and the same request can be
    retried once the operator has freed space.
    """

    status = 409
    code = "insufficient_storage"


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _private(path, flags):
    """Open a new file readable and writable by its owner only (mode 0600)."""
    return os.open(path, flags, 0o600)


def atomic_write(path, data):
    """Write ``data`` to ``path`` so that readers see the old or the new file, never half.

    The file is created with mode 0600: what the state directory holds (models with
    their thresholds) is as private as the data itself.
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb", opener=_private) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(
            f"the party server could not write its state directory ({exc.strerror or exc}); "
            "nothing was saved; retry after its operator frees space or fixes permissions"
        ) from None


def check_writable(directory, *, parents=True):
    """Create ``directory`` if needed and prove a file can be written and removed in it.

    A directory it creates has mode 0700 (an existing one keeps its mode). With
    ``parents=False`` its parent must exist (a typo in a path is not silently turned
    into a new directory tree).
    """
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=parents, exist_ok=True)
    probe = directory / f".probe-{secrets.token_hex(4)}"
    with open(probe, "wb") as fh:
        fh.write(b"ok")
        fh.flush()
        os.fsync(fh.fileno())
    probe.unlink()
