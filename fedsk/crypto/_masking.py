"""Additive masks: how an encrypted result goes back to its owner without being seen.

A party that computed ``[[v]]`` under a peer's key adds a fresh random mask ``m`` (in the
plaintext, at the same fixed-point exponent), re-randomises and sends ``[[v + m]]``; the
key owner decrypts the residue ``v + m mod n`` and returns it; the party subtracts ``m``.
The masks are uniform on ``[2**bits, 2**(bits + 1))`` (drawn with :mod:`secrets`), so as
long as ``|v| < 2**(bits - MARGIN_BITS)`` the residue is within statistical distance
``2**-MARGIN_BITS`` of a value that does not depend on ``v``; it is also positive and far
below ``n``, so the residue is exactly ``v + m``. :meth:`Masks.unmask` checks the margin
and refuses a value that broke it.

Decrypted residues travel as fixed-width big-endian integers (the bytes of ``n``) in a
``uint8`` array: :func:`residues_to_bytes` / :func:`residues_from_bytes`.
"""

import secrets

import numpy as np

from ..exceptions import FedskError
from ._counting import _count
from ._encoding import to_signed

__all__ = ["MARGIN_BITS", "Masks", "residues_from_bytes", "residues_to_bytes"]

MARGIN_BITS = 40


class Masks:
    """Fresh random masks for ``count`` values, each uniform on ``[2**bits, 2**(bits+1))``.

    Parameters
    ----------
    count : int
    bits : int
        Bit length of the masked values' bound plus :data:`MARGIN_BITS` (at least).
    pack : bool, default=False
        :meth:`apply` packs several masked values into one plaintext (the masked values
        are positive and below ``2**(bits + 2)``), so the key owner decrypts
        :meth:`packed_length` ciphertexts instead of ``count``; :meth:`unmask` then takes
        the residues of the packed plaintexts.
    """

    __slots__ = ("bits", "pack", "values")

    def __init__(self, count, bits, *, pack=False):
        self.bits = int(bits)
        self.pack = bool(pack)
        if self.bits <= MARGIN_BITS:
            raise ValueError(f"masks need more than {MARGIN_BITS} bits")
        top = 1 << self.bits
        self.values = [top + secrets.randbelow(top) for _ in range(int(count))]
        _count("masks", len(self.values))

    @staticmethod
    def per_plaintext(bits, key_length):
        """Masked values of ``bits``-bit masks that one packed plaintext carries."""
        return max(1, (int(key_length) - 4) // (int(bits) + 2))

    @staticmethod
    def packed_length(count, bits, key_length):
        """Ciphertexts that ``count`` packed masked values take."""
        per = Masks.per_plaintext(bits, key_length)
        return -(-int(count) // per)

    def __len__(self):
        return len(self.values)

    def __getitem__(self, index):
        """The masks of a slice of the values (to unmask part of a round later)."""
        if not isinstance(index, slice):
            raise TypeError("masks are taken by slice")
        out = Masks(0, self.bits, pack=self.pack)
        out.values = self.values[index]
        return out

    def __repr__(self):
        return f"Masks(count={len(self)}, bits={self.bits})"

    def __reduce__(self):
        raise TypeError("masks are secrets of one protocol round and are never pickled")

    def apply(self, enc, *, n_jobs=None):
        """``[[v + m]]``, re-randomised: ready to leave the process."""
        if len(enc) != len(self):
            raise ValueError(f"{len(self)} masks for {len(enc)} ciphertexts")
        key_length = enc.public_key.key_length
        if self.bits + 4 >= key_length:
            raise ValueError("masks do not fit below the key's encodable range")
        masked = enc.add_encoded(self.values, n_jobs=n_jobs)
        if self.pack:
            per = self.per_plaintext(self.bits, key_length)
            masked = masked.pack(per, self.bits + 2, n_jobs=n_jobs)
        return masked.rerandomise(n_jobs=n_jobs)

    def unmask(self, public_key, residues):
        """Signed fixed-point integers ``v`` from the owner's residues ``v + m mod n``.

        Raises :class:`~fedsk.exceptions.FedskError` when a value is outside the mask's
        hiding margin (it would not have been hidden, or the computation overflowed).
        """
        n = int(public_key.n)
        if self.pack:
            residues = self._unpack(residues, public_key.key_length)
        if len(residues) != len(self):
            raise ValueError(f"{len(residues)} residues for {len(self)} masks")
        out = to_signed(
            [(int(c) - m) % n for c, m in zip(residues, self.values)], n, public_key.max_int
        )
        limit = 1 << (self.bits - MARGIN_BITS)
        if any(abs(v) >= limit for v in out):
            raise FedskError(
                "a masked value exceeded its mask's hiding margin: the data are too large "
                "for this protocol (scale the features) or a peer sent a wrong value"
            )
        return out

    def _unpack(self, residues, key_length):
        per = self.per_plaintext(self.bits, key_length)
        if len(residues) != self.packed_length(len(self), self.bits, key_length):
            raise ValueError(f"{len(residues)} packed residues for {len(self)} masks")
        width, out, left = self.bits + 2, [], len(self)
        for r in residues:
            k, r = min(per, left), int(r)
            if r >> (k * width):
                raise ValueError("a packed residue overflows its slots")
            out.extend((r >> ((k - 1 - j) * width)) & ((1 << width) - 1) for j in range(k))
            left -= k
        return out


def residues_to_bytes(public_key, residues):
    """Integers in ``[0, n)`` as a ``uint8`` array of shape ``(k, bytes of n)``."""
    width = (public_key.key_length + 7) // 8
    n = int(public_key.n)
    buf = bytearray()
    for r in residues:
        r = int(r)
        if not 0 <= r < n:
            raise ValueError("a residue is outside [0, n)")
        buf += r.to_bytes(width, "big")
    return np.frombuffer(bytes(buf), dtype=np.uint8).reshape(len(residues), width).copy()


def residues_from_bytes(public_key, data):
    """Inverse of :func:`residues_to_bytes`; checks the shape and ``0 <= r < n``.

    Raises ``ValueError`` naming the first bad row.
    """
    data = np.asarray(data)
    width = (public_key.key_length + 7) // 8
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != width:
        raise ValueError(
            f"residues must be a uint8 array of shape (k, {width}) for this key, "
            f"got {data.dtype} {data.shape}"
        )
    n = int(public_key.n)
    raw = data.tobytes()
    out = []
    for i in range(data.shape[0]):
        r = int.from_bytes(raw[i * width : (i + 1) * width], "big")
        if r >= n:
            raise ValueError(f"residue {i} is out of range (must be < n)")
        out.append(r)
    return out
