"""Counting the Paillier operations a protocol performs.

Inside ``with count_ops() as ops:`` every vectorised operation of this package adds to
``ops`` (a :class:`collections.Counter`) how many elements it processed:

``encrypt``
    encryptions (key owner or public path);
``decrypt``
    decryptions;
``rerandomise``
    fresh encryptions of zero multiplied in;
``multiexp_terms`` / ``multiexp_outputs``
    terms and results of multi-exponentiations (:meth:`EncryptedArray.dot`,
    :meth:`EncryptedArray.matmul`); ``multiexp_short_terms`` the terms of those with
    fewer than 64 terms (costlier per term);
``powmod``
    elementwise exponentiations by a plaintext scalar (:meth:`EncryptedArray.multiply`).

Counters nest (an inner context also feeds the outer ones, unless isolated) and are local to the
current thread or task (a :class:`contextvars.ContextVar`), so concurrent sessions on a
party server count separately. Benchmarks turn the counts into a crypto floor.
"""

import contextvars
from collections import Counter
from contextlib import contextmanager

__all__ = ["count_ops"]

_ACTIVE = contextvars.ContextVar("fedsk_crypto_counters", default=())


@contextmanager
def count_ops(counter=None, *, isolated=False):
    """Count Paillier operations done in this context; yields the Counter.

    ``isolated=True`` hides them from enclosing counters (a host half served in the
    guest's process, as in tests, counts only for itself).
    """
    counter = Counter() if counter is None else counter
    token = _ACTIVE.set((counter,) if isolated else (*_ACTIVE.get(), counter))
    try:
        yield counter
    finally:
        _ACTIVE.reset(token)


def _count(kind, n=1):
    for counter in _ACTIVE.get():
        counter[kind] += n
