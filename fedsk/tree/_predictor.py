"""Compact trees for prediction: local thresholds, or host records answered by the host."""

from dataclasses import dataclass

import numpy as np

__all__ = ["TreePredictor"]


@dataclass
class TreePredictor:
    """One tree as flat arrays.

    A node splits on a local column (``feature >= 0``: go left when
    ``x <= threshold``, NaN goes to ``missing_left``) or on a host's record
    (``host >= 0``: the host's decision for ``record``); leaves have ``left == -1``.
    """

    feature: np.ndarray
    threshold: np.ndarray
    missing_left: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    host: np.ndarray
    record: np.ndarray
    gain: np.ndarray
    count: np.ndarray
    split_feature: np.ndarray  # global feature index of every split (importances only)

    @classmethod
    def from_grower(cls, tree, threshold_of, n_local_features):
        """Build from a :class:`~fedsk.tree._grower.GrowerTree`.

        ``threshold_of(feature, bin)`` gives the real threshold of a local split; splits
        on features ``>= n_local_features`` must carry a host record.
        """
        n = len(tree.nodes)
        out = cls(
            feature=np.full(n, -1, np.int32),
            threshold=np.full(n, np.nan),
            missing_left=np.zeros(n, bool),
            left=np.full(n, -1, np.int32),
            right=np.full(n, -1, np.int32),
            value=np.zeros(n),
            host=np.full(n, -1, np.int16),
            record=np.full(n, -1, np.int32),
            gain=np.zeros(n),
            count=np.zeros(n, np.int64),
            split_feature=np.full(n, -1, np.int32),
        )
        for i, node in enumerate(tree.nodes):
            out.value[i] = node.value
            out.count[i] = node.total[2]
            if node.left < 0:
                continue
            s = node.split
            out.left[i], out.right[i] = node.left, node.right
            out.missing_left[i] = s.missing_left
            out.gain[i] = s.gain
            out.split_feature[i] = s.feature
            if node.record is None:
                if s.feature >= n_local_features:
                    raise AssertionError("a host split without a host record")
                out.feature[i] = s.feature
                out.threshold[i] = threshold_of(s.feature, s.bin)
            else:
                out.host[i], out.record[i] = node.record
        return out

    @property
    def max_depth(self):
        depth = np.zeros(len(self.left), np.int64)
        for i in range(len(self.left)):
            if self.left[i] >= 0:
                depth[self.left[i]] = depth[self.right[i]] = depth[i] + 1
        return int(depth.max(initial=0))

    def predict(self, X, host_decisions=None):
        """Leaf values for the rows of ``X`` (local columns).

        ``host_decisions[h]`` is a bool array (n_rows, n_records of host h): the host's
        answer "goes left" for each of its records.
        """
        n = X.shape[0]
        node = np.zeros(n, dtype=np.int64)
        for _ in range(len(self.left)):
            nd = node
            internal = self.left[nd] >= 0
            if not internal.any():
                break
            idx = np.flatnonzero(internal)
            cur = nd[idx]
            go_left = np.empty(len(idx), dtype=bool)
            on_host = self.host[cur] >= 0
            loc = ~on_host
            if loc.any():
                x = X[idx[loc], self.feature[cur[loc]]]
                go_left[loc] = np.where(
                    np.isnan(x), self.missing_left[cur[loc]], x <= self.threshold[cur[loc]]
                )
            if on_host.any():
                for h in np.unique(self.host[cur[on_host]]):
                    m = on_host & (self.host[cur] == h)
                    go_left[m] = host_decisions[int(h)][idx[m], self.record[cur[m]]]
            node = node.copy()
            node[idx] = np.where(go_left, self.left[cur], self.right[cur])
        return self.value[node]

    def to_arrays(self):
        return {k: getattr(self, k) for k in self.__dataclass_fields__}
