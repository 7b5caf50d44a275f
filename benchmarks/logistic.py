"""Federated logistic regression: the breast-cancer split and a scale run.

    python benchmarks/logistic.py                      # 2048-bit split + 100,000-row scale run
    python benchmarks/logistic.py --skip-scale
    python benchmarks/logistic.py --scale-only --scale-rows 100000 --scale-bits 1024

Split: guest = first 10 columns (standardised on the training rows) + label, host = the
other 20; 455 train / 114 test, stratified, random_state=0. For each protocol it prints
the fit time (warm: after one fit has started the worker pools; and the cold first
fit), iterations, test AUC, the Paillier operations of each party, the crypto floor
(operation counts x per-operation costs measured in this run on one core, the median of
measurements before and after each timed fit, divided by the cores) and fit/floor.
Scale: ``rows`` x (10 + 20) synthetic columns; time of the setup and of each federated
round, and the peak RSS of each party (its process and workers).
Not a test: figures, not assertions.
"""

import argparse
import contextlib
import os
import threading
import time
import warnings

import numpy as np
import pandas as pd
import psutil
from _common import best_time
from sklearn.datasets import load_breast_cancer
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from fedsk import FederatedLogisticRegression, LocalFederation
from fedsk.crypto import decrypt, encrypt, generate_keypair
from fedsk.linear_model import _protocol
from fedsk.linear_model._core import EXP_VEC, EXP_X

KINDS = ("encrypt", "decrypt", "rerandomise", "multiexp_long", "multiexp_short", "powmod")


def unit_costs(bits, n_rows, width):
    """Seconds per operation on one core, for the shapes the protocols use."""
    rng = np.random.default_rng(0)
    pub, priv = generate_keypair(bits)
    x = rng.normal(size=n_rows)
    encrypt(priv, x[:8], n_jobs=1)  # build the fixed-base tables first
    enc = encrypt(priv, x, n_jobs=1)
    enc[:4].rerandomise(n_jobs=1)
    X = rng.normal(size=(n_rows, width))
    E = encrypt(priv, rng.normal(size=11 * width), n_jobs=1)
    V = rng.normal(size=(width, 1))
    return {
        "encrypt": best_time(lambda: encrypt(priv, x, n_jobs=1)) / n_rows,
        "decrypt": best_time(lambda: decrypt(priv, enc[:40], n_jobs=1)) / 40,
        "rerandomise": best_time(lambda: enc[:100].rerandomise(n_jobs=1)) / 100,
        "multiexp_long": best_time(lambda: enc.dot(X, exponent=EXP_X, n_jobs=1)) / X.size,
        "multiexp_short": best_time(lambda: E.matmul(11, V, exponent=EXP_VEC, n_jobs=1)) / len(E),
        "powmod": best_time(lambda: enc[:50].multiply(x[:50], exponent=EXP_VEC, n_jobs=1)) / 50,
    }


def kinds(ops):
    """Operation counts of one party by priced kind."""
    short = ops.get("multiexp_short_terms", 0)
    return {
        "encrypt": ops.get("encrypt", 0),
        "decrypt": ops.get("decrypt", 0),
        "rerandomise": ops.get("rerandomise", 0),
        "multiexp_long": ops.get("multiexp_terms", 0) - short,
        "multiexp_short": short,
        "powmod": ops.get("powmod", 0),
    }


def floor_seconds(crypto_ops, costs, cores):
    total = 0.0
    for ops in crypto_ops.values():
        total += sum(n * costs[k] for k, n in kinds(ops).items())
    return total / cores


def split_data():
    X, y = load_breast_cancer(return_X_y=True)
    ids = np.array([f"p{i:04d}" for i in range(len(y))])
    train, test = train_test_split(np.arange(len(y)), test_size=114, stratify=y, random_state=0)
    X = StandardScaler().fit(X[train]).transform(X)
    G = pd.DataFrame(X[:, :10], index=ids, columns=[f"bank_{i}" for i in range(10)])
    H = pd.DataFrame(X[:, 10:], index=ids, columns=[f"insurer_{i}" for i in range(20)])
    return G, H, y, train, test


