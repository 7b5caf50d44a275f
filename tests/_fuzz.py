"""Fuzzing machinery shared by ``test_fuzz.py``: record valid traffic, then break it.

A :class:`TrafficRecorder` wraps the guest's transports while real estimators and
protocols run against a party server, and keeps every request with the route it went
to, the session state the host had just before it (``snapshot``), and the calls made
earlier in the same session (``prefix``). Those valid requests are the templates the
fuzzer mutates, so that a fuzzed request reaches the deep validation of a host half
(a session with PSI done, SecureBoost set up, gradients sent) instead of stopping at
the first missing field. Routes without a template (a protocol no flow exercises yet)
still get every generic body class.

Everything here is plain Python + numpy + hypothesis strategies; nothing is specific
to one protocol: field names come from the templates and from the host half's source.
"""

import copy
import importlib
import inspect
import io
import json
import re
import struct
import warnings
from concurrent.futures import Future
from dataclasses import dataclass, field
from urllib.parse import quote

import numpy as np
from hypothesis import strategies as st

from fedsk.crypto import PaillierPrivateKey
from fedsk.crypto._masking import Masks
from fedsk.federation import (
    CONTENT_TYPE,
    ROUTES,
    Federation,
    Message,
    Transport,
    message_from_wire,
    message_to_wire,
)
from fedsk.federation._wire import MAGIC

__all__ = [
    "Template",
    "TrafficRecorder",
    "body_strategy",
    "check_error_answer",
    "field_names",
    "match_route",
    "raw_wire",
]

_DTYPES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float32",
    "float64",
]
INT_EDGES = [
    -1,
    0,
    1,
    2**31 - 1,
    2**31,
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**30,
    -(10**30),
]
# JSON text the server's parser must survive inside ``meta`` (json.loads accepts the
# non-standard NaN/Infinity; digits beyond Python's int-string limit; deep nesting).
RAW_LITERALS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "9" * 5000,
    "[" * 5000 + "]" * 5000,
    '{"a":' * 3000 + "1" + "}" * 3000,
    '"\\ud800"',
    "1.7976931348623157e308",
    "-0.0",
    "true",
    '"' + "x" * 3000 + '"',
]


def _route_regex(route):
    pattern = re.sub(r"<(\w+)>", r"(?P<\1>[^/]+)", route.path)
    return re.compile("^" + pattern + "$")


_ROUTE_RES = [(r, _route_regex(r)) for r in ROUTES]


def match_route(method, path):
    """``(route, params)`` of a request path, or ``(None, {})``."""
    for r, rx in _ROUTE_RES:
        m = rx.match(path.split("?")[0])
        if m and r.method == method:
            return r, m.groupdict()
    return None, {}


