"""Soak: many sequential SecureBoost fits + predicts against one party-server process.

Each fit generates a fresh Paillier key (1024-bit by default), runs PSI, one small
boosted model and a prediction, all over HTTP to one real ``party-server`` process
with model retention (``max_models``). Printed: the host's resident memory (the
server process and any worker processes), its open file descriptors and threads,
at the start (after ``warmup`` fits, which fill the host's bounded cache of eight
fixed-base tables), every ``--every`` fits and at the end; then the
sessions left open (from the audit log: every session created must have been
deleted), the files in its state directory, and whether the audit chain verifies.

    python benchmarks/soak.py                      # 200 fits, as the CI soak test
    python benchmarks/soak.py --fits 5000 --every 500

``tests/test_soak.py`` runs :func:`soak` with 200 fits and asserts on its figures.
"""

import argparse
import json
import time
import warnings

import numpy as np
import pandas as pd
import psutil

from fedsk import LocalFederation, SecureBoostClassifier
from party_server._audit import verify


def host_usage(pid):
    """RSS (bytes), open file descriptors and threads of a process and its children."""
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    rss = fds = threads = 0
    for p in procs:
        try:
            rss += p.memory_info().rss
            fds += p.num_fds()
            threads += p.num_threads()
        except psutil.NoSuchProcess:
            pass
    return {"rss": rss, "fds": fds, "threads": threads, "processes": len(procs)}


def open_sessions(audit_path):
    """Sessions the audit log shows as created and never deleted (nor expired)."""
    created, deleted = set(), set()
    with open(audit_path) as fh:
        for line in fh:
            rec = json.loads(line)
            if rec.get("status") != 200:
                continue
            if rec.get("endpoint") == "sessions.create":
                created.add(rec["session"])
            elif rec.get("endpoint") == "sessions.delete":
                deleted.add(rec["session"])
    return len(created), created - deleted


def make_parties(n_rows, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"s{i:05d}" for i in range(n_rows)]
    guest = pd.DataFrame(rng.normal(size=(n_rows, 2)), index=ids, columns=["g0", "g1"])
    host = pd.DataFrame(rng.normal(size=(n_rows, 2)), index=ids, columns=["h0", "h1"])
    y = pd.Series((guest.g0 + host.h0 > 0).astype(int), index=ids)
    return guest, host, y


def soak(n_fits=200, *, every=50, n_rows=32, max_models=5, key_length=1024, warmup=20, out=print):
    """Run the soak; return its figures (see the module docstring)."""
    guest, host, y = make_parties(n_rows)
    series = []
    with LocalFederation(hosts={"insurer": host}, max_models=max_models) as fed:
        pid = fed.pid("insurer")

        def one(seed):
            clf = SecureBoostClassifier(
                federation=fed,
                n_estimators=1,
                max_depth=2,
                key_length=key_length,
                random_state=seed,
            )
            with warnings.catch_warnings():  # (retention at work is what the soak checks)
                warnings.filterwarnings("ignore", "insurer removed .* older models")
                clf.fit(guest, y)
            return clf.predict_proba(guest)

        first = one(0)
        for i in range(1, warmup):
            one(i)
        start = host_usage(pid)
        out(
            f"soak: {n_fits} fits + predicts ({n_rows} rows, {key_length}-bit keys, "
            f"max_models={max_models}) against party server pid {pid}"
        )
        out(f"{'fits':>6} {'RSS MB':>8} {'FDs':>5} {'threads':>8} {'s/fit':>7}")
        out(f"{0:6d} {start['rss'] / 2**20:8.1f} {start['fds']:5d} {start['threads']:8d}")
        series.append((0, start))
        started = last = time.perf_counter()
        for i in range(1, n_fits + 1):
            proba = one(0 if i % 2 == 0 else i)
            if i % 2 == 0:  # the same fit always gives the same model
                assert np.array_equal(proba, first), f"fit {i} differs from the first"
            if i % every == 0 or i == n_fits:
                now = time.perf_counter()
                usage = host_usage(pid)
                series.append((i, usage))
                out(
                    f"{i:6d} {usage['rss'] / 2**20:8.1f} {usage['fds']:5d} "
                    f"{usage['threads']:8d} {(now - last) / every:7.2f}"
                )
                last = now
        seconds = time.perf_counter() - started
        end = host_usage(pid)
        state = fed.state_dir("insurer")
        n_created, still_open = open_sessions(fed.audit_log_path("insurer"))
        models = sorted(p.name for p in (state / "models").iterdir())
        files = sorted(str(p.relative_to(state)) for p in state.rglob("*"))
        ok, n_records, problem = verify(fed.audit_log_path("insurer"))
        alive = fed.is_alive("insurer")
    figures = {
        "fits": n_fits,
        "seconds": seconds,
        "rss_start_mb": start["rss"] / 2**20,
        "rss_end_mb": end["rss"] / 2**20,
        "fds_start": start["fds"],
        "fds_end": end["fds"],
        "threads_start": start["threads"],
        "threads_end": end["threads"],
        "processes_end": end["processes"],
        "sessions_created": n_created,
        "sessions_left_open": len(still_open),
        "models_on_disk": len(models),
        "files_in_state_dir": files,
        "audit_records": n_records,
        "audit_ok": ok,
        "audit_problem": problem,
        "host_alive": alive,
        "series": [(i, u["rss"] / 2**20, u["fds"]) for i, u in series],
    }
    out(
        f"{n_fits} fits + predicts in {seconds:.1f} s ({seconds / n_fits:.2f} s each); host RSS "
        f"{figures['rss_start_mb']:.1f} -> {figures['rss_end_mb']:.1f} MB, open FDs "
        f"{figures['fds_start']} -> {figures['fds_end']}, threads {figures['threads_start']} "
        f"-> {figures['threads_end']}; sessions created {n_created}, left open "
        f"{len(still_open)}; models on disk {len(models)} (max_models={max_models}); "
        f"state dir {len(files)} entries; audit log {n_records} records, "
        f"chain {'intact' if ok else 'BROKEN: ' + str(problem)}"
    )
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fits", type=int, default=200)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-models", type=int, default=5)
    parser.add_argument("--key-length", type=int, default=1024)
    args = parser.parse_args(argv)
    soak(
        args.fits,
        every=args.every,
        n_rows=args.rows,
        max_models=args.max_models,
        key_length=args.key_length,
    )


if __name__ == "__main__":
    main()
