"""SecureBoost: fit time against the cryptographic floor, on FATE's reference job.

    python benchmarks/secureboost.py                    # 2048-bit keys, 2 cores
    python benchmarks/secureboost.py --bits 1024
    python benchmarks/secureboost.py --scale            # 10k..100k rows, 1 tree depth 4
    python benchmarks/secureboost.py --two-machines     # one core per party, ahead on/off
    python benchmarks/secureboost.py --cpu              # CPU time per fit, every process

Reference job (FATE's tutorial): breast cancer, 80/20 stratified split (random_state=0),
standardised, guest = first 10 columns + label, host = the other 20; 5 trees, depth 3,
32 bins, learning rate 0.3. The host is a real party-server process (LocalFederation).
The crypto floor is (encryptions x encrypt cost + decryptions x decrypt cost + host
additions x add cost + host shift squarings x square cost + re-randomisations x cost),
where the host's additions are the ciphertext multiplications it makes (c - 1 for a bin
of c rows, and one per packed record after the first of its plaintext),
with every cost measured on one core in this run (the median of measurements taken
before and after each timed fit), divided by the cores used.
"""

import argparse
import os
import statistics
import time

import pandas as pd
from _common import PeakRSS, breast_cancer_split, op_costs, parallel_speedup
from sklearn.datasets import make_classification
from sklearn.metrics import roc_auc_score

from fedsk import LocalFederation, SecureBoostClassifier
from fedsk.crypto import ObfuscatorStock
from fedsk.crypto._ahead import drop_keypair_ahead
from fedsk.federation import _psi


def floor_seconds(counts, costs, cores):
    work = (
        counts["encryptions"] * costs["encrypt"]
        + counts["decryptions"] * costs["decrypt"]
        + counts["host_additions"] * costs["add"]
        + counts["host_shifts"] * costs["square"]
        + counts["host_rerandomisations"] * costs["rerandomise"]
    )
    return work / cores


def reference(bits, jobs, trees, repeat):
    X_tr, X_te, y_tr, y_te, guest_cols, host = breast_cancer_split()
    # a shared machine's speed drifts: measure the per-op costs before and after every
    # fit, and use each cost's median
    samples, speedups = [op_costs(bits)], [parallel_speedup(bits, jobs)]
    params = dict(n_estimators=trees, max_depth=3, max_bins=32, learning_rate=0.3, random_state=0)
    joined = SecureBoostClassifier(**params).fit(X_tr, y_tr)
    auc_joined = roc_auc_score(y_te, joined.predict_proba(X_te)[:, 1])
    guest_only = SecureBoostClassifier(**params).fit(X_tr[guest_cols], y_tr)
    auc_guest = roc_auc_score(y_te, guest_only.predict_proba(X_te[guest_cols])[:, 1])
    with LocalFederation(hosts={"host": host}, n_jobs=jobs) as fed:
        clf = SecureBoostClassifier(federation=fed, key_length=bits, n_jobs=jobs, **params)
        clf.fit(X_tr[guest_cols], y_tr)  # warm-up: worker pools and tables
        fits = []
        for _ in range(repeat):
            t = time.perf_counter()
            clf.fit(X_tr[guest_cols], y_tr)
            fits.append(time.perf_counter() - t)
            samples.append(op_costs(bits))
            speedups.append(parallel_speedup(bits, jobs))
        # the timed fits reuse the warm-up's alignment and take the key pair the fit
        # before made ahead (as any later fit of these rows in this process does): one
        # more fit runs PSI and makes its key pair, as a process's first one does
        _psi._cache.clear()
        drop_keypair_ahead()
        t = time.perf_counter()
        clf.fit(X_tr[guest_cols], y_tr)
        with_psi = time.perf_counter() - t
        t = time.perf_counter()
        proba = clf.predict_proba(X_te[guest_cols])[:, 1]
        predict = time.perf_counter() - t
    costs = {k: statistics.median(c[k] for c in samples) for k in samples[0]}
    print(
        f"per-op costs, {bits}-bit key, one core (median of {len(samples)} measurements, "
        "before and after each fit): "
        + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in costs.items())
    )
    counts = clf._crypto_counts
    floor = floor_seconds(counts, costs, jobs)
    fit = min(fits)
    auc = roc_auc_score(y_te, proba)
    print(f"\nSecureBoost reference job, {bits}-bit keys, {jobs} cores, {trees} trees depth 3")
    print(
        f"  fit time            {fit:8.2f} s   (best of {repeat}: "
        + ", ".join(f"{f:.2f}" for f in fits)
        + ")"
    )
    print(
        f"  first fit           {with_psi:8.2f} s   (as a process's first: PSI, key pair made "
        "on the spot)"
    )
    print(f"  predict time        {predict:8.2f} s   ({len(y_te)} rows)")
    print(
        f"  test AUC            {auc:8.4f}   (joined reference {auc_joined:.4f}, "
        f"guest only {auc_guest:.4f})"
    )
    print("  counts              " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"  crypto floor        {floor:8.2f} s")
    print(f"  fit / floor         {fit / floor:8.2f}")
    # the machine's speed drifts within minutes: also price each fit with the costs
    # measured just before and just after it
    paired = [
        f / floor_seconds(counts, {k: (a[k] + b[k]) / 2 for k in a}, jobs)
        for f, a, b in zip(fits, samples, samples[1:])
    ]
    print(
        "  fit / floor, each fit against the costs measured next to it: "
        + ", ".join(f"{r:.2f}" for r in paired)
        + f" (median {statistics.median(paired):.2f})"
    )
    if jobs > 1:
        speedup = statistics.median(speedups)
        print(
            f"  {jobs} cores ran {speedup:.2f}x one core's squarings in this run (median of "
            f"{len(speedups)}); the floor assumes {jobs:.2f}x. At the measured throughput "
            f"the floor is {floor * jobs / speedup:.2f} s and fit / floor "
            f"{fit / (floor * jobs / speedup):.2f}"
        )
    return fit, floor