def field_names(route):
    """Field and array names a route's host half reads, found in its source.

    Looks for ``.field("x"``, ``.array("x"``, ``.encrypted("x"`` calls in the handler's
    module (a protocol not installed contributes nothing).
    """
    if not route.handler:
        return set()
    module = route.handler.partition(":")[0]
    try:
        source = inspect.getsource(importlib.import_module(module))
    except (ImportError, OSError, TypeError):
        return set()
    names = set(re.findall(r"\.(?:field|array|encrypted)\(\s*f?[\"']([A-Za-z_][\w.-]*)", source))
    return {n for n in names if re.match(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$", n)}


def copy_message(msg):
    """An independent copy of a message (through the wire format)."""
    return message_from_wire(message_to_wire(msg))


def _snapshot_copy(state):
    """A cheap copy of a session state: new dicts two levels down, shared leaves.

    Host halves replace the values they change (they never edit arrays in place), so
    this is enough to restore a state after a request that changed it.
    """
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in state.items()}


def snapshot_state(state):
    """Deep copy of a session state; secrets and futures are shared, not copied.

    A future holds a lock, and private keys and mask generators refuse to be copied (so
    they are never pickled by mistake); replaying a request from a snapshot may share them.
    """
    memo, stack, seen = {}, [state], set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Future | PaillierPrivateKey | Masks):
            memo[id(obj)] = obj
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set):
            stack.extend(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            stack.extend(vars(obj).values())
    return copy.deepcopy(state, memo)


@dataclass
class Template:
    """One valid request seen while a real guest ran: what to mutate."""

    route: object
    message: Message
    snapshot: dict | None  # host session state just before the request (in-process only)
    prefix: list = field(default_factory=list)  # [(route name, Message)] earlier, same session


class _RecordingTransport(Transport):
    def __init__(self, inner, recorder):
        self.inner, self.recorder = inner, recorder
        self.party, self.url = inner.party, inner.url

    def request(self, method, path, message=None, *, request_id=None):
        self.recorder.before(method, path, message)
        return self.inner.request(method, path, message, request_id=request_id)

    def close(self):
        self.inner.close()


class TrafficRecorder(Federation):
    """Wrap a federation's transports and keep every request as a :class:`Template`.

    Parameters
    ----------
    federation : Federation
        Typically an :class:`~fedsk.federation.InProcessFederation`.
    sessions : SessionStore, optional
        The in-process server's store, to snapshot session states.
    """

    def __init__(self, federation, sessions=None):
        self.inner = federation
        self.hosts, self.timeout, self.retries = federation.hosts, federation.timeout, 0
        self.sessions = sessions
        self.templates = {}
        self._prefix = {}  # session id -> [(route name, Message)]

    def __deepcopy__(self, memo):  # estimators may deep-copy their parameters
        return self

    def connect(self):
        clients = self.inner.connect()
        for c in clients:
            c.transport = _RecordingTransport(c.transport, self)
        return clients

    def before(self, method, path, message):
        route, params = match_route(method, path)
        if route is None:
            return
        sid = params.get("session_id")
        snap = None
        if sid is not None and self.sessions is not None:
            entry = self.sessions._entries.get(sid)
            if entry is not None:
                snap = snapshot_state(entry.session.state)
        msg = copy_message(message) if message is not None else Message()
        prefix = list(self._prefix.get(sid, [])) if sid else []
        self.templates.setdefault(route.name, []).append(Template(route, msg, snap, prefix))
        if sid and not route.name.startswith("psi.") and route.method == "POST":
            self._prefix.setdefault(sid, []).append((route.name, msg))

    def states(self):
        """One session state per route that was recorded in a session (plus empty)."""
        out = [{}]
        for ts in self.templates.values():
            if ts[0].snapshot:
                out.append(ts[0].snapshot)
        return out


# -- building bodies --------------------------------------------------------------------------
def _npy(arr):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def raw_wire(meta, arrays=(), *, raw_values=None, exponents=None, header_extra=None):
    """A fedsk message built by hand, so that it can break the rules ``Message`` keeps.

    ``meta`` may contain NaN/inf; ``raw_values`` maps meta keys to literal JSON text put
    in place of their value; ``arrays`` is ``[(name, ndarray or raw .npy bytes)]``;
    ``exponents`` maps array names to an exponent value (any JSON value).
    """
    raw_values = raw_values or {}
    exponents = exponents or {}
    placeholders = {}
    meta = dict(meta)
    for i, (k, text) in enumerate(raw_values.items()):
        token = f"@@RAW{i}@@"
        meta[k] = token
        placeholders[json.dumps(token)] = text
    entries, blobs = [], []
    for name, arr in arrays:
        blob = arr if isinstance(arr, bytes) else _npy(arr)
        entry = {"name": name, "nbytes": len(blob)}
        if name in exponents:
            entry["exponent"] = exponents[name]
        entries.append(entry)
        blobs.append(blob)
    header = {"meta": meta, "arrays": entries, **(header_extra or {})}
    text = json.dumps(header, separators=(",", ":"), allow_nan=True)
    for token, literal in placeholders.items():
        text = text.replace(token, literal)
    head = text.encode("utf-8", "surrogatepass")
    return b"".join([MAGIC, struct.pack(">I", len(head)), head, *blobs])


def _message_parts(msg):
    arrays = [(k, np.array(v)) for k, v in msg.arrays.items()]
    return dict(msg.meta), arrays, dict(msg.exponents)


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(INT_EDGES),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_value = st.recursive(
    json_leaf,
    lambda ch: st.lists(ch, max_size=3) | st.dictionaries(st.text(max_size=6), ch, max_size=3),
    max_leaves=8,
)


def _random_array(rng, n_hint):
    dtype = np.dtype(_DTYPES[rng.integers(len(_DTYPES))])
    ndim = int(rng.integers(0, 4))
    shape = tuple(int(rng.choice([0, 1, 2, n_hint - 1, n_hint, n_hint + 1])) for _ in range(ndim))
    size = int(np.prod(shape, dtype=np.int64))
    if size > 4096:
        shape, size = (n_hint,), n_hint
    pool = np.array([-(2**62), -2, -1, 0, 1, 2, n_hint - 1, n_hint, n_hint + 1, 2**62])
    values = rng.choice(pool, size=size)
    if dtype.kind == "f":
        values = values.astype(np.float64)
        if size:
            values[rng.integers(size)] = rng.choice([np.nan, np.inf, -np.inf, 0.5, 1e308])
    with warnings.catch_warnings():  # wrapping around is the point
        warnings.simplefilter("ignore", RuntimeWarning)
        return values.astype(dtype).reshape(shape)


def _index_attacks(arr, n_hint):
    """Ways an integer index array can be wrong (out of range, duplicated, ...)."""
    a = np.array(arr).astype(np.int64).ravel()
    out = [
        ("negative", np.r_[a[:-1], -1] if a.size else np.array([-1])),
        ("too large", np.r_[a[:-1], n_hint + 7] if a.size else np.array([n_hint])),
        ("int64 max", np.r_[a[:-1], 2**63 - 1] if a.size else np.array([2**63 - 1])),
        ("uint64 max", np.r_[a[:-1].astype(np.uint64), np.uint64(2**64 - 1)]),
        ("duplicate", np.r_[a, a[:1]] if a.size else np.array([0, 0])),
        ("reversed", a[::-1].copy()),
        ("empty", a[:0]),
        ("one short", a[:-1]),
        ("one long", np.r_[a, 0]),
        ("float", a.astype(np.float64) + 0.5),
        ("uint64 wrap", (a[::-1].astype(np.uint64))),
        ("int8 overflow", a.astype(np.int8)),
        ("2-d", a.reshape(1, -1) if a.size else a.reshape(0, 1)),
        ("bool", a.astype(bool)),
    ]
    return out


def _row_attacks(arr, key):
    """Ways a uint8 array of fixed-width rows (curve points, residues) can be wrong."""
    a = np.array(arr)
    width = a.shape[1]
    out = []
    for name, row in (
        ("zero row", bytes(width)),
        ("0xff row", b"\xff" * width),
        ("n row", int(key.n).to_bytes(width, "big") if key.n.bit_length() <= 8 * width else None),
        ("one row", (1).to_bytes(width, "big")),
    ):
        if row is not None and len(a):
            b = a.copy()
            b[len(a) // 2] = np.frombuffer(row, np.uint8)
            out.append((name, b))
    out += [
        ("duplicate row", np.concatenate([a, a[:1]])),
        ("width - 1", a[:, 1:]),
        ("width + 1", np.pad(a, ((0, 0), (0, 1)))),
        ("3-d", a.reshape(1, *a.shape)),
        ("int8", a.astype(np.int8)),
    ]
    return out


def _cipher_rows(key, attack, count, width, rng):
    """A (count, width) uint8 array of ciphertexts broken in the way ``attack`` says."""
    nsq = int(key.nsquare)
    good = [int(c) for c in key.raw_encrypt([int(x) for x in rng.integers(0, 1000, count)])]
    bad = {
        "zero": 0,
        "n squared": nsq,
        "n squared + 1": nsq + 1,
        "all ones": (1 << (8 * width)) - 1,
        "multiple of n": int(key.n) * 3,
        "one": 1,
    }
    if attack in bad and count:
        good[int(rng.integers(count))] = bad[attack]
    return np.frombuffer(b"".join(c.to_bytes(width, "big") for c in good), dtype=np.uint8).reshape(
        count, width
    )


def _cipher_attacks(key, arr, exponent, rng, extra=()):
    """Ways a ciphertext array can be wrong: out of range, wrong width/count/exponent."""
    count, width = arr.shape if arr.ndim == 2 else (len(arr), key.ciphertext_bytes)
    attacks = []
    for name in ("zero", "n squared", "n squared + 1", "all ones", "multiple of n", "one"):
        attacks.append((name, _cipher_rows(key, name, count, width, rng), exponent))
    for name, value in extra:  # e.g. a multiple of a prime factor (the fuzzer owns the key)
        rows = np.array(arr, copy=True)
        if count:
            rows[int(rng.integers(count))] = np.frombuffer(value.to_bytes(width, "big"), np.uint8)
        attacks.append((name, rows, exponent))
    attacks += [
        ("width - 1", np.array(arr)[:, 1:] if arr.ndim == 2 else arr, exponent),
        ("width + 1", np.pad(np.array(arr), ((0, 0), (1, 0))) if arr.ndim == 2 else arr, exponent),
        ("count - 1", np.array(arr)[:-1], exponent),
        ("count + 1", np.concatenate([arr, arr[:1]]) if len(arr) else arr, exponent),
        ("empty", np.array(arr)[:0], exponent),
        ("1-d", np.array(arr).ravel(), exponent),
        ("uint16", np.array(arr).astype(np.uint16), exponent),
        ("exponent + 1", arr, exponent + 1),
        ("exponent huge", arr, 10**6),
        ("exponent text", arr, "0"),
        ("exponent bool", arr, True),
        ("exponent null", arr, None),
    ]
    return attacks


class Body:
    """One fuzzed body: bytes, content type, and whether a 200 is acceptable."""

    def __init__(self, kind, data, content_type=CONTENT_TYPE, may_succeed=False, template=None):
        self.kind, self.data, self.content_type = kind, data, content_type
        self.may_succeed = may_succeed
        self.template = template  # the valid request it was made from, if any

    def __repr__(self):  # hypothesis prints failing examples: keep them short
        return (
            f"Body({self.kind!r}, {len(self.data)} bytes {self.data[:80]!r}..., "
            f"content_type={self.content_type!r}, may_succeed={self.may_succeed}, "
            f"template={self.template.route.name if self.template else None})"
        )


def body_strategy(
    route, templates, names, key, *, n_rows, max_body, extra_cipher=(), known_values=()
):
    """A hypothesis strategy of :class:`Body` for ``route``.

    ``templates``: valid messages for this route (may be empty); ``names``: field names
    worth trying; ``key``: a public key for well-formed ciphertexts; ``known_values``:
    strings worth putting in a field (another peer's model ID, another kind of model).
    """
    names = sorted(set(names) | {"x", "rows", "model_id", "public_key"})
    values = json_value | st.sampled_from(list(known_values) or [""])

    @st.composite
    def build(draw):
        kinds = ["generic", "bytes", "wire", "content type", "oversized"]
        if templates:
            kinds += ["mutant"] * 6  # most of the budget goes where validation is deep
        kind = draw(st.sampled_from(kinds))
        seed = draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        if kind == "bytes":
            data = draw(st.binary(max_size=256))
            if draw(st.booleans()):
                data = MAGIC + data
            return Body("bytes", data)
        if kind == "content type":
            ctype = draw(
                st.sampled_from(
                    [
                        None,
                        "application/json",
                        "text/plain",
                        "application/octet-stream",
                        "multipart/form-data; boundary=x",
                        "application/x-www-form-urlencoded",
                        CONTENT_TYPE + "-v2",
                        "application/x-fedsk",
                    ]
                )
            )
            tpl = draw(st.sampled_from(templates)) if templates else None
            data = message_to_wire(tpl.message) if tpl else b'{"a": 1}'
            return Body("content type", data, ctype, template=tpl)
        if kind == "oversized":
            size = max_body + 1 + draw(st.integers(0, 4096))
            return Body("oversized", MAGIC + b"\x00" * (size - len(MAGIC)))
        if kind == "wire":
            tpl = draw(st.sampled_from(templates)) if templates else None
            base = (
                message_to_wire(tpl.message) if tpl else raw_wire({"a": 1}, [("x", np.arange(3))])
            )
            how = draw(st.sampled_from(["truncate", "flip", "append", "header length", "nbytes"]))
            data = bytearray(base)
            if how == "truncate":
                data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
            elif how == "flip":
                pos = draw(st.integers(0, len(data) - 1))
                data[pos] ^= draw(st.integers(1, 255))
            elif how == "append":
                data += draw(st.binary(min_size=1, max_size=64))
            elif how == "header length":
                data[len(MAGIC) : len(MAGIC) + 4] = struct.pack(
                    ">I", draw(st.sampled_from([0, 1, 2**20 + 1, 2**32 - 1, len(data)]))
                )
            else:  # the header lies about an array's size
                blob = _npy(np.arange(4))
                nbytes = draw(st.sampled_from([-1, 0, len(blob) + 1, 10**20, "8", None, True]))
                head = json.dumps(
                    {"meta": {}, "arrays": [{"name": "x", "nbytes": nbytes}]}
                ).encode()
                data = bytearray(MAGIC + struct.pack(">I", len(head)) + head + blob)
            # a flipped byte may land somewhere harmless (e.g. in a float of meta)
            return Body("wire", bytes(data), may_succeed=how in ("flip",), template=tpl)
        if kind == "generic":
            meta = {}
            raw = {}
            for name in draw(st.lists(st.sampled_from(names), max_size=4, unique=True)):
                if draw(st.integers(0, 9)) == 0:
                    raw[name] = draw(st.sampled_from(RAW_LITERALS))
                else:
                    meta[name] = draw(values)
            arrays, exps = [], {}
            for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
                if draw(st.booleans()):
                    attack = draw(st.sampled_from(["zero", "n squared", "all ones", "valid"]))
                    count = int(rng.choice([0, 1, n_rows, n_rows + 1]))
                    arrays.append(
                        (name, _cipher_rows(key, attack, count, key.ciphertext_bytes, rng))
                    )
                    exps[name] = int(rng.choice([0, -6, -13]))
                else:
                    arrays.append((name, _random_array(rng, n_rows)))
            return Body(
                "generic", raw_wire(meta, arrays, raw_values=raw, exponents=exps), may_succeed=True
            )
        # mutant: one valid request with exactly one thing broken
        tpl = draw(st.sampled_from(templates))
        meta, arrays, exps = _message_parts(tpl.message)
        ops = ["add meta"]
        if meta:
            ops += ["drop meta", "retype meta", "retype meta", "raw meta"]
        plain = [k for k, _ in arrays if k not in exps]
        ints = [k for k, a in arrays if k not in exps and a.dtype.kind in "iu"]
        rows = [k for k, a in arrays if k not in exps and a.dtype == np.uint8 and a.ndim == 2]
        if plain:
            ops += ["drop array", "random array"]
        if ints:
            ops += ["index"] * 4
        if rows:
            ops += ["rows"] * 3
        if exps:
            ops += ["cipher"] * 4 + ["cipher as plain"]
        op = draw(st.sampled_from(ops))
        raw = {}
        may_succeed = op == "add meta"
        if op == "add meta":
            meta[draw(st.sampled_from([*names, "zz_unknown"]))] = draw(values)
            may_succeed = True
        elif op == "drop meta":
            meta.pop(draw(st.sampled_from(sorted(meta))))
            may_succeed = True  # optional fields exist
        elif op == "retype meta":
            meta[draw(st.sampled_from(sorted(meta)))] = draw(values)
            may_succeed = True  # e.g. a model_id of null, a bigger n_rounds
        elif op == "raw meta":
            raw[draw(st.sampled_from(sorted(meta)))] = draw(st.sampled_from(RAW_LITERALS))
            may_succeed = True
        elif op == "drop array":
            victim = draw(st.sampled_from(plain))
            arrays = [(k, a) for k, a in arrays if k != victim]
        elif op == "random array":
            victim = draw(st.sampled_from(plain))
            arrays = [(k, _random_array(rng, n_rows) if k == victim else a) for k, a in arrays]
            may_succeed = True
        elif op == "index":
            victim = draw(st.sampled_from(ints))
            current = dict(arrays)[victim]
            name, bad = draw(st.sampled_from(_index_attacks(current, n_rows)))
            arrays = [(k, bad if k == victim else a) for k, a in arrays]
            # reordering or trimming a valid index set can stay valid (e.g. PSI matches)
            may_succeed = name in (
                "reversed",
                "one short",
                "empty",
                "bool",
                "int8 overflow",
                "uint64 wrap",
            )
            op = f"index ({name})"
        elif op == "rows":
            victim = draw(st.sampled_from(rows))
            name, bad = draw(st.sampled_from(_row_attacks(dict(arrays)[victim], key)))
            arrays = [(k, bad if k == victim else a) for k, a in arrays]
            op = f"rows ({name})"
            # a curve point 0xff..ff is reduced mod p, a residue of 1 is a number: valid
            may_succeed = name in ("one row", "duplicate row", "0xff row", "n row")
        elif op == "cipher":
            victim = draw(st.sampled_from(sorted(exps)))
            current = dict(arrays)[victim]
            name, bad, exp = draw(
                st.sampled_from(_cipher_attacks(key, current, exps[victim], rng, extra_cipher))
            )
            arrays = [(k, bad if k == victim else a) for k, a in arrays]
            exps[victim] = exp
            # an exponent the host does not check, or a ciphertext that is merely wrong
            # (not malformed), is a valid request with a garbage value: the guest's own
            # consistency checks catch it, not the host's validation
            may_succeed = name in ("one", "exponent + 1", "exponent huge", "count - 1", "empty")
            op = f"cipher ({name})"
        else:  # "cipher as plain": the exponent marker is dropped
            exps.pop(draw(st.sampled_from(sorted(exps))))
        data = raw_wire(meta, arrays, raw_values=raw, exponents=exps)
        return Body(f"mutant {op}", data, may_succeed=may_succeed, template=tpl)

    return build()


def bad_path_ids():
    """Session or model IDs that name nothing (or something of another kind)."""
    return st.one_of(
        st.text(alphabet="0123456789abcdef", min_size=1, max_size=40),
        st.text(min_size=1, max_size=30).map(lambda s: quote(s, safe="")),
        st.sampled_from(["..", "%2e%2e", "a" * 3000, "%00", "null", "0" * 32, "None", "-1"]),
    )


def check_error_answer(resp, request_id, secrets):
    """An error answer is JSON ``{"error": {code, message, request_id}}`` and leaks nothing."""
    data = resp.get_data() if hasattr(resp, "get_data") else resp.content
    assert 400 <= resp.status_code < 500, (resp.status_code, data[:300])
    ctype = resp.headers.get("Content-Type", "")
    assert ctype.startswith("application/json"), (resp.status_code, ctype, data[:200])
    body = json.loads(data)
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "message", "request_id"}, err
    assert isinstance(err["code"], str) and err["code"]
    assert isinstance(err["message"], str) and err["message"]
    assert err["request_id"] == request_id, (err, request_id)
    for needle in ("Traceback", 'File "', '.py", line'):
        assert needle not in err["message"], err
    for s in secrets:
        assert s not in data, (s[:12], data[:300])
    return err
