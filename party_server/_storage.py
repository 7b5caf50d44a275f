"""Durable files: atomic write-then-rename with fsync, a writability probe, and the lock
that keeps a state directory to one server process."""

import contextlib
import errno
import os
import secrets
import threading
import time
import weakref
from pathlib import Path

from fedsk.exceptions import RequestError

from ._config import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None

__all__ = [
    "StateDirInUse",
    "StateDirLock",
    "StateDirUnusable",
    "StorageError",
    "atomic_write",
    "check_state_dir",
    "check_writable",
    "unusable",
]


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


class StateDirUnusable(ConfigError):
    """A file or directory of the state directory cannot be read or written
    (permissions, something else in its place); the message names the path."""


def _user():
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError, AttributeError):  # pragma: no cover - Windows, no entry
        return "this process's user"


def unusable(exc, doing, path=None):
    """:class:`StateDirUnusable` for ``exc``, an OSError met ``doing`` something: one line
    naming the path (the exception's, else ``path``) and what to do about it."""
    path = getattr(exc, "filename2", None) or exc.filename or path  # (a rename's target)
    if path is not None and Path(path).name.startswith((".probe-", ".tmp-")):
        path = Path(path).parent  # (a file of ours that could not be made in it)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = (
            f"({exc.strerror}): fix its owner or permissions (party-server runs as {_user()})"
            if exc.errno != errno.EROFS
            else f"({exc.strerror}): state_dir must be on a writable file system"
        )
    elif exc.errno == errno.EISDIR:
        fix = "(it is a directory where a file belongs): move it out of the way"
    elif exc.errno == errno.EEXIST and path is not None and _dangling(path):
        fix = (
            f"(a symbolic link to {os.readlink(path)}, which does not exist): create its "
            "target or fix the link"
        )
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST):
        fix = "(a file is where a directory belongs): move it out of the way"
    else:
        fix = f"({exc.strerror or exc})"
    return StateDirUnusable(f"cannot {doing} {path} {fix}")


def _dangling(path):
    path = Path(path)
    return path.is_symlink() and not path.exists()


def check_state_dir(state_dir):
    """Raise ConfigError unless the server could create or use ``state_dir``: its parent
    must be a directory (the server creates only ``state_dir`` itself), and ``state_dir``
    one if it exists."""
    state_dir = Path(state_dir)
    if not state_dir.parent.is_dir():
        raise ConfigError(
            f"config key 'state_dir': {state_dir.parent} does not exist or is not a "
            f"directory; create it or fix the path (the server creates only "
            f"{state_dir.name!r} itself)"
        )
    if state_dir.exists() and not state_dir.is_dir():
        raise ConfigError(f"config key 'state_dir': {state_dir} is not a directory")


class StateDirInUse(ConfigError):
    """Another process holds the state directory's lock."""


