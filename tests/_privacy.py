"""The privacy regression harness: record every body of a fit and predict, then check it.

Every estimator and protocol plugs in here: wrap the federation in
:class:`RecordingFederation`, run ``fit`` and ``predict`` as a user would, and call
:func:`assert_absent` for each value that must never cross in plaintext (labels,
gradients, residuals, host feature values, thresholds, coefficients). A value is looked
for in every request and answer body, both as float64 bytes (either byte order, and as
a contiguous run for vectors) and as decimal text.
"""

import contextlib

import numpy as np

from fedsk.federation import Federation, Transport, message_to_wire

__all__ = ["RecordingFederation", "assert_absent", "distinctive"]


class RecordingTransport(Transport):
    def __init__(self, inner, records):
        self.inner, self.records = inner, records
        self.party, self.url = inner.party, inner.url

    def request(self, method, path, message=None, *, request_id=None):
        sent = message_to_wire(message) if message is not None else b""
        answer = self.inner.request(method, path, message, request_id=request_id)
        self.records.append((self.party, path, sent, message_to_wire(answer)))
        return answer

    def close(self):
        self.inner.close()


class RecordingFederation(Federation):
    """Same hosts as ``federation``; keeps ``(party, path, request, answer)`` bytes."""

    def __init__(self, federation):
        self.inner = federation
        self.hosts, self.timeout, self.retries = federation.hosts, federation.timeout, 0
        self.records = []

    def __deepcopy__(self, memo):
        return self

    def connect(self):
        clients = self.inner.connect()
        for c in clients:
            c.transport = RecordingTransport(c.transport, self.records)
        return clients

    def bodies(self):
        for party, path, sent, answer in self.records:
            yield f"{party} {path} request", sent
            yield f"{party} {path} answer", answer


def distinctive(values, *, min_abs=1e-3):
    """Values worth searching for one by one: non-integral floats not too close to 0."""
    v = np.unique(np.asarray(values, dtype=np.float64).ravel())
    v = v[np.isfinite(v)]
    return v[(np.abs(v) >= min_abs) & (v != np.round(v))]


def _patterns(value):
    f = float(value)
    return [
        np.float64(f).tobytes(),
        np.float64(f).byteswap().tobytes(),
        repr(f).encode(),
        f"{f:.10g}".encode(),
    ]


def assert_absent(federation, values, what, *, as_vector=True, one_by_one=True):
    """Fail if any of ``values`` appears in any recorded body.

    ``as_vector`` looks for the whole array as contiguous float64/float32/int64/int8
    runs (how a leaked label or gradient vector would look); ``one_by_one`` looks for
    each distinctive value as float64 bytes and as decimal text.
    """
    values = np.asarray(values)
    bodies = list(federation.bodies())
    assert bodies, "nothing was recorded"
    needles = []
    if as_vector and values.size >= 4:
        flat = values.ravel()
        integral = flat.dtype.kind in "iub" or bool(np.all(np.round(flat) == flat))
        # integer encodings only for integer values: a float vector cast to int8 is
        # mostly zeros and would "match" any run of zero bytes
        dtypes = ("<f8", ">f8", "<f4", "<i8", "<i4", "i1") if integral else ("<f8", ">f8", "<f4")
        for dt in dtypes:
            with contextlib.suppress(ValueError, OverflowError), np.errstate(invalid="ignore"):
                needles.append((f"vector as {dt}", flat.astype(dt).tobytes()))
        if flat.dtype.kind in "iub":
            needles.append(("vector as text", ",".join(str(int(x)) for x in flat[:8]).encode()))
    if one_by_one:
        for v in distinctive(values):
            for pat in _patterns(v):
                needles.append((f"value {v!r}", pat))
    for label, body in bodies:
        for name, needle in needles:
            assert needle not in body, f"{what}: {name} found in {label}"
    return len(needles) * len(bodies)
