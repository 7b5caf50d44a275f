"""Depth-wise growth of one or several trees at once, whoever computes the histograms.

The grower works on positions ``0..n-1`` of the rows it is given. A boolean ``active``
mask marks the rows whose gradients count (sampled training rows); the other rows
(unsampled or validation rows) are routed through the splits but never summed. Growth
is layer by layer, and every tree of a boosting round (one per class) advances
together, so that one layer costs one exchange per party: it routes the rows of the
previous layer's splits and builds this layer's histograms. Of two siblings only the
smaller gets a histogram; the other is the parent minus it (exact, in integers).

Who computes a histogram or applies a split is the job of a *source* (see
:class:`LocalSource`): the federated source asks the hosts for their part.
"""

from dataclasses import dataclass, field

import numpy as np

from ..exceptions import ProtocolError
from ._histogram import build_histograms
from ._splitting import find_best_split, leaf_value

__all__ = ["ChildRows", "GrowerTree", "LocalSource", "Node", "TreeSpec", "child_rows", "grow_trees"]


@dataclass
class Node:
    depth: int
    rows: np.ndarray | None  # positions routed to this node (all rows); None until routed
    active: np.ndarray | None  # positions whose gradients count (subset of rows)
    total: np.ndarray  # integer (G, H, count) over the active rows
    hist: np.ndarray | None = None
    split: object = None  # SplitInfo
    record: object = None  # who holds the split: None (here) or (host index, record id)
    left: int = -1
    right: int = -1
    parent: int = -1
    value: float = 0.0


@dataclass
class TreeSpec:
    """One tree to grow: its quantised gradients and the features it may use."""

    qg: object  # QuantizedGradients over all positions
    features: np.ndarray | None = None
    slot: int = 0  # which of the round's trees (class) this is


@dataclass
class GrowerTree:
    nodes: list = field(default_factory=list)

    def leaf_values_of_rows(self, n_rows):
        """Value of the leaf every position ended in (positions never routed: 0)."""
        out = np.zeros(n_rows)
        for node in self.nodes:
            if node.left < 0:
                out[node.rows] = node.value
        return out


@dataclass(frozen=True)
class ChildRows:
    """The active rows of a child of split ``split`` of the same step, not known yet.

    A histogram request may name its rows this way: a party that applies the split
    computes the rows itself, so the split and the child's histogram take one exchange.
    """

    split: int
    left: bool


class LocalSource:
    """Histograms and partitions computed here from binned columns."""

    def __init__(self, binned, n_bins_total, missing_bin):
        self.binned, self.n_bins_total, self.missing_bin = binned, n_bins_total, missing_bin

    def step(self, splits, requests, active):
        """One exchange of a layer: apply ``splits``, then build ``requests``' histograms.

        ``splits`` are the previous layer's (see :meth:`partition`); a request's rows
        may be :class:`ChildRows` of them. ``active`` is the round's boolean mask of
        rows whose gradients count. Returns ``(partitions, histograms)``. A step with no
        requests is the last of the round (no node left can split).
        """
        parts = self.partition(splits) if splits else []
        resolved = [(spec, child_rows(rows, splits, parts, active)) for spec, rows in requests]
        return parts, (self.histograms(resolved) if resolved else [])

    def histograms(self, requests):
        """``requests``: list of ``(spec, active_rows)``; returns one histogram each."""
        return [
            build_histograms(self.binned, rows, spec.qg, self.n_bins_total, spec.features)
            for spec, rows in requests
        ]

    def party_of(self, record):
        """Who applied a split (for error messages)."""
        return "this party"

    def partition(self, splits):
        """``splits``: list of ``(rows, SplitInfo)``; returns ``(go_left, record)`` each."""
        out = []
        for rows, split in splits:
            col = self.binned[rows, split.feature]
            left = np.where(col == self.missing_bin, split.missing_left, col <= split.bin)
            out.append((left, None))
        return out


def child_rows(rows, splits, parts, active):
    """``rows`` itself, or the active rows a :class:`ChildRows` names once ``parts`` exist."""
    if not isinstance(rows, ChildRows):
        return rows
    parent = splits[rows.split][0]
    go = np.asarray(parts[rows.split][0], dtype=bool)
    side = parent[go if rows.left else ~go]
    return side[active[side]]


def _totals(qg, rows):
    return np.array([qg.g[rows].sum(), qg.h[rows].sum(), len(rows)], dtype=np.int64)


