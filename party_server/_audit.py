"""The hash-chained audit log: one JSON line per request the server takes.

Each record holds the time, the peer, the endpoint, the session, the request ID, the
model the request uses or makes (if any), the client's address, byte sizes and SHA-256
of the bodies, ciphertext counts each way and the HTTP status. It
also holds ``prev`` (the previous record's hash) and its own ``hash``:
``sha256(prev + canonical JSON of the record without its hash)``. Editing, inserting
or deleting a record in the middle breaks the chain at that record, and so does a
record whose bytes are not its canonical JSON (spaces added, another line ending).

The chain alone cannot show records removed from its *end*: what is left is still a
valid chain. So the server also keeps the chain's head (the last record's sequence
number and hash, with the log's size and SHA-256) in a separate file, ``audit.head``
next to ``audit.log``, replaced atomically after every append. :func:`verify` checks
the log against it: a log that ends before the head (truncated, emptied or deleted)
is reported. Someone who can rewrite both files can still truncate the log and write
a matching head, or append records that chain (the hashes have no secret key): keep a
copy of the head elsewhere to detect that. What is never logged: tokens, keys,
plaintext values, request bodies.
"""

import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections import defaultdict
from pathlib import Path

from ._config import ConfigError
from ._storage import StorageError, unusable

__all__ = ["AuditLog", "head_path", "printable", "summarize", "verify"]

GENESIS = "0" * 64
_FULL = (errno.ENOSPC, errno.EDQUOT)
_UNSUPPORTED = (None, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)  # (None: no fallocate)
log = logging.getLogger("party_server")


def _digest(prev, record):
    body = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev + body).encode()).hexdigest()


def head_path(path):
    """Where the head of the audit log at ``path`` is kept (``audit.log`` -> ``audit.head``)."""
    return Path(path).with_suffix(".head")


def _read_head(path):
    """``(seq, hash)`` from a head file, None if there is none; ValueError if unreadable
    (an OSError other than a missing file is raised as is)."""
    head = _read_head_file(path)
    return None if head is None else head[:2]


