"""The vectorised Paillier layer, checked against phe."""

import os
import time

import gmpy2
import numpy as np
import pytest
from phe import paillier

from fedsk.crypto import (
    EncryptedArray,
    ObfuscatorStock,
    RecordLayout,
    _array,
    decrypt,
    decrypt_integers,
    decrypt_raw,
    encrypt,
    encrypt_integers,
    generate_keypair,
    packed_histograms,
    prepare_encryption,
    security_bits,
    short_exponent_bits,
)
from fedsk.crypto import _kernels as K
from fedsk.exceptions import PackingOverflowError

rng = np.random.default_rng(0)


@pytest.fixture(params=["fast", "standard"])
def keys(request, keypair, standard_keypair):
    return keypair if request.param == "fast" else standard_keypair


def test_keys_come_from_phe_and_match(keypair):
    pub, priv = keypair
    phe_priv = priv.to_phe()
    assert isinstance(phe_priv, paillier.PaillierPrivateKey)
    assert phe_priv.public_key.n == int(pub.n)
    assert pub.key_length == 1024


@pytest.mark.parametrize("owner", [True, False])
def test_encrypt_decrypts_with_phe(keys, owner):
    pub, priv = keys
    x = rng.normal(size=40) * 100
    enc = encrypt(priv if owner else pub, x)
    phe_priv = priv.to_phe()
    got = np.array([phe_priv.decrypt(v) for v in enc.to_phe()])
    np.testing.assert_allclose(got, x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(decrypt(priv, enc), x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_jobs", [1, 2, 3])
@pytest.mark.parametrize("count", [1, 2, 5])
def test_parallel_crt_halves_decrypt_like_phe(keypair, n_jobs, count):
    """Two workers split each decryption into its mod p**2 and mod q**2 halves."""
    pub, priv = keypair
    phe_pub, phe_priv = pub.to_phe(), priv.to_phe()
    x = rng.integers(-(2**40), 2**40, size=count).tolist()
    enc = EncryptedArray.from_phe(pub, [phe_pub.encrypt(v) for v in x])
    assert [phe_priv.decrypt(v) for v in enc.to_phe()] == x
    assert decrypt_integers(priv, enc, n_jobs=n_jobs) == x
    assert decrypt_raw(priv, enc, n_jobs=n_jobs) == [v % int(pub.n) for v in x]


def test_decrypt_matches_phe_encryptions(keypair):
    pub, priv = keypair
    x = rng.normal(size=10)
    phe_pub = pub.to_phe()
    nums = [phe_pub.encrypt(float(v), precision=2.0**-52) for v in x]
    # phe picks one exponent per value; realign to the smallest as a protocol would.
    e = min(v.exponent for v in nums)
    nums = [v.decrease_exponent_to(e) for v in nums]
    enc = EncryptedArray.from_phe(pub, nums)
    np.testing.assert_allclose(decrypt(priv, enc), x, atol=1e-12)


def test_encryption_is_randomised(keys):
    pub, priv = keys
    a = encrypt(priv, np.zeros(5))
    b = encrypt(priv, np.zeros(5))
    assert len(set(map(int, a.ciphertexts + b.ciphertexts))) == 10
    assert all(c != 1 for c in a.ciphertexts)


def test_add_subtract_against_phe(keypair):
    pub, priv = keypair
    x, y = rng.normal(size=30), rng.normal(size=30)
    ex, ey = encrypt(pub, x), encrypt(priv, y)
    np.testing.assert_allclose(decrypt(priv, ex + ey), x + y, atol=1e-12)
    np.testing.assert_allclose(decrypt(priv, ex - ey), x - y, atol=1e-12)
    np.testing.assert_allclose(decrypt(priv, ex + 2.5), x + 2.5, atol=1e-12)
    np.testing.assert_allclose(decrypt(priv, ex - y), x - y, atol=1e-12)
    # phe agrees on the very same ciphertexts
    phe_sum = [a + b for a, b in zip(ex.to_phe(), ey.to_phe())]
    phe_priv = priv.to_phe()
    np.testing.assert_allclose([phe_priv.decrypt(v) for v in phe_sum], x + y, atol=1e-12)


def test_negative_values_and_integers(keypair):
    pub, priv = keypair
    ints = [-(2**60), -1, 0, 1, 2**60]
    enc = encrypt_integers(pub, ints)
    assert decrypt_integers(priv, enc) == ints
    assert decrypt_integers(priv, enc.sum()) == [0]


def test_exponent_mismatch_is_an_error(keypair):
    pub, _ = keypair
    with pytest.raises(ValueError, match="exponents differ"):
        encrypt(pub, [1.0], exponent=-13) + encrypt(pub, [1.0], exponent=-10)


def test_scalar_multiply_against_phe(keypair):
    pub, priv = keypair
    x = rng.normal(size=12)
    k = rng.integers(-1000, 1000, size=12)
    enc = encrypt(pub, x)
    np.testing.assert_allclose(decrypt(priv, enc * k), x * k, atol=1e-9)
    f = rng.normal(size=12)
    prod = enc.multiply(f, exponent=-8)
    np.testing.assert_allclose(decrypt(priv, prod), x * f, atol=1e-8)
    phe_priv = priv.to_phe()
    phe_prod = [a * int(b) for a, b in zip(enc.to_phe(), k)]
    np.testing.assert_allclose([phe_priv.decrypt(v) for v in phe_prod], x * k, atol=1e-9)


def test_sum_by_group_and_histogram(keypair):
    pub, priv = keypair
    ints = rng.integers(0, 1000, size=200)
    enc = encrypt_integers(priv, ints.tolist())
    groups = rng.integers(0, 7, size=200)
    got = decrypt_integers(priv, enc.sum_by_group(groups, 9))
    assert got == np.bincount(groups, weights=ints, minlength=9).astype(int).tolist()
    bins = rng.integers(0, 5, size=(200, 3))
    hist = decrypt_integers(priv, enc.histogram(bins, 5))
    want = [int(v) for j in range(3) for v in np.bincount(bins[:, j], weights=ints, minlength=5)]
    assert hist == want


@pytest.mark.parametrize("shape", [(50,), (120, 4)])
def test_dot_matches_plaintext_and_naive(keypair, shape):
    pub, priv = keypair
    d = rng.normal(size=shape[0])
    X = rng.normal(size=shape) * 3
    enc = encrypt(priv, d, exponent=-10)
    got = decrypt(priv, enc.dot(X, exponent=-6))
    Xq = np.rint(np.ldexp(X, 24)) / 2.0**24
    np.testing.assert_allclose(got, np.atleast_1d(Xq.T @ d), atol=1e-9)
    scal = np.rint(np.ldexp(X.reshape(shape[0], -1), 24)).astype(np.int64)
    naive = K.naive_multiexp_columns(enc.ciphertexts, scal, pub.nsquare)
    assert [int(c) for c in naive] == [int(c) for c in enc.dot(X, exponent=-6).ciphertexts]


def test_dot_integer_matrix_with_zeros_and_signs(keypair):
    pub, priv = keypair
    d = rng.integers(-50, 50, size=64)
    X = rng.integers(-3, 4, size=(64, 5))
    X[:, 2] = 0
    enc = encrypt_integers(priv, d.tolist())
    assert decrypt_integers(priv, enc.dot(X)) == (X.T @ d).tolist()


def test_rerandomise_keeps_value_changes_ciphertext(keys):
    pub, priv = keys
    x = rng.normal(size=8)
    enc = encrypt(pub, x)
    re = enc.rerandomise()
    assert all(int(a) != int(b) for a, b in zip(enc.ciphertexts, re.ciphertexts))
    np.testing.assert_allclose(decrypt(priv, re), x, atol=1e-12)


def test_parallel_paths_match_serial(keypair):
    pub, priv = keypair
    x = rng.integers(0, 100, size=3000)
    enc = encrypt_integers(priv, x.tolist(), n_jobs=2)
    assert decrypt_integers(priv, enc, n_jobs=2) == x.tolist()
    bins = rng.integers(0, 8, size=(3000, 4))
    assert decrypt_integers(priv, enc.histogram(bins, 8, n_jobs=2)) == decrypt_integers(
        priv, enc.histogram(bins, 8, n_jobs=1)
    )


def test_packing_roundtrip_through_ciphertexts(keypair):
    pub, priv = keypair
    layout = RecordLayout.for_sums([1000, 500, 1], n_terms=40)
    rows = np.column_stack(
        [rng.integers(0, 1001, 40), rng.integers(0, 501, 40), np.ones(40, dtype=int)]
    )
    enc = encrypt_integers(priv, layout.pack(rows))
    groups = rng.integers(0, 6, size=40)
    sums = enc.sum_by_group(groups, 6)  # each slot sums at most 40 terms
    per = layout.records_per_plaintext(pub.key_length)
    packed = sums.pack(per, layout.record_bits)
    assert len(packed) == -(-6 // per)
    records = layout.split_plaintexts(decrypt_raw(priv, packed), 6, per)
    got = layout.unpack(records).astype(np.int64)
    for g in range(6):
        np.testing.assert_array_equal(got[g], rows[groups == g].sum(axis=0))


def test_packing_overflow_raises():
    layout = RecordLayout.for_sums([10, 10], n_terms=2)
    with pytest.raises(PackingOverflowError):
        layout.pack(np.array([[11, 0]]))
    # a sum of more terms than planned overflows its slot and is caught on decode
    too_big = (30 << layout.slot_bits[1]) | 5
    with pytest.raises(PackingOverflowError):
        layout.unpack([too_big])
    with pytest.raises(PackingOverflowError):
        layout.unpack([1 << layout.record_bits])


@pytest.mark.parametrize("in_workers", [False, True])
def test_packed_histograms_with_a_width_per_record(keypair, monkeypatch, in_workers):
    pub, priv = keypair
    shipped = []
    if in_workers:  # this work is small: make it go to the workers anyway
        monkeypatch.setattr(_array, "HISTOGRAM_MIN_OPS", 0)
        real = _array.run_tasks

        def spy(tasks, **kw):
            shipped.append((tasks, kw.get("prefer")))
            return real(tasks, **kw)

        monkeypatch.setattr(_array, "run_tasks", spy)
    layout = RecordLayout.for_sums([300, 7], n_terms=60)
    values = rng.integers(0, [301, 8], size=(60, 2))
    enc = encrypt_integers(priv, layout.pack(values))
    low = layout.slot_bits[1]
    nodes = []
    for n_rows in (60, 9, 25):
        rows = np.sort(rng.choice(60, n_rows, replace=False))
        bins = rng.integers(0, 5, size=(n_rows, 3))
        counts = np.bincount((bins + 5 * np.arange(3)).ravel(), minlength=15)
        keep = counts > 0
        keep[np.flatnonzero(keep)[0]] = False  # a non-empty bin left out on purpose
        widths = [(300 * int(c)).bit_length() + low for c in counts[keep]]
        sizes, left = [], len(widths)
        while left:  # uneven groups, one of a single record
            sizes.append(min(left, [3, 1, 4][len(sizes) % 3]))
            left -= sizes[-1]
        nodes.append((rows, bins, keep, widths, sizes))
    for n_jobs in (1, 2):
        out = packed_histograms(enc, nodes, 5, n_jobs=n_jobs)
        for (rows, bins, keep, widths, sizes), packed in zip(nodes, out):
            assert len(packed) == len(sizes)
            records, pos = [], 0
            for m, size in zip(decrypt_raw(priv, packed), sizes):
                group = []
                for w in reversed(widths[pos : pos + size]):  # last record least significant
                    group.append(m & ((1 << w) - 1))
                    m >>= w
                assert m == 0
                records += group[::-1]
                pos += size
            want = np.zeros((15, 2), dtype=np.int64)  # plaintext sums, feature-major buckets
            np.add.at(want, (bins + 5 * np.arange(3)).T.ravel(), np.tile(values[rows], (3, 1)))
            assert records == [(int(g) << low) + int(h) for g, h in want[keep]]
        # the multiplications made: c - 1 for a kept bucket of c rows, and one per packed
        # record after the first of its plaintext
        want_mults = sum(
            int(c) - 1
            for rows, bins, keep, *_ in nodes
            for c in np.bincount((bins + 5 * np.arange(3)).ravel(), minlength=15)[keep]
        ) + sum(len(widths) - len(sizes) for *_, widths, sizes in nodes)
        assert _array.histogram_additions(nodes, 5) == want_mults
    # with workers: the three nodes went out in one call to processes, in runs of their
    # packed ciphertexts (some of a node's runs share a feature), each summed and packed
    # there; two calls: n_jobs=1 ran here
    n_groups = sum(len(sizes) for *_, sizes in nodes)
    if in_workers:
        ((tasks, prefer),) = shipped
        assert prefer is None and len(tasks) > len(nodes)
        assert sum(len(args[5]) for _, args in tasks) == n_groups
        n_kept = sum(int(np.count_nonzero(keep)) for _, _, keep, *_ in nodes)
        assert sum(len(args[3]) for _, args in tasks) == n_kept  # each bucket summed once
    else:
        assert shipped == []


def test_ciphertext_bytes_roundtrip_and_range(keypair):
    pub, priv = keypair
    enc = encrypt(pub, [1.0, 2.0, -3.0])
    raw = enc.to_bytes()
    assert raw.dtype == np.uint8 and raw.shape == (3, pub.ciphertext_bytes)
    back = EncryptedArray.from_bytes(pub, raw, enc.exponent)
    assert back.ciphertexts == enc.ciphertexts
    bad = raw.copy()
    bad[1] = 0
    with pytest.raises(ValueError, match="ciphertext 1 is out of range"):
        EncryptedArray.from_bytes(pub, bad)
    big = np.frombuffer(int(pub.nsquare).to_bytes(pub.ciphertext_bytes, "big"), np.uint8)
    with pytest.raises(ValueError, match="out of range"):
        EncryptedArray.from_bytes(pub, big.reshape(1, -1))


def test_private_key_refuses_pickle(keypair):
    import pickle

    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(keypair[1])


def test_public_key_pickles_without_private_parts(keypair):
    import pickle

    pub = pickle.loads(pickle.dumps(keypair[0]))
    assert pub == keypair[0]


def test_security_levels_and_alpha_lengths():
    assert security_bits(2048) == 112 and short_exponent_bits(2048) == 224
    assert security_bits(1024) == 80 and short_exponent_bits(1024) == 160
    assert short_exponent_bits(3072) == 256
    with pytest.raises(ValueError, match="key_length"):
        generate_keypair(512)
    with pytest.raises(ValueError, match="even int"):  # phe would search forever
        generate_keypair(1025)


def test_batch_invert(keypair):
    pub, _ = keypair
    xs = [gmpy2.mpz(v) for v in rng.integers(2, 2**40, size=9).tolist()]
    inv = K.batch_invert(xs, pub.nsquare)
    assert all(x * i % pub.nsquare == 1 for x, i in zip(xs, inv))


def test_encrypt_rejects_nan(keypair):
    with pytest.raises(ValueError, match="NaN"):
        encrypt(keypair[0], [np.nan])


def test_gil_free_kernels_reuse_one_thread_pool_and_nest():
    """prefer="threads" work runs on a persistent pool (joblib would start one per call)."""
    import threading

    from fedsk.crypto._parallel import run_tasks

    def where(_):
        return threading.current_thread().name

    first = run_tasks([(where, (k,)) for k in range(4)], workers=2, prefer="threads")
    second = run_tasks([(where, (k,)) for k in range(4)], workers=2, prefer="threads")
    assert all(name.startswith("fedsk-crypto") for name in first + second)
    assert len(set(first + second)) <= 2  # the same two threads both times

    def nested(k):  # a task that itself fans out runs its sub-tasks inline, no deadlock
        return sum(
            run_tasks([(lambda v: v * v, (j,)) for j in range(k)], workers=2, prefer="threads")
        )

    assert run_tasks([(nested, (k,)) for k in range(5)], workers=2, prefer="threads") == [
        sum(j * j for j in range(k)) for k in range(5)
    ]


def test_threads_needing_one_table_build_it_once(monkeypatch, keypair):
    import threading

    pub, _ = keypair
    built = []
    real = K.FixedBaseTable

    def counting(*args, **kwargs):
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(K, "FixedBaseTable", counting)
    base = gmpy2.powmod(gmpy2.mpz(12345), pub.n, pub.nsquare)  # a base no test used
    barrier = threading.Barrier(4)
    tables = []

    def use():
        barrier.wait()
        tables.append(K.cached_table(base, pub.nsquare, pub.alpha_bits))

    threads = [threading.Thread(target=use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and len({id(t) for t in tables}) == 1
    assert tables[0].pow(5) == gmpy2.powmod(base, 5, pub.nsquare)


def test_rerandomising_builds_the_small_table_and_uses_the_large_one_once_built(keypair):
    pub, priv = generate_keypair(1024)  # fresh: no table of its base exists yet
    base, nsq, bits = int(pub.obfuscator_base), int(pub.nsquare), pub.alpha_bits
    enc = encrypt_integers(priv, [3, 4, 5])
    again = enc.rerandomise(n_jobs=1)
    assert decrypt_integers(priv, again) == [3, 4, 5]
    assert again.ciphertexts != enc.ciphertexts
    assert (base, nsq, bits, K.RERANDOMISE_WINDOW) in K._TABLES
    assert (base, nsq, bits, 8) not in K._TABLES
    small = K._TABLES[(base, nsq, bits, K.RERANDOMISE_WINDOW)]
    assert small.window == 6 and small.pow(1234567) == gmpy2.powmod(base, 1234567, nsq)
    pub.prepare_obfuscation()  # a party that encrypts under the key too: window 8
    large = K._TABLES[(base, nsq, bits, 8)]
    used = []
    real = large.pow
    large.pow = lambda e: used.append(e) or real(e)
    assert decrypt_integers(priv, enc.rerandomise(n_jobs=1)) == [3, 4, 5]
    assert len(used) == 3


def test_a_few_obfuscators_come_from_a_table_sized_for_them(keypair):
    pub, priv = generate_keypair(1024)  # fresh: no table of its base exists yet
    base, nsq, bits = int(pub.obfuscator_base), int(pub.nsquare), pub.alpha_bits
    args = pub._public_args()
    few = K.public_obfuscators(12, *args, None)
    window = K.cheapest_window(12, bits, K.RERANDOMISE_WINDOW)
    assert window == 3 and (base, nsq, bits, 3) in K._TABLES
    assert (base, nsq, bits, K.RERANDOMISE_WINDOW) not in K._TABLES
    phe_priv = priv.to_phe()
    assert {phe_priv.raw_decrypt(int(r)) for r in few} == {0} and len(set(few)) == 12
    pub.prepare_obfuscation(rerandomise_only=True)  # once that table is built: it serves
    rerandomising = K._TABLES[(base, nsq, bits, K.RERANDOMISE_WINDOW)]
    used = []
    real = rerandomising.pow
    rerandomising.pow = lambda e: used.append(e) or real(e)
    more = K.public_obfuscators(5, *args, None)
    assert len(used) == 5 and {phe_priv.raw_decrypt(int(r)) for r in more} == {0}


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_prepare_encryption_builds_the_tables_encryption_uses(n_jobs):
    fresh_pub, fresh_priv = generate_keypair(1024)
    crt = fresh_priv._crt_enc()
    keys = [(int(crt[6]), int(crt[3]), fresh_pub.alpha_bits, 8)]  # the table mod p**2
    assert not any(k in K._TABLES for k in keys)
    prepare_encryption(fresh_priv, n_jobs=n_jobs)
    # built in this process too (small encryptions are not shipped to workers)
    assert all(k in K._TABLES for k in keys)
    enc = encrypt_integers(fresh_priv, [5, 7], n_jobs=n_jobs)
    assert decrypt_integers(fresh_priv, enc) == [5, 7]


def test_keypair_made_in_a_worker_process_works_with_phe():
    pub, priv = generate_keypair(1024, n_jobs=2)
    assert pub.key_length == 1024 and priv.p * priv.q == pub.n
    phe_pub = pub.to_phe()
    assert priv.to_phe().decrypt(phe_pub.encrypt(41)) == 41
    assert decrypt_integers(priv, encrypt_integers(priv, [7, 8])) == [7, 8]


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_keypair_primes_have_their_two_top_bits_set_so_n_has_the_length_asked(n_jobs):
    # (phe sets only the top bit and draws both primes again until n is long enough)
    for _ in range(12):
        pub, priv = generate_keypair(1024, n_jobs=n_jobs)
        assert pub.n.bit_length() == 1024 and priv.p != priv.q
        assert {int(priv.p) >> 510, int(priv.q) >> 510} == {3}
        assert gmpy2.is_prime(priv.p) and gmpy2.is_prime(priv.q)
        assert abs(int(priv.p) - int(priv.q)) > 1 << 412


def test_private_key_precomputations_are_phes_and_the_fast_base_is_an_n_th_residue():
    for _ in range(3):
        pub, priv = generate_keypair(1024)
        ph = priv.to_phe()  # phe computes hp, hq with exponentiations (and sorts p < q)
        assert {(ph.p, ph.hp), (ph.q, ph.hq)} == {(priv.p, priv.hp), (priv.q, priv.hq)}
        # z is an n-th residue mod n**2 exactly when z**lcm(p-1, q-1) == 1 (mod n**2)
        lam = gmpy2.lcm(priv.p - 1, priv.q - 1)
        assert gmpy2.powmod(priv.hp_s, lam, priv.psquare) == 1 != priv.hp_s
        assert gmpy2.powmod(priv.hq_s, lam, priv.qsquare) == 1 != priv.hq_s
        enc = encrypt_integers(priv, [0, 5, pub.max_int])
        assert [ph.raw_decrypt(int(c)) for c in enc.ciphertexts] == [0, 5, pub.max_int]


def test_stock_workers_each_keep_the_table_of_one_prime():
    from fedsk.crypto._parallel import submit_idle

    pub, priv = generate_keypair(1024)
    crt = priv._crt_enc()
    p_table = (int(crt[6]), int(crt[3]), pub.alpha_bits, 8)  # h_s's image mod p**2
    q_table = (int(crt[7]), int(crt[4]), pub.alpha_bits, 8)
    with ObfuscatorStock(priv, n_jobs=2) as stock:
        stock.fill(100)
        _wait_for(stock)
        enc = encrypt_integers(priv, list(range(100)), stock=stock)
        assert stock.taken == 100
    phe_priv = priv.to_phe()
    assert [phe_priv.raw_decrypt(int(c)) for c in enc.ciphertexts] == list(range(100))
    assert len(set(enc.ciphertexts)) == 100
    held = {
        lane: submit_idle(lambda: list(K._TABLES), (), workers=1, lane=lane).result(60)
        for lane in "pq"
    }
    assert p_table in held["p"] and q_table not in held["p"]
    assert q_table in held["q"] and p_table not in held["q"]


def test_chunk_bounds_balance_weights_and_cover_every_item():
    from fedsk.crypto._parallel import chunk_bounds

    assert chunk_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    weights = [1900, 1900, 1900, 700, 300, 1900, 1900, 400]  # e.g. groups of two nodes
    (a, cut), (cut2, b) = chunk_bounds(len(weights), 2, weights)
    assert (a, cut2, b) == (0, cut, len(weights))
    halves = sum(weights[:cut]), sum(weights[cut:])
    assert abs(halves[0] - halves[1]) <= max(weights)  # by count: 6400 vs 4500
    for n, k in ((5, 4), (3, 3), (2, 5)):
        bounds = chunk_bounds(n, k, [100] + [1] * (n - 1))
        assert [s for s, _ in bounds][1:] == [e for _, e in bounds][:-1]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(e > s for s, e in bounds) and len(bounds) == min(n, k)


def _wait_for(stock, timeout=60.0):
    """Block until every obfuscator the stock started is made (tests only)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with stock._lock:
            if all(f.done() for fs, _ in stock._pending for f in fs):
                return
        time.sleep(0.02)
    raise AssertionError("the stock's background work did not finish")


@pytest.mark.parametrize("owner", [True, False])
def test_encryptions_from_the_stock_decrypt_with_phe_and_are_used_once(keys, owner):
    pub, priv = keys
    with ObfuscatorStock(priv if owner else pub, n_jobs=2) as stock:
        stock.fill(70)  # two background tasks (64 + 6)
        _wait_for(stock)
        x = rng.integers(-(2**40), 2**40, size=100).tolist()
        enc = encrypt_integers(priv if owner else pub, x, stock=stock)
        assert stock.take(1) == []  # all 70 went into the first 70 encryptions
    phe_priv = priv.to_phe()
    got = [phe_priv.decrypt(v) for v in enc.to_phe()]
    assert [v - pub.n if v > pub.n // 2 else v for v in got] == x
    # no randomness used twice: the ciphertexts of equal plaintexts all differ
    same = encrypt_integers(priv, [3] * 70, stock=None)
    with ObfuscatorStock(priv, n_jobs=2) as stock:
        stock.fill(70)
        _wait_for(stock)
        first, second = stock.take(35), stock.take(35)
        assert not {int(r) for r in first} & {int(r) for r in second}
    assert len({int(c) for c in same.ciphertexts}) == 70


def test_encryptions_all_from_the_stock_build_no_table_here():
    fresh_pub, fresh_priv = generate_keypair(1024)  # no table of it exists in this process
    crt = fresh_priv._crt_enc()
    table = (int(crt[6]), int(crt[3]), fresh_pub.alpha_bits, 8)
    with ObfuscatorStock(fresh_priv, n_jobs=2) as stock:
        stock.fill(20)
        _wait_for(stock)
        enc = encrypt_integers(fresh_priv, list(range(20)), stock=stock)
    assert decrypt_integers(fresh_priv, enc) == list(range(20))
    assert table not in K._TABLES  # (building one costs tens of milliseconds)
    enc = encrypt_integers(fresh_priv, [5])  # made on the spot: the table is built now
    assert table in K._TABLES and decrypt_integers(fresh_priv, enc) == [5]


@pytest.mark.parametrize("done_at_once", [False, True])
def test_stock_combines_the_halves_as_they_arrive_not_when_taken(
    keypair, monkeypatch, done_at_once
):
    pub, priv = keypair
    if done_at_once:  # workers so quick that both halves are in before fill() goes on
        submit = ObfuscatorStock._submit

        def submit_and_wait(self, k):
            futures = submit(self, k)
            for f in futures:
                f.result(timeout=60)
            return futures

        monkeypatch.setattr(ObfuscatorStock, "_submit", submit_and_wait)
    with ObfuscatorStock(priv, n_jobs=2) as stock:
        stock.fill(150)
        _wait_for(stock)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with stock._lock:
                if len(stock._combined) == len(stock._pending):
                    break
            time.sleep(0.01)
        with stock._lock:
            combined = [r for fs, _ in stock._pending for r in stock._combined[fs]]
        monkeypatch.setattr(K, "crt_combine", None)  # take() has nothing left to combine
        got = stock.take(150)
        assert len(got) == 150 and got == combined and not stock._combined
    phe_priv = priv.to_phe()
    assert {phe_priv.raw_decrypt(int(r)) for r in got} == {0} and len(set(got)) == 150


def test_stock_fill_tops_up_and_take_never_waits(keypair):
    pub, priv = keypair
    with ObfuscatorStock(priv, n_jobs=2) as stock:
        stock.fill(100)
        stock.fill(100)  # already in the making: nothing more starts
        assert sum(k for _, k in stock._pending) == 100
        _wait_for(stock)
        assert len(stock.take(60)) == 60
        stock.fill(130)  # 40 ready: 90 more start
        assert sum(k for _, k in stock._pending) == 90
        assert len(stock.take(500)) >= 40  # what is ready, at once
        stock.close()
        stock.fill(10)
        assert stock.take(10) == []


def test_a_stock_that_waits_first_hands_its_first_take_whole(keypair, monkeypatch):
    """A fit's first round waits for the randomness started with its key: the tables
    are then built in the idle workers only, not also in this process and the others."""
    monkeypatch.setattr(ObfuscatorStock, "WAIT_TABLES", 120.0)  # (a busy CI machine)
    pub, priv = generate_keypair(1024)  # fresh: no worker has its tables yet
    with ObfuscatorStock(priv, n_jobs=2, wait_first=True) as stock:
        stock.fill(70)
        t = time.perf_counter()
        first = stock.take(70)  # waits until they are made, not for its whole patience
        assert len(first) == 70 and time.perf_counter() - t < 60
        enc = encrypt_integers(priv, list(range(70)), stock=None)
        plain = K.apply_obfuscators([gmpy2.mpz(m) for m in range(70)], first, pub.n, pub.nsquare)
        assert decrypt_integers(priv, EncryptedArray(pub, plain, 0)) == list(range(70))
        assert enc.ciphertexts != plain
        stock.fill(5000)  # later takes wait at most what the workers need for the rest
        t = time.perf_counter()
        later = stock.take(5000)
        assert time.perf_counter() - t < stock.patience(5000, tables=False) + 0.5
        assert 0 < len(later) <= 5000
    with ObfuscatorStock(priv, n_jobs=2) as stock:  # (no wait_first: a take never waits)
        stock.fill(5000)
        t = time.perf_counter()
        assert len(stock.take(5000)) < 5000 and time.perf_counter() - t < 0.5


def test_the_first_take_waits_at_most_its_patience(keypair, monkeypatch):
    pub, priv = keypair
    monkeypatch.setattr(ObfuscatorStock, "WAIT_PER_ITEM", 0.0)
    monkeypatch.setattr(ObfuscatorStock, "WAIT_TABLES", 0.05)
    with ObfuscatorStock(priv, n_jobs=2, wait_first=True) as stock:
        assert stock.patience(10**6) == pytest.approx(0.05 * (pub.key_length / 2048) ** 2)
        stock.fill(20_000)  # seconds of work
        t = time.perf_counter()
        got = stock.take(20_000)
        assert len(got) < 20_000 and time.perf_counter() - t < 1.0
    assert ObfuscatorStock(priv, n_jobs=1, wait_first=True).patience(100) == 0.0  # no stock


def test_stock_workers_run_at_idle_priority_and_respect_n_jobs(keypair):
    import os

    import joblib

    from fedsk.crypto._parallel import submit_idle

    pub, priv = keypair
    if hasattr(os, "SCHED_IDLE"):
        future = submit_idle(os.sched_getscheduler, (0,), workers=2)
        assert future.result(timeout=60) == os.SCHED_IDLE
    with joblib.parallel_config(backend="threading"):  # work belongs on that backend
        threaded = ObfuscatorStock(priv, n_jobs=2)
    for stock in (ObfuscatorStock(priv, n_jobs=1), threaded):  # n_jobs=1: one core
        stock.fill(10)
        assert stock.take(10) == [] and not stock._pending
    other_pub, other_priv = generate_keypair(1024)
    with pytest.raises(ValueError, match="another key"):
        encrypt_integers(priv, [1], stock=ObfuscatorStock(other_priv, n_jobs=2))


def test_a_killed_worker_process_fails_one_histogram_call_not_the_next(keypair, monkeypatch):
    import os
    import signal
    import time

    from joblib.externals.loky.process_executor import BrokenProcessPool

    from fedsk.crypto._parallel import _process_pool

    pub, priv = keypair
    monkeypatch.setattr(_array, "HISTOGRAM_MIN_OPS", 0)  # small sums: to the workers anyway
    enc = encrypt_integers(priv, [1, 2, 3, 4])
    bins = np.array([[0, 1], [1, 1], [0, 0], [1, 0]])
    node = (np.arange(4), bins, np.ones(4, bool), [8] * 4, [2, 2])
    # buckets (feature 0: rows 0+2, rows 1+3; feature 1: rows 2+3, rows 0+1), two per ciphertext
    want = [(4 << 8) + 6, (7 << 8) + 3]
    pool = _process_pool(2)[1]
    os.kill(pool.submit(os.getpid).result(timeout=60), signal.SIGKILL)
    outcomes = []
    for _ in range(3):
        try:
            (out,) = packed_histograms(enc, [node], 2, n_jobs=2)
        except BrokenProcessPool:  # the call that meets the dead worker, and only it
            outcomes.append("broken")
        else:
            assert decrypt_raw(priv, out) == want
            outcomes.append("ok")
        time.sleep(0.5)
    assert "broken" in outcomes[:2] and outcomes[-1] == "ok", outcomes
    assert _process_pool(2)[1] is not pool


def test_random_exponents_are_uniform_bits_wide_integers():
    xs = K.random_exponents(4000, 13)  # (not a whole number of bytes)
    assert len(xs) == 4000 and min(xs) >= 0 and max(xs) < 2**13
    assert len(set(xs)) > 3000  # 8192 values: nearly all distinct, never one repeated
    for bit in (0, 6, 12):  # every bit is set about half the time
        assert 0.45 < sum((x >> bit) & 1 for x in xs) / len(xs) < 0.55
    assert K.random_exponents(0, 224) == [] and len(K.random_exponents(3, 224)) == 3


def _made_ahead(key_length, encryptions):
    from fedsk.crypto import _ahead

    _ahead.make_keypair_ahead(key_length, n_jobs=2, encryptions=encryptions)
    deadline = time.monotonic() + 60
    while not _ahead._NEXT[os.getpid()].ready() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_key_pair_made_ahead_is_phes_fresh_and_taken_once():
    from fedsk.crypto._ahead import take_keypair_ahead

    _made_ahead(1024, 40)
    pub, priv, stock = take_keypair_ahead(1024, n_jobs=2)
    assert take_keypair_ahead(1024, n_jobs=2) is None  # taken once
    assert pub.n.bit_length() == 1024 and priv.p * priv.q == pub.n and priv.p != priv.q
    assert {int(priv.p) >> 510, int(priv.q) >> 510} == {3}
    assert gmpy2.is_prime(priv.p) and gmpy2.is_prime(priv.q)
    assert abs(int(priv.p) - int(priv.q)) > 1 << 412
    # the workers drew the fast base's images: n-th residues, as the key draws them
    lam = gmpy2.lcm(priv.p - 1, priv.q - 1)
    assert gmpy2.powmod(priv.hp_s, lam, priv.psquare) == 1 != priv.hp_s
    assert gmpy2.powmod(priv.hq_s, lam, priv.qsquare) == 1 != priv.hq_s
    # its first obfuscators came with it: fresh encryptions of zero, all different
    ready = stock.take(40)
    assert len(ready) == 40 and len({int(r) for r in ready}) == 40
    phe_priv = priv.to_phe()
    assert {phe_priv.raw_decrypt(int(r)) for r in ready} == {0}
    # and they are the key's h_s ** alpha: an encryption from the stock decrypts with phe
    with stock:
        stock.fill(10)
        _wait_for(stock)
        enc = encrypt_integers(priv, list(range(10)), stock=stock)
    assert [phe_priv.raw_decrypt(int(c)) for c in enc.ciphertexts] == list(range(10))
    assert phe_priv.decrypt(pub.to_phe().encrypt(17)) == 17


def test_a_key_pair_made_ahead_is_not_taken_for_another_length_or_before_it_is_ready(
    monkeypatch,
):
    from fedsk.crypto import _ahead

    _made_ahead(1024, 0)
    assert _ahead.take_keypair_ahead(1026, n_jobs=2) is None  # another length: dropped
    assert _ahead.take_keypair_ahead(1024, n_jobs=2) is None
    _made_ahead(1024, 0)
    assert _ahead.take_keypair_ahead(1024, n_jobs=1) is None  # one worker: none made ahead
    _ahead.make_keypair_ahead(1024, n_jobs=1)
    assert os.getpid() not in _ahead._NEXT
    _ahead.make_keypair_ahead(1024, n_jobs=2, encryptions=40)
    t = time.monotonic()
    made = _ahead.take_keypair_ahead(1024, n_jobs=2)  # in the making: waited for
    assert made is not None and len(made[2].take(40)) == 40
    assert time.monotonic() - t < 60
    _ahead.make_keypair_ahead(1024, n_jobs=2)
    monkeypatch.setattr(_ahead._NextKeyPair, "ready", lambda self: False)
    monkeypatch.setattr(_ahead, "keypair_patience", lambda *a: 0.05)
    t = time.monotonic()
    assert _ahead.take_keypair_ahead(1024, n_jobs=2) is None  # not ready in time: dropped
    assert time.monotonic() - t < 30 and os.getpid() not in _ahead._NEXT
    monkeypatch.undo()
    _made_ahead(1024, 0)
    monkeypatch.setattr(_ahead, "KEYPAIR_AHEAD_SECONDS", 0.0)
    assert _ahead.take_keypair_ahead(1024, n_jobs=2) is None  # too old
    # and one nothing takes is dropped when its time is up, by a timer
    monkeypatch.setattr(_ahead, "KEYPAIR_AHEAD_SECONDS", 0.3)
    _ahead.make_keypair_ahead(1024, n_jobs=2)
    timer = _ahead._NEXT[os.getpid()].timer
    assert timer.daemon and timer.is_alive()
    timer.join(30)
    assert os.getpid() not in _ahead._NEXT and not timer.is_alive()


def test_adding_plaintexts_matches_phe_for_any_integer(keypair):
    pub, priv = keypair
    phe_pub, phe_priv = pub.to_phe(), priv.to_phe()
    cts = [gmpy2.mpz(phe_pub.encrypt(v).ciphertext()) for v in range(6)]
    ms = [0, 1, -7, int(pub.n) - 1, 10**300, -(10**200)]
    out = K.add_plaintexts(cts, ms, pub.n, pub.nsquare)
    assert all(0 < c < pub.nsquare for c in out)
    assert [phe_priv.raw_decrypt(int(c)) for c in out] == [
        (v + m) % int(pub.n) for v, m in zip(range(6), ms)
    ]
    enc = K.apply_obfuscators([gmpy2.mpz(m) % pub.n for m in ms], cts[:6], pub.n, pub.nsquare)
    assert enc == out  # (encrypting with an obfuscator is adding the plaintext to it)
