"""Private set intersection (ECDH-PSI on X25519) to align samples across parties.

Each party hashes its sample IDs (SHA-256 with a domain separator and the session ID as
salt) to X25519 u-coordinates and raises them to a secret scalar drawn for this run.
Because scalar multiplication commutes, ``b * (a * H(x)) == a * (b * H(x))``:

1. the guest sends ``a * H(x)`` for its IDs;
2. the host answers ``b * (a * H(x))`` in the guest's order, and ``b * H(y)`` for its own
   IDs in a secret random order;
3. the guest computes ``a * (b * H(y))``, matches, and tells the host which of its
   (shuffled) entries are in the intersection, in the guest's row order.

What crosses the wire is only curve points (32-byte u-coordinates) and, at the end, the
positions of matched entries. The guest learns the intersection and the host's set
size; the host learns the intersection's rows and the guest's set size; neither learns
an ID outside the intersection. Later messages address samples by their position in
the agreed intersection, never by ID.

A later session of the same peer on the same dataset may reuse an alignment instead of
running PSI again (a grid search fits many times on the same rows): the host answers
the intersection with an opaque handle, and the guest opens the next session with that
handle and the positions, within that alignment, of the rows it uses now. The host then
learns which of the rows it already knows to be shared this session uses, as it would
from PSI; the guest learns nothing new. Handles live in the host's memory (see
:data:`ALIGNMENT_TTL`), are bound to the peer and the dataset, and die with a restart;
a guest whose handle the host no longer knows runs PSI.
"""

import datetime
import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from ..crypto._ecdh import ecdh_key, hash_to_points, multiply_points
from ..exceptions import BadMessageError, ConflictError, ProtocolError
from ._wire import Message

__all__ = [
    "ALIGNMENT_TTL",
    "align",
    "canonical_id",
    "hash_ids",
    "host_exchange",
    "host_intersection",
    "host_open",
    "open_aligned",
]

DOMAIN = b"fedsk-psi-v1\x00"
MAX_IDS = 50_000_000
# a host keeps an alignment reusable this long after its last use, at most this many
# per process (least recently used dropped first) and this many rows in all
ALIGNMENT_TTL = 3600.0
MAX_ALIGNMENTS = 32
MAX_ALIGNED_ROWS = 20_000_000


def canonical_id(value):
    """The bytes an ID is hashed from: equal IDs on both sides must give equal bytes.

    Integers (and integral floats such as ``5.0``) become their decimal text; strings
    are UTF-8; timestamps and durations their ISO 8601 text at the precision they need
    (so a datetime64[s] and a datetime64[ns] of the same instant match); anything else
    uses ``str()``.
    """
    if isinstance(value, (np.datetime64, datetime.datetime)):  # (and pd.Timestamp)
        return pd.Timestamp(value).isoformat().encode()
    if isinstance(value, (np.timedelta64, datetime.timedelta)):  # (np: an integer type)
        return pd.Timedelta(value).isoformat().encode()
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).encode()
    if isinstance(value, (int, np.integer)):
        return str(int(value)).encode()
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value)).encode()
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def hash_ids(ids, salt):
    """SHA-256 of each ID under the domain separator and ``salt``: uint8 array (n, 32)."""
    salt = salt.encode() if isinstance(salt, str) else salt
    prefix = DOMAIN + len(salt).to_bytes(2, "big") + salt
    return hash_to_points((canonical_id(v) for v in ids), prefix)


def multiply(points, private_key, *, n_jobs=None, **kw):
    """Scalar-multiply every 32-byte u-coordinate by ``private_key``."""
    return multiply_points(points, private_key, n_jobs=n_jobs, **kw)


# -- guest half ---------------------------------------------------------------------------


def align(client, session_id, ids, *, n_jobs=None):
    """Run PSI with one host; return the positions of ``ids`` found at the host.

    The intersection's agreed order is the order of ``ids``; the host stores the
    matching rows of its dataset in that order.
    """
    return _align(client, session_id, ids, n_jobs=n_jobs)[0]


def _align(client, session_id, ids, *, n_jobs=None):
    """:func:`align`, and the handle the host gave the alignment (or None)."""
    key = ecdh_key()
    hashed = hash_ids(ids, session_id)
    _check_distinct(hashed, ids)
    mine = multiply(hashed, key, n_jobs=n_jobs)
    answer = client.call("psi.exchange", session_id, Message(arrays={"points": mine}))
    try:
        double = answer.array("double", kind="u", shape=(len(ids), 32))
        theirs = answer.array("host", kind="u", ndim=2)
        if theirs.shape[1:] != (32,):
            raise BadMessageError("host points must have shape (m, 32)")
        theirs = multiply(theirs, key, n_jobs=n_jobs)
    except ValueError as exc:
        raise ProtocolError(f"{client.name} sent bad PSI points: {exc}") from None
    index = {row.tobytes(): j for j, row in enumerate(theirs)}
    guest_pos, host_idx = [], []
    for i, row in enumerate(double):
        j = index.get(row.tobytes())
        if j is not None:
            guest_pos.append(i)
            host_idx.append(j)
    answer = client.call(
        "psi.intersection",
        session_id,
        Message(arrays={"host_indices": np.asarray(host_idx, dtype=np.int64)}),
    )
    handle = answer.meta.get("alignment")
    return np.asarray(guest_pos, dtype=np.int64), handle if isinstance(handle, str) else None


