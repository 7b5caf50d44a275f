"""Fixed-point encoding shared by a whole array (phe's convention).

A real number x is stored as the integer ``round(x * BASE ** -exponent)`` modulo n,
with phe's ``BASE = 16``. One exponent is shared by every value of an array, so that
adding two arrays is one modular multiplication per element and the exponent (which is
public, and would leak each value's magnitude) says nothing about any single value.
Negative numbers wrap around: values in ``(n - max_int, n)`` decode as negative.
"""

import numpy as np

from ..exceptions import FedskError

__all__ = ["BASE", "DEFAULT_EXPONENT", "decode", "encode", "to_signed"]

BASE = 16
DEFAULT_EXPONENT = -13  # 16 ** 13 == 2 ** 52: about 2.2e-16 absolute precision


def encode(values, exponent, max_int):
    """Encode a float (or integer) array as Python ints at ``exponent``.

    Raises ``ValueError`` for NaN/inf and for values outside the encodable range.
    """
    values = np.asarray(values)
    if values.dtype.kind in "iub":
        if exponent > 0:
            raise ValueError("integer arrays cannot be encoded at a positive exponent")
        ints = [int(v) << (-4 * exponent) for v in values.ravel().tolist()]
    else:
        values = np.asarray(values, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("cannot encrypt NaN or infinite values")
        scaled = np.rint(np.ldexp(values.ravel(), -4 * exponent))
        ints = [int(v) for v in scaled.tolist()]
    bound = int(max_int)
    if ints and max(abs(min(ints)), abs(max(ints))) > bound:
        raise ValueError(
            f"a value is too large to encode at exponent {exponent} with this key "
            f"(|x| * 16**{-exponent} must be <= {bound.bit_length()} bits)"
        )
    return ints


def to_signed(plains, n, max_int):
    """Map decrypted integers in [0, n) back to signed ints; raise on overflow."""
    n, max_int = int(n), int(max_int)
    out = []
    for m in plains:
        m = int(m)
        if m <= max_int:
            out.append(m)
        elif m >= n - max_int:
            out.append(m - n)
        else:
            raise FedskError(
                "a decrypted value is outside the encodable range: the encrypted "
                "computation overflowed (too many terms or too large values)"
            )
    return out


def decode(ints, exponent):
    """Signed integers at ``exponent`` back to a float64 array (correctly rounded)."""
    if exponent >= 0:
        scale = BASE**exponent
        return np.array([float(m * scale) for m in ints], dtype=np.float64)
    div = 1 << (-4 * exponent)
    return np.array([m / div for m in ints], dtype=np.float64)
