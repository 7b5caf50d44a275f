"""Integer histograms of quantised gradients: exact, so every party agrees bit for bit.

Gradients and hessians are quantised to integers (:func:`quantize`) before any
histogram is built, on the local path and on the federated one alike. Sums of integers
are exact (in float64 while below 2**53, and under Paillier), so the federated
histograms equal the centralised ones exactly and both paths choose the same splits.
A histogram has shape ``(n_features, n_bins_total, 3)``: integer sums of g, h and the
sample count per bin.
"""

from dataclasses import dataclass

import numpy as np

__all__ = ["GH_BITS", "H_BITS", "QuantizedGradients", "build_histograms", "quantize"]

GH_BITS = 16  # |g_int| <= 2**GH_BITS
H_BITS = 10  # 0 <= h_int <= 2**H_BITS: hessians are bounded and need less precision


@dataclass
class QuantizedGradients:
    """Integer gradients ``g_int = rint(g * g_scale)``, hessians likewise."""

    g: np.ndarray  # int64
    h: np.ndarray  # int64
    g_scale: float
    h_scale: float


def _pow2_scale(max_abs, bits):
    if not np.isfinite(max_abs) or max_abs <= 0:
        return float(2**bits)
    return float(2.0 ** np.floor(np.log2((2**bits) / max_abs)))


def quantize(g, h):
    """Quantise one tree's gradients to ``GH_BITS`` and hessians to ``H_BITS`` bits.

    The scales are powers of two chosen from the largest magnitude, so that integer
    sums convert back to floats exactly.
    """
    g_scale = _pow2_scale(np.max(np.abs(g), initial=0.0), GH_BITS)
    h_scale = _pow2_scale(np.max(h, initial=0.0), H_BITS)
    return QuantizedGradients(
        np.rint(g * g_scale).astype(np.int64),
        np.rint(h * h_scale).astype(np.int64),
        g_scale,
        h_scale,
    )


def build_histograms(binned, rows, qg, n_bins_total, features=None):
    """Histograms of the samples ``rows`` over the columns of ``binned``.

    ``features`` restricts the columns (others are left at zero).
    """
    n_features = binned.shape[1]
    out = np.zeros((n_features, n_bins_total, 3), dtype=np.int64)
    cols = np.arange(n_features) if features is None else np.asarray(features, dtype=np.int64)
    if len(rows) == 0 or len(cols) == 0:
        return out
    sub = binned[np.ix_(rows, cols)].astype(np.int64)
    flat = (sub + (np.arange(len(cols)) * n_bins_total)[None, :]).ravel()
    size = len(cols) * n_bins_total
    k = len(cols)
    for slot, w in enumerate((qg.g[rows], qg.h[rows], None)):
        weights = None if w is None else np.repeat(w.astype(np.float64), k)
        sums = np.bincount(flat, weights=weights, minlength=size)
        out[cols, :, slot] = np.rint(sums).astype(np.int64).reshape(k, n_bins_total)
    return out
