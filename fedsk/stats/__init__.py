"""Federated statistics: computed across parties without either showing its values.

:func:`federated_pearson` is also the worked example of ``docs/extending.md``, the
template for adding a federated algorithm to fedsk.
"""

from ._pearson import federated_pearson

__all__ = ["federated_pearson"]
