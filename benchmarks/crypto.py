"""Paillier throughput: phe's own operations against fedsk's vectorised paths.

    python benchmarks/crypto.py                 # 1024- and 2048-bit keys
    python benchmarks/crypto.py --bits 2048 --n 400

Prints operations per second for phe and for fedsk on one core and on ``--jobs``
workers, with the speed-up of each over phe (best of several repeats, since a shared
machine's timings vary). Not a test: figures, not assertions.
"""

import argparse
import time

import numpy as np
from phe import paillier

from fedsk.crypto import _kernels as K
from fedsk.crypto import decrypt, encrypt, generate_keypair


def rate(fn, n_ops, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n_ops / best


def bench(bits, n, jobs, xtx_rows):
    rng = np.random.default_rng(0)
    pub, priv = generate_keypair(bits)
    pub_std, priv_std = generate_keypair(bits, obfuscation="standard")
    phe_pub, phe_priv = pub.to_phe(), priv.to_phe()
    x = rng.normal(size=n)
    y = rng.normal(size=n)
    rows = []

    # warm up tables and worker pools so that one-off costs do not count
    for key in (priv, pub, priv_std):
        encrypt(key, x, n_jobs=jobs)

    m = max(n // 10, 20)
    phe_enc = rate(lambda: [phe_pub.encrypt(float(v)) for v in x[:m]], m)
    for label, key in [
        ("encrypt (fast, key owner)", priv),
        ("encrypt (standard, key owner)", priv_std),
        ("encrypt (fast, public key)", pub),
    ]:
        r1 = rate(lambda key=key: encrypt(key, x, n_jobs=1), n)
        rj = rate(lambda key=key: encrypt(key, x, n_jobs=jobs), n)
        rows.append((label, phe_enc, r1, rj))

    phe_nums = [phe_pub.encrypt(float(v)) for v in x[:m]]  # phe picks one exponent each
    phe_dec = rate(lambda: [phe_priv.decrypt(v) for v in phe_nums], m)
    ex, ey = encrypt(priv, x), encrypt(priv, y)
    rows.append(
        (
            "decrypt",
            phe_dec,
            rate(lambda: decrypt(priv, ex, n_jobs=1), n),
            rate(lambda: decrypt(priv, ex, n_jobs=jobs), n),
        )
    )

    phe_y = [phe_pub.encrypt(float(v)) for v in y[:m]]
    phe_add = rate(lambda: [a + b for a, b in zip(phe_nums, phe_y)], m, repeat=5)
    same = ex.to_phe()[:m]
    same_y = ey.to_phe()[:m]
    phe_add_same = rate(lambda: [a + b for a, b in zip(same, same_y)], m, repeat=5)
    r1 = rate(lambda: ex.add(ey, n_jobs=1), n, repeat=5)
    rows.append(
        (
            "add (phe: own encryptions)",
            phe_add,
            r1,
            rate(lambda: ex.add(ey, n_jobs=jobs), n, repeat=3),
        )
    )
    rows.append(("add (phe: one shared exponent)", phe_add_same, r1, None))

    ks = rng.normal(size=n)
    phe_mul = rate(lambda: [a * float(k) for a, k in zip(phe_nums, ks)], m)
    rows.append(
        (
            "multiply by float scalar",
            phe_mul,
            rate(lambda: ex.multiply(ks, exponent=-6, n_jobs=1), n),
            rate(lambda: ex.multiply(ks, exponent=-6, n_jobs=jobs), n),
        )
    )

    # X^T [[d]] for an xtx_rows x 20 float matrix: Pippenger vs one powmod per element
    X = rng.normal(size=(xtx_rows, 20))
    d = encrypt(priv, rng.normal(size=xtx_rows), n_jobs=jobs)
    scal = np.rint(np.ldexp(X, 24)).astype(np.int64)
    naive = rate(
        lambda: K.naive_multiexp_columns(d.ciphertexts, scal[:, :1], pub.nsquare),
        xtx_rows,
        repeat=2,
    )  # elements per second, one column
    fast1 = rate(lambda: d.dot(X, exponent=-6, n_jobs=1), X.size, repeat=2)
    fastj = rate(lambda: d.dot(X, exponent=-6, n_jobs=jobs), X.size, repeat=2)
    rows.append((f"X^T [[d]], X {xtx_rows}x20 (per element)", naive, fast1, fastj))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, nargs="*", default=[1024, 2048])
    ap.add_argument("--n", type=int, default=400, help="values per vectorised call")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--xtx-rows", type=int, default=10_000)
    args = ap.parse_args()
    print(f"phe {paillier.__name__}, n={args.n} values per call, jobs={args.jobs}")
    for bits in args.bits:
        print(
            f"\n{bits}-bit key                         phe ops/s  fedsk 1 core  "
            f"x phe   fedsk {args.jobs} jobs  x phe"
        )
        for label, base, one, many in bench(bits, args.n, args.jobs, args.xtx_rows):
            many_s = f"{many:13.0f}  {many / base:5.1f}x" if many else ""
            print(f"  {label:36s} {base:9.0f}  {one:12.0f}  {one / base:5.1f}x  {many_s}")


if __name__ == "__main__":
    main()
