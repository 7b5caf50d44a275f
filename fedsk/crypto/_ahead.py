"""Encryptions' randomness made ahead of need, on CPU time nothing else wants.

Almost all of a Paillier encryption's cost is its obfuscator ``r**n mod n**2``, which
does not depend on the message. A party that knows it will encrypt next round (the
SecureBoost guest encrypts every sample's gradients once per round) makes them while
it waits for its peers, in worker processes of idle priority; the round's encryptions
are then one multiplication each.
"""

import threading
import time
from collections import deque
from concurrent.futures import wait

from joblib.externals.loky.process_executor import BrokenProcessPool

from . import _kernels as K
from ._keys import PaillierPrivateKey
from ._parallel import idle_workers, submit_idle

__all__ = ["ObfuscatorStock"]


class ObfuscatorStock:
    """Fresh encryptions of zero for one key, made in the background; each used once.

    Parameters
    ----------
    key : PaillierPrivateKey or PaillierPublicKey
        The private key makes them with the CRT shortcut (key owner only).
    n_jobs : int, default=None
        Idle-priority worker processes to use (joblib semantics). With one worker, or
        under a joblib backend other than the default, nothing is made ahead and
        :meth:`take` returns nothing: every encryption is computed when asked for.

    rerandomise_only : bool, default=False
        With a public key: for a party that only re-randomises under it (a SecureBoost
        host). One worker makes them, from the smaller table re-randomisation uses.

    wait_first : bool, default=False
        The first :meth:`take` waits (at most :meth:`patience`) for what :meth:`fill`
        has started, instead of leaving the rest to be made on the spot: for a party
        that fills the stock as soon as it has the key, and takes from it once it has
        nothing else to do (a fit's first round). The idle CPU then makes them about as
        fast as the party's own workers would, without building the key's fixed-base
        tables in those workers and in this process too.

    Notes
    -----
    An obfuscator is handed out by :meth:`take` exactly once and never leaves this
    process; :meth:`close` drops the ones left.

    With the private key (``"fast"`` obfuscation), half the workers make the images mod
    p**2 and the other half those mod q**2 of the same fresh exponents, which this
    process combines (CRT): each worker then builds one fixed-base table per key, not
    two. The exponents cross to the workers, which are this party's own processes.
    """

    CHUNK = 64  # obfuscators per background task (about 10 ms on a 2048-bit key)
    LIMIT = 1 << 18  # at most this many made or in flight (128 MB at 2048 bits)
    # the first take's patience (2048-bit key): about 4x an obfuscator's cost on one
    # core, and twice the time the tables take to build
    WAIT_PER_ITEM, WAIT_TABLES = 5e-4, 0.06

    def __init__(self, key, *, n_jobs=None, wait_first=False, rerandomise_only=False):
        self._crt, self._lane = None, None
        if isinstance(key, PaillierPrivateKey):
            pub = key.public_key
            self._task = K.owner_obfuscators, (key._crt_enc(), pub.obfuscation, pub.alpha_bits)
            if pub.obfuscation == "fast":
                self._crt = key._crt_enc()
        else:
            pub = key
            self._task = K.public_obfuscators, pub._public_args()
            if rerandomise_only:
                self._task = K.public_obfuscators, (*pub._public_args(), K.RERANDOMISE_WINDOW)
                self._lane = "rerandomise"
        self.public_key = pub
        self._workers = idle_workers(n_jobs)
        self._wait_first = wait_first
        self._ready, self._pending = [], deque()  # ((futures...), how many they make)
        self._lock = threading.Lock()
        self._closed = False
        self.taken = 0  # obfuscators handed out so far

    @property
    def workers(self):
        """Worker processes making obfuscators ahead (0: none, :meth:`take` gives none)."""
        return self._workers

    def fill(self, count):
        """Have ``count`` obfuscators ready or in the making; returns at once."""
        if not self._workers:
            return
        with self._lock:
            missing = min(count, self.LIMIT) - len(self._ready) - sum(k for _, k in self._pending)
            while missing > 0 and not self._closed:
                k = min(self.CHUNK, missing)
                futures = self._submit(k)
                if futures is None:
                    return
                self._pending.append((futures, k))
                missing -= k

    def _submit(self, k):
        """Start making ``k`` obfuscators: a tuple of futures, or None (a broken pool)."""
        if self._crt is None:
            func, args = self._task
            if self._lane is None:
                future = submit_idle(func, (k, *args), workers=self._workers)
            else:  # (one process: one table per key)
                future = submit_idle(func, (k, *args), workers=1, lane=self._lane)
            return None if future is None else (future,)
        _n, _p, _q, psquare, qsquare, _inv, hp_s, hq_s = self._crt
        bits = self.public_key.alpha_bits
        alphas = K.random_exponents(k, bits)
        lane_workers = max(1, self._workers // 2)
        futures = []
        for lane, base, mod in (("p", hp_s, psquare), ("q", hq_s, qsquare)):
            args = (base, mod, bits, alphas)
            future = submit_idle(K.fixed_base_powers, args, workers=lane_workers, lane=lane)
            if future is None:
                for f in futures:
                    f.cancel()
                return None
            futures.append(future)
        return tuple(futures)

    def take(self, count):
        """Up to ``count`` obfuscators that are ready now, never waiting for the rest.

        Except with ``wait_first``: the first call waits for those in the making (at
        most :meth:`patience`), see the class.
        """
        wait_s, self._wait_first = (self.patience(count) if self._wait_first else 0.0), False
        deadline = time.monotonic() + wait_s
        while True:
            with self._lock:
                self._collect()
                left = deadline - time.monotonic()
                if len(self._ready) >= count or not self._pending or left <= 0:
                    out = self._ready[:count]
                    del self._ready[:count]
                    self.taken += len(out)
                    return out
                head = self._pending[0][0]
            wait(head, timeout=left)  # (outside the lock: close() may cancel it)

    def patience(self, count):
        """How long the first :meth:`take` of ``count`` may wait: about what making
        them here would take (fixed-base tables included), times a margin."""
        pub = self.public_key
        if pub.obfuscation != "fast" or not self._workers:
            return 0.0
        scale = (pub.key_length / 2048) ** 2
        return (self.WAIT_PER_ITEM * count / self._workers + self.WAIT_TABLES) * scale

    def _collect(self):
        """Move what the finished futures first in line made to the ready list."""
        while self._pending and all(f.done() for f in self._pending[0][0]):
            futures, _ = self._pending.popleft()
            if any(f.cancelled() for f in futures):
                continue
            errors = [f.exception() for f in futures if f.exception() is not None]
            if not errors:
                made = [f.result() for f in futures]
                if len(made) == 2:  # the images mod p**2 and q**2 of the same exponents
                    _n, _p, _q, psquare, qsquare, inv, _hp, _hq = self._crt
                    made = [[K.crt_combine(a, b, psquare, qsquare, inv) for a, b in zip(*made)]]
                self._ready.extend(made[0])
            elif not all(isinstance(e, BrokenProcessPool) for e in errors):
                # a bug, not a killed worker (whose share is made on the spot)
                raise next(e for e in errors if not isinstance(e, BrokenProcessPool))

    def close(self):
        """Cancel what has not started and drop what is left."""
        with self._lock:
            self._closed = True
            for futures, _ in self._pending:
                for future in futures:
                    future.cancel()
            self._pending.clear()
            self._ready.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
