"""fedsk: vertical federated learning as scikit-learn estimators."""

from .federation import Federation, LocalFederation

__version__ = "0.1.0"

__all__ = ["Federation", "LocalFederation", "__version__"]
