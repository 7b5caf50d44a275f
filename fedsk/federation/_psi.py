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
"""

import datetime
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from ..crypto._ecdh import ecdh_key, hash_to_points, multiply_points
from ..exceptions import BadMessageError, ConflictError, ProtocolError
from ._wire import Message

__all__ = [
    "align",
    "canonical_id",
    "hash_ids",
    "host_exchange",
    "host_intersection",
    "host_open",
]

DOMAIN = b"fedsk-psi-v1\x00"
MAX_IDS = 50_000_000


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
    client.call(
        "psi.intersection",
        session_id,
        Message(arrays={"host_indices": np.asarray(host_idx, dtype=np.int64)}),
    )
    return np.asarray(guest_pos, dtype=np.int64)


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


def host_open(ctx):
    """Start our half of the exchange for a session that just opened (in the background)."""
    if _OWN_SLOTS.acquire(blocking=False):
        future = _OWN.submit(_own_points, ctx.dataset, ctx.session.id, ctx.n_jobs, background=True)
        future.add_done_callback(lambda _: _OWN_SLOTS.release())
        ctx.session.state["psi_own"] = future


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
    """Record the intersection (rows of our dataset in the guest's order)."""
    perm = ctx.session.state.get("psi_perm")
    if perm is None:
        raise ConflictError("send the PSI exchange (psi) before the intersection")
    idx = msg.array("host_indices", kind="iu", ndim=1, low=0, high=len(perm))
    if len(np.unique(idx)) != len(idx):
        raise BadMessageError("array 'host_indices' has duplicates")
    ctx.session.state.clear()
    ctx.session.state["rows"] = perm[idx.astype(np.int64)]
    return Message({"n_intersection": len(idx)})
