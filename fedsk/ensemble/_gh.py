"""How SecureBoost packs (g, h) of a sample into one Paillier plaintext.

Shared by the guest (which encrypts and decodes) and the host (which sums and packs), so
both compute the same slot widths from the same numbers.
"""

import numpy as np

from ..crypto import RecordLayout
from ..exceptions import PackingOverflowError
from ..tree._histogram import GH_BITS, H_BITS

__all__ = [
    "GH_MAX_VALUES",
    "GH_PACKING",
    "G_MAX_VALUES",
    "gh_layout",
    "plaintext_groups",
    "record_widths",
    "sent_bins",
    "unpack_records",
]

# per sample: g + 2**GH_BITS in [0, 2**(GH_BITS+1)] and h in [0, 2**H_BITS]. Counts are
# not encrypted: the host knows how many of a node's rows fall in each of its bins and
# sends that number in the clear (the guest would learn it from a decrypted count slot
# anyway), which saves a slot's width of squarings per packed bin and some decryptions.
GH_MAX_VALUES = (1 << (GH_BITS + 1), 1 << H_BITS)
# When every sample of a round has the same h, and that is public (the first round of a
# fresh fit starts from one baseline score; half squared error has h = 1), only g is
# packed: a bin's h sum is its count times that h, and counts travel in the clear.
G_MAX_VALUES = GH_MAX_VALUES[:1]

# Version of the SecureBoost exchange: the histogram packing (2: bins left out, 4: record
# widths per bin) and the requests (3: one per layer, splits and the next layer's
# histograms together). Both parties must agree on it, so the guest sends it with every
# round's gradients.
GH_PACKING = 4


def gh_layout(n_terms, max_values=GH_MAX_VALUES):
    """Record layout a sample's (g + offset, h) is encrypted with (g + offset alone, with
    ``G_MAX_VALUES``): slots wide enough for sums over ``n_terms`` samples, the number of
    rows of the round (the largest possible node)."""
    return RecordLayout.for_sums(max_values, n_terms)


def record_widths(counts, n_terms, max_values=GH_MAX_VALUES):
    """Bit width of each bin's record of (g, h) sums, from the bin's number of rows.

    A record is a sum of ``count`` encrypted samples: its lower (h) slot keeps the width
    the samples were encrypted with (``n_terms`` rows: that fixes where the g slot
    starts), but the g slot on top only needs room for ``count`` values, so bins with
    few rows pack closer: fewer squarings for the host, fewer decryptions for the guest.
    Both parties know every bin's count (it travels in the clear), so nothing new is
    revealed.
    """
    low = sum(gh_layout(n_terms, max_values).slot_bits[1:])
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size and counts.min() < 1:
        raise ValueError("a packed bin holds at least one row")
    values, where = np.unique(counts, return_inverse=True)  # (a node's counts repeat)
    top = [(int(max_values[0]) * c).bit_length() for c in values.tolist()]
    return np.asarray(top, dtype=np.int64).reshape(-1)[where.reshape(-1)] + low


def plaintext_groups(widths, key_length):
    """Sizes of the runs of consecutive records packed into one plaintext each.

    Greedy, in order: a plaintext takes records while their widths add up to less than
    the key length (so the packed value stays below n).
    """
    capacity = key_length - 1
    sizes, used, k = [], 0, 0
    for w in np.asarray(widths).tolist():
        if w > capacity:
            raise ValueError(f"a record of {w} bits does not fit a {key_length}-bit key")
        if k and used + w > capacity:
            sizes.append(k)
            used = k = 0
        used += w
        k += 1
    if k:
        sizes.append(k)
    return sizes


