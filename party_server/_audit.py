"""The hash-chained audit log: one JSON line per request the server takes.

Each record holds the time, the peer, the endpoint, the session, the request ID, byte
sizes and SHA-256 of the bodies, ciphertext counts each way and the HTTP status. It
also holds ``prev`` (the previous record's hash) and its own ``hash``:
``sha256(prev + canonical JSON of the record without its hash)``. Editing, inserting
or deleting a record in the middle breaks the chain at that record.
What is never logged: tokens, keys, plaintext values, request bodies.
"""

import hashlib
import json
import os
import threading
import time
from collections import defaultdict
from pathlib import Path

from ._storage import StorageError

__all__ = ["AuditLog", "summarize", "verify"]

GENESIS = "0" * 64


def _digest(prev, record):
    body = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev + body).encode()).hexdigest()


class AuditLog:
    """Append-only, hash-chained, fsync'ed JSON-lines file."""

    def __init__(self, path, *, fsync=True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._repair_tail()
        self._seq, self._prev = self._last()

    def _repair_tail(self):
        """Drop a trailing partial line left by a crash in the middle of an append."""
        if not self.path.exists():
            return
        with open(self.path, "rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)

    def _last(self):
        if not self.path.exists():
            return 0, GENESIS
        last = None
        with open(self.path, "rb") as fh:
            for line in fh:
                if line.strip():
                    last = line
        if last is None:
            return 0, GENESIS
        rec = json.loads(last)
        return rec["seq"], rec["hash"]

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
            line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as exc:
                raise StorageError(f"cannot open the audit log ({exc.strerror})") from None
            try:
                size = os.fstat(fd).st_size
                try:
                    written = os.write(fd, line)
                    if written != len(line):
                        raise OSError(28, "short write")
                    if self.fsync:
                        os.fsync(fd)
                except OSError as exc:
                    os.ftruncate(fd, size)
                    raise StorageError(
                        f"cannot append to the audit log ({exc.strerror or exc}); the request "
                        "was refused so that no request goes unlogged"
                    ) from None
            finally:
                os.close(fd)
            self._seq, self._prev = record["seq"], record["hash"]
            return record


def verify(path):
    """Check the chain. Returns ``(ok, n_records, problem)``; problem names the record."""
    path = Path(path)
    if not path.exists():
        return True, 0, None
    prev, seq = GENESIS, 0
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            try:
                rec = json.loads(line)
                claimed = rec.pop("hash")
            except (ValueError, KeyError, AttributeError, TypeError):
                return False, seq, f"record {seq + 1} (line {lineno}) is not a valid record"
            if rec.get("seq") != seq + 1:
                return (
                    False,
                    seq,
                    (
                        f"record {seq + 1} (line {lineno}) has sequence number "
                        f"{rec.get('seq')!r}: a record was removed or inserted"
                    ),
                )
            if rec.get("prev") != prev:
                return (
                    False,
                    seq,
                    (f"record {seq + 1} (line {lineno}) does not chain to the previous record"),
                )
            if _digest(prev, rec) != claimed:
                return (
                    False,
                    seq,
                    (
                        f"record {seq + 1} (line {lineno}) was modified: its hash "
                        "does not match its content"
                    ),
                )
            prev, seq = claimed, seq + 1
    return True, seq, None


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