def _read_head_file(path):
    """``(seq, hash, size, sha256)`` of a head file: ``size`` and ``sha256`` are the log's
    size and digest when the head was written (None in a head written before fedsk kept
    them: the next start checks every record)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    try:
        head = json.loads(data)
        seq, digest = head["seq"], head["hash"]
        size, sha = head.get("bytes"), head.get("sha256")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"{path} is not a valid audit head ({exc})") from None
    if (
        not isinstance(seq, int)
        or isinstance(seq, bool)
        or seq < 0
        or not isinstance(digest, str)
        or (seq == 0) != (digest == GENESIS)
    ):
        raise ValueError(f"{path} is not a valid audit head")
    if not (isinstance(size, int) and not isinstance(size, bool) and isinstance(sha, str)):
        size = sha = None
    return seq, digest, size, sha


def printable(text, limit=None):
    """``text`` as printable ASCII (escaped), at most ``limit`` characters.

    The URL's session ID and path come from the client, before authentication; a
    terminal escape or a newline in them must not reach an audit record, nor an
    operator's terminal through ``party-server audit show``.
    """
    if text is None:
        return None
    text = str(text)[:limit]
    return text.encode("unicode_escape").decode("ascii")[:limit]


class AuditLog:
    """Append-only, hash-chained, fsync'ed JSON-lines file, and the head of its chain.

    At start the chain is checked, and the log against its head: a record edited,
    inserted or removed (a blank line included), a log that ends before the head or
    whose record there is another one, was tampered with while the server was stopped,
    and the server refuses to start naming the line (continuing would overwrite the
    evidence in the head). A head one record behind the log is what a crash between the
    two writes leaves; it is brought up to date. The head also keeps the log's size and
    the SHA-256 of its bytes, so that a start need not check every record again.
    A file of the log it cannot use is a :class:`StateDirUnusable` naming it.
    """

    def __init__(self, path, *, fsync=True):
        self.path = Path(path)
        self.head = head_path(self.path)
        self.reserve = self.path.with_name(f".{self.path.stem}.reserve")
        self._no_reserve = False
        self.fsync = fsync
        self._lock = threading.Lock()
        self._size, self._digest = 0, None  # the log's size and running SHA-256
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            for tmp in self.path.parent.glob(f".tmp-{self.head.name}-*"):  # a crash mid-write
                tmp.unlink(missing_ok=True)
            self._seq, self._prev = self._reconcile()  # (changes no file if it refuses)
            os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
            self._write_head(self._seq, self._prev)
        except OSError as exc:  # permissions, a directory where the log or head belongs
            raise unusable(exc, "use the audit log file") from None
        self._make_reserve()  # (a disk already full: check_space refuses until it is made)

    def reload(self):
        """Read the chain's head from the files again (another process appended to it).

        Raises :class:`ConfigError` (a broken chain, a file it cannot use) as at start."""
        with self._lock:
            try:
                self._seq, self._prev = self._reconcile()
            except OSError as exc:
                raise unusable(exc, "use the audit log file") from None

    def _repair_tail(self, tail, size):
        """Once the log is known to be intact: end a last record that lacks only its
        newline with one, or drop a last line that a crash cut in the middle of an append
        (the log's first ``size`` bytes are the complete records)."""
        if tail == "newline":
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)  # (an append-only log too)
            try:
                os.write(fd, b"\n")
            finally:
                os.close(fd)
        elif tail == "cut":
            log.warning(
                "audit log %s: dropping its last line, cut short by a crash in the middle "
                "of an append (the record was never complete)",
                self.path,
            )
            try:
                os.truncate(self.path, size)
            except PermissionError as exc:
                raise ConfigError(
                    f"cannot drop the cut last line of the audit log {self.path} "
                    f"({exc.strerror}): if the file is append-only (chattr +a), run "
                    "chattr -a on it, start the server once, then set it again"
                ) from None

    def _reconcile(self):
        """The last record's ``(seq, hash)``, after checking the chain and its head.

        Every record is checked: one edited, inserted or removed anywhere (or a blank
        line, which the server never writes) stops the start, naming its line. Up to
        the head, the log's bytes are compared with the SHA-256 the head keeps of them
        (fast); only records after that point, and a log whose bytes differ, are checked
        record by record.
        """
        try:
            head = _read_head_file(self.head)
        except ValueError as exc:
            raise ConfigError(f"{exc}; {_MOVE_ASIDE}") from None
        seq, prev, at_head, tail = 0, GENESIS, None, None
        digest, size = hashlib.sha256(), 0
        if head is not None and head[0] > 0 and not self.path.exists():
            raise ConfigError(
                f"the audit log {self.path} does not exist, but its head {self.head.name} "
                f"says it had {head[0]} records; " + _MOVE_ASIDE
            )
        if self.path.exists():
            with open(self.path, "rb") as fh:
                first = 1
                if head is not None and head[2] is not None:
                    skipped = _skip_checked(fh, head[2], head[3])
                    if skipped is None:
                        fh.seek(0)  # not the bytes the server wrote: check every record
                    else:
                        digest, size, first = skipped[0], skipped[1], skipped[2] + 1
                        seq, prev, at_head = head[0], head[1], head[1]
                for lineno, line in enumerate(fh, start=first):
                    if not line.endswith(b"\n"):  # the last line: whole but for its newline?
                        line, tail = line + b"\n", "newline"
                    claimed, problem = _check(line, lineno, seq, prev)
                    if problem and tail:  # no: cut short by a crash in an append
                        tail = "cut"
                        break
                    if problem:
                        raise ConfigError(
                            f"the audit log {self.path} is broken at line {lineno}: {problem}; "
                            + _MOVE_ASIDE
                        )
                    digest.update(line)
                    size += len(line)
                    prev, seq = claimed, seq + 1
                    if head is not None and seq == head[0]:
                        at_head = claimed
        if head is None and seq:
            raise ConfigError(
                f"the audit log {self.path} has {seq} records but no head file "
                f"({self.head.name}): records removed from its end could not be seen; "
                + _MOVE_ASIDE
            )
        if head is not None and head[0] and seq < head[0]:
            raise ConfigError(
                f"the audit log {self.path} ends after record {seq} but its head "
                f"{self.head.name} says it had {head[0]}: records were removed from its end; "
                + _MOVE_ASIDE
            )
        if head is not None and head[0] and at_head != head[1]:
            raise ConfigError(
                f"record {head[0]} of the audit log {self.path} is not the one its head "
                f"{self.head.name} names: the log was rewritten; " + _MOVE_ASIDE
            )
        self._repair_tail(tail, size)  # (only now: a refused start changes no file)
        self._size, self._digest = size, digest
        return seq, prev

    def _write_head(self, seq, digest, size=None, sha=None):
        """Replace the head file atomically (temp file, fsync, rename); mode 0600.

        With the log's ``size`` and the ``sha`` of its bytes (the running digest if not
        given), a start compares the log with them instead of checking it record by record.
        """
        head = {"seq": seq, "hash": digest}
        if size is None and self._digest is not None:
            size, sha = self._size, self._digest.hexdigest()
        if size is not None:
            head.update({"bytes": size, "sha256": sha})
        data = (json.dumps(head) + "\n").encode()
        tmp = self.head.with_name(f".tmp-{self.head.name}-{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(28, "short write")
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            # no fsync of the directory: if a crash loses the rename, the head is one
            # record behind the log (already fsync'ed), which start and verify accept
            os.replace(tmp, self.head)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    # Below this much free space a request is refused before it is carried out: its audit
    # record would likely not fit, and a request carried out but then refused as
    # unlogged has happened all the same (a session opened, a model saved).
    MIN_FREE_BYTES = 1 << 20
    # A file of this size is kept next to the log. When the disk fills up *while* a
    # request is carried out (another process, a model written by the request itself),
    # the append deletes it and takes its place: the request is logged all the same.
    # Until it can be made again, requests are refused before they are carried out.
    RESERVE_BYTES = 256 << 10

    def check_space(self):
        """Raise StorageError, before a request is carried out, if the disk is nearly full
        (or the space kept aside for the log was used and cannot be made again)."""
        try:
            st = os.statvfs(self.path.parent)
        except (AttributeError, OSError):  # no statvfs here: the append will tell
            free = None
        else:
            free = st.f_bavail * st.f_frsize
        if free is not None and free < self.MIN_FREE_BYTES:
            raise StorageError(
                f"the state directory's disk has {free // 1024} KiB free; the request was "
                "refused before it was carried out, so that no request goes unlogged. The "
                "host's operator must free space; then retry"
            )
        if not self.reserve.exists() and not self._make_reserve():
            raise StorageError(
                "the state directory's disk filled up: the space kept aside for the audit "
                "log is used up and cannot be made again, so the request was refused "
                "before it was carried out. The host's operator must free space; then retry"
            )

    def _make_reserve(self):
        """Make the reserve file (blocks allocated, not sparse). False if the disk is full;
        True, without a reserve from then on, where the file system cannot make one."""
        if self._no_reserve:
            return True
        fd = None
        try:
            fd = os.open(self.reserve, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.RESERVE_BYTES)
            except (AttributeError, OSError) as exc:
                if getattr(exc, "errno", None) not in _UNSUPPORTED:
                    raise
                if os.write(fd, bytes(self.RESERVE_BYTES)) != self.RESERVE_BYTES:
                    raise OSError(errno.ENOSPC, "short write") from None
                os.fsync(fd)
            return True
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.reserve.unlink()
            if exc.errno in _FULL:
                return False
            self._no_reserve = True
            log.warning("cannot keep space aside for the audit log (%s): %s", exc, self.reserve)
            return True
        finally:
            if fd is not None:
                os.close(fd)

    def _write(self, fd, line, record, size):
        digest = None
        if self._digest is not None and size == self._size:  # (else: checked at next start)
            digest = self._digest.copy()
            digest.update(line)
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(28, "short write")
        if self.fsync:
            os.fsync(fd)
        if digest is None:
            self._digest = None
            self._write_head(record["seq"], record["hash"])
        else:
            self._write_head(record["seq"], record["hash"], size + len(line), digest.hexdigest())
        self._size, self._digest = size + len(line), digest

    def append(self, **fields):
        """Append one record; raise StorageError (nothing half-written) if the disk refuses."""
        with self._lock:
            record = {
                "seq": self._seq + 1,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
                + f".{int(time.time() * 1000) % 1000:03d}Z",
                **fields,
                "prev": self._prev,
            }
            record["hash"] = _digest(self._prev, record)
            line = _line(record)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as exc:
                raise StorageError(f"cannot open the audit log ({exc.strerror})") from None
            try:
                size = os.fstat(fd).st_size
                try:
                    try:
                        self._write(fd, line, record, size)
                    except OSError:
                        os.ftruncate(fd, size)  # the log and its head stay as they were
                        if not self.reserve.exists():
                            raise
                        self.reserve.unlink()  # the space kept for this: use it
                        log.warning("disk full: the audit log used its reserve; %s", self.path)
                        self._write(fd, line, record, size)
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, size)
                    raise StorageError(
                        f"cannot append to the audit log ({exc.strerror or exc}); the request "
                        "was refused so that no request goes unlogged"
                    ) from None
            finally:
                os.close(fd)
            self._seq, self._prev = record["seq"], record["hash"]
            return record


