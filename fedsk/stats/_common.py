"""What both halves of federated Pearson agree on: encodings, standardisation, wire pair.

The guest half (:mod:`fedsk.stats._protocol`) and the host half
(:mod:`fedsk.stats._host`) import these, so a change to the protocol is made in one
place.
"""

import numpy as np

__all__ = [
    "GUEST_EXPONENT",
    "HOST_EXPONENT",
    "MIN_ROWS_PER_COLUMN",
    "PRODUCT_EXPONENT",
    "standardise",
]

# Fixed-point exponents (base 16) of the encrypted products. The guest's standardised
# values are encrypted at 16**-13 = 2**-52; the host multiplies them by its own
# standardised values encoded at 16**-10 = 2**-40, so every product sum is an integer at
# 16**-23. The correlation's encoding error is below 2**-40 (about 1e-12).
GUEST_EXPONENT = -13
HOST_EXPONENT = -10
PRODUCT_EXPONENT = GUEST_EXPONENT + HOST_EXPONENT

# A party reveals correlations only to a peer with at most n / 10 columns: a peer with
# about as many (independent) columns as there are rows could solve the correlation
# matrix for the party's standardised values (see the Notes of federated_pearson).
MIN_ROWS_PER_COLUMN = 10


def standardise(X):
    """Scale every column of ``X`` to mean 0 and population standard deviation 1.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_columns)
        Finite values.

    Returns
    -------
    Z : ndarray of shape (n_rows, n_columns)
        The standardised columns; a constant column (all its values equal) becomes 0.
    constant : ndarray of shape (n_columns,), dtype bool
        Which columns are constant: their correlations are undefined (NaN).
    """
    X = np.asarray(X, dtype=np.float64)
    centred = X - X.mean(axis=0)
    # Divide by the largest deviation first so that squaring neither overflows nor
    # underflows; then a column is constant exactly when all its values are equal.
    scale = np.abs(centred).max(axis=0, initial=0.0)
    constant = (X[:1] == X).all(axis=0) | (scale == 0)
    scale[constant] = 1.0
    unit = centred / scale
    unit[:, constant] = 0.0
    rms = np.sqrt((unit**2).mean(axis=0))
    rms[constant] = 1.0
    Z = unit / rms
    return Z, constant