def open_aligned(client, protocol, ids, *, n_jobs=None):
    """Open a session on ``client``'s host and align ``ids``: ``(session_id, info, found)``.

    ``found`` are the positions of ``ids`` the host holds. When every one of ``ids`` was
    among those an earlier session of this process aligned with that host (same URL,
    dataset and token), the session reuses that alignment (no PSI, see the module);
    otherwise, or when the host no longer knows it, PSI runs.
    """
    reuse = _cache.find(client, ids)
    if reuse is None:
        sid, info = client.open_session(protocol)
    else:
        handle, positions = reuse
        sid, info = client.open_session(protocol, alignment=handle, positions=positions)
        if info.get("aligned") == len(ids):
            return sid, info, np.arange(len(ids))
        _cache.forget(client, handle)
    found, handle = _align(client, sid, ids, n_jobs=n_jobs)
    if handle is not None:
        _cache.add(client, ids, found, handle)
    return sid, info, found


class _AlignmentCache:
    """The alignments this process made with each host (a few, most recent first)."""

    PER_HOST, MAX_HOSTS = 4, 16

    def __init__(self):
        self._entries = OrderedDict()  # (url, dataset, token digest) -> [(keys, order, handle)]
        self._lock = threading.Lock()

    @staticmethod
    def _key(client):
        t = client.transport
        token = getattr(t, "token", "")
        digest = hashlib.sha256(token.encode() if isinstance(token, str) else b"").hexdigest()
        return (getattr(t, "url", ""), client.dataset, digest)

    @staticmethod
    def _keys(ids):
        return pd.Index([canonical_id(v) for v in ids])

    def add(self, client, ids, found, handle):
        keys = self._keys(ids)
        if not keys.is_unique:
            return
        order = np.full(len(ids), -1, dtype=np.int64)  # position in the alignment, or -1
        order[found] = np.arange(len(found))
        key = self._key(client)
        with self._lock:
            entries = self._entries.pop(key, [])
            self._entries[key] = [(keys, order, handle), *entries][: self.PER_HOST]
            while len(self._entries) > self.MAX_HOSTS:
                self._entries.popitem(last=False)

    def find(self, client, ids):
        """``(handle, positions)`` of an alignment holding all of ``ids``, or None."""
        key = self._key(client)
        with self._lock:
            entries = list(self._entries.get(key, []))
        if not entries or not len(ids):
            return None
        keys = self._keys(ids)
        if not keys.is_unique:
            return None  # (PSI says which IDs clash)
        for cached, order, handle in entries:
            at = cached.get_indexer(keys)
            if (at >= 0).all():
                positions = order[at]
                if (positions >= 0).all():
                    return handle, positions
        return None

    def clear(self):
        with self._lock:
            self._entries.clear()

    def forget(self, client, handle):
        key = self._key(client)
        with self._lock:
            entries = self._entries.get(key)
            if entries is not None:
                self._entries[key] = [e for e in entries if e[2] != handle]


_cache = _AlignmentCache()


def _check_distinct(hashed, ids):
    """Distinct IDs that name the same sample for the hosts (0 and "0"): refuse them."""
    keys = np.ascontiguousarray(hashed).view("V32").ravel()
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    clashing = np.flatnonzero(counts[inverse] > 1)
    if len(clashing):
        first = inverse[clashing[0]]
        same = [ids[i] for i in clashing if inverse[i] == first]
        raise ValueError(
            f"{len(clashing)} sample IDs are distinct in X's index but the same ID for the "
            f"hosts, e.g. {same!r} (IDs are matched by their text: 5, 5.0 and '5' are one "
            "ID); give each sample one ID, e.g. X.index = X.index.astype(str)"
        )


# -- host half ----------------------------------------------------------------------------


# The host's own half of the exchange (its IDs hashed under the session, in a secret
# order, times a fresh secret scalar) depends only on the session: it starts when the
# session opens, while the guest computes its half, instead of after the guest's points
# arrive. One at a time, at most two waiting: a peer opening sessions in a loop cannot
# queue up work (beyond that, the exchange computes it, as it would without this).
_OWN = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedsk-psi")
_OWN_SLOTS = threading.BoundedSemaphore(2)


def _own_points(dataset, session_id, n_jobs, *, background=False):
    """A fresh secret key, a secret order of our rows, and our IDs' points under it.

    In the background the multiplications go to worker processes however few there are:
    they hold the GIL, and would slow the threads answering requests.
    """
    key = ecdh_key()
    perm = np.random.default_rng(secrets.randbits(128)).permutation(dataset.n_rows)
    points = hash_ids(dataset.ids[perm], session_id)
    kw = {"min_points": 0} if background else {}
    return key, perm, multiply(points, key, n_jobs=n_jobs, **kw)


