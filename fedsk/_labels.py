"""Labels of the classifiers: one clear error for each way they can be unusable.

Shared by SecureBoost and logistic regression, local or federated, so the same bad
``y`` gets the same words from both.
"""

from numbers import Number

import numpy as np
import pandas as pd
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets

__all__ = ["check_labels", "encode_classes"]


def check_labels(y, X):
    """Missing or infinite labels: say how many, where, and what to do."""
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.dtype.kind not in "fO":
        return  # validate_data reports the other problems
    missing = pd.isna(arr)
    infinite = np.zeros(len(arr), bool) if arr.dtype.kind == "O" else np.isinf(arr)
    named = isinstance(X, pd.DataFrame) and len(X) == len(arr)
    for bad, what, word in ((missing, "NaN", "missing"), (infinite, "infinity", "infinite")):
        if bad.any():
            if named:
                where = f"rows {X.index[bad][:3].tolist()}"
            else:
                where = f"positions {np.flatnonzero(bad)[:3].tolist()}"
            raise ValueError(
                f"Input y contains {what}: {int(bad.sum())} of {len(arr)} labels are {word} "
                f"(e.g. {where}); drop those rows from X and y before fitting"
            )


def encode_classes(y):
    """A fitted ``LabelEncoder`` of the class labels ``y``, and ``y`` encoded.

    Labels of several kinds (numbers and text, e.g. after a partial recode) cannot be
    sorted into classes: that is said in so many words, whatever the rows' order.
    """
    arr = np.asarray(y, dtype=object) if np.asarray(y).dtype.kind == "O" else None
    if arr is not None and arr.ndim == 1:
        kinds = {_kind(v) for v in arr.tolist()}
        if len(kinds) > 1:
            names = sorted({type(v).__name__ for v in arr.tolist()})
            raise ValueError(
                f"y mixes labels of types {names}, which cannot be sorted into classes; "
                "give every label the same type (e.g. y.astype(str))"
            )
    check_classification_targets(y)
    encoder = LabelEncoder()
    return encoder, encoder.fit_transform(y)


def _kind(value):
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, Number):
        return "number"
    return type(value).__name__
