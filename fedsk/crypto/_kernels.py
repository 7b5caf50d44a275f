"""Raw gmpy2 kernels: the hot loops of every protocol.

Each function works on plain lists of ``gmpy2.mpz`` and Python ints, is defined at
module level (so joblib can ship it to a worker process) and returns plain lists.
Nothing here knows about keys, exponents or protocols.
"""

import math
import secrets
import threading

import gmpy2
import numpy as np

mpz = gmpy2.mpz
powmod = gmpy2.powmod


# -- elementwise ---------------------------------------------------------------------


def mulmod_pairs(xs, ys, mod):
    """``[x * y % mod]`` elementwise."""
    return [x * y % mod for x, y in zip(xs, ys)]


def add_plaintexts(cts, plains, n, nsquare):
    """Add plaintext integers to ciphertexts: ``c * (1 + m n) mod n**2`` (g = n + 1).

    Computed as ``c + n * (m * c mod n)`` (less than ``2 n**2``): since ``n * k mod n**2``
    is ``n * (k mod n)``, this needs no product of two numbers of n**2's size.
    """
    out = []
    for c, m in zip(cts, plains):
        c = c + n * (m * (c % n) % n)
        out.append(c - nsquare if c >= nsquare else c)
    return out


def batch_invert(xs, mod):
    """Modular inverses of ``xs`` with one inversion (Montgomery's trick)."""
    if not xs:
        return []
    prefix = [xs[0]]
    for x in xs[1:]:
        prefix.append(prefix[-1] * x % mod)
    inv = gmpy2.invert(prefix[-1], mod)
    out = [None] * len(xs)
    for i in range(len(xs) - 1, 0, -1):
        out[i] = inv * prefix[i - 1] % mod
        inv = inv * xs[i] % mod
    out[0] = inv
    return out


def powmod_scalars(cts, scalars, mod):
    """``c ** k mod mod`` elementwise; negative ``k`` use the inverse (gmpy2 semantics)."""
    return [powmod(c, k, mod) for c, k in zip(cts, scalars)]


def product(cts, mod):
    """Product of all ``cts`` modulo ``mod`` (1 for an empty list)."""
    acc = mpz(1)
    for c in cts:
        acc = acc * c % mod
    return acc


# -- bucket sums (the histogram primitive) -----------------------------------------------


def bucket_products(cts, groups, n_groups, mod):
    """Multiply ``cts[i]`` into bucket ``groups[i]``; empty buckets hold 1.

    ``groups`` is an integer numpy array with values in ``[0, n_groups)``.
    """
    buckets = [None] * n_groups
    for c, g in zip(cts, groups.tolist()):
        b = buckets[g]
        buckets[g] = c if b is None else b * c % mod
    one = mpz(1)
    return [one if b is None else b for b in buckets]


def histogram_products(cts, bins, n_bins, mod):
    """Encrypted histograms of several features at once.

    ``bins`` has shape (n_samples, n_features) with values in ``[0, n_bins)``. Returns
    a flat list of length ``n_features * n_bins``, feature-major.
    """
    out = []
    for j in range(bins.shape[1]):
        out.extend(bucket_products(cts, bins[:, j], n_bins, mod))
    return out


# -- multi-exponentiation: X^T [[d]] ----------------------------------------------------


def _pippenger_window(n_terms, bits):
    """Window width minimising Pippenger's cost for ``n_terms`` scalars of ``bits`` bits."""
    best, best_c = None, 1
    for c in range(1, 17):
        cost = math.ceil(bits / c) * (n_terms + 2 ** (c + 1)) + bits
        if best is None or cost < best:
            best, best_c = cost, c
    return best_c


