"""Best split of a node from its histogram (XGBoost's gain with L2 on the leaves).

For every feature and threshold bin ``b`` (non-missing bins ``<= b`` go left) the gain is
``0.5 * (G_L**2/(H_L+l2) + G_R**2/(H_R+l2) - G**2/(H+l2)) - min_split_gain``. When the
node has missing values for a feature, both directions for them are tried; when it has
none, they go to the child with more samples (as in scikit-learn's HGB). Ties are broken
by the first candidate in (feature, direction, bin) order, so any party that evaluates
the same integer histogram finds the same split.
"""

from dataclasses import dataclass

import numpy as np

__all__ = ["SplitInfo", "SplitParams", "find_best_split", "leaf_value"]


@dataclass(frozen=True)
class SplitParams:
    l2_regularization: float = 1.0
    min_child_weight: float = 1.0
    min_samples_leaf: int = 1
    min_split_gain: float = 0.0


@dataclass(frozen=True)
class SplitInfo:
    """A chosen split: feature (index in the histogram), threshold bin, missing side."""

    gain: float
    feature: int
    bin: int
    missing_left: bool
    left: tuple  # integer (G, H, count) of the left child
    right: tuple


def leaf_value(sum_g, sum_h, l2):
    """Newton step of a leaf, ``-G / (H + l2)`` (0 for an empty, unregularised leaf)."""
    denom = sum_h + l2
    return -sum_g / denom if denom > 0 else 0.0


def find_best_split(hist, total, g_scale, h_scale, params, features=None):
    """The best :class:`SplitInfo` of one node, or ``None`` when nothing is allowed.

    ``hist`` is the node's integer histogram, shape (n_features, n_bins_total, 3), with
    the last bin holding missing values; ``total`` the node's integer (G, H, count).
    ``features`` restricts the candidates.
    """
    n_features, n_bins_total, _ = hist.shape
    n_value_bins = n_bins_total - 1
    total = np.asarray(total, dtype=np.int64)
    values = hist[:, :n_value_bins, :]
    missing = hist[:, n_value_bins, :]  # (F, 3)
    cum = np.cumsum(values, axis=1)[:, :-1, :]  # left sums for thresholds 0..B-2
    has_missing = missing[:, 2] > 0

    left_r = cum  # missing go right
    left_l = cum + missing[:, None, :]  # missing go left
    # without missing values the side is decided by counts, identically on every party
    right_r = total[None, None, :] - left_r
    default_left = left_r[:, :, 2] >= right_r[:, :, 2]
    cand_left = np.stack([left_r, left_l], axis=1)  # (F, 2, B-1, 3)
    cand_right = total[None, None, None, :] - cand_left

    l2 = params.l2_regularization
    G, H = total[0] / g_scale, total[1] / h_scale
    GL, HL = cand_left[..., 0] / g_scale, cand_left[..., 1] / h_scale
    GR, HR = cand_right[..., 0] / g_scale, cand_right[..., 1] / h_scale
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = 0.5 * (GL * GL / (HL + l2) + GR * GR / (HR + l2) - G * G / (H + l2))
    gain = gain - params.min_split_gain
    ok = (
        (cand_left[..., 2] >= params.min_samples_leaf)
        & (cand_right[..., 2] >= params.min_samples_leaf)
        & (params.min_child_weight <= HL)
        & (params.min_child_weight <= HR)
        & (gain > 0)
        & np.isfinite(gain)
    )
    # the "missing go left" candidate only exists when there are missing values
    ok[:, 1, :] &= has_missing[:, None]
    if features is not None:
        mask = np.zeros(n_features, dtype=bool)
        mask[np.asarray(features, dtype=np.int64)] = True
        ok &= mask[:, None, None]
    if not ok.any():
        return None
    gain = np.where(ok, gain, -np.inf)
    f, d, b = np.unravel_index(int(np.argmax(gain)), gain.shape)
    missing_left = bool(d == 1) if has_missing[f] else bool(default_left[f, b])
    left = tuple(int(v) for v in cand_left[f, d, b])
    right = tuple(int(v) for v in cand_right[f, d, b])
    return SplitInfo(float(gain[f, d, b]), int(f), int(b), missing_left, left, right)
