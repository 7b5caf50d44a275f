"""fedsk: vertical federated learning as scikit-learn estimators.

The public names are imported lazily, so that a worker process running one of the
crypto kernels imports numpy and gmpy2, not scikit-learn and pandas.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "FederatedLogisticRegression": "fedsk.linear_model",
    "Federation": "fedsk.federation",
    "LocalFederation": "fedsk.federation",
    "SecureBoostClassifier": "fedsk.ensemble",
    "SecureBoostRegressor": "fedsk.ensemble",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fedsk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