class StateDirLock:
    """An exclusive ``flock`` on ``state_dir/.lock``, so one process at a time serves it.

    Two processes on one state directory would each append to the audit log from their
    own in-memory head (forking the chain) and each apply retention to the same models.
    The lock is taken when the app's state is created and held while that state lives
    (``.lock`` holds the owner's pid, for the message). Apps of one process on the same
    directory share one lock. A process forked from the owner (gunicorn ``--preload``)
    shares the owner's lock, so the lock is per process: the first request a forked
    process serves calls :meth:`claim`, which takes the lock over for that process (the
    process that forked does not serve), or fails if another process already has it.
    Without ``fcntl`` (Windows) there is no lock.
    """

    _held = weakref.WeakValueDictionary()  # resolved directory -> lock of this process
    _held_lock = threading.Lock()

    def __init__(self, directory, config_file=None):
        self.path = Path(directory) / ".lock"
        self.config_file = config_file  # (written after the pid: reload checks it)
        self.pid = os.getpid()
        self._fd = None
        self._claim_lock = threading.Lock()

    # file systems on which a flock taken on one machine may not keep a process on
    # another machine off (NFS: only with local_lock=none and lock support on the server)
    NETWORK_FILE_SYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs")

    @classmethod
    def network_file_system(cls, directory, mounts="/proc/self/mounts"):
        """The type of the network file system ``directory`` is on, or None (also where
        it cannot tell: no ``/proc``)."""
        try:
            with open(mounts, encoding="utf-8", errors="replace") as fh:
                table = [f[1:3] for f in map(str.split, fh) if len(f) >= 3]
        except OSError:
            return None
        path = str(Path(directory).resolve())
        best, fs_type = "", None
        for point, kind in table:
            point = point.replace("\\040", " ")  # (how the table writes a space)
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, fs_type = point, kind
        network = fs_type in cls.NETWORK_FILE_SYSTEMS or fs_type == "fuse.sshfs"
        return fs_type if network else None

    @classmethod
    def acquire(cls, directory, *, wait=0.0, config_file=None):
        """The lock of ``directory`` for this process; raise :class:`StateDirInUse`
        after ``wait`` seconds if another process holds it. ``config_file``, the server's
        config, is noted in the lock file for ``party-server reload``."""
        key = str(Path(directory).resolve())
        with cls._held_lock:
            lock = cls._held.get(key)
            if lock is not None and lock.pid == os.getpid():
                return lock
            lock = cls(directory, config_file)
            lock._fd = lock._take(wait)
            cls._held[key] = lock
            return lock

    def _take(self, wait):
        if fcntl is None:  # pragma: no cover
            return None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise unusable(exc, "open the state directory's lock file", self.path) from None
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    owner = _read_pid(fd)
                    os.close(fd)
                    raise StateDirInUse(
                        f"config key 'state_dir': {self.path.parent} is in use by another "
                        f"party server process{f' (pid {owner})' if owner else ''}; stop that "
                        "server first, or give each server its own state_dir (under gunicorn: "
                        "one worker process, workers = 1)"
                    ) from None
                time.sleep(0.1)
            except OSError:
                os.close(fd)
                raise
        with contextlib.suppress(OSError):  # (only for the message above)
            os.ftruncate(fd, 0)
            note = f"{os.getpid()}\n"
            if self.config_file is not None:
                note += f"{Path(self.config_file).resolve()}\n"
            os.pwrite(fd, note.encode(), 0)
        return fd

    def claim(self, *, wait=0.0):
        """Make this process the lock's owner. True if it took the lock over from the
        process it was forked from (whose in-memory state may be behind the files)."""
        if self.pid == os.getpid():
            return False
        with self._claim_lock:
            if self.pid == os.getpid():
                return False
            if self._fd is not None:
                # shared with the process that forked this one: let go of it there too
                with contextlib.suppress(OSError):
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None
            self._fd = self._take(wait)
            self.pid = os.getpid()
            return True

    def __del__(self):
        if self._fd is not None and self.pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd)


def running_server_pid(directory):
    """The pid of the process that holds ``directory``'s lock, or None if none does."""
    return running_server(directory)[0]


def running_server(directory):
    """``(pid, config file)`` of the process that holds ``directory``'s lock (the config
    file None if it was not started from one), or ``(None, None)`` if none does."""
    path = Path(directory) / ".lock"
    if fcntl is None or not path.exists():
        return None, None
    if path.is_dir():  # (opens, and locks, as if no server held it)
        exc = IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        raise unusable(exc, "read the state directory's lock file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise unusable(exc, "read the state directory's lock file", path) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_owner(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None, None
    finally:
        os.close(fd)


def _read_pid(fd):
    return _read_owner(fd)[0]


def _read_owner(fd):
    """``(pid, config file)`` the lock file names (each None where it names none)."""
    with contextlib.suppress(OSError, ValueError):
        lines = os.pread(fd, 8192, 0).decode().splitlines()
        pid = int(lines[0].strip() or 0) if lines else 0
        return pid or None, (lines[1] if len(lines) > 1 and lines[1] else None)
    return None, None


def _reset_after_fork():
    # a thread of the parent may have held these when it forked
    StateDirLock._held_lock = threading.Lock()
    for lock in list(StateDirLock._held.values()):
        lock._claim_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
