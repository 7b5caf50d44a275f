"""SecureBoost against real party-server processes: sklearn tooling, persistence, faults."""

import os
import threading
import time

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fedsk import LocalFederation, SecureBoostClassifier
from fedsk.exceptions import PartyUnavailableError

from .test_secureboost import make_parties

pytestmark = pytest.mark.integration
KEY = 1024


@pytest.fixture(scope="module")
def parties(tmp_path_factory):
    joined, guest, y, hosts, _ = make_parties(
        tmp_path_factory.mktemp("p"), n=200, host_cols=(4,), nan=0.02
    )
    with LocalFederation(hosts=hosts, n_jobs=2) as fed:
        yield joined, guest, y, fed


def test_pipeline_with_pandas_output(parties):
    joined, guest, y, fed = parties
    pipe = make_pipeline(
        StandardScaler().set_output(transform="pandas"),
        SecureBoostClassifier(federation=fed, n_estimators=3, key_length=KEY, random_state=0),
    )
    pipe.fit(guest, y)
    local = SecureBoostClassifier(n_estimators=3, random_state=0).fit(
        np.c_[StandardScaler().fit_transform(guest), joined.iloc[:, 3:]], y
    )
    np.testing.assert_allclose(
        pipe.predict_proba(guest),
        local.predict_proba(
            np.c_[StandardScaler().fit(guest).transform(guest), joined.iloc[:, 3:]]
        ),
        atol=1e-6,
    )


def test_grid_search_in_two_processes_and_cross_val(parties):
    _, guest, y, fed = parties
    est = SecureBoostClassifier(federation=fed, n_estimators=2, key_length=KEY, random_state=0)
    grid = GridSearchCV(est, {"max_depth": [1, 2]}, cv=2, scoring="roc_auc", n_jobs=2)
    grid.fit(guest, y)
    assert grid.best_params_["max_depth"] in (1, 2)
    assert grid.best_score_ > 0.6  # better than chance; the equality below is the real check
    # each candidate, fitted alone, gives the same CV scores as in the parallel search
    alone = cross_val_score(
        clone(est).set_params(max_depth=grid.best_params_["max_depth"]),
        guest,
        y,
        cv=2,
        scoring="roc_auc",
    )
    assert np.mean(alone) == pytest.approx(grid.best_score_)


def test_joblib_dump_load_then_predict(parties, tmp_path):
    _, guest, y, fed = parties
    clf = SecureBoostClassifier(federation=fed, n_estimators=3, key_length=KEY).fit(guest, y)
    path = tmp_path / "model.joblib"
    joblib.dump(clf, path)
    raw = path.read_bytes()
    assert b"PaillierPrivateKey" not in raw
    loaded = joblib.load(path)
    np.testing.assert_allclose(loaded.predict_proba(guest), clf.predict_proba(guest))
    assert roc_auc_score(y, loaded.predict_proba(guest)[:, 1]) > 0.8


def test_host_restart_keeps_models(parties):
    _, guest, y, fed = parties
    clf = SecureBoostClassifier(federation=fed, n_estimators=2, key_length=KEY).fit(guest, y)
    before = clf.predict_proba(guest)
    fed.restart("host0")
    np.testing.assert_array_equal(clf.predict_proba(guest), before)


def _audit_count(fed, name, endpoint):
    path = fed.audit_log_path(name)
    return path.read_text().count(f'"endpoint":"{endpoint}"') if path.exists() else 0


