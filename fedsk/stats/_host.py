"""The host half of federated Pearson correlation: plain functions the party server calls.

Two requests per guest, in this order (routes in :mod:`fedsk.federation._routes`):

``products(ctx, msg)`` (``pearson.products``)
    The guest's standardised columns, encrypted under its key, arrive; the host
    standardises its own aligned columns, computes every encrypted product sum
    ``Z_h^T [[z_g]]``, adds a fresh uniform mask to each, re-randomises and answers
    with the masked ciphertexts. It keeps the masks in the session.
``result(ctx, msg)`` (``pearson.result``)
    The guest sends back the masked sums it decrypted; the host removes its masks,
    divides by n and answers with the correlation matrix.

Every field is validated before use; anything the host refuses raises a
:class:`~fedsk.exceptions.RequestError` subclass, which the party server turns into a
JSON 4xx answer.
"""

import secrets

import numpy as np

from ..crypto import EncryptedArray, encrypt_integers, residues_from_bytes
from ..exceptions import BadMessageError, ConflictError
from ..federation import Message, aligned_rows, public_key_from_wire
from ._common import (
    GUEST_EXPONENT,
    HOST_EXPONENT,
    MIN_ROWS_PER_COLUMN,
    PRODUCT_EXPONENT,
    standardise,
)

__all__ = ["products", "result"]


def _column_labels(dataset, columns):
    names = dataset.feature_names
    return [names[k] if names is not None else k for k in np.flatnonzero(columns).tolist()]


def products(ctx, msg):
    """Masked encrypted sums ``Z_h^T [[z_g]] + R`` for every (guest, host) column pair.

    Request: meta ``public_key`` (the guest's, at least ``ctx.min_key_length`` bits)
    and ``n_columns`` (p); ciphertexts ``z``: the p standardised guest columns, one
    after the other, each in the order of the aligned rows, at exponent
    ``GUEST_EXPONENT``. Answer: ciphertexts ``masked``, p * q of them, guest-column
    major, at exponent ``PRODUCT_EXPONENT``.
    """
    rows = aligned_rows(ctx)
    n_rows = len(rows)
    key = public_key_from_wire(msg.field("public_key", dict), min_key_length=ctx.min_key_length)
    n_columns = msg.field("n_columns", int, minimum=1)
    if n_rows < MIN_ROWS_PER_COLUMN * n_columns:
        raise ConflictError(
            f"{n_columns} guest columns need at least {MIN_ROWS_PER_COLUMN * n_columns} "
            f"aligned rows ({MIN_ROWS_PER_COLUMN} per column), this session has {n_rows}",
            code="too_many_columns",
        )
    z = msg.encrypted("z", key, length=n_columns * n_rows)
    if z.exponent != GUEST_EXPONENT:
        raise BadMessageError(f"ciphertext array 'z' must be at exponent {GUEST_EXPONENT}")

    X = ctx.dataset.X[rows]
    missing = np.isnan(X).any(axis=0)
    if missing.any():
        raise ConflictError(
            f"host columns {_column_labels(ctx.dataset, missing)} have missing values in "
            "the aligned rows; Pearson correlation needs complete columns (the host can "
            "impute them or leave them out of the dataset's 'features')",
            code="missing_values",
        )
    Z, constant = standardise(X)

    sums = EncryptedArray.concat(
        z[j * n_rows : (j + 1) * n_rows].dot(Z, exponent=HOST_EXPONENT, n_jobs=ctx.n_jobs)
        for j in range(n_columns)
    )
    # A uniform mask mod n hides each sum perfectly from the guest, which decrypts it.
    masks = [secrets.randbelow(int(key.n)) for _ in range(len(sums))]
    masked = sums.add(encrypt_integers(key, masks, exponent=sums.exponent, n_jobs=ctx.n_jobs))
    ctx.session.state["pearson"] = {
        "key": key,
        "masks": masks,
        "n_columns": n_columns,
        "n_rows": n_rows,
        "constant": constant,
    }
    # Re-randomise everything computed from the guest's ciphertexts before it leaves.
    return Message().add_encrypted("masked", masked.rerandomise(n_jobs=ctx.n_jobs))


def result(ctx, msg):
    """Unmask the sums the guest decrypted and answer with the correlation matrix.

    Request: array ``masked``, the p * q decrypted masked sums as residues mod n
    (:func:`fedsk.crypto.residues_to_bytes`). Answer: arrays
    ``correlation`` (p, q) float64, 0 where a host column is constant, and ``constant``
    (q,) bool. Each set of masks is used once.
    """
    state = ctx.session.state.get("pearson")
    if state is None:
        raise ConflictError("send the encrypted columns (pearson) before asking for the result")
    key, masks = state["key"], state["masks"]
    n_columns, n_host = state["n_columns"], len(state["constant"])
    width = (key.key_length + 7) // 8
    array = msg.array("masked", kind="u", shape=(n_columns * n_host, width))
    try:
        residues = residues_from_bytes(key, array)
    except ValueError as exc:
        raise BadMessageError(f"array 'masked': {exc}") from None
    del ctx.session.state["pearson"]

    n = int(key.n)
    divisor = (1 << (-4 * PRODUCT_EXPONENT)) * state["n_rows"]
    corr = np.empty(len(residues))
    for i, (value, mask) in enumerate(zip(residues, masks)):
        s = (value - mask) % n
        s = s - n if s > n // 2 else s  # back to a signed fixed-point integer
        corr[i] = s / divisor  # correctly rounded int / int
    if not (np.abs(corr) <= 1 + 1e-6).all():
        raise BadMessageError(
            "array 'masked' does not unmask to correlations in [-1, 1]: it was not "
            "decrypted from this session's masked sums"
        )
    corr = np.clip(corr, -1.0, 1.0).reshape(n_columns, n_host)
    return Message(arrays={"correlation": corr, "constant": state["constant"]})
