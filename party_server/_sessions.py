"""In-memory sessions with a time-to-live and per-request-ID replay."""

import secrets
import threading
import time
import weakref
from collections import OrderedDict

from fedsk.exceptions import ConflictError, NotFoundError
from fedsk.federation import HostSession

__all__ = ["SessionStore"]

REPLAY_CACHE = 16  # answers kept per session for retried requests


class _Entry:
    __slots__ = ("last", "lock", "replies", "session")

    def __init__(self, session):
        self.session = session
        self.lock = threading.RLock()
        self.last = time.monotonic()
        self.replies = OrderedDict()

    def replay(self, request_id):
        return self.replies.get(request_id)

    def remember(self, request_id, reply):
        self.replies[request_id] = reply
        while len(self.replies) > REPLAY_CACHE:
            self.replies.popitem(last=False)


class SessionStore:
    """Sessions by ID; each is visible only to the peer that opened it.

    Expired sessions (idle longer than ``ttl`` seconds) are dropped by a background
    sweeper and on every lookup, so a guest that vanishes costs memory for at most
    one TTL. Sessions hold no files.
    """

    def __init__(self, ttl, *, max_per_peer=64):
        self.ttl = float(ttl)
        self.max_per_peer = max_per_peer
        self._entries = {}
        self._lock = threading.Lock()
        _start_sweeper(self)

    def __len__(self):
        return len(self._entries)

    def create(self, peer, dataset):
        self.sweep()
        with self._lock:
            if sum(e.session.peer == peer for e in self._entries.values()) >= self.max_per_peer:
                raise ConflictError(
                    f"too many open sessions for {peer} ({self.max_per_peer}); close some or "
                    "wait for them to expire",
                    code="too_many_sessions",
                )
            sid = secrets.token_hex(16)
            self._entries[sid] = _Entry(HostSession(sid, peer, dataset))
        return self._entries[sid]

    def get(self, session_id, peer):
        with self._lock:
            entry = self._entries.get(session_id)
            now = time.monotonic()
            if entry is not None and now - entry.last > self.ttl:
                del self._entries[session_id]
                entry = None
            if entry is None or entry.session.peer != peer:
                raise NotFoundError("unknown or expired session")
            entry.last = now
            return entry

    def delete(self, session_id, peer):
        self.get(session_id, peer)
        with self._lock:
            self._entries.pop(session_id, None)

    def sweep(self):
        now = time.monotonic()
        with self._lock:
            for sid in [s for s, e in self._entries.items() if now - e.last > self.ttl]:
                del self._entries[sid]


def _start_sweeper(store):
    ref = weakref.ref(store)
    period = max(min(store.ttl / 4, 60.0), 0.05)

    def run():
        while True:
            time.sleep(period)
            s = ref()
            if s is None:
                return
            s.sweep()
            del s

    threading.Thread(target=run, name="fedsk-session-sweeper", daemon=True).start()
