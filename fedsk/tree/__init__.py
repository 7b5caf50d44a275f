"""Tree core: binning, integer histograms, split finding, growth, prediction.

Plain numpy, the same code for local and federated execution: the federated version
swaps only who computes a histogram and who applies a split (the grower's *source*).
"""

from ._binning import BinMapper, find_thresholds
from ._grower import ChildRows, GrowerTree, LocalSource, Node, TreeSpec, child_rows, grow_trees
from ._histogram import GH_BITS, QuantizedGradients, build_histograms, quantize
from ._predictor import TreePredictor
from ._splitting import SplitInfo, SplitParams, find_best_split, leaf_value

__all__ = [
    "GH_BITS",
    "BinMapper",
    "ChildRows",
    "GrowerTree",
    "LocalSource",
    "Node",
    "QuantizedGradients",
    "SplitInfo",
    "SplitParams",
    "TreePredictor",
    "TreeSpec",
    "build_histograms",
    "child_rows",
    "find_best_split",
    "find_thresholds",
    "grow_trees",
    "leaf_value",
    "quantize",
]
