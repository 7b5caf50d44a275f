"""fedsk: vertical federated learning as scikit-learn estimators."""

from .ensemble import SecureBoostClassifier, SecureBoostRegressor
from .federation import Federation, LocalFederation

__version__ = "0.1.0"

__all__ = [
    "Federation",
    "LocalFederation",
    "SecureBoostClassifier",
    "SecureBoostRegressor",
    "__version__",
]