def test_later_fits_reuse_the_alignment_and_stay_lossless(parties):
    joined, guest, y, fed = parties
    params = dict(n_estimators=2, max_depth=2, random_state=0)
    est = SecureBoostClassifier(federation=fed, key_length=KEY, **params).fit(guest, y)
    psi = _audit_count(fed, "host0", "psi.exchange")
    # a subset of the rows aligned before, in another order: no PSI this time, and the
    # host's rows still line up with the guest's (the fit equals the joined plaintext one,
    # and so do its predictions, which reuse the alignment too)
    sub = guest.index[::-3]
    est.fit(guest.loc[sub], y.loc[sub])
    local = SecureBoostClassifier(**params).fit(joined.loc[sub], y.loc[sub])
    np.testing.assert_allclose(
        est.predict_proba(guest.loc[sub[::2]]),
        local.predict_proba(joined.loc[sub[::2]]),
        atol=1e-6,
    )
    assert _audit_count(fed, "host0", "psi.exchange") == psi
    # a host that restarted forgot its alignments: PSI runs again
    fed.restart("host0")
    est.fit(guest.loc[sub], y.loc[sub])
    np.testing.assert_allclose(
        est.predict_proba(guest.loc[sub]), local.predict_proba(joined.loc[sub]), atol=1e-6
    )
    assert _audit_count(fed, "host0", "psi.exchange") == psi + 1


def test_killed_host_mid_fit_then_warm_start_continues(tmp_path):
    joined, guest, y, hosts, _ = make_parties(tmp_path, n=160, host_cols=(3,), nan=0.0)
    with LocalFederation(hosts=hosts, retries=1, timeout=(2.0, 20.0)) as fed:
        clf = SecureBoostClassifier(
            federation=fed, n_estimators=6, key_length=KEY, warm_start=True, random_state=0
        )
        error = {}

        def run():
            try:
                clf.fit(guest, y)
            except Exception as exc:
                error["exc"] = exc
                error["at"] = time.monotonic()

        t = threading.Thread(target=run)
        t.start()
        deadline = time.monotonic() + 60
        # a round is persisted with its last request: the third round's gradients mean
        # that two rounds are complete
        while _audit_count(fed, "host0", "secureboost.gradients") < 3:
            assert time.monotonic() < deadline, "the fit never completed two rounds"
            time.sleep(0.01)
        killed_at = time.monotonic()
        fed.kill("host0")
        t.join(60)
        assert not t.is_alive()
        exc = error.get("exc")
        assert isinstance(exc, PartyUnavailableError) and exc.party == "host0"
        assert error["at"] - killed_at < 30  # retries and timeouts are bounded
        # the host may have persisted round 2 without the guest hearing back: the guest
        # keeps the rounds both sides completed
        done = clf.n_estimators_
        assert 1 <= done < 6
        fed.restart("host0")
        clf.fit(guest, y)  # warm start: continues from the last completed round
        assert clf.n_estimators_ == 6
        fresh = SecureBoostClassifier(
            federation=fed, n_estimators=6, key_length=KEY, random_state=0
        ).fit(guest, y)
        np.testing.assert_allclose(clf.predict_proba(guest), fresh.predict_proba(guest), atol=1e-12)


def test_a_fit_takes_the_fresh_key_pair_the_fit_before_made_ahead(parties, monkeypatch):
    from fedsk.crypto import _ahead
    from fedsk.federation import _guest

    joined, guest, y, fed = parties
    made_here, taken = [], []

    def spy(func, into):
        def call(*args, **kwargs):
            into.append(func(*args, **kwargs))
            return into[-1]

        return call

    monkeypatch.setattr(_guest, "generate_keypair", spy(_guest.generate_keypair, made_here))
    monkeypatch.setattr(_guest, "take_keypair_ahead", spy(_guest.take_keypair_ahead, taken))
    params = dict(n_estimators=2, max_depth=2, random_state=0)
    est = SecureBoostClassifier(federation=fed, key_length=KEY, n_jobs=2, **params)
    local = SecureBoostClassifier(**params).fit(joined, y)
    est.fit(guest, y)  # (the conftest dropped any key pair made before this test)
    assert len(made_here) == 1 and taken == [None]
    deadline = time.monotonic() + 60
    while not _ahead._NEXT[os.getpid()].ready() and time.monotonic() < deadline:
        time.sleep(0.05)
    est.fit(guest, y)
    assert len(made_here) == 1 and taken[-1] is not None  # no key pair made on the spot
    first, second = made_here[0][0], taken[-1][0]
    assert second.key_length == KEY and second.n != first.n  # a fresh key, used once
    np.testing.assert_allclose(est.predict_proba(guest), local.predict_proba(joined), atol=1e-6)
    assert os.getpid() in _ahead._NEXT  # the next one is in the making