def _multiexp_nonneg(bases, scalars, mod):
    """``prod bases[i] ** scalars[i] mod mod`` for non-negative int64 ``scalars``.

    Pippenger's bucket method: per window of c bits, multiply every base into the bucket
    of its digit, then combine the buckets with a running product (2 * 2**c mults).
    """
    keep = scalars != 0
    if not keep.any():
        return mpz(1)
    if not keep.all():
        bases = [b for b, k in zip(bases, keep.tolist()) if k]
        scalars = scalars[keep]
    bits = int(scalars.max()).bit_length()
    c = _pippenger_window(len(bases), bits)
    mask = (1 << c) - 1
    result = None
    for w in range(math.ceil(bits / c) - 1, -1, -1):
        if result is not None:
            result = powmod(result, 1 << c, mod)
        digits = ((scalars >> (w * c)) & mask).tolist()
        buckets = [None] * (mask + 1)
        for b, d in zip(bases, digits):
            if d:
                cur = buckets[d]
                buckets[d] = b if cur is None else cur * b % mod
        running = acc = None
        for d in range(mask, 0, -1):
            cur = buckets[d]
            if cur is not None:
                running = cur if running is None else running * cur % mod
            if running is not None:
                acc = running if acc is None else acc * running % mod
        if acc is not None:
            result = acc if result is None else result * acc % mod
    return mpz(1) if result is None else result


def multiexp_columns(bases, scalar_columns, mod):
    """For each int64 column ``k`` of ``scalar_columns`` (shape (n, m)): prod b_i ** k_i.

    Negative scalars are shifted by a common offset ``2**t`` so that every column is a
    non-negative multi-exponentiation, then the shared factor ``(prod b_i) ** 2**t`` is
    divided out with a single modular inversion for all columns.
    """
    out = []
    if (scalar_columns < 0).any():
        t = int(np.abs(scalar_columns).max()).bit_length()
        shifted = scalar_columns + (np.int64(1) << t)
        correction = gmpy2.invert(powmod(product(bases, mod), mpz(1) << t, mod), mod)
        for j in range(scalar_columns.shape[1]):
            out.append(_multiexp_nonneg(bases, shifted[:, j], mod) * correction % mod)
        return out
    for j in range(scalar_columns.shape[1]):
        out.append(_multiexp_nonneg(bases, scalar_columns[:, j], mod))
    return out


def naive_multiexp_columns(bases, scalar_columns, mod):
    """Reference: one powmod per element (what the benchmark compares against)."""
    out = []
    for j in range(scalar_columns.shape[1]):
        acc = mpz(1)
        for b, k in zip(bases, scalar_columns[:, j].tolist()):
            acc = acc * powmod(b, k, mod) % mod
        out.append(acc)
    return out


# -- packing several plaintext records into one ciphertext -------------------------------


def horner_pack(groups, shift_bits, mod):
    """For each group ``[c_0, ..., c_{k-1}]`` return ``prod c_j ** 2**(shift*(k-1-j))``.

    The plaintext of the result is ``sum m_j << shift*(k-1-j)``: ``c_0`` lands in the
    most significant record. Costs ``shift`` squarings per packed record (see
    :func:`horner_pack_widths`).
    """
    return horner_pack_widths(groups, [[shift_bits] * len(g) for g in groups], mod)


def horner_pack_widths(groups, widths, mod):
    """Pack each group ``[c_0, ..., c_{k-1}]`` with record ``j`` ``widths[i][j]`` bits wide.

    The plaintext of the result is ``m_0`` followed by ``m_1``, ... (``m_0`` most
    significant): ``acc = c_0``, then ``acc = acc ** 2**w_j * c_j`` for each next record,
    ``w_j`` squarings each. All groups advance in lockstep, the squarings of equally
    wide records through one ``gmpy2.powmod_base_list``, which releases the GIL, so
    threads run this in parallel.
    """
    if not groups:
        return []
    if len(groups) == 1:  # (one group per task on threads: no lockstep to organise)
        return [_horner_one(groups[0], widths[0], mod)]
    accs = [g[0] for g in groups]
    for s in range(1, max(len(g) for g in groups)):
        by_width = {}
        for i, g in enumerate(groups):
            if len(g) > s:
                by_width.setdefault(widths[i][s], []).append(i)
        for w, ids in by_width.items():
            squared = gmpy2.powmod_base_list([accs[i] for i in ids], mpz(1) << w, mod)
            for i, a in zip(ids, squared):
                accs[i] = a * groups[i][s] % mod
    return accs