def unpack_records(plaintexts, widths, sizes, counts, n_terms, max_values=GH_MAX_VALUES):
    """Records packed by the host back to an int64 array (n_records, n_slots).

    Plaintext ``i`` holds ``sizes[i]`` records, the first most significant, record ``j``
    ``widths[j]`` bits wide. Every slot is checked against its bin's bound (``count``
    times the slot's largest value); raises :class:`PackingOverflowError`.

    The plaintexts' bytes are cut into slots with numpy (every slot is read from the 8
    bytes that end with its last bit); slots wider than 56 bits, or bounds beyond int64,
    go through Python integers instead.
    """
    low_bits = gh_layout(n_terms, max_values).slot_bits[1:]
    widths = np.asarray(widths, dtype=np.int64).reshape(-1)
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    if len(plaintexts) != len(sizes) or int(sizes.sum()) != len(widths):
        raise PackingOverflowError("the plaintexts do not hold the records expected")
    n_slots = len(max_values)
    slot_widths = np.empty((len(widths), n_slots), dtype=np.int64)
    slot_widths[:, 1:] = low_bits
    slot_widths[:, 0] = widths - sum(low_bits)
    plaintexts = [int(m) for m in plaintexts]
    if (
        not len(widths)
        or slot_widths[:, 0].min() < 0
        or slot_widths.max() > 56  # (+ up to 7 bits of offset: 8 bytes hold any)
        or counts.min() < 0
        or int(counts.max()) * max(int(v) for v in max_values) >= 1 << 62
    ):
        return _unpack_records(plaintexts, widths, sizes, counts, low_bits, max_values)
    starts = np.cumsum(sizes) - sizes  # each plaintext's first record
    totals = np.add.reduceat(widths, starts)  # its records' bits, the lowest of it
    for m, total in zip(plaintexts, totals.tolist()):
        if m < 0 or m >> total:
            raise PackingOverflowError("a packed plaintext overflowed its records")
    # each plaintext big-endian in a row of bytes, 8 zero bytes in front (so that every
    # 8-byte window starts inside the row)
    n_bytes = 8 + (int(totals.max()) + 7) // 8
    raw = np.frombuffer(b"".join(m.to_bytes(n_bytes, "big") for m in plaintexts), np.uint8)
    owner = np.repeat(np.arange(len(plaintexts)), sizes)
    before = np.cumsum(widths) - widths  # bits of the records before, in the plaintext
    before -= before[starts][owner]
    first_bit = 8 * n_bytes - totals[owner] + before  # from the row's most significant bit
    ends = (first_bit[:, None] + np.cumsum(slot_widths, axis=1)).ravel()  # a slot's last+1
    end_byte = (ends + 7) // 8
    window = raw[(owner.repeat(n_slots) * n_bytes + end_byte - 8)[:, None] + np.arange(8)]
    words = window.view(">u8").reshape(-1) >> (8 * end_byte - ends).astype(np.uint64)
    words &= (np.uint64(1) << slot_widths.reshape(-1).astype(np.uint64)) - np.uint64(1)
    out = words.astype(np.int64).reshape(-1, n_slots)
    if (out > counts[:, None] * np.asarray(max_values, dtype=np.int64)).any():
        raise PackingOverflowError("a record's slot exceeds its bin's bound")
    return out


def _unpack_records(plaintexts, widths, sizes, counts, low_bits, max_values):
    """:func:`unpack_records` with Python integers, for any slot width."""
    widths, sizes = widths.tolist(), sizes.tolist()
    out = np.zeros((len(widths), len(max_values)), dtype=object)
    pos = 0
    for m, size in zip(plaintexts, sizes):
        m = int(m)
        for j in range(pos + size - 1, pos - 1, -1):
            r = m & ((1 << widths[j]) - 1)
            m >>= widths[j]
            for k in range(len(low_bits), 0, -1):
                out[j, k] = r & ((1 << low_bits[k - 1]) - 1)
                r >>= low_bits[k - 1]
            out[j, 0] = r
        if m:
            raise PackingOverflowError("a packed plaintext overflowed its records")
        pos += size
    bounds = np.outer(
        np.asarray(counts.tolist(), dtype=object), np.asarray(max_values, dtype=object)
    )
    if (out > bounds).any():
        raise PackingOverflowError("a record's slot exceeds its bin's bound")
    return out.astype(np.int64)


def sent_bins(kept, n_features):
    """Which of a node's non-empty bins the host packs: all but each feature's last.

    Every feature's bins add up to the node's totals, which the guest knows, so the last
    non-empty bin of a feature is the totals minus the others: sending it would cost a
    record's squarings and decryption share for nothing. ``kept`` is the flat
    (feature-major) mask of non-empty bins; returns the mask of bins that are sent.
    """
    kept = np.asarray(kept, dtype=bool)
    if n_features == 0:
        return kept.copy()
    per_feature = kept.reshape(n_features, -1)
    sent = per_feature.copy()
    has = np.flatnonzero(per_feature.any(axis=1))
    last = per_feature.shape[1] - 1 - np.argmax(per_feature[has, ::-1], axis=1)
    sent[has, last] = False
    return sent.ravel()
