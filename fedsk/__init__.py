"""fedsk: vertical federated learning as scikit-learn estimators."""

from .federation import Federation, LocalFederation
from .linear_model import FederatedLogisticRegression

__version__ = "0.1.0"

__all__ = ["FederatedLogisticRegression", "Federation", "LocalFederation", "__version__"]
