"""Chunked parallel map over joblib's configured backend.

The vectorised Paillier operations split their work into one contiguous chunk per
worker so that process start-up and pickling stay small next to the arithmetic. They
go through :class:`joblib.Parallel` without naming a backend: the default is loky
processes (or threads for the gmpy2 calls that release the GIL), and a party that runs
a cluster swaps in dask or ray with ``joblib.parallel_config(backend="dask")``.
"""

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import joblib
import numpy as np
from joblib.parallel import get_active_backend

__all__ = ["chunk_bounds", "parallel_chunks", "resolve_n_jobs", "run_tasks"]

# joblib's threading backend starts a new thread pool for every call (~5-10 ms here): more
# than a 2048-bit decryption. Under joblib's default backends the GIL-free kernels
# therefore run on one persistent pool per process; a configured backend (dask, ray, ...)
# still gets every task through joblib.
_DEFAULT_BACKENDS = ("LokyBackend", "ThreadingBackend", "MultiprocessingBackend")
_POOL_PREFIX = "fedsk-crypto"
_pools, _pools_lock = {}, threading.Lock()


def _thread_pool(workers):
    key = (os.getpid(), workers)  # a forked child must not use its parent's threads
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ThreadPoolExecutor(workers, thread_name_prefix=_POOL_PREFIX)
    return pool


def run_tasks(calls, *, workers, prefer=None):
    """Run ``[(func, args), ...]`` on ``workers`` workers; results in order.

    ``prefer="threads"`` (GIL-free kernels) uses the persistent pool unless a non-default
    joblib backend is active; everything else goes through :class:`joblib.Parallel`.
    """
    calls = list(calls)
    if prefer == "threads" and type(get_active_backend()[0]).__name__ in _DEFAULT_BACKENDS:
        if threading.current_thread().name.startswith(_POOL_PREFIX):  # nested: no deadlock
            return [func(*args) for func, args in calls]
        pool = _thread_pool(workers)
        futures = [pool.submit(func, *args) for func, args in calls]
        return [f.result() for f in futures]
    return joblib.Parallel(n_jobs=workers, prefer=prefer)(
        joblib.delayed(func)(*args) for func, args in calls
    )


# Below this many elementary operations (modular multiplications, roughly 10 us each on
# a 2048-bit key) a call stays in the calling process: shipping the work costs more.
MIN_PARALLEL_OPS = 4000


def resolve_n_jobs(n_jobs):
    """Number of workers ``n_jobs`` means under the active joblib configuration."""
    return max(1, joblib.effective_n_jobs(n_jobs))


def chunk_bounds(n_items, n_chunks, weights=None):
    """Split ``range(n_items)`` into ``n_chunks`` contiguous, non-empty ``(start, stop)``.

    Near-equal in length, or, with ``weights`` (one per item), in total weight: each cut
    goes where the running weight comes closest to its share.
    """
    n_chunks = max(1, min(n_chunks, n_items))
    if weights is None:
        step, extra = divmod(n_items, n_chunks)
        cuts = [k * step + min(k, extra) for k in range(1, n_chunks)]
    else:
        running = np.cumsum(np.asarray(weights, dtype=np.float64))
        cuts, last = [], 0
        for k in range(1, n_chunks):
            cut = int(np.argmin(np.abs(running - running[-1] * k / n_chunks))) + 1
            cut = min(max(cut, last + 1), n_items - (n_chunks - k))  # keep chunks non-empty
            cuts.append(cut)
            last = cut
    edges = [0, *cuts, n_items]
    return list(itertools.pairwise(edges))


def parallel_chunks(
    func,
    n_items,
    args_for_chunk,
    *,
    n_jobs,
    ops_per_item=1,
    prefer=None,
    min_ops=MIN_PARALLEL_OPS,
    weights=None,
):
    """Run ``func(*args_for_chunk(start, stop))`` over chunks of ``range(n_items)``.

    Returns the list of per-chunk results in order. Runs inline when ``n_jobs``
    resolves to one worker or the work (``n_items * ops_per_item`` modular
    multiplications) is below ``min_ops``, too small to be worth shipping. Items of
    unequal cost give ``weights``, so that every worker gets the same share of work.
    """
    workers = resolve_n_jobs(n_jobs)
    # threads cost far less to start than worker processes: split smaller work for them
    minimum = min_ops // 8 if prefer == "threads" else min_ops
    if workers == 1 or n_items * ops_per_item < minimum or n_items < 2:
        return [func(*args_for_chunk(0, n_items))]
    bounds = chunk_bounds(n_items, workers, weights)
    return run_tasks(
        [(func, args_for_chunk(start, stop)) for start, stop in bounds],
        workers=workers,
        prefer=prefer,
    )