def _horner_one(group, widths, mod):
    """:func:`horner_pack_widths` of a single group."""
    square = gmpy2.powmod_base_list
    exps = {}
    acc = group[0]
    for c, w in zip(group[1:], widths[1:]):
        e = exps.get(w)
        if e is None:
            e = exps[w] = mpz(1) << int(w)
        acc = square([acc], e, mod)[0] * c % mod
    return acc


def packed_bucket_groups(cts, bins, n_bins, records, widths, sizes, mod):
    """Bucket sums of some records, packed: the host's histogram work in one task.

    ``records`` are flat (feature-major) bucket indices ``j * n_bins + b`` into ``bins``
    (shape (len(cts), n_features), values in ``[0, n_bins)``), in packing order; each
    bucket's product of the ``cts`` that fall in it is packed as by
    :func:`horner_pack_widths`, ``sizes[i]`` records to the ``i``-th result, record ``r``
    ``widths[r]`` bits wide. Only the rows of the buckets asked for are multiplied, so
    tasks that share a feature (each packing some of its buckets) share no work.
    """
    n_features = bins.shape[1]
    slot = np.full(n_features * n_bins, -1, dtype=np.int64)
    slot[np.asarray(records, dtype=np.int64)] = np.arange(len(records))
    buckets = [None] * len(records)
    for j in range(n_features):
        where = slot[bins[:, j].astype(np.int64) + j * n_bins]
        rows = np.flatnonzero(where >= 0)
        for r, i in zip(rows.tolist(), where[rows].tolist()):
            b = buckets[i]
            buckets[i] = cts[r] if b is None else b * cts[r] % mod
    one = mpz(1)
    buckets = [one if b is None else b for b in buckets]
    widths = list(widths)
    out, start = [], 0
    for size in sizes:
        out.append(_horner_one(buckets[start : start + size], widths[start : start + size], mod))
        start += size
    return out


# -- obfuscators r**n (the cost of every encryption) -----------------------------------


class FixedBaseTable:
    """Precomputed powers ``base ** (j << (w*i))`` for fast ``base ** e`` with short ``e``.

    A ``bits``-bit exponent costs ``ceil(bits / window) - 1`` modular multiplications
    (the comb/fixed-base windowing method, Handbook of Applied Cryptography 14.109).
    """

    def __init__(self, base, mod, bits, window=8):
        self.mod, self.bits, self.window = mod, bits, window
        self.mask = (1 << window) - 1
        rows, g = [], mpz(base) % mod
        # thousands of multiplications: let gmpy2 drop the GIL in each, so that a table
        # built in a background thread does not stall the threads serving requests
        with gmpy2.context(gmpy2.get_context(), allow_release_gil=True):
            for _ in range(math.ceil(bits / window)):
                row = [mpz(1), g]
                for _ in range(2, 1 << window):
                    row.append(row[-1] * g % mod)
                rows.append(row)
                g = row[-1] * g % mod
        self.rows = rows

    def pow(self, e):
        mod, mask, w = self.mod, self.mask, self.window
        acc = None
        for row in self.rows:
            d = e & mask
            e >>= w
            if d:
                acc = row[d] if acc is None else acc * row[d] % mod
        return mpz(1) if acc is None else acc


_TABLES = {}
_TABLES_LOCK = threading.Lock()
_BUILDING = {}  # key -> lock held while one thread builds that table


# Re-randomisations are few per key (a SecureBoost host's: about 30 per layer of trees):
# their table is smaller, cheaper to build and dearer to use (for 150 uses under a
# 2048-bit key: 2,400 + 150 x 38 multiplications against 7,100 + 150 x 28 with window 8;
# window 8 pays from about 500). An encryption's table (window 8) serves them when built.
RERANDOMISE_WINDOW = 6


