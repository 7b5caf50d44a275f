"""Encryptions' randomness made ahead of need, on CPU time nothing else wants.

Almost all of a Paillier encryption's cost is its obfuscator ``r**n mod n**2``, which
does not depend on the message. A party that knows it will encrypt next round (the
SecureBoost guest encrypts every sample's gradients once per round) makes them while
it waits for its peers, in worker processes of idle priority; the round's encryptions
are then one multiplication each.
"""

import os
import threading
import time
from collections import deque
from concurrent.futures import wait

import gmpy2
from joblib.externals.loky.process_executor import BrokenProcessPool

from . import _kernels as K
from ._keys import (
    PaillierPrivateKey,
    PaillierPublicKey,
    _prime,
    check_key_length,
    distinct_enough,
    obfuscator_image,
    short_exponent_bits,
)
from ._parallel import idle_workers, submit_idle

__all__ = ["ObfuscatorStock", "drop_keypair_ahead", "make_keypair_ahead", "take_keypair_ahead"]


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
        tables in those workers and in this process too. Later takes wait too, at most
        what the workers need for the ones missing (their tables are built by then).

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
        self._wait_first = self._waits = wait_first
        self._ready, self._pending = [], deque()  # ((futures...), how many they make)
        self._combined = {}  # (futures...) -> their obfuscators, combined as they finished
        # (reentrant: a future already done runs its callback, which takes it, at once)
        self._lock = threading.RLock()
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
                if len(futures) == 2:  # (once pending: a future already done calls back now)
                    for future in futures:
                        future.add_done_callback(lambda _, fs=futures: self._combine(fs))
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

    def _crt_pairs(self, xp, xq):
        """The obfuscators whose images mod p**2 and q**2 are ``xp`` and ``xq``."""
        _n, _p, _q, psquare, qsquare, inv, _hp, _hq = self._crt
        return [K.crt_combine(a, b, psquare, qsquare, inv) for a, b in zip(xp, xq)]

    def _combine(self, futures):
        """Combine the two halves once both are in, in the thread that received the
        last (a worker pool's), so that :meth:`take` finds them ready to hand out."""
        if not all(f.done() and not f.cancelled() and f.exception() is None for f in futures):
            return
        made = self._crt_pairs(*(f.result() for f in futures))
        with self._lock:  # (only while still pending: take() may have combined them)
            if any(fs is futures for fs, _ in self._pending):
                self._combined[futures] = made

    def put(self, obfuscators):
        """Add obfuscators made elsewhere for this key (each a fresh encryption of zero,
        handed out once like the others)."""
        with self._lock:
            if not self._closed:
                self._ready.extend(obfuscators)

    def take(self, count):
        """Up to ``count`` obfuscators that are ready now; the caller makes the rest.

        With ``wait_first``, the first call waits for those in the making (at most
        :meth:`patience`), see the class; later calls wait at most what the workers
        need for the ones missing (:meth:`patience` without the tables), far less than
        this thread would need to make them (it has no tables of the key). Without it,
        a call never waits.
        """
        if self._wait_first:
            wait_s = self.patience(count)
        elif self._waits:
            with self._lock:
                self._collect()
                wait_s = self.patience(count - len(self._ready), tables=False)
        else:
            wait_s = 0.0
        self._wait_first = False
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

    def patience(self, count, *, tables=True):
        """How long the first :meth:`take` of ``count`` may wait: about what making
        them here would take (fixed-base tables included, unless not ``tables``), times
        a margin."""
        pub = self.public_key
        if pub.obfuscation != "fast" or not self._workers or count <= 0:
            return 0.0
        scale = (pub.key_length / 2048) ** 2
        return (
            self.WAIT_PER_ITEM * count / self._workers + (self.WAIT_TABLES if tables else 0.0)
        ) * scale

    def _collect(self):
        """Move what the finished futures first in line made to the ready list."""
        while self._pending and all(f.done() for f in self._pending[0][0]):
            futures, _ = self._pending.popleft()
            made = self._combined.pop(futures, None)
            if any(f.cancelled() for f in futures):
                continue
            errors = [f.exception() for f in futures if f.exception() is not None]
            if not errors:
                if made is None:
                    results = [f.result() for f in futures]
                    # (two: the images mod p**2 and q**2 of the same exponents)
                    made = self._crt_pairs(*results) if len(results) == 2 else results[0]
                self._ready.extend(made)
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
            self._combined.clear()
            self._ready.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- the next fit's key pair, made ahead ---------------------------------------------------