def multiclass(bits, jobs):
    """One tree per class per round: K encryptions per sample and K trees' histograms."""
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    X, y = load_wine(return_X_y=True, as_frame=True)
    X.index = [f"w{i}" for i in range(len(X))]
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    guest_cols, host_cols = list(X.columns[:5]), list(X.columns[5:])
    print(f"\nMulti-class (wine, 3 classes, guest 5 + host 8 columns), {bits}-bit, {jobs} cores")
    with LocalFederation(hosts={"host": X[host_cols]}, n_jobs=jobs) as fed:
        for k in (1, 3):
            ys = (y_tr == 0).astype(int) if k == 1 else y_tr
            yt = (y_te == 0).astype(int) if k == 1 else y_te
            clf = SecureBoostClassifier(
                federation=fed,
                n_estimators=5,
                max_depth=3,
                key_length=bits,
                n_jobs=jobs,
                random_state=0,
            )
            clf.fit(X_tr[guest_cols], ys)
            t = time.perf_counter()
            clf.fit(X_tr[guest_cols], ys)
            fit = time.perf_counter() - t
            acc = clf.score(X_te[guest_cols], yt)
            c = clf._crypto_counts
            print(
                f"  {k} tree(s) per round: fit {fit:.2f} s, accuracy {acc:.3f}, encryptions "
                f"{c['encryptions']}, decryptions {c['decryptions']}, "
                f"host additions {c['host_additions']}"
            )


def scale(bits, jobs):
    print(
        f"\nScale: make_classification, 10 guest + 20 host columns, 1 tree depth 4, "
        f"{bits}-bit keys, {jobs} cores"
    )
    print(
        f"  {'rows':>8} {'fit s':>8} {'s/1k rows':>10} {'guest peak MB':>14} {'host peak MB':>13}"
    )
    for n in (10_000, 30_000, 100_000):
        X, y = make_classification(n, 30, n_informative=10, random_state=0)
        ids = [f"r{i}" for i in range(n)]
        df = pd.DataFrame(X, index=ids, columns=[f"c{j}" for j in range(30)])
        with LocalFederation(hosts={"host": df.iloc[:, 10:]}, n_jobs=jobs) as fed:
            clf = SecureBoostClassifier(
                federation=fed,
                n_estimators=1,
                max_depth=4,
                key_length=bits,
                n_jobs=jobs,
                early_stopping=False,
            )
            host_pid = fed.pid("host")
            with PeakRSS(os.getpid(), exclude=host_pid) as guest_rss, PeakRSS(host_pid) as host_rss:
                t = time.perf_counter()
                clf.fit(df.iloc[:, :10], y)
                fit = time.perf_counter() - t
        print(
            f"  {n:8d} {fit:8.2f} {fit / n * 1000:10.3f} {guest_rss.peak / 2**20:14.0f} "
            f"{host_rss.peak / 2**20:13.0f}"
        )


