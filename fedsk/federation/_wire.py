"""The wire format: a small JSON header plus binary arrays, never a pickle.

A message on the wire is::

    b"FEDSK1"  |  u32 header length (big-endian)  |  header (UTF-8 JSON)  |  .npy blobs

The header is ``{"meta": {...}, "arrays": [{"name", "nbytes", "exponent"?}, ...]}``.
Each array is an ``.npy`` blob read with ``allow_pickle=False`` and only numeric dtypes
are accepted. Ciphertexts travel as one ``uint8`` array of shape ``(k, width)`` of
fixed-width big-endian integers (``width`` = bytes of n**2) and are marked by an
``exponent`` entry; they are turned back into numbers only against the session's
public key, which checks ``0 < c < n**2`` for every one.
"""

import io
import json
import math
import re
import struct

import numpy as np

from ..crypto import EncryptedArray, PaillierPublicKey
from ..exceptions import BadMessageError

__all__ = [
    "CONTENT_TYPE",
    "Message",
    "message_from_wire",
    "message_to_wire",
    "public_key_from_wire",
    "public_key_to_wire",
]

CONTENT_TYPE = "application/x-fedsk-message"
MAGIC = b"FEDSK1"
MAX_HEADER_BYTES = 1 << 20
MAX_ARRAYS = 64
MAX_NDIM = 4
MAX_DIM = 2**40  # any one dimension (numpy cannot make larger arrays anyway)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_DTYPES = {
    np.dtype(t)
    for t in (
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
    )
}


