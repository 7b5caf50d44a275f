"""The privacy regression suite: every protocol's fit and predict, recorded and searched.

Each flow in :data:`FLOWS` runs an estimator or protocol as a user would, through
:class:`tests._privacy.RecordingFederation`, and names the values that must never cross
in plaintext (labels, gradients/hessians/residuals, feature values, thresholds). The
completeness test fails when a route in ``ROUTES`` whose host half is installed is not
exercised by any flow here: a new protocol plugs in by adding its flow to ``FLOWS``.
(``test_secureboost.py`` and ``test_pearson.py`` keep their own, more detailed checks.)
"""

import importlib

import numpy as np
import pandas as pd
import pytest

from fedsk import FederatedLogisticRegression, SecureBoostClassifier, SecureBoostRegressor
from fedsk.federation import ROUTES, InProcessFederation
from fedsk.stats import federated_pearson
from fedsk.stats._common import standardise
from party_server import create_app

from ._fuzz import match_route
from ._privacy import RecordingFederation, assert_absent
from .conftest import TOKEN, write_host

KEY = 1024
N = 90


def _parties(tmp_path, n_hosts=1, seed=0, nan=0.0):
    rng = np.random.default_rng(seed)
    ids = [f"r{i:04d}" for i in range(N)]
    guest = pd.DataFrame(rng.normal(size=(N, 2)), index=ids, columns=["g0", "g1"])
    hosts, apps = {}, {}
    for h in range(n_hosts):
        name = f"host{h}"
        df = pd.DataFrame(
            rng.normal(size=(N, 2)) * 3.7 + 1.3, index=ids, columns=[f"{name}_a", f"{name}_b"]
        )
        df[rng.random(df.shape) < nan] = np.nan
        hosts[name] = df
        app = create_app(write_host(tmp_path / name, df, name=name))
        apps[name] = (app, "customers", TOKEN)
    return guest, hosts, apps


def _thresholds(apps, clf):
    out = []
    for name, mid in zip(clf._host_names, clf._host_model_ids):
        _, arrays = apps[name][0].extensions["fedsk"].models.load(mid, "bank")
        out.append(arrays["threshold"][np.isfinite(arrays["threshold"])])
    return np.concatenate(out)


def flow_secureboost_regressor(tmp_path):
    guest, hosts, apps = _parties(tmp_path, nan=0.05)
    y = 2.5 * guest.g0 - hosts["host0"].iloc[:, 0].fillna(0) + 0.1
    rec = RecordingFederation(InProcessFederation(apps))
    reg = SecureBoostRegressor(federation=rec, n_estimators=3, key_length=KEY, random_state=0)
    reg.fit(guest, y)
    reg.predict(guest)
    return rec, [
        (y.to_numpy(), "regression targets", {}),
        (y.mean() - y.to_numpy(), "first-round residuals (gradients)", {}),
        (guest.to_numpy(), "guest feature values", {}),
        (hosts["host0"].to_numpy(), "host feature values", {}),
        (_thresholds(apps, reg), "host thresholds", {"as_vector": False}),
    ]


def flow_secureboost_multiclass_two_hosts_warm_start(tmp_path):
    guest, hosts, apps = _parties(tmp_path, n_hosts=2, seed=1)
    score = guest.g0 + hosts["host0"].iloc[:, 0] / 3 - hosts["host1"].iloc[:, 1] / 3
    y = pd.Series(np.digitize(score, np.quantile(score, [1 / 3, 2 / 3])), index=guest.index)
    rec = RecordingFederation(InProcessFederation(apps))
    clf = SecureBoostClassifier(
        federation=rec, n_estimators=2, key_length=KEY, warm_start=True, random_state=0
    )
    clf.fit(guest, y)
    clf.set_params(n_estimators=3).fit(guest, y)  # continues: host decisions during a fit
    clf.predict_proba(guest)
    prior = np.bincount(y) / len(y)
    onehot = np.eye(3)[y]
    return rec, [
        (y.to_numpy(), "class labels", {}),
        (onehot, "one-hot labels", {}),
        (prior[None, :] - onehot, "first-round gradients", {}),
        (guest.to_numpy(), "guest feature values", {}),
        (hosts["host0"].to_numpy(), "host0 feature values", {}),
        (hosts["host1"].to_numpy(), "host1 feature values", {}),
        (_thresholds(apps, clf), "host thresholds", {"as_vector": False}),
    ]