def _prime_and_powers(bits, alpha_bits, alphas):
    """Worker half of a key pair made ahead: a ``bits``-bit prime ``p`` (drawn as
    :func:`~fedsk.crypto.generate_keypair` draws it), the image ``h`` mod ``p**2`` of the
    fast obfuscator's base, and ``h ** alpha mod p**2`` for each of ``alphas`` (from this
    process's table, which the key's later obfuscators of this lane use too)."""
    p = _prime(bits)
    image = obfuscator_image(p)
    return p, int(image), K.fixed_base_powers(image, gmpy2.mpz(p) ** 2, alpha_bits, alphas)


class _NextKeyPair:
    """A key pair and its first obfuscators in the making, in the stock's two lanes."""

    def __init__(self, key_length, workers, count):
        self.key_length, self.workers = key_length, workers
        self.made_at = time.monotonic()
        self.timer = None  # (drops it after KEYPAIR_AHEAD_SECONDS)
        self.alpha_bits = short_exponent_bits(key_length)
        self.count = count
        alphas = K.random_exponents(count, self.alpha_bits)
        lane_workers = max(1, workers // 2)  # (the lanes ObfuscatorStock uses)
        self.futures = []
        for lane in ("p", "q"):
            args = (key_length // 2, self.alpha_bits, alphas)
            future = submit_idle(_prime_and_powers, args, workers=lane_workers, lane=lane)
            if future is None:
                self.cancel()
                return
            self.futures.append(future)

    def ready(self):
        return len(self.futures) == 2 and all(f.done() for f in self.futures)

    def cancel(self):
        for future in self.futures:
            future.cancel()  # (one already running finishes, and its result is dropped)
        self.futures = []
        if self.timer is not None:
            self.timer.cancel()


def _expire(nxt):
    """Drop ``nxt`` if no fit took it within :data:`KEYPAIR_AHEAD_SECONDS`."""
    with _NEXT_LOCK:
        for pid, entry in list(_NEXT.items()):
            if entry is nxt:
                del _NEXT[pid]
    nxt.timer = None
    nxt.cancel()


# one per process: the key pair its next fit takes (a forked child makes its own)
_NEXT, _NEXT_LOCK = {}, threading.Lock()
# Key pairs made ahead are kept this long at most (as long as idle workers are kept),
# and come with at most this many obfuscators (2 MB at 2048 bits): the rest of a large
# fit's first round is made once it has started, as before.
KEYPAIR_AHEAD_SECONDS = 300
KEYPAIR_AHEAD_OBFUSCATORS = 4096


def make_keypair_ahead(key_length, *, n_jobs=None, encryptions=0):
    """Start making the key pair of this process's next fit, on idle CPU.

    A fit's first step is to make a fresh key pair (about 40 ms of CPU at 2048 bits),
    then the randomness of its first round's encryptions, while its peers wait. A fit
    that ends calls this, so that the next fit (a grid search's, a cross-validation's,
    a refit) finds both ready: its key pair is made now, in the idle-priority workers
    of :class:`ObfuscatorStock` (each finds one prime, as :func:`generate_keypair`
    does), with the obfuscators of its first ``encryptions`` encryptions (at most
    :data:`KEYPAIR_AHEAD_OBFUSCATORS`). Every key pair is still used by one fit only;
    it stays in this process's memory, never on disk, until :func:`take_keypair_ahead`
    takes it or :data:`KEYPAIR_AHEAD_SECONDS` pass (then a timer thread drops it).
    Nothing happens with one worker or under a joblib backend other than the default
    (see :func:`idle_workers`).
    """
    check_key_length(key_length)
    workers = idle_workers(n_jobs)
    if not workers:
        return
    count = max(0, min(int(encryptions), KEYPAIR_AHEAD_OBFUSCATORS))
    with _NEXT_LOCK:
        old = _NEXT.pop(os.getpid(), None)
        if old is not None:
            if old.key_length == key_length and old.workers == workers and old.futures:
                _NEXT[os.getpid()] = old  # (one is in the making already)
                return
            old.cancel()
        nxt = _NextKeyPair(key_length, workers, count)
        if nxt.futures:
            _NEXT[os.getpid()] = nxt
            nxt.timer = threading.Timer(KEYPAIR_AHEAD_SECONDS, _expire, (nxt,))
            nxt.timer.daemon = True
            nxt.timer.start()


def keypair_patience(key_length, count):
    """How long :func:`take_keypair_ahead` waits for a key pair still in the making:
    about four times what its workers need on idle cores (a prime search and ``count``
    obfuscators; 0.3 s at 2048 bits with 455), at least 0.2 s."""
    scale = key_length / 2048
    return max(0.2, 4 * (0.04 * scale**3 + ObfuscatorStock.WAIT_PER_ITEM / 4 * count * scale**2))


def drop_keypair_ahead():
    """Drop the key pair made ahead, if any (this process's next fit makes its own)."""
    with _NEXT_LOCK:
        nxt = _NEXT.pop(os.getpid(), None)
    if nxt is not None:
        nxt.cancel()


def take_keypair_ahead(key_length, *, n_jobs=None):
    """The key pair :func:`make_keypair_ahead` made, once it is ready.

    Returns ``(public_key, private_key, stock)``, the stock an :class:`ObfuscatorStock`
    of the key (``wait_first``) holding the obfuscators made with it, or None: none was
    asked for, it is for another key length or number of workers, or it is still in
    the making after :func:`keypair_patience` (then it is dropped and the caller makes
    its key pair itself, not waiting longer for CPU that may not come idle). A fit that
    follows another at once (a grid search's) waits for it: its workers are busy with
    it, and it needs less than making another. Either way, the next call needs a new
    :func:`make_keypair_ahead`.
    """
    workers = idle_workers(n_jobs)
    with _NEXT_LOCK:
        nxt = _NEXT.pop(os.getpid(), None)
    if nxt is None:
        return None
    fresh = time.monotonic() - nxt.made_at < KEYPAIR_AHEAD_SECONDS
    if nxt.timer is not None:
        nxt.timer.cancel()
    matches = fresh and nxt.key_length == key_length and nxt.workers == workers
    if matches and nxt.futures:
        wait(nxt.futures, timeout=keypair_patience(key_length, nxt.count))
    if not (matches and nxt.ready()):
        nxt.cancel()
        return None
    errors = [f.exception() for f in nxt.futures if not f.cancelled()]
    if any(f.cancelled() for f in nxt.futures) or any(errors):
        if any(e is not None and not isinstance(e, BrokenProcessPool) for e in errors):
            raise next(e for e in errors if e is not None and not isinstance(e, BrokenProcessPool))
        return None  # (a worker was killed: make the key pair here)
    (p, hp_s, imgs_p), (q, hq_s, imgs_q) = (f.result() for f in nxt.futures)
    if p == q or not distinct_enough(p, q):
        return None
    pub = PaillierPublicKey(gmpy2.mpz(p) * q)
    if pub.key_length != key_length or pub.alpha_bits != nxt.alpha_bits:
        return None
    priv = PaillierPrivateKey(pub, p, q, obfuscator_images=(hp_s, hq_s))
    stock = ObfuscatorStock(priv, n_jobs=workers, wait_first=True)
    stock.put(stock._crt_pairs(imgs_p, imgs_q))
    return pub, priv, stock