class Message:
    """What a request or an answer carries: JSON ``meta``, numeric arrays, ciphertexts.

    Outgoing ciphertexts are added with :meth:`add_encrypted`; incoming ones are read
    with :meth:`encrypted` against the expected public key. The accessors validate and
    raise :class:`~fedsk.exceptions.BadMessageError` naming the field.
    """

    # set on answers the guest reads (e.g. "insurer's answer to POST /v1/..."), so that a
    # malformed answer names the party that sent it
    origin = None

    def _bad(self, text):
        return BadMessageError(text if self.origin is None else f"{self.origin}: {text}")

    def __init__(self, meta=None, arrays=None):
        self.meta = dict(meta or {})
        self.arrays = {}
        self.exponents = {}  # name -> exponent, for arrays that hold ciphertexts
        for name, arr in (arrays or {}).items():
            self.add_array(name, arr)

    def __repr__(self):
        names = ", ".join(
            f"{k}{'[ct]' if k in self.exponents else ''}{tuple(v.shape)}"
            for k, v in self.arrays.items()
        )
        return f"Message(meta={sorted(self.meta)}, arrays=[{names}])"

    # building ----------------------------------------------------------------------------
    def add_array(self, name, array):
        if not _NAME.match(name):
            raise ValueError(f"bad array name {name!r}")
        array = np.ascontiguousarray(array)
        if array.dtype not in _DTYPES:
            raise ValueError(f"array {name!r} has unsupported dtype {array.dtype}")
        self.arrays[name] = array
        return self

    def add_encrypted(self, name, enc):
        """Attach an :class:`EncryptedArray` (sent as fixed-width big-endian bytes)."""
        self.add_array(name, enc.to_bytes())
        self.exponents[name] = enc.exponent
        return self

    def update(self, other):
        """Add ``other``'s meta fields, arrays and ciphertexts to this message."""
        self.meta.update(other.meta)
        self.arrays.update(other.arrays)
        self.exponents.update(other.exponents)
        return self

    def non_finite(self):
        """Names of the meta fields and float arrays that hold NaN or infinity.

        Such a message cannot go on the wire: JSON has no NaN or infinity, and
        :meth:`array` refuses non-finite floats, so the reader would refuse it anyway.
        """
        bad = [k for k, v in self.meta.items() if not _finite_json(v)]
        bad += [
            k for k, a in self.arrays.items() if a.dtype.kind == "f" and not np.isfinite(a).all()
        ]
        return bad

    # reading -------------------------------------------------------------------------------
    def field(self, name, kind=None, *, default=..., choices=None, minimum=None, maximum=None):
        """A validated meta field. ``kind`` is a type or tuple of types."""
        if name not in self.meta:
            if default is ...:
                raise self._bad(f"field {name!r} is missing")
            return default
        value = self.meta[name]
        if kind is not None:
            ok = isinstance(value, kind) and not (
                isinstance(value, bool) and kind in (int, float, (int, float))
            )
            if not ok:
                raise self._bad(f"field {name!r} has the wrong type")
        if choices is not None and value not in choices:
            raise self._bad(f"field {name!r} must be one of {sorted(choices)}")
        if minimum is not None and value < minimum:
            raise self._bad(f"field {name!r} must be >= {minimum}")
        if maximum is not None and value > maximum:
            raise self._bad(f"field {name!r} must be <= {maximum}")
        return value

    def array(self, name, *, kind=None, ndim=None, shape=None, low=None, high=None, optional=False):
        """A validated numeric array.

        Parameters
        ----------
        kind : str, optional
            Allowed dtype kinds, e.g. ``"i"``, ``"iu"``, ``"f"``, ``"b"``.
        ndim : int, optional
        shape : tuple, optional
            Expected shape; ``None`` entries match any length.
        low, high : number, optional
            Inclusive lower bound and exclusive upper bound on the values.
        """
        if name not in self.arrays or name in self.exponents:
            if optional:
                return None
            raise self._bad(f"array {name!r} is missing")
        arr = self.arrays[name]
        if kind is not None and arr.dtype.kind not in kind:
            raise self._bad(f"array {name!r} must have dtype kind {kind!r}, got {arr.dtype}")
        if ndim is not None and arr.ndim != ndim:
            raise self._bad(f"array {name!r} must be {ndim}-d, got shape {arr.shape}")
        if shape is not None and (
            arr.ndim != len(shape)
            or any(want is not None and got != want for got, want in zip(arr.shape, shape))
        ):
            raise self._bad(f"array {name!r} must have shape {shape}, got {arr.shape}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise self._bad(f"array {name!r} contains NaN or infinity")
        if arr.size and low is not None and arr.min() < low:
            raise self._bad(f"array {name!r} has values below {low}")
        if arr.size and high is not None and arr.max() >= high:
            raise self._bad(f"array {name!r} has values >= {high}")
        return arr

    def encrypted(self, name, public_key, *, length=None, exponent=None, optional=False):
        """The ciphertext array ``name`` as an :class:`EncryptedArray` under ``public_key``.

        ``length`` and ``exponent``, when given, are the expected number of ciphertexts
        and fixed-point exponent.
        """
        if name not in self.exponents:
            if optional:
                return None
            raise self._bad(f"ciphertext array {name!r} is missing")
        arr = self.arrays[name]
        if length is not None and arr.shape[:1] != (length,):
            raise self._bad(
                f"ciphertext array {name!r} must hold {length} ciphertexts, got {arr.shape[:1]}"
            )
        if exponent is not None and self.exponents[name] != exponent:
            raise self._bad(f"ciphertext array {name!r} must be at exponent {exponent}")
        try:
            return EncryptedArray.from_bytes(public_key, arr, self.exponents[name])
        except ValueError as exc:
            raise self._bad(f"ciphertext array {name!r}: {exc}") from None

    @property
    def n_ciphertexts(self):
        """Number of ciphertexts carried (for the audit log)."""
        return sum(int(self.arrays[k].shape[0]) for k in self.exponents)


def _finite_json(value):
    """False if a JSON-able value holds a float NaN or infinity anywhere."""
    if isinstance(value, (float, np.floating)):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite_json(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite_json(v) for v in value)
    return True


# The .npy header numpy writes for a C-ordered array of a plain dtype, version 1.0:
# b"\x93NUMPY\x01\x00", a little-endian u16 length, then this text padded with spaces
# and a newline to a multiple of 64 bytes. Messages carry a handful of small arrays, and
# numpy's own reader parses every header with ast.literal_eval (~0.1 ms, as long as the
# rest of the array): headers of this exact form are read and written here, any other
# goes through numpy.
_NPY_PREFIX = b"\x93NUMPY\x01\x00"
_NPY_HEADER = re.compile(
    rb"\{'descr': '([<>|][a-z]\d{1,2})', 'fortran_order': False, "
    rb"'shape': \(((?:\d{1,15}, )*\d{1,15},?)?\), \} *\n"
)
_NPY_DESCR = {dt.str.encode(): dt for dt in _DTYPES}


def _npy_bytes(arr):
    if arr.dtype in _DTYPES and arr.flags.c_contiguous:
        text = f"{{'descr': '{arr.dtype.str}', 'fortran_order': False, 'shape': {arr.shape!r}, }}"
        pad = -(len(_NPY_PREFIX) + 2 + len(text) + 1) % 64
        header = (text + " " * pad + "\n").encode("latin1")
        if len(header) < 1 << 16:
            return b"".join([_NPY_PREFIX, struct.pack("<H", len(header)), header, arr.tobytes()])
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _npy_header(blob):
    """``(shape, dtype, data offset)`` of a blob whose header is of :func:`_npy_bytes`'s
    form, else None."""
    if not blob.startswith(_NPY_PREFIX) or len(blob) < 10:
        return None
    (hlen,) = struct.unpack_from("<H", blob, 8)
    m = _NPY_HEADER.fullmatch(blob, 10, 10 + hlen)
    dtype = m and _NPY_DESCR.get(m.group(1))
    if dtype is None:
        return None
    shape = tuple(int(d) for d in (m.group(2) or b"").split(b",") if d.strip())
    return shape, dtype, 10 + hlen


def message_to_wire(msg):
    """Serialise a :class:`Message` to bytes."""
    blobs, entries = [], []
    for name, arr in msg.arrays.items():
        blob = _npy_bytes(arr)
        entry = {"name": name, "nbytes": len(blob)}
        if name in msg.exponents:
            entry["exponent"] = int(msg.exponents[name])
        entries.append(entry)
        blobs.append(blob)
    header = json.dumps(
        {"meta": msg.meta, "arrays": entries}, separators=(",", ":"), allow_nan=False
    ).encode()
    return b"".join([MAGIC, struct.pack(">I", len(header)), header, *blobs])


def _read_npy(blob, name):
    fast = _npy_header(blob)
    if fast is not None:
        (shape, dtype, offset), fortran = fast, False
    else:
        buf = io.BytesIO(blob)
        try:
            version = np.lib.format.read_magic(buf)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except Exception as exc:  # numpy raises ValueError/SyntaxError/... on bad headers
            raise BadMessageError(f"array {name!r} is not a valid .npy blob: {exc}") from None
        offset = buf.tell()
    if dtype.hasobject or dtype not in _DTYPES or fortran:
        raise BadMessageError(f"array {name!r} has unsupported dtype {dtype}")
    if len(shape) > MAX_NDIM:
        raise BadMessageError(f"array {name!r} has too many dimensions")
    if any(int(d) < 0 or int(d) > MAX_DIM for d in shape):
        raise BadMessageError(f"array {name!r} has a dimension out of range: shape {shape}")
    count = math.prod(int(d) for d in shape)  # Python ints: no int64 wrap-around
    data = blob[offset:]
    if count < 0 or count * dtype.itemsize != len(data):
        raise BadMessageError(f"array {name!r} is truncated or has trailing bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def message_from_wire(data):
    """Parse bytes made by :func:`message_to_wire`; raise BadMessageError on anything odd."""
    data = bytes(data)
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise BadMessageError("body is not a fedsk message (bad magic)")
    (hlen,) = struct.unpack(">I", data[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if hlen > MAX_HEADER_BYTES or start + hlen > len(data):
        raise BadMessageError("message header is too long or truncated")
    try:
        header = json.loads(data[start : start + hlen].decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise BadMessageError(f"message header is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or set(header) != {"meta", "arrays"}:
        raise BadMessageError("message header must be an object with 'meta' and 'arrays'")
    meta, entries = header["meta"], header["arrays"]
    if not isinstance(meta, dict) or not isinstance(entries, list) or len(entries) > MAX_ARRAYS:
        raise BadMessageError("message header has a bad 'meta' or 'arrays'")
    msg = Message(meta)
    pos = start + hlen
    for entry in entries:
        if not isinstance(entry, dict) or not set(entry) <= {"name", "nbytes", "exponent"}:
            raise BadMessageError("bad array entry in header")
        name, nbytes = entry.get("name"), entry.get("nbytes")
        if not isinstance(name, str) or not _NAME.match(name) or name in msg.arrays:
            raise BadMessageError("bad or duplicate array name in header")
        if not isinstance(nbytes, int) or isinstance(nbytes, bool) or not nbytes >= 0:
            raise BadMessageError(f"bad size for array {name!r}")
        if pos + nbytes > len(data):
            raise BadMessageError(f"array {name!r} is truncated")
        arr = _read_npy(data[pos : pos + nbytes], name)
        pos += nbytes
        msg.arrays[name] = arr
        if "exponent" in entry:
            exp = entry["exponent"]
            if not isinstance(exp, int) or isinstance(exp, bool) or abs(exp) > 1000:
                raise BadMessageError(f"bad exponent for array {name!r}")
            if arr.dtype != np.uint8 or arr.ndim != 2:
                raise BadMessageError(f"ciphertext array {name!r} must be 2-d uint8")
            msg.exponents[name] = exp
    if pos != len(data):
        raise BadMessageError("trailing bytes after the last array")
    return msg


def public_key_to_wire(public_key):
    """A public key as a JSON-able dict (the modulus in hex)."""
    return {"n": format(int(public_key.n), "x")}


def public_key_from_wire(obj, *, min_key_length=1024):
    """Inverse of :func:`public_key_to_wire`; refuses keys shorter than ``min_key_length``."""
    if not isinstance(obj, dict) or not isinstance(obj.get("n"), str) or len(obj["n"]) > 4096:
        raise BadMessageError("public key must be {'n': '<hex modulus>'}")
    try:
        n = int(obj["n"], 16)
    except ValueError:
        raise BadMessageError("public key modulus is not hexadecimal") from None
    if n.bit_length() < min_key_length:
        raise BadMessageError(
            f"key too short: {n.bit_length()} bits; this party requires at least "
            f"{min_key_length} (min_key_length): fit with key_length={min_key_length} or more"
        )
    if n % 2 == 0 or n < 3:
        raise BadMessageError("public key modulus must be odd")
    return PaillierPublicKey(n)
