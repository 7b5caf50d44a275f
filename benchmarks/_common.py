"""Shared pieces of the benchmark scripts: the reference split, per-op costs, RSS."""

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import psutil
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from fedsk.crypto import _kernels as K
from fedsk.crypto import decrypt_raw, encrypt, encrypt_integers, generate_keypair


def breast_cancer_split(seed=0):
    """FATE's tutorial split: 80/20 stratified, standardised, guest = first 10 columns."""
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    X.index = [f"id{i:04d}" for i in range(len(X))]
    y.index = X.index
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, stratify=y, random_state=seed)
    scaler = StandardScaler().set_output(transform="pandas").fit(X_tr)
    X_tr, X_te = scaler.transform(X_tr), scaler.transform(X_te)
    guest_cols, host_cols = list(X.columns[:10]), list(X.columns[10:])
    host = pd.concat([X_tr[host_cols], X_te[host_cols]])
    return X_tr, X_te, y_tr, y_te, guest_cols, host


def best_time(fn, repeat=3):
    """Seconds of the fastest of ``repeat`` calls of ``fn()``."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def op_costs(bits, repeat=3):
    """Seconds per operation on one core, for a ``bits``-bit key, measured now."""
    pub, priv = generate_keypair(bits)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**40, size=200)

    def best(fn, n):
        return best_time(fn, repeat) / n

    encrypt_integers(priv, x[:4].tolist())  # build tables
    enc = encrypt_integers(priv, x.tolist())
    cts = enc.ciphertexts
    nsq = pub.nsquare
    costs = {
        "encrypt": best(lambda: encrypt_integers(priv, x.tolist(), n_jobs=1), 200),
        "decrypt": best(lambda: decrypt_raw(priv, enc[:40], n_jobs=1), 40),
        "add": best(lambda: K.mulmod_pairs(cts, cts[::-1], nsq), 200),
        "square": best(lambda: K.horner_pack([cts[:2]] * 20, 100, nsq), 20 * 100),
        "rerandomise": best(lambda: enc.rerandomise(n_jobs=1), 200),
        "encrypt_float": best(lambda: encrypt(priv, rng.normal(size=200), n_jobs=1), 200),
    }
    return costs


def parallel_speedup(bits, workers=2, repeat=3):
    """How many times one core's throughput ``workers`` cores deliver, measured now.

    The crypto floor divides the work by the number of cores, i.e. assumes they scale
    perfectly. This runs a GIL-free squaring kernel on one thread, then on ``workers``
    threads at once (best of ``repeat`` each), and returns the measured ratio: on a shared
    virtual machine it is often well below ``workers``.
    """
    if workers < 2:
        return 1.0
    pub, priv = generate_keypair(bits)
    cts = encrypt_integers(priv, list(range(1, 17))).ciphertexts
    nsq = pub.nsquare

    def unit():
        K.horner_pack([cts] * 6, 45, nsq)

    one = best_time(unit, repeat)
    with ThreadPoolExecutor(workers) as pool:
        many = best_time(lambda: list(pool.map(lambda _: unit(), range(workers))), repeat)
    return workers * one / many


class PeakRSS:
    """Sample the total RSS of a process and its children in the background."""

    def __init__(self, pid, period=0.1, exclude=None):
        self.proc, self.period, self.peak = psutil.Process(pid), period, 0
        self.exclude = exclude  # a child whose whole subtree is not counted
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        total = 0
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
            if self.exclude is not None:
                skip = psutil.Process(self.exclude)
                skipped = {skip.pid, *(p.pid for p in skip.children(recursive=True))}
                procs = [p for p in procs if p.pid not in skipped]
        except psutil.Error:
            return
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        self.peak = max(self.peak, total)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
