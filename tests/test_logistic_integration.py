"""FederatedLogisticRegression over real party-server processes on 127.0.0.1: the
scikit-learn tool chain (Pipeline, GridSearchCV with workers, clone, joblib)."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from fedsk import FederatedLogisticRegression, LocalFederation
from fedsk.federation import Federation

from .test_logistic_federated import DG, joined, make_data

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world():
    G, H, y = make_data(n=120, seed=5)
    G = G * [1000.0, 0.01, 50.0] + [5e4, 0.0, 40.0]  # unscaled guest columns
    with LocalFederation(hosts={"insurer": H}) as fed:
        yield fed, G, H, y


def test_pipeline_gridsearch_clone_and_joblib(world, tmp_path):
    import joblib

    fed, G, H, y = world
    pipe = Pipeline(
        [
            ("scale", StandardScaler().set_output(transform="pandas")),
            ("lr", FederatedLogisticRegression(federation=fed, key_length=1024)),
        ]
    )
    grid = {"lr__C": [0.05, 5.0]}
    parallel = GridSearchCV(pipe, grid, cv=3, n_jobs=2).fit(G, y)
    serial = GridSearchCV(pipe, grid, cv=3, n_jobs=1).fit(G, y)
    # PCG is deterministic: the fits in worker processes equal the ones run here
    np.testing.assert_allclose(
        parallel.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"]
    )
    best = parallel.best_estimator_
    assert best.score(G, y) > 0.75
    assert best[-1].n_host_features_ == {"insurer": 4}

    fresh = clone(best)
    with pytest.raises(NotFittedError):
        check_is_fitted(fresh[-1])
    assert fresh[-1].get_params()["C"] == best[-1].C

    path = tmp_path / "model.joblib"
    joblib.dump(best, path)
    loaded = joblib.load(path)
    assert isinstance(loaded[-1].federation, Federation)
    np.testing.assert_array_equal(loaded.predict_proba(G), best.predict_proba(G))
    # the host's half is a plain .npz in the host's model store (no pickle)
    files = list((fed.state_dir("insurer") / "models").glob("*.npz"))
    assert files
    with np.load(files[0], allow_pickle=False) as stored:
        assert stored["coef"].shape == (4, 1)


def test_exact_over_http_reaches_sklearn(world):
    fed, G, H, y = world
    Gs = (G - G.mean()) / G.std()
    est = FederatedLogisticRegression(federation=fed, protocol="exact", key_length=1024, tol=1e-8)
    est.fit(Gs, y)
    ref = LogisticRegression(tol=1e-10, max_iter=10000).fit(joined(Gs, H), y)
    assert np.abs(est.coef_[0] - ref.coef_[0, :DG]).max() < 1e-3 * np.abs(ref.coef_).max()
    rows = Gs.iloc[::3]
    np.testing.assert_allclose(
        est.predict_proba(rows), ref.predict_proba(joined(rows, H)), atol=1e-4
    )
