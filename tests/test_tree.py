"""The tree core alone: binning, integer histograms, split finding, growth on pre-binned data."""

import numpy as np
import pytest

from fedsk.tree import (
    BinMapper,
    LocalSource,
    SplitParams,
    TreePredictor,
    TreeSpec,
    build_histograms,
    find_best_split,
    grow_trees,
    quantize,
)
from fedsk.tree._histogram import GH_BITS, H_BITS

rng = np.random.default_rng(0)


def test_binning_is_deterministic_and_matches_thresholds():
    X = rng.normal(size=(500, 3))
    X[::7, 1] = np.nan
    X[:, 2] = np.round(X[:, 2])  # few distinct values
    m = BinMapper(16).fit(X)
    b = m.transform(X)
    assert b.max() <= 16 and (b[np.isnan(X)] == m.missing_bin).all()
    assert len(m.thresholds_[2]) == len(np.unique(X[:, 2])) - 1
    for j in range(3):
        for bin_ in range(len(m.thresholds_[j])):
            ok = ~np.isnan(X[:, j])
            # "bin <= b" is exactly "x <= threshold[b]"
            assert ((b[ok, j] <= bin_) == (X[ok, j] <= m.threshold(j, bin_))).all()
    m2 = BinMapper(16).fit(X.copy())
    assert all(np.array_equal(a, c) for a, c in zip(m.thresholds_, m2.thresholds_))
    assert m.threshold(0, 99) == np.inf


def test_quantize_is_exact_in_sums():
    g = rng.normal(size=1000)
    h = rng.uniform(0, 0.25, size=1000)
    q = quantize(g, h)
    assert np.abs(q.g).max() <= 2**GH_BITS and q.h.max() <= 2**H_BITS and q.h.min() >= 0
    assert np.abs(q.g / q.g_scale - g).max() <= 0.5 / q.g_scale
    # power-of-two scales: integer sums convert back to floats exactly
    assert float(q.g.sum()) / q.g_scale == q.g.sum() / q.g_scale


def test_histograms_are_integer_sums():
    binned = rng.integers(0, 5, size=(200, 2)).astype(np.uint8)
    q = quantize(rng.normal(size=200), np.ones(200))
    rows = np.arange(0, 200, 3)
    hist = build_histograms(binned, rows, q, 5)
    for j in range(2):
        for b in range(5):
            sel = rows[binned[rows, j] == b]
            assert hist[j, b].tolist() == [q.g[sel].sum(), q.h[sel].sum(), len(sel)]


def test_split_finder_picks_the_obvious_split_and_missing_side():
    # feature 0 separates the gradients perfectly at bin 1; feature 1 is noise
    binned = np.array([[0, 0], [1, 1], [2, 0], [3, 1], [4, 4]] * 20, dtype=np.uint8)
    g = np.where(binned[:, 0] <= 1, -1.0, 1.0)
    g[binned[:, 0] == 4] = -1.0  # the "missing" bin (n_bins_total=5) behaves like the left
    q = quantize(g, np.ones(len(g)))
    rows = np.arange(len(g))
    hist = build_histograms(binned, rows, q, 5)
    total = [q.g.sum(), q.h.sum(), len(g)]
    s = find_best_split(hist, total, q.g_scale, q.h_scale, SplitParams(l2_regularization=0.0))
    assert (s.feature, s.bin, s.missing_left) == (0, 1, True)
    assert s.left[2] == 60 and s.right[2] == 40
    none = find_best_split(hist, total, q.g_scale, q.h_scale, SplitParams(min_samples_leaf=80))
    assert none is None


def test_grower_on_prebinned_data_routes_every_row():
    X = rng.normal(size=(300, 4))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(float)
    m = BinMapper(32).fit(X)
    source = LocalSource(m.transform(X), m.n_bins_total, m.missing_bin)
    active = np.zeros(300, bool)
    active[:250] = True  # the last 50 rows are routed but not summed
    p = np.full(300, y.mean())
    q = quantize(np.where(active, p - y, 0), np.where(active, p * (1 - p), 0))
    [tree] = grow_trees(
        source,
        [TreeSpec(q)],
        active,
        max_depth=3,
        params=SplitParams(),
        learning_rate=1.0,
        n_rows=300,
    )
    leaves = [n for n in tree.nodes if n.left < 0]
    assert sum(len(n.rows) for n in leaves) == 300
    assert sum(len(n.active) for n in leaves) == 250
    assert max(n.depth for n in tree.nodes) <= 3
    pred = TreePredictor.from_grower(tree, m.threshold, 4)
    # the predictor on raw values agrees with the grower's routing on binned values
    np.testing.assert_array_equal(pred.predict(X), tree.leaf_values_of_rows(300))
    assert pred.max_depth == 3


@pytest.mark.parametrize("max_depth", [1, 2, 4])
def test_only_smaller_children_get_histograms(max_depth):
    class Counting(LocalSource):
        sizes = []

        def histograms(self, requests):
            self.sizes.extend(len(r) for _, r in requests)
            return super().histograms(requests)

    X = rng.normal(size=(400, 3))
    y = (X[:, 0] > 0).astype(float)
    m = BinMapper(16).fit(X)
    src = Counting(m.transform(X), m.n_bins_total, m.missing_bin)
    src.sizes = []
    q = quantize(0.5 - y, np.full(400, 0.25))
    [tree] = grow_trees(
        src,
        [TreeSpec(q)],
        np.ones(400, bool),
        max_depth=max_depth,
        params=SplitParams(min_child_weight=0),
        learning_rate=1,
        n_rows=400,
    )
    splits = [n for n in tree.nodes if n.left >= 0]
    parents_below_max = [n for n in splits if n.depth < max_depth - 1]
    # the root, then one child per split parent whose children may split again
    assert len(src.sizes) == 1 + len(parents_below_max)
    for n in parents_below_max:
        a, b = tree.nodes[n.left], tree.nodes[n.right]
        assert min(len(a.active), len(b.active)) in src.sizes
