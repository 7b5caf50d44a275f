"""Encryptions' randomness made ahead of need, on CPU time nothing else wants.

Almost all of a Paillier encryption's cost is its obfuscator ``r**n mod n**2``, which
does not depend on the message. A party that knows it will encrypt next round (the
SecureBoost guest encrypts every sample's gradients once per round) makes them while
it waits for its peers, in worker processes of idle priority; the round's encryptions
are then one multiplication each.
"""

import threading
from collections import deque

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

    Notes
    -----
    An obfuscator is handed out by :meth:`take` exactly once and never leaves this
    process; :meth:`close` drops the ones left.
    """

    CHUNK = 64  # obfuscators per background task (about 10 ms on a 2048-bit key)
    LIMIT = 1 << 18  # at most this many made or in flight (128 MB at 2048 bits)

    def __init__(self, key, *, n_jobs=None):
        if isinstance(key, PaillierPrivateKey):
            pub = key.public_key
            self._task = K.owner_obfuscators, (key._crt_enc(), pub.obfuscation, pub.alpha_bits)
        else:
            pub = key
            self._task = K.public_obfuscators, pub._public_args()
        self.public_key = pub
        self._workers = idle_workers(n_jobs)
        self._ready, self._pending = [], deque()  # (future, how many it makes)
        self._lock = threading.Lock()
        self._closed = False
        self.taken = 0  # obfuscators handed out so far

    def fill(self, count):
        """Have ``count`` obfuscators ready or in the making; returns at once."""
        if not self._workers:
            return
        func, args = self._task
        with self._lock:
            missing = min(count, self.LIMIT) - len(self._ready) - sum(k for _, k in self._pending)
            while missing > 0 and not self._closed:
                k = min(self.CHUNK, missing)
                future = submit_idle(func, (k, *args), workers=self._workers)
                if future is None:
                    return
                self._pending.append((future, k))
                missing -= k

    def take(self, count):
        """Up to ``count`` obfuscators that are ready now, never waiting for the rest."""
        with self._lock:
            while self._pending and self._pending[0][0].done():
                future, _ = self._pending.popleft()
                if future.cancelled():
                    continue
                exc = future.exception()
                if exc is None:
                    self._ready.extend(future.result())
                elif not isinstance(exc, BrokenProcessPool):
                    raise exc  # a bug, not a killed worker (whose share is made on the spot)
            out = self._ready[:count]
            del self._ready[:count]
            self.taken += len(out)
        return out

    def close(self):
        """Cancel what has not started and drop what is left."""
        with self._lock:
            self._closed = True
            for future, _ in self._pending:
                future.cancel()
            self._pending.clear()
            self._ready.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
