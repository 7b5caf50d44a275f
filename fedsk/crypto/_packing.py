"""Packing several non-negative integers into one Paillier plaintext.

Two levels, both used by SecureBoost:

* a *record* holds a few slots (e.g. g, h and a count of one sample) side by side, so
  one encryption carries them all and one homomorphic addition adds them all;
* several records are stacked in one plaintext (e.g. many histogram bins) so that one
  decryption returns them all (:meth:`EncryptedArray.pack`).

Slot widths come from the largest value a slot will hold after the sums it goes
through (``max_value * n_terms``), so nothing carries into a neighbour; decoding
checks every slot against that bound and raises :class:`PackingOverflowError`.
"""

from dataclasses import dataclass

import numpy as np

from ..exceptions import PackingOverflowError

__all__ = ["RecordLayout"]


@dataclass(frozen=True)
class RecordLayout:
    """Slots of one record, most significant first.

    Parameters
    ----------
    max_values : tuple of int
        Largest (non-negative) value each slot holds in a single record.
    n_terms : int, default=1
        How many records may be summed before decoding; each slot is wide enough for
        ``max_values[k] * n_terms``.
    """

    max_values: tuple
    n_terms: int = 1

    def __post_init__(self):
        object.__setattr__(self, "max_values", tuple(int(m) for m in self.max_values))
        object.__setattr__(self, "n_terms", max(int(self.n_terms), 1))
        if not self.max_values or min(self.max_values) < 0:
            raise ValueError("packed values must be non-negative")

    @classmethod
    def for_sums(cls, max_values, n_terms):
        """Layout for records whose slots hold sums of up to ``n_terms`` records."""
        return cls(tuple(max_values), n_terms)

    @property
    def slot_bounds(self):
        """Largest value each slot may hold once decoded."""
        return tuple(m * self.n_terms for m in self.max_values)

    @property
    def slot_bits(self):
        return tuple(max(b.bit_length(), 1) for b in self.slot_bounds)

    @property
    def record_bits(self):
        return sum(self.slot_bits)

    def records_per_plaintext(self, key_length):
        """How many records fit below a modulus of ``key_length`` bits."""
        per = (key_length - 1) // self.record_bits
        if per < 1:
            raise ValueError(
                f"a record of {self.record_bits} bits does not fit a {key_length}-bit key"
            )
        return per

    def pack(self, columns):
        """Pack an integer array of shape (n, n_slots) into n Python ints."""
        columns = np.asarray(columns)
        if columns.ndim != 2 or columns.shape[1] != len(self.slot_bits):
            raise ValueError(f"expected shape (n, {len(self.slot_bits)}), got {columns.shape}")
        if columns.size and columns.min() < 0:
            raise ValueError("packed values must be non-negative")
        cols = [c.tolist() for c in columns.T]
        for k, (col, bound) in enumerate(zip(cols, self.max_values)):
            if col and max(col) > bound:
                raise PackingOverflowError(f"slot {k} value exceeds its bound {bound}")
        out = [0] * columns.shape[0]
        for col, bits in zip(cols, self.slot_bits):
            out = [(acc << bits) | int(v) for acc, v in zip(out, col)]
        return out

    def unpack(self, records):
        """Unpack ints (one record each) to an object array of shape (n, n_slots)."""
        n_slots = len(self.slot_bits)
        out = np.empty((len(records), n_slots), dtype=object)
        total = self.record_bits
        slot_bits, slot_bounds = self.slot_bits, self.slot_bounds
        for i, r in enumerate(records):
            r = int(r)
            if r < 0 or r >> total:
                raise PackingOverflowError(f"record {i} overflows its {total} bits")
            for k in range(n_slots - 1, -1, -1):
                bits = slot_bits[k]
                v = r & ((1 << bits) - 1)
                if v > slot_bounds[k]:
                    raise PackingOverflowError(
                        f"record {i}, slot {k}: {v} exceeds its bound {slot_bounds[k]}"
                    )
                out[i, k] = v
                r >>= bits
        return out

    def split_plaintexts(self, plaintexts, n_records, per_plaintext):
        """Split plaintexts made by :meth:`EncryptedArray.pack` back into records.

        ``n_records`` is the total number of records; every plaintext but the last
        holds ``per_plaintext`` of them, first record most significant.
        """
        total = self.record_bits
        mask = (1 << total) - 1
        records = []
        remaining = n_records
        for m in plaintexts:
            m = int(m)
            k = min(remaining, per_plaintext)
            if m >> (k * total):
                raise PackingOverflowError("a packed plaintext overflowed its records")
            for j in range(k - 1, -1, -1):
                records.append((m >> (j * total)) & mask)
            remaining -= k
        if remaining:
            raise PackingOverflowError(f"{remaining} records missing from the plaintexts")
        return records


# -- signed slots for SIMD linear algebra --------------------------------------------------


def pack_signed(values, slot_bits):
    """``sum_s values[s] * 2**(slot_bits * s)`` for signed integers (slot 0 lowest).

    Every linear operation on the packed plaintext (adding packed values, multiplying
    by an integer scalar) acts on each slot at once, so one multi-exponentiation over
    packed ciphertexts computes several inner products. Decode with
    :func:`unpack_signed`; each final slot value must satisfy
    ``|v| < 2**(slot_bits - 1)`` (intermediate values may be anything: the arithmetic
    is exact).
    """
    out = 0
    for v in reversed(values):
        out = (out << slot_bits) + int(v)
    return out


def unpack_signed(value, n_slots, slot_bits):
    """The ``n_slots`` signed slot values of a packed (signed) integer.

    Raises :class:`PackingOverflowError` when something is left above the last slot.
    """
    value, out = int(value), []
    size, half = 1 << slot_bits, 1 << (slot_bits - 1)
    for _ in range(n_slots - 1):
        v = value & (size - 1)
        if v >= half:
            v -= size
        out.append(v)
        value = (value - v) >> slot_bits
    if abs(value) >= half:
        raise PackingOverflowError("a packed value overflowed its slots")
    out.append(value)
    return out
