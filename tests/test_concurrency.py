"""Load and concurrency against one real party-server process.

Four guest sessions train SecureBoost at once (threads; two peers with their own
tokens), and ``GridSearchCV(n_jobs=2)`` runs its candidates in two worker processes
against the same host. Every result must equal the same fit run alone: sessions share
nothing on the host.
"""

import itertools
import json
import threading

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from fedsk import Federation, LocalFederation, SecureBoostClassifier, SecureBoostRegressor
from fedsk.stats import federated_pearson
from party_server._audit import verify

from ._servers import PartyServer
from .conftest import TOKEN

pytestmark = pytest.mark.integration
KEY = 1024
OTHER = "telco-token-0123456789"


def make_data(n=160, seed=3):
    rng = np.random.default_rng(seed)
    ids = [f"k{i:04d}" for i in range(n)]
    guest = pd.DataFrame(rng.normal(size=(n, 3)), index=ids, columns=["g0", "g1", "g2"])
    host = pd.DataFrame(rng.normal(size=(n, 3)), index=ids, columns=["h0", "h1", "h2"])
    host.iloc[rng.random(host.shape) < 0.03] = np.nan
    score = guest.g0 - host.h1.fillna(0) + 0.5 * guest.g2 * host.h0.fillna(0)
    return guest, host, (score > 0).astype(int), score


def estimators(fed_bank, fed_telco):
    """Four different fits (and who runs them): random states, subsampling, a regressor."""
    common = {"key_length": KEY, "max_depth": 2, "n_estimators": 3}
    return [
        ("bank", SecureBoostClassifier(federation=fed_bank, random_state=0, **common)),
        (
            "bank",
            SecureBoostClassifier(
                federation=fed_bank, random_state=1, subsample=0.7, colsample=0.7, **common
            ),
        ),
        ("telco", SecureBoostClassifier(federation=fed_telco, random_state=2, **common)),
        ("telco", SecureBoostRegressor(federation=fed_telco, random_state=3, **common)),
    ]


def _result(est, X):
    if hasattr(est, "predict_proba"):
        return est.predict_proba(X)
    return est.predict(X)


def _fit_all_at_once(jobs, targets, guest):
    """Fit every job in its own thread, all starting together; then predict together."""
    start, predict = threading.Barrier(len(jobs)), threading.Barrier(len(jobs))
    results, errors = [None] * len(jobs), []

    def run(k, est, target):
        try:
            start.wait(30)
            fitted = clone(est).fit(guest, target)
            predict.wait(120)
            results[k] = _result(fitted, guest)
        except Exception as exc:  # reported by the caller with the job's index
            errors.append((k, repr(exc)))
            predict.abort()

    threads = [
        threading.Thread(target=run, args=(k, est, target))
        for k, ((_, est), target) in enumerate(zip(jobs, targets))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "a concurrent fit hung"
    return results, errors


def test_four_guest_sessions_train_at_once(tmp_path):
    guest, host, y, score = make_data()
    peers = {"bank": {"token": TOKEN}, "telco": {"token": OTHER}}
    with PartyServer(tmp_path, host, peers=peers, threads=8) as srv:
        fed_bank = Federation({"insurer": srv.host_spec()}, retries=0)
        fed_telco = Federation({"insurer": dict(srv.host_spec(), token=OTHER)}, retries=0)
        jobs = estimators(fed_bank, fed_telco)
        targets = [score if isinstance(e, SecureBoostRegressor) else y for _, e in jobs]
        # each fit alone
        alone = []
        for (_, est), target in zip(jobs, targets):
            alone.append(_result(clone(est).fit(guest, target), guest))
        audit = srv.state_dir / "audit.log"
        n_alone = len(audit.read_text().splitlines())
        # all four at once, several times over (a barrier makes them start together)
        for repeat in range(2):
            results, errors = _fit_all_at_once(jobs, targets, guest)
            assert not errors, errors
            for k, (got, want) in enumerate(zip(results, alone)):
                np.testing.assert_array_equal(got, want, err_msg=f"job {k}, round {repeat}")
        # the sessions really ran at the same time: their requests interleave
        sessions = [json.loads(line)["session"] for line in audit.read_text().splitlines()]
        concurrent = [sid for sid in sessions[n_alone:] if sid]
        switches = sum(a != b for a, b in itertools.pairwise(concurrent))
        assert switches > 4 * len(set(concurrent)), switches
        # the host kept each model apart, per peer, and logged everything
        models = list((srv.state_dir / "models").glob("*.npz"))
        assert len(models) == 3 * len(jobs)
        ok, n, problem = verify(audit)
        assert ok, problem
        print(
            f"\n{3 * len(jobs)} fits (4 at once, twice) over {n} audited requests; "
            f"{switches} switches between {len(set(concurrent))} concurrent sessions"
        )


def test_concurrent_fit_predict_and_pearson_mix(tmp_path):
    """Different protocols at once on one host: fits, predictions and a correlation."""
    guest, host, y, _ = make_data(n=120, seed=4)
    host = host.fillna(0.0)  # Pearson needs complete columns
    with LocalFederation(hosts={"insurer": host}, retries=0) as fed:
        fitted = SecureBoostClassifier(federation=fed, n_estimators=2, key_length=KEY).fit(guest, y)
        want_proba = fitted.predict_proba(guest)
        want_corr = federated_pearson(guest, fed, key_length=KEY)
        want_fit = _result(
            SecureBoostClassifier(
                federation=fed, n_estimators=2, key_length=KEY, random_state=5
            ).fit(guest, y),
            guest,
        )
        out, errors = {}, []

        def task(name, fn):
            try:
                out[name] = fn()
            except Exception as exc:
                errors.append((name, repr(exc)))

        work = {
            "predict-1": lambda: fitted.predict_proba(guest),
            "predict-2": lambda: fitted.predict_proba(guest),
            "pearson": lambda: federated_pearson(guest, fed, key_length=KEY),
            "fit": lambda: _result(
                SecureBoostClassifier(
                    federation=fed, n_estimators=2, key_length=KEY, random_state=5
                ).fit(guest, y),
                guest,
            ),
        }
        threads = [threading.Thread(target=task, args=item) for item in work.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
        np.testing.assert_array_equal(out["predict-1"], want_proba)
        np.testing.assert_array_equal(out["predict-2"], want_proba)
        np.testing.assert_allclose(out["pearson"], want_corr, atol=1e-12)
        np.testing.assert_array_equal(out["fit"], want_fit)


def test_grid_search_in_two_processes_equals_each_fit_alone():
    guest, host, y, _ = make_data(n=160, seed=6)
    with LocalFederation(hosts={"insurer": host}, retries=1) as fed:
        est = SecureBoostClassifier(
            federation=fed, n_estimators=2, key_length=KEY, random_state=0, subsample=0.8
        )
        grid = {"max_depth": [1, 2], "learning_rate": [0.3, 0.6]}
        parallel = GridSearchCV(est, grid, cv=2, scoring="roc_auc", n_jobs=2).fit(guest, y)
        sequential = GridSearchCV(est, grid, cv=2, scoring="roc_auc", n_jobs=1).fit(guest, y)
        for key in ("split0_test_score", "split1_test_score", "mean_test_score"):
            np.testing.assert_array_equal(parallel.cv_results_[key], sequential.cv_results_[key])
        # the refitted best model equals the same parameters fitted alone
        alone = clone(est).set_params(**parallel.best_params_).fit(guest, y)
        np.testing.assert_array_equal(
            parallel.best_estimator_.predict_proba(guest), alone.predict_proba(guest)
        )
        assert parallel.best_score_ > 0.6
