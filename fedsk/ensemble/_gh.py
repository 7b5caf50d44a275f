"""How SecureBoost packs (g, h) of a sample into one Paillier plaintext.

Shared by the guest (which encrypts and decodes) and the host (which sums and packs), so
both compute the same slot widths from the same numbers.
"""

from ..crypto import RecordLayout
from ..tree._histogram import GH_BITS, H_BITS

__all__ = ["GH_MAX_VALUES", "gh_layout"]

# per sample: g + 2**GH_BITS in [0, 2**(GH_BITS+1)] and h in [0, 2**H_BITS]. Counts are
# not encrypted: the host knows how many of a node's rows fall in each of its bins and
# sends that number in the clear (the guest would learn it from a decrypted count slot
# anyway), which saves a slot's width of squarings per packed bin and some decryptions.
GH_MAX_VALUES = (1 << (GH_BITS + 1), 1 << H_BITS)


def gh_layout(n_terms, key_length):
    """Record layout for sums over ``n_terms`` samples, and records per plaintext.

    A sample's (g + offset, h) is packed with these slot widths when it is encrypted, so
    ``n_terms`` is the number of rows of the round (the largest possible node).
    """
    layout = RecordLayout.for_sums(GH_MAX_VALUES, n_terms)
    return layout, layout.records_per_plaintext(key_length)