def two_machines(bits, pairs):
    """Guest on CPU 0, host on CPU 1 (two one-core machines), randomness ahead on and off.

    "Off" makes :meth:`ObfuscatorStock.fill` a no-op, so every encryption is computed
    when the round needs it; fits alternate between the two, on one federation.
    """
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        print("\n--two-machines needs Linux and two CPUs")
        return
    X_tr, _, y_tr, _, guest_cols, host = breast_cancer_split()
    params = dict(n_estimators=5, max_depth=3, max_bins=32, learning_rate=0.3, random_state=0)
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[0]})  # this process and the workers it starts from now
    fill, times, ahead = ObfuscatorStock.fill, {"on": [], "off": []}, []
    try:
        with LocalFederation(hosts={"host": host}, n_jobs=1) as fed:
            # every thread of the host's server (a pid's affinity is its main thread's
            # only; the server's threads started on this process's CPU)
            for tid in os.listdir(f"/proc/{fed.pid('host')}/task"):
                os.sched_setaffinity(int(tid), {cpus[1]})
            clf = SecureBoostClassifier(federation=fed, key_length=bits, n_jobs=2, **params)
            clf.fit(X_tr[guest_cols], y_tr)  # warm-up
            for _ in range(pairs):
                for mode in ("on", "off"):
                    ObfuscatorStock.fill = fill if mode == "on" else (lambda self, count: None)
                    t = time.perf_counter()
                    clf.fit(X_tr[guest_cols], y_tr)
                    times[mode].append(time.perf_counter() - t)
                    if mode == "on":
                        ahead.append(clf._crypto_counts["encryptions_ahead"])
    finally:
        ObfuscatorStock.fill = fill
        os.sched_setaffinity(0, set(cpus))
    print(
        f"\nTwo one-core machines (guest on CPU {cpus[0]}, host on CPU {cpus[1]}), reference "
        f"job, {bits}-bit, {pairs} interleaved pairs"
    )
    for mode, label in (("on", "randomness made ahead"), ("off", "made when needed")):
        v = times[mode]
        print(
            f"  {label:22s} fit median {statistics.median(v):.2f} s, best {min(v):.2f} s ("
            + ", ".join(f"{x:.2f}" for x in v)
            + ")"
        )
    print(
        f"  encryptions with randomness made ahead: {ahead} of {clf._crypto_counts['encryptions']}"
    )


def host_profile(bits, jobs, fits):
    """The host's time per fit in its histogram step: bucket sums and packing.

    The host's party server runs in this process (``InProcessFederation``) so that its
    steps can be timed; the figures are per fit, summed over the fit's requests.
    """
    import tempfile
    from collections import defaultdict

    import fedsk.crypto._array as A
    import fedsk.ensemble._host as H
    from fedsk.federation import InProcessFederation
    from party_server import create_app

    X_tr, _, y_tr, _, guest_cols, host = breast_cancer_split()
    params = dict(n_estimators=5, max_depth=3, max_bins=32, learning_rate=0.3, random_state=0)
    spent = defaultdict(float)

    def timed(func, key):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return func(*a, **kw)
            finally:
                spent[key] += time.perf_counter() - t

        return wrapper

    # (the bucket sums and the packing run together in the workers: not timed apart)
    real = [(A, "_histogram_runs", "planning"), (H, "_add_histograms", "histogram answers")]
    real = [(m, name, key, getattr(m, name)) for m, name, key in real]
    real.append((H, "packed_histograms", "host histograms", H.packed_histograms))
    with tempfile.TemporaryDirectory() as tmp:
        data = host.copy()
        data.insert(0, "customer_id", host.index.to_numpy())
        data.to_csv(f"{tmp}/customers.csv", index=False, float_format="%.17g")
        token = "benchmark-token-0123456789"
        app = create_app(
            {
                "party": "host",
                "bind": "127.0.0.1:8443",
                "state_dir": f"{tmp}/state",
                "min_key_length": 1024,
                "n_jobs": jobs,
                "datasets": {
                    "customers": {"path": f"{tmp}/customers.csv", "id_column": "customer_id"}
                },
                "peers": {"bank": {"token": token}},
            }
        )
        fed = InProcessFederation({"host": (app, "customers", token)})
        clf = SecureBoostClassifier(federation=fed, key_length=bits, n_jobs=jobs, **params)
        clf.fit(X_tr[guest_cols], y_tr)  # warm-up
        for module, name, key, func in real:
            setattr(module, name, timed(func, key))
        try:
            print(
                f"\nHost profile, reference job in one process, {bits}-bit, {jobs} jobs (s per fit)"
            )
            for _ in range(fits):
                spent.clear()
                t = time.perf_counter()
                clf.fit(X_tr[guest_cols], y_tr)
                fit = time.perf_counter() - t
                print(
                    f"  fit {fit:.2f}  "
                    + "  ".join(f"{k} {v:.3f}" for k, v in sorted(spent.items()))
                )
        finally:
            for module, name, _, func in real:
                setattr(module, name, func)


