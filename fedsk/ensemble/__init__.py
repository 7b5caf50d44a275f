"""SecureBoost: vertical federated gradient boosting."""

from ._secureboost import SecureBoostClassifier, SecureBoostRegressor

__all__ = ["SecureBoostClassifier", "SecureBoostRegressor"]
