"""Federated linear models."""

from ._logistic import FederatedLogisticRegression

__all__ = ["FederatedLogisticRegression"]
