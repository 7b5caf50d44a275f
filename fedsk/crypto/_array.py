"""EncryptedArray: a vector of raw gmpy2 ciphertexts sharing one exponent.

Every operation here works on the raw integers (never on phe objects) and splits large
work over ``n_jobs`` workers of joblib's configured backend.
"""

import gmpy2
import numpy as np

from . import _kernels as K
from ._counting import _count
from ._encoding import BASE, DEFAULT_EXPONENT, decode, encode, to_signed
from ._keys import PaillierPrivateKey
from ._parallel import chunk_bounds, parallel_chunks, resolve_n_jobs, run_tasks

__all__ = [
    "EncryptedArray",
    "decrypt",
    "decrypt_integers",
    "decrypt_raw",
    "encrypt",
    "encrypt_integers",
    "packed_histograms",
    "prepare_encryption",
]


def _concat(parts):
    out = []
    for p in parts:
        out.extend(p)
    return out


def _public_key(key):
    return key.public_key if isinstance(key, PaillierPrivateKey) else key


def encrypt_integers(key, ints, *, exponent=0, n_jobs=None, stock=None):
    """Encrypt Python/numpy integers as they are (already fixed-point at ``exponent``).

    With a :class:`PaillierPrivateKey` the CRT shortcut is used; with a public key, the
    public path. An :class:`ObfuscatorStock` of the same key supplies the randomness it
    has ready (one multiplication per encryption); the rest is made now.
    """
    pub = _public_key(key)
    n = pub.n
    plains = [gmpy2.mpz(int(m)) % n for m in ints]
    _count("encrypt", len(plains))
    if stock is not None:
        if stock.public_key != pub:
            raise ValueError("the obfuscator stock belongs to another key")
        ready = stock.take(len(plains))
        head = K.apply_obfuscators(plains, ready, n, pub.nsquare)
        plains = plains[len(ready) :]
    else:
        head = []
    if not plains:  # (no key's tables to build for nothing)
        return EncryptedArray(pub, head, exponent)
    if isinstance(key, PaillierPrivateKey):
        ops = pub.alpha_bits // 4 if pub.obfuscation == "fast" else pub.key_length
        prefer = None if pub.obfuscation == "fast" else "threads"
        crt, obf, bits = key._crt_enc(), pub.obfuscation, pub.alpha_bits
        parts = parallel_chunks(
            K.owner_encrypt,
            len(plains),
            lambda a, b: (plains[a:b], crt, obf, bits),
            n_jobs=n_jobs,
            ops_per_item=ops,
            prefer=prefer,
        )
    else:
        ops = pub.alpha_bits // 8 if pub.obfuscation == "fast" else 3 * pub.key_length
        args = pub._public_args()
        parts = parallel_chunks(
            K.public_encrypt,
            len(plains),
            lambda a, b: (plains[a:b], *args),
            n_jobs=n_jobs,
            ops_per_item=ops,
        )
    return EncryptedArray(pub, head + _concat(parts), exponent)


def prepare_encryption(private_key, *, n_jobs=None):
    """Get the key owner's encryption ready here and in every worker now.

    The first encryption under a new key builds its fixed-base tables in each process
    that encrypts (tens of milliseconds, more if the worker processes must start first):
    this one, for the few encryptions too small to ship, and every worker. An estimator
    calls this in the background while it aligns the samples, so its first round does
    not wait.
    """
    pub = private_key.public_key
    if pub.obfuscation != "fast":
        return
    call = (K.owner_encrypt, ([gmpy2.mpz(0)], private_key._crt_enc(), "fast", pub.alpha_bits))
    call[0](*call[1])  # the table building lets go of the GIL in each multiplication
    workers = resolve_n_jobs(n_jobs)
    if workers > 1:
        run_tasks([call] * workers, workers=workers)