_MOVE_ASIDE = (
    "keep the log and its head as evidence (party-server audit verify names the problem), "
    "then move both out of the state directory to start a new log"
)


def _skip_checked(fh, size, sha):
    """Read the first ``size`` bytes of ``fh``: ``(digest, size, lines)`` if they are the
    ones whose SHA-256 is ``sha`` and end a line, else None."""
    digest, left, lines, last = hashlib.sha256(), size, 0, b"\n"
    while left:
        chunk = fh.read(min(left, 1 << 20))
        if not chunk:
            return None
        digest.update(chunk)
        lines += chunk.count(b"\n")
        left -= len(chunk)
        last = chunk[-1:]
    if digest.hexdigest() != sha or last != b"\n":
        return None
    return digest, size, lines


def verify(path):
    """Check the chain and its head. Returns ``(ok, n_records, problem)``.

    ``problem`` names the first record that was edited, inserted or removed (a blank
    line is not a record: a break, as at a server's start), or says that the log is
    missing or ends before its head (records removed from the end). A file that cannot
    be read raises OSError. Records
    after the head chain like the others and are accepted: the server may have appended
    them while this ran, or a crash lost the head's last update. What this cannot see:
    a log truncated (or rebuilt) together with a matching new head by someone who can
    write both files, and records appended that chain correctly.
    """
    path = Path(path)
    head_file = head_path(path)
    try:
        head = _read_head(head_file)  # before the log: the log only grows after it
    except ValueError as exc:
        return False, 0, str(exc)
    if not path.exists():
        return False, 0, f"the audit log {path} does not exist (a party server creates it at start)"
    prev, seq, at_head = GENESIS, 0, None
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.endswith(b"\n") and head is not None and seq >= head[0]:
                break  # the last line, being appended after the head: not a record yet
            claimed, problem = _check(line, lineno, seq, prev)
            if problem:
                return False, seq, problem
            prev, seq = claimed, seq + 1
            if head is not None and seq == head[0]:
                at_head = claimed
    if head is None:
        return (
            False,
            seq,
            f"{head_file} is missing: cannot tell whether records were removed from the end "
            "of the log (a party server writes the head when it starts)",
        )
    if seq < head[0]:
        return (
            False,
            seq,
            f"record {seq + 1} was removed: the log ends after record {seq} but its head "
            f"{head_file.name} says it had {head[0]} (records {seq + 1} to {head[0]} are gone)",
        )
    if head[0] > 0 and at_head != head[1]:
        return (
            False,
            seq,
            f"record {head[0]} is not the one the head {head_file.name} names: the log was "
            "rewritten",
        )
    return True, seq, None