def flow_federated_pearson(tmp_path):
    guest, hosts, apps = _parties(tmp_path, seed=2)
    rec = RecordingFederation(InProcessFederation(apps))
    federated_pearson(guest, rec, key_length=KEY)
    host = hosts["host0"]
    return rec, [
        (guest.to_numpy(), "guest feature values", {}),
        (host.to_numpy(), "host feature values", {}),
        (standardise(guest.to_numpy())[0], "guest standardised values", {}),
        (standardise(host.to_numpy())[0], "host standardised values", {}),
    ]


def _flow_logistic(tmp_path, protocol):
    guest, hosts, apps = _parties(tmp_path, seed=3)
    host = hosts["host0"]
    y = ((guest.g0 + (host.iloc[:, 0] - 1.3) / 3.7) > 0.2).astype(int)
    rec = RecordingFederation(InProcessFederation(apps))
    est = FederatedLogisticRegression(
        federation=rec, protocol=protocol, key_length=KEY, max_iter=10, random_state=0
    )
    est.fit(guest, y)
    est.predict_proba(guest)
    _, arrays = apps["host0"][0].extensions["fedsk"].models.load(est._host_models["host0"], "bank")
    z = est.decision_function(guest)
    secrets = [
        (y.to_numpy(), "labels", {}),
        (guest.to_numpy(), "guest feature values", {}),
        (host.to_numpy(), "host feature values", {}),
        (arrays["coef"], "host coefficients", {}),
        (1 / (1 + np.exp(-z)) - y.to_numpy(), "logistic residuals", {}),
    ]
    if protocol == "taylor":  # with "exact" the guest sees X_h w_h: the documented price
        z_g = guest.to_numpy() @ est.coef_[0] + est.intercept_[0]
        secrets += [
            (z_g, "guest partial predictions", {}),
            (z / 4 - (2 * y.to_numpy() - 1) / 2, "Taylor residuals", {}),
        ]
    return rec, secrets


def flow_logistic_taylor(tmp_path):
    return _flow_logistic(tmp_path, "taylor")


def flow_logistic_exact(tmp_path):
    return _flow_logistic(tmp_path, "exact")


# A new estimator or protocol adds its flow here (and its own values to look for).
FLOWS = {
    "logistic regression, taylor": flow_logistic_taylor,
    "logistic regression, exact": flow_logistic_exact,
    "secureboost regressor": flow_secureboost_regressor,
    "secureboost multi-class, two hosts, warm start": flow_secureboost_multiclass_two_hosts_warm_start,  # noqa: E501
    "federated pearson": flow_federated_pearson,
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    return {name: flow(tmp_path_factory.mktemp("privacy")) for name, flow in FLOWS.items()}


@pytest.mark.parametrize("flow", list(FLOWS))
def test_nothing_private_crosses_in_plaintext(recorded, flow):
    rec, secrets = recorded[flow]
    n_checked = 0
    for values, what, kwargs in secrets:
        n_checked += assert_absent(rec, values, what, **kwargs)
    assert n_checked > 0


def test_labels_would_be_found_if_they_leaked(recorded):
    """The search works: a body that carries the labels is caught."""
    from fedsk.federation import Message, message_to_wire

    rec, secrets = recorded["secureboost regressor"]
    y = secrets[0][0]
    rec.records.append(("host0", "/leak", message_to_wire(Message(arrays={"y": y})), b""))
    try:
        with pytest.raises(AssertionError, match="regression targets"):
            assert_absent(rec, y, "regression targets")
    finally:
        rec.records.pop()


def _installed(route):
    module = route.handler.partition(":")[0]
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def test_every_installed_protocol_route_is_covered(recorded):
    seen = set()
    for rec, _ in recorded.values():
        for _, path, _, _ in rec.records:
            for method in ("POST", "DELETE", "GET"):
                route, _ = match_route(method, path)
                if route is not None:
                    seen.add(route.name)
                    break
    missing = [r.name for r in ROUTES if r.handler and _installed(r) and r.name not in seen]
    assert not missing, (
        f"routes {missing} have a host half but no privacy flow: add the estimator's "
        "fit and predict to FLOWS in tests/test_privacy_suite.py"
    )