def encrypt(key, values, *, exponent=None, n_jobs=None, stock=None):
    """Encrypt a 1-d array of numbers at one shared fixed-point exponent.

    Parameters
    ----------
    key : PaillierPublicKey or PaillierPrivateKey
        The private key enables the faster CRT path (key owner only).
    values : array-like of shape (n,)
    exponent : int, default=None
        Base-16 exponent shared by the array; ``None`` means 0 for integer arrays and
        -13 (2**-52 precision) for floats.
    n_jobs : int, default=None
        Workers of joblib's active backend.
    stock : ObfuscatorStock, default=None
        Randomness made ahead for this key (see :func:`encrypt_integers`).
    """
    values = np.asarray(values)
    if exponent is None:
        exponent = 0 if values.dtype.kind in "iub" else DEFAULT_EXPONENT
    pub = _public_key(key)
    ints = encode(values, exponent, pub.max_int)
    return encrypt_integers(key, ints, exponent=exponent, n_jobs=n_jobs, stock=stock)


def decrypt_integers(private_key, enc, *, n_jobs=None):
    """Decrypt to signed Python ints (the fixed-point integers, exponent not applied)."""
    _check_same_key(private_key.public_key, enc)
    _count("decrypt", len(enc))
    pub = private_key.public_key
    return to_signed(_owner_decrypt(private_key, enc.ciphertexts, n_jobs), pub.n, pub.max_int)


def decrypt_raw(private_key, enc, *, n_jobs=None):
    """Decrypt to non-negative ints in [0, n) (for packed plaintexts)."""
    _check_same_key(private_key.public_key, enc)
    _count("decrypt", len(enc))
    return [int(m) for m in _owner_decrypt(private_key, enc.ciphertexts, n_jobs)]


