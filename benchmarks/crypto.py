"""Paillier throughput: phe's own operations against fedsk's vectorised paths.

    python benchmarks/crypto.py                 # 1024- and 2048-bit keys
    python benchmarks/crypto.py --bits 2048 --n 400 --rounds 5

Prints operations per second for phe and for fedsk on one core and on ``--jobs``
workers, with the speed-up of each over phe. A shared machine's speed drifts by tens of
percent from one second to the next, so each operation is measured in ``--rounds``
interleaved rounds (phe, fedsk on one core, fedsk on ``--jobs``) and the medians are
printed. Not a test: figures, not assertions.
"""

import argparse
import statistics
import time

import numpy as np

from fedsk.crypto import _kernels as K
from fedsk.crypto import decrypt, encrypt, generate_keypair


def seconds(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(rounds, n_base, base, n_ours, one, many):
    """Median ops/s of (base, one, many) and the median speed-ups, interleaved."""
    rb, r1, rj, s1, sj = [], [], [], [], []
    for _ in range(rounds):
        b = n_base / seconds(base)
        o = n_ours / seconds(one)
        m = n_ours / seconds(many) if many else None
        rb.append(b)
        r1.append(o)
        s1.append(o / b)
        if m:
            rj.append(m)
            sj.append(m / b)
    med = statistics.median
    return (med(rb), med(r1), med(s1), med(rj) if rj else None, med(sj) if sj else None)


def bench(bits, n, jobs, xtx_rows, rounds):
    rng = np.random.default_rng(0)
    pub, priv = generate_keypair(bits)
    _, priv_std = generate_keypair(bits, obfuscation="standard")
    phe_pub, phe_priv = pub.to_phe(), priv.to_phe()
    x = rng.normal(size=n)
    y = rng.normal(size=n)
    for key in (priv, pub, priv_std):  # build tables and start worker pools first
        encrypt(key, x, n_jobs=jobs)
    m = max(n // 10, 20)
    rows = []

    def phe_encrypt():
        for v in x[:m]:
            phe_pub.encrypt(float(v))

    for label, key in [
        ("encrypt (fast, key owner)", priv),
        ("encrypt (standard, key owner)", priv_std),
        ("encrypt (fast, public key)", pub),
    ]:
        rows.append(
            (
                label,
                *measure(
                    rounds,
                    m,
                    phe_encrypt,
                    n,
                    lambda key=key: encrypt(key, x, n_jobs=1),
                    lambda key=key: encrypt(key, x, n_jobs=jobs),
                ),
            )
        )

    phe_nums = [phe_pub.encrypt(float(v)) for v in x[:m]]  # phe picks one exponent each
    ex, ey = encrypt(priv, x), encrypt(priv, y)
    rows.append(
        (
            "decrypt",
            *measure(
                rounds,
                m,
                lambda: [phe_priv.decrypt(v) for v in phe_nums],
                n,
                lambda: decrypt(priv, ex, n_jobs=1),
                lambda: decrypt(priv, ex, n_jobs=jobs),
            ),
        )
    )

    phe_y = [phe_pub.encrypt(float(v)) for v in y[:m]]
    rows.append(
        (
            "add (phe: its own encryptions)",
            *measure(
                rounds,
                m,
                lambda: [a + b for a, b in zip(phe_nums, phe_y)],
                n,
                lambda: ex.add(ey, n_jobs=1),
                lambda: ex.add(ey, n_jobs=jobs),
            ),
        )
    )
    same, same_y = ex.to_phe()[:m], ey.to_phe()[:m]
    rows.append(
        (
            "add (phe: one shared exponent)",
            *measure(
                rounds,
                m,
                lambda: [a + b for a, b in zip(same, same_y)],
                n,
                lambda: ex.add(ey, n_jobs=1),
                None,
            ),
        )
    )

    ks = rng.normal(size=n)
    rows.append(
        (
            "multiply by float scalar",
            *measure(
                rounds,
                m,
                lambda: [a * float(k) for a, k in zip(phe_nums, ks)],
                n,
                lambda: ex.multiply(ks, exponent=-6, n_jobs=1),
                lambda: ex.multiply(ks, exponent=-6, n_jobs=jobs),
            ),
        )
    )

    # X^T [[d]] for an xtx_rows x 20 float matrix: Pippenger vs one powmod per element,
    # both on the same fixed-point scalars; the naive loop is timed on one column.
    X = rng.normal(size=(xtx_rows, 20))
    d = encrypt(priv, rng.normal(size=xtx_rows), n_jobs=jobs)
    scal = np.rint(np.ldexp(X, 24)).astype(np.int64)
    rows.append(
        (
            f"X^T [[d]], X {xtx_rows}x20 (per element)",
            *measure(
                max(2, rounds // 2),
                xtx_rows,
                lambda: K.naive_multiexp_columns(d.ciphertexts, scal[:, :1], pub.nsquare),
                X.size,
                lambda: d.dot(X, exponent=-6, n_jobs=1),
                lambda: d.dot(X, exponent=-6, n_jobs=jobs),
            ),
        )
    )
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, nargs="*", default=[1024, 2048])
    ap.add_argument("--n", type=int, default=400, help="values per vectorised call")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--xtx-rows", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds")
    args = ap.parse_args()
    print(f"n={args.n} values per call, jobs={args.jobs}, medians of {args.rounds} rounds")
    for bits in args.bits:
        print(
            f"\n{bits}-bit key                         phe ops/s  fedsk 1 core  "
            f"x phe   fedsk {args.jobs} jobs  x phe"
        )
        for label, base, one, s1, many, sj in bench(
            bits, args.n, args.jobs, args.xtx_rows, args.rounds
        ):
            many_s = f"{many:13.0f}  {sj:5.1f}x" if many else ""
            print(f"  {label:36s} {base:9.0f}  {one:12.0f}  {s1:5.1f}x  {many_s}")


if __name__ == "__main__":
    main()
