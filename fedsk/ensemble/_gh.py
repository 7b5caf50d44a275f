"""How SecureBoost packs (g, h) of a sample into one Paillier plaintext.

Shared by the guest (which encrypts and decodes) and the host (which sums and packs), so
both compute the same slot widths from the same numbers.
"""

import numpy as np

from ..crypto import RecordLayout
from ..tree._histogram import GH_BITS, H_BITS

__all__ = ["GH_MAX_VALUES", "GH_PACKING", "G_MAX_VALUES", "gh_layout", "node_layout", "sent_bins"]

# per sample: g + 2**GH_BITS in [0, 2**(GH_BITS+1)] and h in [0, 2**H_BITS]. Counts are
# not encrypted: the host knows how many of a node's rows fall in each of its bins and
# sends that number in the clear (the guest would learn it from a decrypted count slot
# anyway), which saves a slot's width of squarings per packed bin and some decryptions.
GH_MAX_VALUES = (1 << (GH_BITS + 1), 1 << H_BITS)
# When every sample of a round has the same h, and that is public (the first round of a
# fresh fit starts from one baseline score; half squared error has h = 1), only g is
# packed: a bin's h sum is its count times that h, and counts travel in the clear.
G_MAX_VALUES = GH_MAX_VALUES[:1]

# Version of the SecureBoost exchange: the histogram packing (2: record layout per node,
# bins left out) and, since 3, one request per layer (splits and the next layer's
# histograms together). Both parties must agree on it, so the guest sends it with every
# round's gradients.
GH_PACKING = 3


def gh_layout(n_terms, key_length, max_values=GH_MAX_VALUES):
    """Record layout for sums over ``n_terms`` samples, and records per plaintext.

    A sample's (g + offset, h) (or g + offset alone, with ``G_MAX_VALUES``) is packed
    with these slot widths when it is encrypted, so ``n_terms`` is the number of rows of
    the round (the largest possible node).
    """
    layout = RecordLayout.for_sums(max_values, n_terms)
    return layout, layout.records_per_plaintext(key_length)


def node_layout(n_terms, n_rows, key_length, max_values=GH_MAX_VALUES):
    """Layout of one node's bin sums, and records per plaintext.

    The node holds ``n_rows`` of the round's ``n_terms`` rows. Its h slot keeps the width
    the samples were encrypted with (that fixes where the g slot starts), but the g slot
    on top only needs room for a sum of ``n_rows`` values, so small nodes pack closer:
    fewer squarings for the host and fewer decryptions for the guest. Both parties know
    ``n_rows``, so nothing new is revealed.
    """
    encrypted = RecordLayout.for_sums(max_values, n_terms)
    layout = RecordLayout(max_values, n_rows, widths=(None, *encrypted.slot_bits[1:]))
    return layout, layout.records_per_plaintext(key_length)


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