def _owner_decrypt(private_key, cts, n_jobs):
    """CRT decryption to ints in [0, n), the two CRT halves in separate tasks.

    Splitting by half rather than only by ciphertext keeps two workers balanced
    however few ciphertexts there are (SecureBoost and logistic regression decrypt a
    handful at a time); with more workers the ciphertexts are also split in chunks.
    """
    crt = private_key._crt_dec()
    _n, p, q, psquare, qsquare = crt[:5]
    workers = resolve_n_jobs(n_jobs)
    # a 2048-bit decryption (~2-4 ms) is worth two threads; a 1024-bit one only in pairs
    if workers == 1 or not cts or len(cts) * private_key.public_key.key_length < 2048:
        return K.owner_decrypt(cts, crt)
    bounds = chunk_bounds(len(cts), max(1, workers // 2))
    tasks = [
        (K.crt_half, (cts[a:b], prime, square))
        for a, b in bounds
        for prime, square in ((p, psquare), (q, qsquare))
    ]
    halves = run_tasks(tasks, workers=min(workers, len(tasks)), prefer="threads")
    xp = [x for k in range(0, len(halves), 2) for x in halves[k]]
    xq = [x for k in range(1, len(halves), 2) for x in halves[k]]
    return K.crt_decode(xp, xq, crt)


def decrypt(private_key, enc, *, n_jobs=None):
    """Decrypt an :class:`EncryptedArray` to a float64 array."""
    return decode(decrypt_integers(private_key, enc, n_jobs=n_jobs), enc.exponent)


def _check_same_key(pub, enc):
    if enc.public_key != pub:
        raise ValueError(f"this array is encrypted under {enc.public_key!r}, not under {pub!r}")


class EncryptedArray:
    """A 1-d array of Paillier ciphertexts (raw ``gmpy2.mpz``) at one exponent.

    Parameters
    ----------
    public_key : PaillierPublicKey
    ciphertexts : list of gmpy2.mpz
    exponent : int, default=0
        Base-16 fixed-point exponent shared by every element.

    Notes
    -----
    Results of ``+``, ``-``, ``*``, :meth:`sum_by_group`, :meth:`histogram` and
    :meth:`dot` carry randomness that the key owner could relate to the inputs'
    randomness. Call :meth:`rerandomise` before such a result leaves the process.
    """

    __slots__ = ("ciphertexts", "exponent", "public_key")

    def __init__(self, public_key, ciphertexts, exponent=0):
        self.public_key = public_key
        self.ciphertexts = list(ciphertexts)
        self.exponent = int(exponent)

    def __len__(self):
        return len(self.ciphertexts)

    def __repr__(self):
        return (
            f"EncryptedArray(len={len(self)}, exponent={self.exponent}, "
            f"key={self.public_key.fingerprint})"
        )

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._like(self.ciphertexts[index])
        if isinstance(index, (int, np.integer)):
            return self._like([self.ciphertexts[index]])
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        cts = self.ciphertexts
        return self._like([cts[i] for i in index.tolist()])

    def _like(self, cts, exponent=None):
        return EncryptedArray(self.public_key, cts, self.exponent if exponent is None else exponent)

    @classmethod
    def concat(cls, arrays):
        """Concatenate arrays under the same key and exponent."""
        arrays = list(arrays)
        first = arrays[0]
        for a in arrays[1:]:
            first._check_compatible(a)
        return first._like(_concat(a.ciphertexts for a in arrays))

    def _check_compatible(self, other):
        if other.public_key != self.public_key:
            raise ValueError("cannot combine arrays encrypted under different keys")
        if other.exponent != self.exponent:
            raise ValueError(
                f"exponents differ ({self.exponent} vs {other.exponent}): encrypt both "
                "arrays at the same exponent"
            )

    def _mod(self):
        return self.public_key.nsquare

    # arithmetic ------------------------------------------------------------------------
    def add(self, other, *, n_jobs=None):
        """Elementwise sum with another EncryptedArray or with plaintext numbers."""
        pub, nsq = self.public_key, self._mod()
        cts = self.ciphertexts
        if isinstance(other, EncryptedArray):
            self._check_compatible(other)
            if len(other) != len(self):
                raise ValueError(f"length mismatch: {len(self)} vs {len(other)}")
            ots = other.ciphertexts
            parts = parallel_chunks(
                K.mulmod_pairs, len(cts), lambda a, b: (cts[a:b], ots[a:b], nsq), n_jobs=n_jobs
            )
            return self._like(_concat(parts))
        plain = np.broadcast_to(np.asarray(other), (len(self),))
        return self.add_encoded(encode(plain, self.exponent, pub.max_int), n_jobs=n_jobs)

    def subtract(self, other, *, n_jobs=None):
        """Elementwise difference ``self - other`` (other encrypted or plaintext)."""
        nsq = self._mod()
        if not isinstance(other, EncryptedArray):
            return self.add(-np.asarray(other), n_jobs=n_jobs)
        self._check_compatible(other)
        if len(other) != len(self):
            raise ValueError(f"length mismatch: {len(self)} vs {len(other)}")
        cts, ots = self.ciphertexts, other.ciphertexts

        def args(a, b):
            return (cts[a:b], ots[a:b], nsq)

        parts = parallel_chunks(_sub_chunk, len(cts), args, n_jobs=n_jobs, ops_per_item=4)
        return self._like(_concat(parts))

    __add__ = add
    __radd__ = add
    __sub__ = subtract

    def add_encoded(self, ints, *, n_jobs=None):
        """Add plaintext integers that are already fixed-point at this array's exponent.

        For values a float64 cannot carry exactly: random masks, products of shares.
        """
        pub, nsq = self.public_key, self._mod()
        ints = [int(m) for m in ints]
        if len(ints) != len(self):
            raise ValueError(f"length mismatch: {len(self)} vs {len(ints)}")
        if ints and max(abs(m) for m in ints) > pub.max_int:
            raise ValueError("a plaintext integer is outside the encodable range")
        cts = self.ciphertexts
        parts = parallel_chunks(
            K.add_plaintexts,
            len(cts),
            lambda a, b: (cts[a:b], ints[a:b], pub.n, nsq),
            n_jobs=n_jobs,
        )
        return self._like(_concat(parts))

    def rescale(self, exponent, *, n_jobs=None):
        """The same values at a lower (finer) ``exponent``: multiply by ``16**shift``."""
        exponent = int(exponent)
        shift = self.exponent - exponent
        if shift < 0:
            raise ValueError(f"cannot raise the exponent from {self.exponent} to {exponent}")
        if shift == 0:
            return self
        factors, cts, nsq = [BASE**shift] * len(self), self.ciphertexts, self._mod()
        _count("powmod", len(cts))
        parts = parallel_chunks(
            K.powmod_scalars,
            len(cts),
            lambda a, b: (cts[a:b], factors[a:b], nsq),
            n_jobs=n_jobs,
            ops_per_item=4 * shift,
        )
        return self._like(_concat(parts), exponent)

    def multiply(self, scalars, *, exponent=None, n_jobs=None):
        """Multiply by plaintext scalar(s); the result's exponent adds ``exponent``.

        Integer scalars keep the array's exponent (``exponent=0``); float scalars are
        encoded at ``exponent`` (default -13).
        """
        pub, nsq = self.public_key, self._mod()
        scalars = np.broadcast_to(np.asarray(scalars), (len(self),))
        if exponent is None:
            exponent = 0 if scalars.dtype.kind in "iub" else DEFAULT_EXPONENT
        ks = encode(scalars, exponent, pub.max_int)
        cts = self.ciphertexts
        _count("powmod", len(cts))
        bits = max((abs(k).bit_length() for k in ks), default=1)
        parts = parallel_chunks(
            K.powmod_scalars,
            len(cts),
            lambda a, b: (cts[a:b], ks[a:b], nsq),
            n_jobs=n_jobs,
            ops_per_item=bits,
        )
        return self._like(_concat(parts), self.exponent + exponent)

    __mul__ = multiply
    __rmul__ = multiply

    def sum(self):
        """Encrypted sum of all elements (a 1-element array)."""
        return self._like([K.product(self.ciphertexts, self._mod())])

    def sum_by_group(self, groups, n_groups, *, n_jobs=None):
        """Sum elements into ``n_groups`` buckets given an integer bucket per element.

        Empty buckets hold the trivial encryption of 0 (ciphertext 1).
        """
        groups = np.asarray(groups)
        if groups.shape != (len(self),):
            raise ValueError(f"groups must have shape ({len(self)},), got {groups.shape}")
        if len(groups) and (groups.min() < 0 or groups.max() >= n_groups):
            raise ValueError(f"groups must lie in [0, {n_groups})")
        return self.histogram(groups.reshape(-1, 1), n_groups, n_jobs=n_jobs)

    def histogram(self, bins, n_bins, *, n_jobs=None):
        """Bucket sums of several features: ``bins`` of shape (n, n_features).

        Returns an array of ``n_features * n_bins`` sums, feature-major.
        """
        bins = np.asarray(bins)
        if bins.ndim != 2 or bins.shape[0] != len(self):
            raise ValueError(f"bins must have shape ({len(self)}, n_features)")
        if bins.size and (bins.min() < 0 or bins.max() >= n_bins):
            raise ValueError(f"bin indices must lie in [0, {n_bins})")
        cts, nsq = self.ciphertexts, self._mod()
        parts = parallel_chunks(
            K.histogram_products,
            bins.shape[1],
            lambda a, b: (cts, bins[:, a:b], n_bins, nsq),
            n_jobs=n_jobs,
            ops_per_item=max(len(cts), 1),
        )
        return self._like(_concat(parts))

    def dot(self, X, *, exponent=None, n_jobs=None):
        """``X.T @ self`` for a plaintext matrix X of shape (n,) or (n, m).

        Uses Pippenger's bucket multi-exponentiation per column instead of one modular
        exponentiation per element. Float X is encoded at ``exponent`` (default -6,
        i.e. 24 fractional bits); the result's exponent is the sum of both.
        """
        X = np.asarray(X)
        if X.ndim == 1:
            X = X.reshape(-1, 1)
        if X.ndim != 2 or X.shape[0] != len(self):
            raise ValueError(f"X must have {len(self)} rows, got shape {X.shape}")
        if exponent is None:
            exponent = 0 if X.dtype.kind in "iub" else -6
        scalars = self._encode_matrix(X, exponent)
        cts, nsq = self.ciphertexts, self._mod()
        _count_multiexp(scalars.shape[0], scalars.shape[1])
        parts = parallel_chunks(
            K.multiexp_columns,
            scalars.shape[1],
            lambda a, b: (cts, scalars[:, a:b], nsq),
            n_jobs=n_jobs,
            ops_per_item=max(len(cts), 1) * 8,
        )
        return self._like(_concat(parts), self.exponent + exponent)

    def matmul(self, n_rows, X, *, exponent=None, n_jobs=None):
        """``E @ X`` for this array read as an encrypted ``(n_rows, p)`` matrix E.

        E is row-major (``len(self) == n_rows * p``) and X a plaintext ``(p, k)`` matrix
        (or a vector of length p). Each of the ``n_rows * k`` results is one Pippenger
        multi-exponentiation over a row of E; the result is row-major ``(n_rows, k)``.
        Float X is encoded at ``exponent`` (default -6).
        """
        X = np.asarray(X)
        if X.ndim == 1:
            X = X.reshape(-1, 1)
        n_rows = int(n_rows)
        if n_rows < 1 or len(self) % n_rows or X.ndim != 2 or X.shape[0] != len(self) // n_rows:
            raise ValueError(
                f"cannot multiply {len(self)} ciphertexts as {n_rows} rows by X of shape {X.shape}"
            )
        if exponent is None:
            exponent = 0 if X.dtype.kind in "iub" else -6
        scalars = self._encode_matrix(X, exponent)
        width, k, cts, nsq = X.shape[0], X.shape[1], self.ciphertexts, self._mod()
        _count_multiexp(width, n_rows * k)

        def args(a, b):  # outputs a..b-1 (row-major): ship only the rows they need
            first, last = a // k, (b - 1) // k
            return (cts[first * width : (last + 1) * width], width, first, a, b, scalars, nsq)

        parts = parallel_chunks(
            _matmul_outputs, n_rows * k, args, n_jobs=n_jobs, ops_per_item=width * 8
        )
        return self._like(_concat(parts), self.exponent + exponent)

    @staticmethod
    def _encode_matrix(X, exponent):
        if X.dtype.kind in "iub":
            ints = X.astype(np.int64) << (-4 * exponent) if exponent < 0 else X.astype(np.int64)
        else:
            X = np.asarray(X, dtype=np.float64)
            if not np.isfinite(X).all():
                raise ValueError("X contains NaN or infinite values")
            scaled = np.rint(np.ldexp(X, -4 * exponent))
            if np.abs(scaled).max(initial=0) >= 2.0**62:
                raise ValueError("X is too large for this fixed-point exponent")
            ints = scaled.astype(np.int64)
        return np.ascontiguousarray(ints)

    def rerandomise(self, *, n_jobs=None):
        """Multiply every element by a fresh encryption of zero.

        Do this before an array computed from a peer's ciphertexts leaves the process.
        """
        pub = self.public_key
        args = pub._public_args()
        cts = self.ciphertexts
        _count("rerandomise", len(cts))
        ops = pub.alpha_bits // 8 if pub.obfuscation == "fast" else 3 * pub.key_length
        parts = parallel_chunks(
            K.rerandomise,
            len(cts),
            lambda a, b: (cts[a:b], *args),
            n_jobs=n_jobs,
            ops_per_item=ops,
        )
        return self._like(_concat(parts))

    def pack(self, records_per_ciphertext, record_bits, *, n_jobs=None):
        """Pack consecutive elements into fewer ciphertexts by shifting plaintexts.

        Element ``j`` of each group of ``records_per_ciphertext`` lands ``record_bits``
        bits above element ``j + 1``. Only valid when every plaintext is a
        non-negative integer below ``2**record_bits`` (see :mod:`fedsk.crypto._packing`).
        """
        k = int(records_per_ciphertext)
        if k < 1:
            raise ValueError("records_per_ciphertext must be >= 1")
        if k * record_bits >= self.public_key.key_length:
            raise ValueError("packed plaintext would not fit below n")
        cts = self.ciphertexts
        groups = [cts[i : i + k] for i in range(0, len(cts), k)]
        nsq = self._mod()
        parts = parallel_chunks(
            K.horner_pack,
            len(groups),
            lambda a, b: (groups[a:b], record_bits, nsq),
            n_jobs=n_jobs,
            ops_per_item=k * record_bits,
        )
        return self._like(_concat(parts), 0)

    # interop ---------------------------------------------------------------------------
    def to_phe(self):
        """The same values as a list of :class:`phe.paillier.EncryptedNumber`."""
        from phe import paillier

        pk = self.public_key.to_phe()
        return [paillier.EncryptedNumber(pk, int(c), self.exponent) for c in self.ciphertexts]

    @classmethod
    def from_phe(cls, public_key, numbers):
        """Build from phe EncryptedNumbers (all must share one exponent)."""
        numbers = list(numbers)
        exps = {x.exponent for x in numbers}
        if len(exps) > 1:
            raise ValueError(f"phe numbers have several exponents {sorted(exps)}")
        exp = exps.pop() if exps else 0
        return cls(public_key, [gmpy2.mpz(x.ciphertext(be_secure=False)) for x in numbers], exp)

    def to_bytes(self):
        """Fixed-width big-endian ciphertexts as a uint8 array of shape (len, width)."""
        width = self.public_key.ciphertext_bytes
        buf = b"".join(int(c).to_bytes(width, "big") for c in self.ciphertexts)
        return np.frombuffer(buf, dtype=np.uint8).reshape(len(self), width).copy()

    @classmethod
    def from_bytes(cls, public_key, data, exponent=0):
        """Inverse of :meth:`to_bytes`; checks that every row is a Paillier ciphertext.

        A ciphertext is an invertible residue modulo ``n**2``: ``0 < c < n**2`` and
        ``gcd(c, n) == 1``. The key owner can make values that are in range but share a
        factor with ``n``; they would make a peer's modular inversions fail. The check
        costs one multiplication modulo ``n`` per ciphertext and one gcd per array.
        Raises ``ValueError`` naming the first bad row.
        """
        data = np.asarray(data)
        width = public_key.ciphertext_bytes
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != width:
            raise ValueError(
                f"ciphertexts must be a uint8 array of shape (k, {width}) for this key, "
                f"got {data.dtype} {data.shape}"
            )
        n, nsq = public_key.n, public_key.nsquare
        raw = data.tobytes()
        cts = []
        units = gmpy2.mpz(1)
        for i in range(data.shape[0]):
            c = gmpy2.mpz(int.from_bytes(raw[i * width : (i + 1) * width], "big"))
            if not 0 < c < nsq:
                raise ValueError(f"ciphertext {i} is out of range (must be 0 < c < n**2)")
            units = units * (c % n) % n
            cts.append(c)
        if gmpy2.gcd(units, n) != 1:
            i = next(i for i, c in enumerate(cts) if gmpy2.gcd(c, n) != 1)
            raise ValueError(
                f"ciphertext {i} shares a factor with n (it has no inverse modulo n**2), "
                "so it is not a Paillier ciphertext"
            )
        return cls(public_key, cts, exponent)


def _sub_chunk(cts, ots, mod):
    return K.mulmod_pairs(cts, K.batch_invert(ots, mod), mod)


def packed_histograms(enc, nodes, n_bins, *, n_jobs=None, stock=None):
    """Encrypted histograms of several nodes, packed for decryption and re-randomised.

    The host's step of SecureBoost in one call. Node ``k`` is given as
    ``(rows, bins, keep, widths, sizes)``: the ciphertexts ``enc[rows]`` are summed
    into ``bins.shape[1] * n_bins`` buckets by ``bins`` (shape (len(rows), n_features),
    values in ``[0, n_bins)``; feature-major); the buckets where ``keep`` is true are
    packed in order, ``sizes[i]`` to the ``i``-th ciphertext, bucket ``j`` of them
    ``widths[j]`` bits wide (the first most significant); and every packed ciphertext
    is re-randomised with this party's own obfuscator (from ``stock``, an
    :class:`ObfuscatorStock` of the public key, as far as it has them ready). Buckets
    not kept are not summed. Returns one :class:`EncryptedArray` per node.

    Each node's packed ciphertexts are split in runs of about equal cost (bucket sums
    and squarings); a worker process sums the buckets of its run and packs them
    (:func:`K.packed_bucket_groups`), so only packed ciphertexts come back, and the
    squarings run with no GIL to share. This thread makes the obfuscators the stock
    did not have meanwhile. :func:`histogram_additions` counts the ciphertext
    multiplications the sums take.
    """
    pub = enc.public_key
    pub_args, nsq = pub._public_args(), pub.nsquare
    cts = enc.ciphertexts
    for rows, bins, keep, widths, sizes in nodes:
        if bins.shape[0] != len(rows):
            raise ValueError("bins must have one row per ciphertext row")
        if len(widths) != int(np.count_nonzero(keep)) or sum(sizes) != len(widths):
            raise ValueError("widths and sizes must cover the kept buckets")
    runs, costs = _histogram_runs(nodes, n_bins, resolve_n_jobs(n_jobs))
    node_cts = [[cts[i] for i in rows] for rows, *_ in nodes]
    tasks = []
    for k, a, b in runs:
        _, bins, keep, widths, sizes = nodes[k]
        records = np.flatnonzero(keep)
        ends = np.cumsum(sizes)
        first, stop = (int(ends[a - 1]) if a else 0), int(ends[b - 1])
        f0, f1 = int(records[first]) // n_bins, int(records[stop - 1]) // n_bins + 1
        args = (
            node_cts[k],
            bins[:, f0:f1],
            n_bins,
            (records[first:stop] - f0 * n_bins).tolist(),
            np.asarray(widths)[first:stop].tolist(),
            list(sizes[a:b]),
            nsq,
        )
        tasks.append((K.packed_bucket_groups, args))
    n_packed = sum(len(sizes) for *_, sizes in nodes)
    obfs = []
    if stock is not None:
        if stock.public_key != pub:
            raise ValueError("the obfuscator stock belongs to another key")
        obfs = stock.take(n_packed)

    def make_missing():  # (while the workers sum and pack; a small table for a few)
        if len(obfs) < n_packed:
            obfs.extend(K.public_obfuscators(n_packed - len(obfs), *pub_args, None))

    workers = resolve_n_jobs(n_jobs)
    if workers == 1 or sum(costs) < HISTOGRAM_MIN_OPS * (2048 / pub.key_length) ** 1.6:
        make_missing()
        results = [func(*args) for func, args in tasks]
    else:  # the dearest runs first, so that none is left alone at the end
        order = sorted(range(len(tasks)), key=costs.__getitem__, reverse=True)
        done = run_tasks([tasks[i] for i in order], workers=workers, meanwhile=make_missing)
        results = [None] * len(tasks)
        for i, packed in zip(order, done):
            results[i] = packed
    out = [[] for _ in nodes]
    for (k, _, _), packed in zip(runs, results):
        out[k].extend(packed)
    it = iter(obfs)
    return [EncryptedArray(pub, [c * next(it) % nsq for c in packed], 0) for packed in out]


def histogram_additions(nodes, n_bins):
    """Homomorphic additions (ciphertext multiplications) :func:`packed_histograms` makes
    for ``nodes``: ``c - 1`` for a kept bucket of ``c`` rows, and one per packed record
    after the first of its plaintext (adding it below the shifted ones before it); the
    shifts' squarings and the re-randomisations are counted apart."""
    total = 0
    for _, bins, keep, widths, sizes in nodes:
        counts = _bucket_counts(bins, n_bins)[np.asarray(keep, dtype=bool)]
        total += int(counts.sum()) - int(np.count_nonzero(counts))
        total += len(widths) - len(sizes)
    return total


def _bucket_counts(bins, n_bins):
    """Rows in each (feature, bin) bucket, feature-major."""
    n_features = bins.shape[1]
    flat = bins.astype(np.int64) + np.arange(n_features) * n_bins
    return np.bincount(flat.ravel(), minlength=n_features * n_bins)


# Histogram work below this many multiplications (about 20 ms at 2048 bits; scaled by
# the cost of a multiplication for other key lengths) stays in the calling process:
# shipping the ciphertexts to worker processes would cost more than it saves.
HISTOGRAM_MIN_OPS = 3_000
# what a squaring costs, relative to a multiplication (2048-bit: 5 against 6 us)
_SQUARING_COST = 0.85


def _histogram_runs(nodes, n_bins, workers):
    """Split every node's packed ciphertexts in runs ``(node, first, stop)`` of about
    equal cost; returns the runs and their costs (in multiplications).

    Several nodes: two runs per worker over the call, so that none waits long at the
    end. One node: one run per worker, since every run ships all the node's ciphertexts
    (a second run per worker would ship a root's 100,000 twice).
    """
    group_costs = []
    for _, bins, keep, widths, sizes in nodes:
        counts = _bucket_counts(bins, n_bins)[np.asarray(keep, dtype=bool)]
        widths = np.asarray(widths, dtype=np.int64)
        ends = np.cumsum(sizes, dtype=np.int64)
        starts = ends - np.asarray(sizes, dtype=np.int64)
        mults = np.add.reduceat(counts - 1, starts) if len(starts) else np.zeros(0)
        squarings = (np.add.reduceat(widths, starts) - widths[starts]) if len(starts) else mults
        group_costs.append(mults + _SQUARING_COST * squarings)
    total = sum(float(c.sum()) for c in group_costs) or 1.0
    runs, costs = [], []
    for k, cost in enumerate(group_costs):
        if not len(cost):
            continue
        per_worker = 2 if len(nodes) > 1 else 1
        share = per_worker * workers * float(cost.sum()) / total if workers > 1 else 1
        for a, b in chunk_bounds(len(cost), max(1, round(share)), cost + 1e-9):
            runs.append((k, a, b))
            costs.append(float(cost[a:b].sum()))
    return runs, costs


def _count_multiexp(terms, outputs):
    """Multi-exponentiations of ``terms`` terms each; short ones (< 64 terms) apart,
    since Pippenger's cost per term is higher for them."""
    _count("multiexp_terms", terms * outputs)
    _count("multiexp_outputs", outputs)
    if terms < 64:
        _count("multiexp_short_terms", terms * outputs)


def _matmul_outputs(cts, width, first_row, a, b, scalars, mod):
    """Outputs ``a..b-1`` of ``E @ X`` (row-major); ``cts`` are E's rows from ``first_row``."""
    k = scalars.shape[1]
    out = []
    t = a
    while t < b:
        row, col = divmod(t, k)
        stop = min(b, (row + 1) * k)
        bases = cts[(row - first_row) * width : (row - first_row + 1) * width]
        out.extend(K.multiexp_columns(bases, scalars[:, col : col + stop - t], mod))
        t = stop
    return out
