"""Federated Pearson correlation: the public function (the API layer).

It checks the user's input, standardises the guest's columns, opens aligned sessions
and labels the result; who sends what is in :mod:`fedsk.stats._protocol` (guest half)
and :mod:`fedsk.stats._host` (host half).
"""

import numpy as np
import pandas as pd
from sklearn.utils import check_array

from ..crypto import MIN_KEY_LENGTH
from ..federation import aligned_sessions, check_federated_X
from ._common import standardise
from ._protocol import check_rows_per_column, guest_correlations

__all__ = ["federated_pearson"]


def federated_pearson(X, federation, *, key_length=2048, n_jobs=None):
    """Pearson correlation between the guest's columns and every host's columns.

    FATE's HeteroPearson: each party standardises its own columns over the rows both
    hold, and the products of the two are summed under Paillier encryption with
    masking, so that neither party sees a value of the other's.

    Parameters
    ----------
    X : pandas.DataFrame of shape (n_samples, n_features)
        The guest's numeric columns, indexed by sample ID. Every ID must be held by
        every host (rows are aligned by private set intersection first). No missing
        values.
    federation : Federation
        The hosts, e.g. a :class:`~fedsk.federation.LocalFederation`.
    key_length : int, default=2048
        Bits of the Paillier key the guest generates for this call.
    n_jobs : int, default=None
        Workers of joblib's active backend for the guest's encryption and decryption.

    Returns
    -------
    correlation : pandas.DataFrame of shape (n_features, n_host_features)
        One row per column of ``X``; one column per host column, named
        ``"<host>:<name>"`` when the host publishes its column names and
        ``"<host>:<index>"`` otherwise. A constant column (all its values equal over
        the rows) has NaN correlations, as in :func:`numpy.corrcoef`.

    Raises
    ------
    TypeError
        If ``X`` is not a DataFrame.
    ValueError
        If ``X`` has missing, infinite or non-numeric values, rows a host does not hold,
        or fewer than 10 rows per column of the other party (see Notes).
    fedsk.exceptions.ProtocolError
        If a host refuses (its data has missing values in those rows, it needs a longer
        key) or answers something malformed.

    See Also
    --------
    numpy.corrcoef : The same statistic on columns held in one place.

    Notes
    -----
    **Protocol**, with one host (each host runs the same independently). Let n be the
    number of rows, p the guest's columns and q the host's.

    1. The guest and the host align their rows by private set intersection.
    2. Each party standardises its own columns over those n rows (mean 0, population
       standard deviation 1); a constant column becomes 0.
    3. The guest generates a Paillier key pair and sends the public key, p, and its
       n * p standardised values encrypted at one shared exponent.
    4. For each guest column j and host column k the host computes
       ``[[S_jk]] = sum_i Z_h[i, k] * [[Z_g[i, j]]]`` (a multi-exponentiation), adds
       a fresh mask ``R_jk`` drawn uniformly modulo the key's n, re-randomises, and
       answers with the p * q ciphertexts. It keeps the masks.
    5. The guest decrypts ``S_jk + R_jk mod n`` and sends these p * q numbers back.
    6. The host subtracts its masks, divides by n, and answers with the correlation
       matrix ``S / n`` and which of its columns are constant. It forgets the masks.

    **What each party learns.** The guest learns n, q (and the host's column names if
    it publishes them), the p x q correlation matrix and which host columns are
    constant over the aligned rows. The host learns n, p and the same matrix, as the
    exact fixed-point sums ``S`` (0 in the rows of constant guest columns); its host
    half does not store it, but a curious host could. The guest's
    values cross only encrypted under the guest's key; the host's values never cross;
    what the guest decrypts in step 5 is uniformly random. Neither party sees any
    individual value, mean or standard deviation of the other's. The matrix itself is
    ``Z_g.T @ Z_h / n``: it tells each party the projection of each of the other
    party's standardised columns onto the span of its own standardised columns, and
    nothing about the rest. With n - 1 independent columns that projection would be
    the whole column, so each side refuses a peer with more than n / 10 columns
    (``ValueError`` here, a 409 ``too_many_columns`` at the host). If the host's data
    has missing values in the aligned rows, its refusal names those host columns.
    Step 1 discloses what private set intersection does: which rows both hold (to
    both) and each side's number of IDs (to the other); no ID outside the
    intersection.

    The parties are assumed honest-but-curious. A guest that encrypted vectors of its
    choice instead of standardised columns (say, an indicator of one row) would learn
    individual host values: the host cannot check what it multiplies. A host could
    answer a wrong matrix.

    The correlations' encoding error is below 1e-12.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from fedsk import LocalFederation
    >>> from fedsk.stats import federated_pearson
    >>> rng = np.random.default_rng(0)
    >>> ids = [f"c{i}" for i in range(100)]
    >>> income = rng.normal(size=100)
    >>> bank = pd.DataFrame({"income": income, "balance": rng.normal(size=100)}, index=ids)
    >>> insurer = pd.DataFrame({"premium": income + rng.normal(size=100)}, index=ids)
    >>> with LocalFederation(hosts={"insurer": insurer}) as fed:
    ...     corr = federated_pearson(bank, fed, key_length=1024)
    >>> corr.round(3)
             insurer:premium
    income             0.647
    balance            0.060
    >>> joined = bank.join(insurer)
    >>> bool(np.allclose(corr, joined.corr().loc[["income", "balance"], ["premium"]]))
    True
    """
    if not isinstance(X, pd.DataFrame):
        raise TypeError(
            "federated_pearson needs X as a pandas DataFrame indexed by sample ID (the IDs "
            f"align your rows with the hosts' rows); got {type(X).__name__}"
        )
    check_federated_X(X, federated_pearson)  # unique sample IDs, none missing
    if not isinstance(key_length, int) or key_length < MIN_KEY_LENGTH:
        raise ValueError(f"key_length must be an int >= {MIN_KEY_LENGTH}, got {key_length!r}")
    values = check_array(X, dtype=np.float64, ensure_min_samples=2, input_name="X")
    check_rows_per_column(*values.shape, "X")
    Z, constant = standardise(values)

    ids = X.index.to_numpy()
    with aligned_sessions(federation, ids, protocol="pearson", n_jobs=n_jobs) as sessions:
        blocks = guest_correlations(sessions, Z, key_length=key_length, n_jobs=n_jobs)
        labels = [
            f"{s.name}:{name}" for s in sessions for name in s.feature_names or range(s.n_features)
        ]
    corr = np.hstack(blocks)
    corr[constant, :] = np.nan
    return pd.DataFrame(corr, index=X.columns.copy(), columns=labels)