def run_split(bits, jobs, protocols, repeat):
    G, H, y, train, test = split_data()
    load0 = f"{os.getloadavg()[0]:.2f}"
    print(
        f"breast cancer: guest {G.shape[1]} columns + label, host {H.shape[1]} columns, "
        f"{len(train)} train / {len(test)} test; {bits}-bit keys, {jobs} cores "
        f"(LocalFederation n_jobs={jobs}, estimator n_jobs={jobs})"
    )
    # a shared machine's speed drifts: the per-operation costs are measured before and
    # after every timed fit, and each cost's median prices the counts
    samples = [unit_costs(bits, len(train), H.shape[1])]
    Xj = np.hstack([G.to_numpy(), H.to_numpy()])
    ref = LogisticRegression(C=1.0, max_iter=10000).fit(Xj[train], y[train])
    guest_only = LogisticRegression(C=1.0, max_iter=10000).fit(G.to_numpy()[train], y[train])
    taylor_opt = FederatedLogisticRegression(tol=1e-10).fit(Xj[train], y[train])
    auc = {
        "sklearn LogisticRegression(C=1), joined columns": ref.predict_proba(Xj[test])[:, 1],
        "sklearn LogisticRegression(C=1), guest columns only": guest_only.predict_proba(
            G.to_numpy()[test]
        )[:, 1],
        "Taylor-loss optimum (plaintext, joined columns)": taylor_opt.predict_proba(Xj[test])[:, 1],
    }
    for name, p in auc.items():
        print(f"  reference AUC {roc_auc_score(y[test], p):.4f}  {name}")
    rows, medians = [], {}
    with LocalFederation(hosts={"insurer": H}, n_jobs=jobs) as fed:
        cold = {}
        for protocol in protocols:
            est = FederatedLogisticRegression(
                federation=fed, protocol=protocol, key_length=bits, n_jobs=jobs
            )
            t = time.perf_counter()
            est.fit(G.iloc[train], y[train])  # first fit: starts the worker pools
            cold[protocol] = time.perf_counter() - t
        for protocol in protocols:
            times = []
            for _ in range(repeat):
                est = FederatedLogisticRegression(
                    federation=fed, protocol=protocol, key_length=bits, n_jobs=jobs
                )
                t = time.perf_counter()
                est.fit(G.iloc[train], y[train])
                times.append(time.perf_counter() - t)
                samples.append(unit_costs(bits, len(train), H.shape[1]))
            fit_s = min(times)
            medians[protocol] = float(np.median(times))
            t = time.perf_counter()
            proba = est.predict_proba(G.iloc[test])[:, 1]
            predict_s = time.perf_counter() - t
            rows.append(
                (protocol, est, fit_s, cold[protocol], predict_s, roc_auc_score(y[test], proba))
            )
    costs = {k: float(np.median([c[k] for c in samples])) for k in samples[0]}
    print(
        f"per-operation cost, 1 core (median of {len(samples)} measurements, before and after "
        "each timed fit): " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in costs.items())
    )
    rows = [row + (floor_seconds(row[1].crypto_ops_, costs, jobs),) for row in rows]
    print()
    head = (
        f"{'protocol':9}{'solver':7}{'fit s':>7}{'median':>7}{'cold s':>8}{'iters':>6}"
        f"{'test AUC':>9}"
        f"{'enc':>7}{'dec':>6}{'rerand':>7}{'mexp terms':>11}{'floor s':>8}{'fit/floor':>10}"
        f"{'predict s':>10}"
    )
    print(head)
    for protocol, est, fit_s, cold_s, predict_s, auc_, floor in rows:
        total = {k: sum(kinds(o)[k] for o in est.crypto_ops_.values()) for k in KINDS}
        mexp = total["multiexp_long"] + total["multiexp_short"]
        solver = "pcg" if protocol == "taylor" else "lbfgs"
        print(
            f"{protocol:9}{solver:7}{fit_s:7.2f}{medians[protocol]:7.2f}{cold_s:8.2f}"
            f"{int(est.n_iter_.max()):6d}"
            f"{auc_:9.4f}{total['encrypt']:7d}{total['decrypt']:6d}{total['rerandomise']:7d}"
            f"{mexp:11d}{floor:8.2f}{fit_s / floor:10.2f}{predict_s:10.2f}"
        )
    for protocol, est, *_ in rows:
        for party, ops in est.crypto_ops_.items():
            counted = {k: v for k, v in kinds(ops).items() if v}
            print(f"  {protocol:7} {party:8} {counted}")
    print(
        "  floor = sum over parties of count x per-operation cost (1 core) / cores; fit s is "
        f"the best of {repeat} warm fits (worker pools running), median their median, cold s "
        f"the first fit in fresh processes; load average before/after {load0} / "
        f"{os.getloadavg()[0]:.2f}"
    )


# -- scale ----------------------------------------------------------------------------------