def cached_table(base, mod, bits, window=8):
    """The process-wide :class:`FixedBaseTable` for ``(base, mod, bits, window)``.

    Worker processes build their own copy on first use (tens of milliseconds) instead
    of receiving megabytes of table with every task. Thread-safe: a party server
    serves several sessions (several keys) at once, and threads that need a table
    another thread is building wait for it instead of building it again (the building
    holds the GIL, so two copies would take twice as long).
    """
    key = (int(base), int(mod), bits, window)
    table = _TABLES.get(key)
    if table is not None:
        return table
    with _TABLES_LOCK:
        building = _BUILDING.setdefault(key, threading.Lock())
    with building:
        table = _TABLES.get(key)
        if table is None:
            table = FixedBaseTable(base, mod, bits, window)
            with _TABLES_LOCK:
                while len(_TABLES) >= 8:
                    _TABLES.pop(next(iter(_TABLES)))
                _TABLES[key] = table
                _BUILDING.pop(key, None)
    return table


def random_exponents(count, bits):
    """``count`` independent uniform ``bits``-bit integers from the OS's CSPRNG, read
    in one call (``secrets.randbits`` reads it once per integer)."""
    size = (bits + 7) // 8
    raw = secrets.token_bytes(count * size)
    drop = 8 * size - bits
    return [int.from_bytes(raw[i : i + size], "big") >> drop for i in range(0, len(raw), size)]


def fixed_base_powers(base, mod, bits, exponents):
    """``base ** e mod mod`` for each ``bits``-bit ``e``, from this process's table."""
    table = cached_table(base, mod, bits)
    return [table.pow(e) for e in exponents]


def crt_combine(xp, xq, psquare, qsquare, qsquare_inv):
    """The x mod n**2 with x = xp mod p**2 and x = xq mod q**2."""
    return xq + qsquare * ((xp - xq) * qsquare_inv % psquare)


def owner_encrypt(plains, crt, obfuscation, alpha_bits):
    """Encrypt integers (already reduced mod n) with the private factors (CRT).

    ``crt`` is the tuple ``(n, p, q, psquare, qsquare, qsquare_inv, hp_s, hq_s)``; the
    obfuscators are :func:`owner_obfuscators`.
    """
    n = crt[0]
    obf = owner_obfuscators(len(plains), crt, obfuscation, alpha_bits)
    return apply_obfuscators(plains, obf, n, n * n)


def owner_obfuscators(count, crt, obfuscation, alpha_bits):
    """``count`` fresh encryptions of zero made with the private factors (CRT).

    ``"fast"``: ``h_s ** alpha`` with a fresh ``alpha_bits``-bit alpha, through fixed-base
    tables modulo p**2 and q**2. ``"standard"``: a uniform n-th residue, ``x**p mod p**2``
    and ``y**q mod q**2`` (the CRT image of ``r**n``).
    """
    _n, p, q, psquare, qsquare, qsquare_inv, hp_s, hq_s = crt
    if obfuscation == "fast":
        tp = cached_table(hp_s, psquare, alpha_bits)
        tq = cached_table(hq_s, qsquare, alpha_bits)
        return [
            crt_combine(tp.pow(alpha), tq.pow(alpha), psquare, qsquare, qsquare_inv)
            for alpha in random_exponents(count, alpha_bits)
        ]
    xs = [mpz(secrets.randbelow(int(psquare) - 2) + 2) for _ in range(count)]
    ys = [mpz(secrets.randbelow(int(qsquare) - 2) + 2) for _ in range(count)]
    rp = gmpy2.powmod_base_list(xs, p, psquare)
    rq = gmpy2.powmod_base_list(ys, q, qsquare)
    return [crt_combine(a, b, psquare, qsquare, qsquare_inv) for a, b in zip(rp, rq)]