def host_open(ctx, msg=None):
    """A session opens: reuse the alignment it names, or start our half of PSI.

    With ``alignment`` (a handle from an earlier session's intersection) and ``positions``
    (rows of that alignment, in this session's order), the session's rows are set at
    once and the answer says ``aligned``: their number, or 0 when the handle is unknown
    here (expired, another peer's, or from before a restart); the guest then runs PSI.
    Otherwise our half of the exchange starts in the background.
    """
    handle = msg.meta.get("alignment") if msg is not None else None
    if handle is not None:
        if not isinstance(handle, str):
            raise BadMessageError("field 'alignment' must be a string")
        rows = _reused_rows(ctx, handle, msg)
        if rows is not None:
            ctx.session.state["rows"] = rows
            return {"aligned": len(rows)}
    if _OWN_SLOTS.acquire(blocking=False):
        future = _OWN.submit(_own_points, ctx.dataset, ctx.session.id, ctx.n_jobs, background=True)
        future.add_done_callback(lambda _: _OWN_SLOTS.release())
        ctx.session.state["psi_own"] = future
    return {"aligned": 0} if handle is not None else None


def host_exchange(ctx, msg):
    """Answer the guest's encoded IDs with theirs re-encoded and ours, shuffled."""
    points = msg.array("points", kind="u", ndim=2)
    if points.dtype != np.uint8 or points.shape[1] != 32 or len(points) > MAX_IDS:
        raise BadMessageError("array 'points' must be uint8 of shape (n, 32)")
    own = ctx.session.state.pop("psi_own", None)  # a second exchange starts afresh
    if own is not None:
        key, perm, ours = own.result()
    else:
        key, perm, ours = _own_points(ctx.dataset, ctx.session.id, ctx.n_jobs)
    try:
        double = multiply(points, key, n_jobs=ctx.n_jobs)
    except ValueError as exc:
        raise BadMessageError(f"array 'points': {exc}") from None
    ctx.session.state.clear()
    ctx.session.state["psi_perm"] = perm
    return Message({"n_host": len(perm)}, arrays={"double": double, "host": ours})


def host_intersection(ctx, msg):
    """Record the intersection (rows of our dataset in the guest's order).

    The answer's ``alignment`` is a handle the same peer may open later sessions with
    (see :func:`host_open`).
    """
    perm = ctx.session.state.get("psi_perm")
    if perm is None:
        raise ConflictError("send the PSI exchange (psi) before the intersection")
    idx = msg.array("host_indices", kind="iu", ndim=1, low=0, high=len(perm))
    if len(np.unique(idx)) != len(idx):
        raise BadMessageError("array 'host_indices' has duplicates")
    ctx.session.state.clear()
    rows = perm[idx.astype(np.int64)]
    ctx.session.state["rows"] = rows
    return Message({"n_intersection": len(idx), "alignment": _remember(ctx, rows)})


# -- alignments a peer may reuse ------------------------------------------------------------

_alignments = OrderedDict()  # handle -> _Alignment, least recently used first
_alignments_lock = threading.Lock()


class _Alignment:
    __slots__ = ("dataset", "peer", "rows", "used")

    def __init__(self, peer, dataset, rows):
        self.peer, self.dataset, self.rows = peer, dataset, rows
        self.used = time.monotonic()


def _remember(ctx, rows):
    """Keep ``rows`` (an intersection, in the guest's order) under a new handle."""
    handle = secrets.token_hex(16)
    entry = _Alignment(ctx.session.peer, ctx.dataset, np.array(rows, dtype=np.int64))
    with _alignments_lock:
        _alignments[handle] = entry
        total = sum(len(a.rows) for a in _alignments.values())
        while len(_alignments) > MAX_ALIGNMENTS or total > MAX_ALIGNED_ROWS:
            _, dropped = _alignments.popitem(last=False)
            total -= len(dropped.rows)
    return handle


def _reused_rows(ctx, handle, msg):
    """The rows of ``handle``'s alignment at ``positions``, or None if it is not ours."""
    now = time.monotonic()
    with _alignments_lock:
        for h in [h for h, a in _alignments.items() if now - a.used > ALIGNMENT_TTL]:
            del _alignments[h]
        entry = _alignments.get(handle)
        if entry is None or entry.peer != ctx.session.peer or entry.dataset is not ctx.dataset:
            return None  # (another peer's handle is as good as unknown)
        entry.used = now
        _alignments.move_to_end(handle)
    positions = msg.array("positions", kind="iu", ndim=1, low=0, high=len(entry.rows))
    if len(positions) == 0 or len(np.unique(positions)) != len(positions):
        raise BadMessageError("array 'positions' must be unique and non-empty")
    return entry.rows[positions.astype(np.int64)]