def grow_trees(source, specs, active, *, max_depth, params, learning_rate, n_rows):
    """Grow one tree per :class:`TreeSpec` on the same rows; return ``GrowerTree`` list.

    ``active`` is a boolean mask over positions ``0..n_rows-1``. Each layer is one
    :meth:`LocalSource.step` of ``source``: it routes the rows of the previous layer's
    splits and builds this layer's histograms together. The children of a split are
    sized from the split's histogram counts before their rows are known, so the smaller
    child can be asked for by reference (:class:`ChildRows`). The last step has no
    histogram requests.
    """
    active = np.asarray(active, dtype=bool)
    all_rows = np.arange(n_rows)
    act = np.flatnonzero(active)
    trees = [GrowerTree([Node(0, all_rows, act, _totals(s.qg, act))]) for s in specs]
    layer = [(t, 0) for t in range(len(specs))]
    split_nodes = []  # the previous layer's splits, whose children this step routes

    def splittable(node):
        return node.depth < max_depth and node.total[2] >= 2 * params.min_samples_leaf

    while True:
        # 1. histograms: only for nodes that may split; of two siblings the smaller is
        #    computed and the larger derived (parent - smaller) when it needs one
        requests, targets = [], []
        for t, i in layer:
            tree, node = trees[t], trees[t].nodes[i]
            if i == 0:
                if splittable(node):
                    requests.append((specs[t], node.active))
                    targets.append((t, i))
                continue
            parent, sibling = _parent_and_sibling(tree, i)
            if _sibling_derivable(tree, i):
                continue  # the sibling is the smaller one and is handled with it
            if splittable(node) or splittable(sibling):
                k = split_nodes.index((t, node.parent))
                requests.append((specs[t], ChildRows(k, parent.left == i)))
                targets.append((t, i))
        # 2. one exchange: route the previous splits' rows, build the histograms
        results, hists = source.step(
            [(trees[t].nodes[i].rows, trees[t].nodes[i].split) for t, i in split_nodes],
            requests,
            active,
        )
        for (t, i), (go_left, record) in zip(split_nodes, results):
            _route(trees[t], i, go_left, record, specs[t].qg, active, source)
        if not requests:
            for t, i in layer:  # nothing here can split: every node is a leaf
                _set_leaf(trees[t].nodes[i], specs[t].qg, learning_rate, params)
            break
        for (t, i), hist in zip(targets, hists):
            trees[t].nodes[i].hist = hist
        for t, i in layer:
            node = trees[t].nodes[i]
            if node.hist is None and i != 0 and splittable(node):
                parent, sibling = _parent_and_sibling(trees[t], i)
                node.hist = parent.hist - sibling.hist
        for t, i in layer:  # parents are done once both children have a histogram
            if trees[t].nodes[i].parent >= 0:
                trees[t].nodes[trees[t].nodes[i].parent].hist = None
        # 3. best split of every node of the layer (the split finder is the same everywhere)
        split_nodes, next_layer = [], []
        for t, i in layer:
            tree, node = trees[t], trees[t].nodes[i]
            qg = specs[t].qg
            split = None
            if splittable(node):
                split = find_best_split(
                    node.hist, node.total, qg.g_scale, qg.h_scale, params, specs[t].features
                )
            node.hist = None if split is None else node.hist
            if split is None:
                _set_leaf(node, qg, learning_rate, params)
                continue
            node.split = split
            split_nodes.append((t, i))
            for side in (split.left, split.right):  # rows come with the next step
                tree.nodes.append(
                    Node(node.depth + 1, None, None, np.array(side, dtype=np.int64), parent=i)
                )
                next_layer.append((t, len(tree.nodes) - 1))
            node.left, node.right = len(tree.nodes) - 2, len(tree.nodes) - 1
        layer = next_layer
    return trees


def _set_leaf(node, qg, learning_rate, params):
    node.value = learning_rate * leaf_value(
        node.total[0] / qg.g_scale, node.total[1] / qg.h_scale, params.l2_regularization
    )


def _route(tree, i, go_left, record, qg, active, source):
    """Give split node ``i``'s children their rows, once its party said which go left."""
    node = tree.nodes[i]
    node.record = record
    go_left = np.asarray(go_left, dtype=bool)
    # The left child must hold exactly the (G, H, count) the histogram promised: split
    # directions that disagree (a faulty or corrupted party) stop the fit.
    if len(go_left) != len(node.rows) or not np.array_equal(
        _totals(qg, node.rows[go_left & active[node.rows]]), node.split.left
    ):
        raise ProtocolError(
            f"the split directions from {source.party_of(record)} do not match the "
            "node's histogram: refusing to build a wrong model"
        )
    for child, mask in ((tree.nodes[node.left], go_left), (tree.nodes[node.right], ~go_left)):
        child.rows = node.rows[mask]
        child.active = child.rows[active[child.rows]]


def _parent_and_sibling(tree, i):
    parent = tree.nodes[tree.nodes[i].parent]
    return parent, tree.nodes[parent.right if parent.left == i else parent.left]


def _sibling_derivable(tree, i):
    """A child is derived from its parent when its sibling is the smaller (or equal, left)."""
    if i == 0:
        return False
    parent, sibling = _parent_and_sibling(tree, i)
    # sizes from the split's counts: the children's rows may not be known yet
    mine, theirs = tree.nodes[i].total[2], sibling.total[2]
    if mine != theirs:
        return mine > theirs
    return parent.right == i  # equal sizes: compute the left child, derive the right