def apply_obfuscators(plains, obfuscators, n, nsquare):
    """Encryptions ``(1 + m n) r mod n**2`` of ``plains`` (reduced mod n), one ``r`` each
    (see :func:`add_plaintexts`)."""
    return add_plaintexts(obfuscators, plains, n, nsquare)


def cheapest_window(count, bits, largest=8):
    """Window (at most ``largest``) of the table that makes ``count`` powers of ``bits``-bit
    exponents in the fewest multiplications, the table's own included."""
    return min(
        range(1, largest + 1),
        key=lambda w: math.ceil(bits / w) * ((1 << w) - 1 + count),
    )


def public_obfuscators(count, n, nsquare, base, obfuscation, alpha_bits, window=8):
    """``count`` fresh encryptions of zero under the public key alone.

    ``"fast"``: ``base ** alpha`` where ``base = r0 ** n`` was drawn by *this* party (so a
    peer's choice of base cannot weaken it), from a table of that ``window`` (or the
    window-8 table, once built; ``window=None``: the window-8 or re-randomisation
    table if built, else the cheapest for ``count``). ``"standard"``: ``r ** n`` as in phe.
    """
    if obfuscation == "fast":
        table = _TABLES.get((int(base), int(nsquare), alpha_bits, 8))
        if table is None and window is None:
            table = _TABLES.get((int(base), int(nsquare), alpha_bits, RERANDOMISE_WINDOW))
            window = cheapest_window(count, alpha_bits, RERANDOMISE_WINDOW)
        if table is None:
            table = cached_table(base, nsquare, alpha_bits, window)
        return [table.pow(alpha) for alpha in random_exponents(count, alpha_bits)]
    rs = [mpz(secrets.randbelow(int(n) - 1) + 1) for _ in range(count)]
    return gmpy2.powmod_base_list(rs, n, nsquare)


def public_encrypt(plains, n, nsquare, base, obfuscation, alpha_bits):
    """Encrypt integers (reduced mod n) under the public key alone."""
    obf = public_obfuscators(len(plains), n, nsquare, base, obfuscation, alpha_bits)
    return apply_obfuscators(plains, obf, n, nsquare)


def rerandomise(cts, n, nsquare, base, obfuscation, alpha_bits):
    """Multiply each ciphertext by a fresh encryption of zero."""
    obf = public_obfuscators(
        len(cts), n, nsquare, base, obfuscation, alpha_bits, RERANDOMISE_WINDOW
    )
    return [c * r % nsquare for c, r in zip(cts, obf)]


def owner_decrypt(cts, crt_dec):
    """Decrypt to integers in [0, n) with CRT (as phe does), GIL-free powmods.

    ``crt_dec`` is ``(n, p, q, psquare, qsquare, hp, hq, p_inv_q)`` where hp, hq are
    phe's precomputed ``L(g**(p-1) mod p**2) ** -1 mod p`` (and for q).
    """
    _n, p, q, psquare, qsquare = crt_dec[:5]
    return crt_decode(crt_half(cts, p, psquare), crt_half(cts, q, qsquare), crt_dec)


def crt_half(cts, prime, prime_square):
    """``c ** (prime - 1) mod prime**2`` for each ciphertext: one half of a CRT decryption.

    The two halves (mod p**2 and mod q**2) cost the same and release the GIL, so two
    threads decrypting the same ciphertexts, one half each, are always balanced.
    """
    return gmpy2.powmod_base_list([c % prime_square for c in cts], prime - 1, prime_square)


def crt_decode(xp, xq, crt_dec):
    """Plaintexts in [0, n) from the two halves made by :func:`crt_half`."""
    _n, p, q, _psquare, _qsquare, hp, hq, q_inv_p = crt_dec
    out = []
    for a, b in zip(xp, xq):
        mp = (a - 1) // p * hp % p
        mq = (b - 1) // q * hq % q
        out.append(mq + q * ((mp - mq) * q_inv_p % p))
    return out