class PeakRSS(threading.Thread):
    """Peak memory of a process and its children (minus ``exclude``'s subtree).

    Samples every 0.25 s: the sum of resident sizes (RSS, which counts shared library
    pages once per process: an upper bound) and of unique sizes (USS, memory only that
    process holds), and the main process's own RSS.
    """

    def __init__(self, pid, exclude=()):
        super().__init__(daemon=True)
        self.proc, self.exclude = psutil.Process(pid), set(exclude)
        self.rss = self.uss = self.main = 0
        self._halt = threading.Event()

    def _tree(self):
        skip = set(self.exclude)
        for pid in self.exclude:
            with contextlib.suppress(psutil.Error):
                skip.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        return [self.proc, *(c for c in self.proc.children(recursive=True) if c.pid not in skip)]

    def run(self):
        while not self._halt.is_set():
            rss = uss = 0
            for p in self._tree():
                try:
                    info = p.memory_full_info()
                except psutil.Error:
                    continue
                rss, uss = rss + info.rss, uss + info.uss
                if p.pid == self.proc.pid:
                    self.main = max(self.main, info.rss)
            self.rss, self.uss = max(self.rss, rss), max(self.uss, uss)
            time.sleep(0.25)

    def stop(self):
        self._halt.set()
        self.join()
        mib = 2**20
        return (
            f"RSS {self.rss / mib:.0f} MiB (USS {self.uss / mib:.0f} MiB; "
            f"main process {self.main / mib:.0f} MiB)"
        )


def timed_steps(events):
    """Record when each protocol call starts (setup and steps); returns the originals."""
    originals = _protocol.HostPeer.step, _protocol.HostPeer.setup

    def step(self, op, *args, **kw):
        events.append((op, time.perf_counter()))
        return originals[0](self, op, *args, **kw)

    def setup(self, *args, **kw):
        events.append(("setup", time.perf_counter()))
        return originals[1](self, *args, **kw)

    _protocol.HostPeer.step, _protocol.HostPeer.setup = step, setup
    return originals


def run_scale(rows, bits, jobs, exact_iters):
    rng = np.random.default_rng(1)
    ids = np.array([f"s{i:07d}" for i in range(rows)])
    Xg, Xh = rng.normal(size=(rows, 10)), rng.normal(size=(rows, 20))
    w = rng.normal(size=30) / 3
    y = (np.hstack([Xg, Xh]) @ w + rng.logistic(size=rows) > 0).astype(int)
    G = pd.DataFrame(Xg, index=ids, columns=[f"g{i}" for i in range(10)])
    H = pd.DataFrame(Xh, index=ids, columns=[f"h{i}" for i in range(20)])
    print(f"\nscale: {rows:,} rows x (10 guest + 20 host) columns, {bits}-bit keys, {jobs} cores")
    with LocalFederation(hosts={"insurer": H}, n_jobs=jobs, timeout=(5.0, 3600.0)) as fed:
        host_pid = fed.pid("insurer")
        for protocol, kw in [("taylor", {}), ("exact", {"max_iter": exact_iters})]:
            host = PeakRSS(host_pid)
            guest = PeakRSS(os.getpid(), exclude=[host_pid])
            host.start()
            guest.start()
            events = []
            originals = timed_steps(events)
            est = FederatedLogisticRegression(
                federation=fed, protocol=protocol, key_length=bits, n_jobs=jobs, **kw
            )
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    est.fit(G, y)
            finally:
                _protocol.HostPeer.step, _protocol.HostPeer.setup = originals
            total = time.perf_counter() - t0
            memory = f"guest {guest.stop()}, host {host.stop()}"
            key = "pcg" if protocol == "taylor" else "grad"
            starts = [t for op, t in events if op == key]
            aligned = [t for op, t in events if op == "setup"][0] - t0
            rounds = np.diff(starts)
            print(
                f"  {protocol:7} fit {total:6.1f} s = alignment (PSI, keys) {aligned:5.1f} s"
                f" + setup{' (shared Gram)' if protocol == 'taylor' else ''} "
                f"{starts[0] - t0 - aligned:5.1f} s + {len(rounds)} rounds of "
                f"{np.mean(rounds):.2f} s (min {np.min(rounds):.2f}, max {np.max(rounds):.2f})"
                f" + finish; iterations {int(est.n_iter_.max())}"
            )
            print(f"          peak memory with workers: {memory}")
            ops = {p: {k: v for k, v in kinds(o).items() if v} for p, o in est.crypto_ops_.items()}
            print(f"          operations {ops}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bits", type=int, default=2048)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--protocols", default="taylor,exact")
    ap.add_argument("--repeat", type=int, default=3, help="warm fits per protocol (best is shown)")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--scale-only", action="store_true")
    ap.add_argument("--scale-rows", type=int, default=100_000)
    ap.add_argument("--scale-bits", type=int, default=1024)
    ap.add_argument("--scale-exact-iters", type=int, default=2)
    args = ap.parse_args()
    if not args.scale_only:
        run_split(args.bits, args.jobs, args.protocols.split(","), args.repeat)
    if not args.skip_scale:
        run_scale(args.scale_rows, args.scale_bits, args.jobs, args.scale_exact_iters)


if __name__ == "__main__":
    main()
