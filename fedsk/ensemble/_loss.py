"""Losses of gradient boosting: raw predictions of shape (n, K) in, gradients out."""

import numpy as np
from scipy.special import expit, logsumexp, softmax

__all__ = ["HalfSquaredError", "LogLoss", "MultinomialLoss"]


def _mean(values, weights):
    """Mean, weighted by ``weights`` when given (and not all zero)."""
    if weights is None or not weights.sum() > 0:
        return float(np.mean(values))
    return float(np.average(values, weights=weights))


class LogLoss:
    """Binary logistic loss; one raw score per sample."""

    n_trees_per_round = 1
    constant_hessian = False

    def baseline(self, y, weights=None):
        p = np.clip(_mean(y, weights), 1e-12, 1 - 1e-12)
        return np.array([np.log(p / (1 - p))])

    def gradients(self, y, raw):
        p = expit(raw[:, 0])
        return [(p - y, p * (1 - p))]

    def loss(self, y, raw, weights=None):
        r = raw[:, 0]
        return _mean(np.logaddexp(0, r) - y * r, weights)

    def proba(self, raw):
        p = expit(raw[:, 0])
        return np.column_stack([1 - p, p])


class MultinomialLoss:
    """Softmax cross-entropy; one tree (and raw score) per class per round."""

    constant_hessian = False

    def __init__(self, n_classes):
        self.n_trees_per_round = n_classes

    def baseline(self, y, weights=None):
        if weights is None or not weights.sum() > 0:
            weights = np.ones(len(y))
        prior = np.bincount(y, weights, minlength=self.n_trees_per_round) / weights.sum()
        logp = np.log(np.clip(prior, 1e-12, None))
        return logp - logp.mean()

    def gradients(self, y, raw):
        p = softmax(raw, axis=1)
        out = []
        for k in range(self.n_trees_per_round):
            pk = p[:, k]
            out.append((pk - (y == k), pk * (1 - pk)))
        return out

    def loss(self, y, raw, weights=None):
        return _mean(logsumexp(raw, axis=1) - raw[np.arange(len(y)), y], weights)

    def proba(self, raw):
        return softmax(raw, axis=1)


class HalfSquaredError:
    """0.5 * (y - raw)**2; one raw score per sample."""

    n_trees_per_round = 1
    constant_hessian = True  # h = 1 for every sample

    def baseline(self, y, weights=None):
        return np.array([_mean(y, weights)])

    def gradients(self, y, raw):
        g = raw[:, 0] - y
        return [(g, np.ones_like(g))]

    def loss(self, y, raw, weights=None):
        return 0.5 * _mean((y - raw[:, 0]) ** 2, weights)
