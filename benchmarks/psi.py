"""Private set intersection: seconds to align 100,000 IDs per side.

    python benchmarks/psi.py                 # 100k guest IDs vs 100k host IDs, half shared
    python benchmarks/psi.py --n 20000 --jobs 1

The host is a real party-server process (LocalFederation); the time is the guest's wall
clock for Federation.intersect: both sides hash and exponentiate every ID twice in all
(X25519), one round trip to exchange, one to agree on the intersection.
"""

import argparse
import time

import numpy as np
import pandas as pd

from fedsk import LocalFederation


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="IDs per side")
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    n = args.n
    shared = int(n * args.overlap)
    host_ids = [f"customer-{i:08d}" for i in range(n)]
    guest_ids = host_ids[:shared] + [f"prospect-{i:08d}" for i in range(n - shared)]
    host = pd.DataFrame({"x": np.zeros(n)}, index=host_ids)
    with LocalFederation(hosts={"host": host}, n_jobs=args.jobs) as fed:
        fed.intersect(guest_ids[:10])  # warm up the server
        t = time.perf_counter()
        mask = fed.intersect(guest_ids, n_jobs=args.jobs)["host"]
        seconds = time.perf_counter() - t
    assert mask.sum() == shared
    print(
        f"PSI (ECDH on X25519): {n:,} guest IDs x {n:,} host IDs, {shared:,} shared, "
        f"{args.jobs} cores: {seconds:.2f} s ({4 * n / seconds:,.0f} curve operations/s)"
    )


if __name__ == "__main__":
    main()