def _check(line, lineno, seq, prev):
    """``(hash, None)`` if ``line`` is record ``seq + 1`` chained to ``prev``, else a problem."""
    try:
        rec = json.loads(line)
        claimed = rec.pop("hash")
    except (ValueError, KeyError, AttributeError, TypeError):
        return None, f"record {seq + 1} (line {lineno}) is not a valid record"
    if rec.get("seq") != seq + 1:
        return None, (
            f"record {seq + 1} (line {lineno}) has sequence number "
            f"{rec.get('seq')!r}: a record was removed or inserted"
        )
    if rec.get("prev") != prev:
        return None, f"record {seq + 1} (line {lineno}) does not chain to the previous record"
    if _digest(prev, rec) != claimed:
        return None, (
            f"record {seq + 1} (line {lineno}) was modified: its hash does not match its content"
        )
    canonical = _line({**rec, "hash": claimed})
    if line not in (canonical, canonical[:-1]):  # same content, other bytes (spaces added)
        return None, (
            f"record {seq + 1} (line {lineno}) was modified: its content is intact but its "
            "bytes are not the ones the server wrote"
        )
    return claimed, None


def _line(record):
    """The bytes the server writes for ``record`` (its canonical JSON and a newline)."""
    return (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()


def summarize(path):
    """Per-session totals: who asked for what, bytes and ciphertexts each way."""
    sessions = defaultdict(
        lambda: {
            "peer": None,
            "first": None,
            "last": None,
            "requests": 0,
            "errors": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "ct_in": 0,
            "ct_out": 0,
            "endpoints": defaultdict(int),
        }
    )
    path = Path(path)
    if not path.exists():
        return {}
    with open(path, "rb") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            s = sessions[rec.get("session") or "-"]
            s["peer"] = s["peer"] or rec.get("peer")
            s["first"] = s["first"] or rec.get("time")
            s["last"] = rec.get("time")
            s["requests"] += 1
            s["errors"] += int(rec.get("status", 200) >= 400)
            for k in ("bytes_in", "bytes_out", "ct_in", "ct_out"):
                s[k] += int(rec.get(k) or 0)
            s["endpoints"][rec.get("endpoint", "?")] += 1
    return {k: dict(v, endpoints=dict(v["endpoints"])) for k, v in sessions.items()}
