"""Deterministic quantile binning, the same code on every party.

Every party bins its own columns from the same training rows with this code, so the
federated histograms are exactly those the centralised reference would build on the
joined columns. Non-missing values of a column go to bins ``0 .. n_bins-1`` (at most
``max_bins``); NaN goes to the dedicated bin ``max_bins``. A sample is in bin ``b`` when
``#{thresholds < x} == b``, so ``bin <= b`` is the same as ``x <= thresholds[b]``.
"""

import numpy as np

__all__ = ["BinMapper", "find_thresholds"]


def find_thresholds(values, max_bins):
    """Split points of one column: midpoints of distinct values or of quantiles."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return np.empty(0)
    distinct = np.unique(values)
    if len(distinct) <= max_bins:
        mids = (distinct[:-1] + distinct[1:]) * 0.5
    else:
        percentiles = np.linspace(0, 100, num=max_bins + 1)[1:-1]
        mids = np.unique(np.percentile(values, percentiles, method="midpoint"))
    return np.asarray(mids, dtype=np.float64)


class BinMapper:
    """Per-column thresholds learnt from training rows.

    Parameters
    ----------
    max_bins : int
        Bins for non-missing values; one more bin (index ``max_bins``) holds NaN.
    """

    def __init__(self, max_bins=32):
        self.max_bins = int(max_bins)

    @property
    def n_bins_total(self):
        """Width of a histogram: ``max_bins`` value bins plus the missing-value bin."""
        return self.max_bins + 1

    @property
    def missing_bin(self):
        return self.max_bins

    def fit(self, X):
        X = np.asarray(X, dtype=np.float64)
        self.thresholds_ = [find_thresholds(X[:, j], self.max_bins) for j in range(X.shape[1])]
        return self

    def transform(self, X):
        X = np.asarray(X, dtype=np.float64)
        dtype = np.uint8 if self.max_bins < 255 else np.uint16
        out = np.empty(X.shape, dtype=dtype)
        for j, t in enumerate(self.thresholds_):
            col = X[:, j]
            b = np.searchsorted(t, col, side="left")
            b[np.isnan(col)] = self.missing_bin
            out[:, j] = b
        return out

    def fit_transform(self, X):
        return self.fit(X).transform(X)

    def threshold(self, feature, bin_index):
        """The real value behind "bin <= bin_index" of ``feature``.

        ``+inf`` past the last threshold: the split then separates every non-missing
        value (left) from the missing ones (right).
        """
        t = self.thresholds_[feature]
        return float(t[bin_index]) if bin_index < len(t) else float("inf")
