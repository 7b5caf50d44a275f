"""Chunked parallel map over joblib's configured backend.

The vectorised Paillier operations split their work into one contiguous chunk per
worker so that process start-up and pickling stay small next to the arithmetic. They
follow joblib's active backend: by default loky processes (or threads for the gmpy2
calls that release the GIL), and a party that runs a cluster swaps in dask or ray with
``joblib.parallel_config(backend="dask")``.
"""

import contextlib
import itertools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import joblib
import numpy as np
from joblib.externals.loky import ProcessPoolExecutor as LokyExecutor
from joblib.externals.loky.process_executor import BrokenProcessPool
from joblib.parallel import get_active_backend

__all__ = [
    "chunk_bounds",
    "idle_workers",
    "parallel_chunks",
    "resolve_n_jobs",
    "run_tasks",
    "submit_idle",
]

# joblib's threading backend starts a new thread pool for every call (~5-10 ms here): more
# than a 2048-bit decryption. Under joblib's default backends the GIL-free kernels
# therefore run on one persistent pool per process; a configured backend (dask, ray, ...)
# still gets every task through joblib.
_DEFAULT_BACKENDS = ("LokyBackend", "ThreadingBackend", "MultiprocessingBackend")
_POOL_PREFIX = "fedsk-crypto"
_pools, _pools_lock = {}, threading.Lock()
# The same for worker processes: joblib.Parallel polls for its results every 10 ms, which
# added ~5 ms to every 30-100 ms encryption or histogram call. Under joblib's default
# (loky, not nested in a joblib worker) they run on loky executors kept per process,
# whose futures wake the caller as soon as a result is in; idle workers exit after
# five minutes as joblib's do.
_process_pools = {}
_IDLE_SECONDS = 300
# Work done ahead (encryptions' randomness for the next round) goes to worker processes
# that the kernel runs only when a core would otherwise sit idle.
_idle_pools = {}


def _thread_pool(workers):
    key = (os.getpid(), workers)  # a forked child must not use its parent's threads
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ThreadPoolExecutor(workers, thread_name_prefix=_POOL_PREFIX)
    return pool


def _process_pool(workers):
    key = (os.getpid(), workers)
    with _pools_lock:
        pool = _process_pools.get(key)
        if pool is None:
            pool = _process_pools[key] = LokyExecutor(
                workers, timeout=_IDLE_SECONDS, initializer=_exit_with_parent
            )
    return key, pool


def _exit_with_parent():
    """Worker initialiser: exit soon after the process that started this worker is gone.

    A party server killed outright (``kill -9``, the OOM killer) runs no clean-up, and
    its idle workers would wait for work for minutes, each restart adding more.
    """
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="fedsk-parent-watch", daemon=True).start()


def _idle_worker():
    """Initialiser of the idle-priority workers."""
    _exit_with_parent()
    _lower_priority()


def _lower_priority():
    """Worker initialiser: run only on CPU time nothing else wants."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # Linux
    except (AttributeError, OSError):
        with contextlib.suppress(AttributeError, OSError):
            os.nice(19)


def _default_processes():
    """Whether joblib's default process backend is active (not nested in its workers)."""
    backend = get_active_backend()[0]
    return type(backend).__name__ == "LokyBackend" and getattr(backend, "nesting_level", 0) == 0


def idle_workers(n_jobs):
    """Worker processes of idle priority ``n_jobs`` allows here (0: none).

    None when ``n_jobs`` means one worker (the party asked for one core) or a joblib
    backend other than the default is configured (work belongs on that backend). Call
    it in the thread that got the configuration: joblib's is per thread.
    """
    workers = resolve_n_jobs(n_jobs)
    return workers if workers > 1 and _default_processes() else 0


def submit_idle(func, args, *, workers, lane=None):
    """Start ``func(*args)`` in one of ``workers`` processes of idle priority.

    For work done ahead of need: the processes run only when a core would otherwise
    idle (``SCHED_IDLE`` on Linux, else the lowest nice level), so they never slow the
    party's own work. Work of one ``lane`` goes to processes of its own (which then keep
    only the tables that lane's work needs). Returns a future, or ``None`` if the pool
    broke (a worker was killed); the next call starts a new one.
    """
    key = (os.getpid(), workers, lane)
    with _pools_lock:
        pool = _idle_pools.get(key)
        if pool is None:
            pool = _idle_pools[key] = LokyExecutor(
                workers, timeout=_IDLE_SECONDS, initializer=_idle_worker
            )
    try:
        return pool.submit(func, *args)
    except (BrokenProcessPool, RuntimeError):
        with _pools_lock:
            if _idle_pools.get(key) is pool:
                del _idle_pools[key]
        return None


def run_tasks(calls, *, workers, prefer=None, meanwhile=None):
    """Run ``[(func, args), ...]`` on ``workers`` workers; results in order.

    ``prefer="threads"`` (GIL-free kernels) uses the persistent thread pool unless a
    non-default joblib backend is active; other work the persistent process pool under
    joblib's default backend, and :class:`joblib.Parallel` under any other.
    ``meanwhile``: a function this thread calls once the tasks are handed out (before
    them where they run here), to do its own share while the workers do theirs.
    """
    calls = list(calls)
    backend = get_active_backend()[0]
    kind = type(backend).__name__
    if prefer == "threads" and kind in _DEFAULT_BACKENDS:
        if threading.current_thread().name.startswith(_POOL_PREFIX):  # nested: no deadlock
            if meanwhile is not None:
                meanwhile()
            return [func(*args) for func, args in calls]
        pool = _thread_pool(workers)
        futures = [pool.submit(func, *args) for func, args in calls]
        if meanwhile is not None:
            meanwhile()
        return [f.result() for f in futures]
    if prefer is None and _default_processes():
        key, pool = _process_pool(workers)
        try:
            futures = [pool.submit(func, *args) for func, args in calls]
            if meanwhile is not None:
                meanwhile()
            return [f.result() for f in futures]
        except BrokenProcessPool:  # a worker died (e.g. killed): the next call starts anew
            with _pools_lock:
                if _process_pools.get(key) is pool:
                    del _process_pools[key]
            raise
    if meanwhile is not None:
        meanwhile()
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
):
    """Run ``func(*args_for_chunk(start, stop))`` over chunks of ``range(n_items)``.

    Returns the list of per-chunk results in order. Runs inline when ``n_jobs``
    resolves to one worker or the work (``n_items * ops_per_item`` modular
    multiplications) is below ``min_ops``, too small to be worth shipping.
    """
    workers = resolve_n_jobs(n_jobs)
    # threads cost far less to start than worker processes: split smaller work for them
    minimum = min_ops // 8 if prefer == "threads" else min_ops
    if workers == 1 or n_items * ops_per_item < minimum or n_items < 2:
        return [func(*args_for_chunk(0, n_items))]
    bounds = chunk_bounds(n_items, workers)
    return run_tasks(
        [(func, args_for_chunk(start, stop)) for start, stop in bounds],
        workers=workers,
        prefer=prefer,
    )
