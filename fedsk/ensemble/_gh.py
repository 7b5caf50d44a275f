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
    top = [(int(max_values[0]) * int(c)).bit_length() for c in counts.tolist()]
    return np.asarray(top, dtype=np.int64) + low


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
    """
    low_bits = gh_layout(n_terms, max_values).slot_bits[1:]
    widths = np.asarray(widths).tolist()
    out = np.zeros((len(widths), len(max_values)), dtype=object)
    if len(plaintexts) != len(sizes) or sum(sizes) != len(widths):
        raise PackingOverflowError("the plaintexts do not hold the records expected")
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
    bounds = np.outer(np.asarray(counts, dtype=object), np.asarray(max_values, dtype=object))
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
