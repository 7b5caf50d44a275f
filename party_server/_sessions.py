"""In-memory sessions with a time-to-live and once-only request IDs.

Every request ID a session has taken is remembered for the session's life, so a request
is carried out at most once per session: an identical retry of one of the last
:data:`REPLAY_CACHE` requests gets the answer given the first time; any other reuse of
an ID is refused.
"""

import hashlib
import secrets
import threading
import time
import weakref
from collections import OrderedDict

import numpy as np

from fedsk.exceptions import ConflictError, NotFoundError
from fedsk.federation import HostSession

__all__ = ["SessionStore"]

REPLAY_CACHE = 16  # answers kept per session for retried requests
# ... and at most this many bytes of them, besides the newest (which a guest's retry of
# its last request needs, however large): a peer repeating large requests cannot make
# a session hold 16 answers of up to max_body_bytes each
REPLAY_CACHE_BYTES = 32 << 20
MAX_REQUESTS = 1 << 22  # request IDs one session may take (8 bytes of memory each)


class _SeenIds:
    """The request IDs a session has taken, in 8 bytes each.

    An ID is kept as a 64-bit BLAKE2b hash keyed with a secret of this session (so a
    peer cannot choose IDs that collide; two of a session's IDs collide by chance with
    probability below 1e-6 even at :data:`MAX_REQUESTS`). New hashes go to a small set
    that is merged into a sorted array every 4096 IDs.
    """

    _MERGE = 4096

    def __init__(self):
        self._key = secrets.token_bytes(16)
        self._sorted = np.empty(0, dtype=np.uint64)
        self._recent = set()

    def __len__(self):
        return len(self._sorted) + len(self._recent)

    def _hash(self, request_id):
        digest = hashlib.blake2b(request_id.encode(), digest_size=8, key=self._key).digest()
        return int.from_bytes(digest, "big")

    def __contains__(self, request_id):
        h = self._hash(request_id)
        if h in self._recent:
            return True
        i = int(np.searchsorted(self._sorted, np.uint64(h)))
        return i < len(self._sorted) and int(self._sorted[i]) == h

    def add(self, request_id):
        self._recent.add(self._hash(request_id))
        if len(self._recent) >= self._MERGE:
            new = np.sort(np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent)))
            # two sorted runs: the stable sort (timsort for 64-bit integers) merges them
            self._sorted = np.sort(np.concatenate([self._sorted, new]), kind="stable")
            self._recent = set()


def _size(reply):
    """Bytes of a kept answer ``(fingerprint, (status, body, content type, ...))``."""
    return len(reply[1][1])


class _Entry:
    __slots__ = ("last", "lock", "replies", "seen", "session")

    def __init__(self, session):
        self.session = session
        self.lock = threading.RLock()
        self.last = time.monotonic()
        self.replies = OrderedDict()  # the last REPLAY_CACHE request IDs -> their answers
        self.seen = _SeenIds()  # every request ID this session took

    def replay(self, request_id):
        """The reply kept for ``request_id``; refuse an ID used before whose reply is gone."""
        reply = self.replies.get(request_id)
        if reply is None and request_id in self.seen:
            raise ConflictError(
                f"request ID {request_id} was already used in this session (its answer is "
                f"no longer kept: only the last {REPLAY_CACHE}, up to "
                f"{REPLAY_CACHE_BYTES >> 20} MiB, are); a request is carried "
                "out once, so use a fresh ID for every new request",
                code="request_id_reused",
            )
        return reply

    def remember(self, request_id, reply):
        self.seen.add(request_id)
        self.replies[request_id] = reply
        older = sum(_size(r) for r in list(self.replies.values())[:-1])
        while len(self.replies) > REPLAY_CACHE or (
            len(self.replies) > 1 and older > REPLAY_CACHE_BYTES
        ):
            _, gone = self.replies.popitem(last=False)
            older -= _size(gone)

    def check_capacity(self):
        if len(self.seen) >= MAX_REQUESTS:
            raise ConflictError(
                f"this session has taken {MAX_REQUESTS} requests, the most one session may; "
                "open a new session",
                code="session_exhausted",
            )


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
