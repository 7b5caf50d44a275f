"""The guest half of federated Pearson correlation: who sends what, and in which order.

With each host, on sessions whose rows are already aligned:

1. ``pearson.products``: the guest sends its public key and its standardised columns,
   encrypted; the host answers with the masked encrypted product sums.
2. ``pearson.result``: the guest sends back the masked sums it decrypted; the host
   unmasks them and answers with its block of the correlation matrix.

The host half is :mod:`fedsk.stats._host`; the encodings and the wire pair both use are
in :mod:`fedsk.stats._common`.
"""

import numpy as np

from ..crypto import decrypt_raw, encrypt, generate_keypair, residues_to_bytes
from ..exceptions import ProtocolError
from ..federation import Message, public_key_to_wire
from ._common import GUEST_EXPONENT, MIN_ROWS_PER_COLUMN, PRODUCT_EXPONENT

__all__ = ["check_rows_per_column", "guest_correlations"]


def check_rows_per_column(n_rows, n_columns, who):
    """Refuse to reveal correlations to a party with more than n / 10 columns."""
    if n_rows < MIN_ROWS_PER_COLUMN * n_columns:
        raise ValueError(
            f"{who} has {n_columns} columns, so federated_pearson needs at least "
            f"{MIN_ROWS_PER_COLUMN * n_columns} rows ({MIN_ROWS_PER_COLUMN} per column); X has "
            f"{n_rows}. With about as many columns as rows, a correlation matrix reveals the "
            "other party's standardised values."
        )


def guest_correlations(sessions, Z, *, key_length, n_jobs=None):
    """Correlations of the guest's standardised columns ``Z`` with every host's columns.

    Parameters
    ----------
    sessions : list of GuestSession
        One aligned session per host (:func:`~fedsk.federation.aligned_sessions`).
    Z : ndarray of shape (n_rows, n_columns)
        The guest's standardised columns, rows in the aligned order.
    key_length : int
    n_jobs : int, default=None

    Returns
    -------
    list of ndarray of shape (n_columns, n_host_columns)
        One block per host, NaN in the columns the host reports constant.
    """
    n_rows, n_columns = Z.shape
    for s in sessions:
        check_rows_per_column(n_rows, s.n_features, f"host {s.name!r}")
    public_key, private_key = generate_keypair(key_length)
    # One array of n * p ciphertexts: column after column, rows in the aligned order.
    # Every host gets the same ciphertexts; each masks its answer with its own randomness.
    encrypted = encrypt(private_key, Z.T.ravel(), exponent=GUEST_EXPONENT, n_jobs=n_jobs)
    return [_with_host(s, encrypted, private_key, n_columns, n_jobs) for s in sessions]


def _with_host(session, encrypted, private_key, n_columns, n_jobs):
    public_key = private_key.public_key
    n_host = session.n_features

    request = Message({"public_key": public_key_to_wire(public_key), "n_columns": n_columns})
    answer = session.call("pearson.products", request.add_encrypted("z", encrypted))
    try:
        masked = answer.encrypted("masked", public_key, length=n_columns * n_host)
        if masked.exponent != PRODUCT_EXPONENT:
            raise ValueError(f"ciphertexts are at exponent {masked.exponent}")
    except ValueError as exc:
        raise ProtocolError(f"host {session.name!r} sent bad masked products: {exc}") from None

    residues = decrypt_raw(private_key, masked, n_jobs=n_jobs)  # uniformly random mod n
    request = Message(arrays={"masked": residues_to_bytes(public_key, residues)})
    answer = session.call("pearson.result", request)
    try:
        corr = answer.array("correlation", kind="f", shape=(n_columns, n_host))
        constant = answer.array("constant", kind="b", shape=(n_host,))
    except ValueError as exc:
        raise ProtocolError(f"host {session.name!r} sent a bad result: {exc}") from None
    corr = corr.astype(np.float64)  # a writable copy
    corr[:, constant] = np.nan
    return corr