def cpu_profile(bits, jobs, fits):
    """CPU time of one fit in every process (guest, host, their workers) against the floor.

    On a machine whose cores are busy throughout a fit, the fit cannot get closer to
    the floor by overlapping work: only less work (CPU time beyond the floor's
    operations) brings it closer.
    """
    import psutil

    X_tr, _, y_tr, _, guest_cols, host = breast_cancer_split()
    params = dict(n_estimators=5, max_depth=3, max_bins=32, learning_rate=0.3, random_state=0)

    def cpu_times(proc):
        out = {}
        for p in [proc, *proc.children(recursive=True)]:
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            out[p.pid] = t.user + t.system
        return out

    me = psutil.Process()
    costs = op_costs(bits)
    with LocalFederation(hosts={"host": host}, n_jobs=jobs) as fed:
        host_proc = psutil.Process(fed.pid("host"))
        clf = SecureBoostClassifier(federation=fed, key_length=bits, n_jobs=jobs, **params)
        clf.fit(X_tr[guest_cols], y_tr)  # warm-up: worker pools
        floor = floor_seconds(clf._crypto_counts, costs, 1)  # (one core's seconds)
        print(
            f"\nCPU per fit, reference job, {bits}-bit, {jobs} cores (floor's work: "
            f"{floor:.2f} core-s)"
        )
        for _ in range(fits):
            time.sleep(1.0)  # (the idle workers finish what the last fit started)
            before = cpu_times(me)
            t = time.perf_counter()
            clf.fit(X_tr[guest_cols], y_tr)
            wall = time.perf_counter() - t
            time.sleep(1.0)  # (what the fit started ahead on idle CPU, counted too)
            after = cpu_times(me)
            hosts = {p.pid for p in [host_proc, *host_proc.children(recursive=True)]}
            used = {pid: c - before.get(pid, 0.0) for pid, c in after.items()}
            h = sum(c for pid, c in used.items() if pid in hosts)
            g = sum(c for pid, c in used.items() if pid not in hosts)
            print(
                f"  fit {wall:.2f} s  CPU guest {g:.2f} + host {h:.2f} = {g + h:.2f} core-s "
                f"({(g + h) / (jobs * wall):.2f} of {jobs} cores busy; "
                f"{g + h - floor:.2f} core-s beyond the floor's work)"
            )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, default=2048)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--trees", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scale", action="store_true", help="run the 10k..100k scale test")
    ap.add_argument("--scale-bits", type=int, default=1024)
    ap.add_argument("--multiclass", action="store_true", help="binary vs 3-class cost")
    ap.add_argument(
        "--two-machines",
        type=int,
        nargs="?",
        const=5,
        metavar="PAIRS",
        help="only: one core per party, randomness made ahead on/off (5 pairs)",
    )
    ap.add_argument(
        "--host-profile",
        type=int,
        nargs="?",
        const=3,
        metavar="FITS",
        help="only: the host's bucket sums and packing per fit, host in this process",
    )
    ap.add_argument(
        "--cpu",
        type=int,
        nargs="?",
        const=3,
        metavar="FITS",
        help="only: CPU time per fit in every process (needs psutil)",
    )
    args = ap.parse_args()
    if args.cpu:
        cpu_profile(args.bits, args.jobs, args.cpu)
        return
    if args.host_profile:
        host_profile(args.bits, args.jobs, args.host_profile)
        return
    if args.two_machines:
        two_machines(args.bits, args.two_machines)
        return
    reference(args.bits, args.jobs, args.trees, args.repeat)
    if args.multiclass:
        multiclass(args.bits, args.jobs)
    if args.scale:
        scale(args.scale_bits, args.jobs)


if __name__ == "__main__":
    main()
