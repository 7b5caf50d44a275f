"""SecureBoost: sklearn compatibility, losslessness, multi-host, privacy (in-process hosts)."""

import random
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification, make_regression
from sklearn.utils.estimator_checks import parametrize_with_checks

from fedsk import SecureBoostClassifier, SecureBoostRegressor
from fedsk.crypto import RecordLayout
from fedsk.ensemble._gh import (
    G_MAX_VALUES,
    GH_MAX_VALUES,
    plaintext_groups,
    record_widths,
    sent_bins,
    unpack_records,
)
from fedsk.exceptions import PackingOverflowError, ProtocolError
from fedsk.federation import InProcessFederation
from party_server import create_app

from ._privacy import RecordingFederation, assert_absent
from .conftest import TOKEN, write_host

KEY = 1024


def _expected_failures(estimator):
    # bin edges come from the rows (unweighted; a repeated row moves the quantiles) and
    # each round's gradient quantisation step from the largest weighted gradient
    return {
        "check_sample_weight_equivalence_on_dense_data": (
            "bins are the unweighted rows' quantiles and the gradients' quantisation "
            "step depends on the weights, so weights are not repeated rows"
        )
    }


@parametrize_with_checks(
    [SecureBoostClassifier(), SecureBoostRegressor()],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_compatible_locally(estimator, check):
    check(estimator)


def make_parties(tmp_path, n=240, n_guest=3, host_cols=(4,), task="clf", seed=0, nan=0.05):
    """Joined data split into guest columns + one DataFrame per host, indexed by ID."""
    total = n_guest + sum(host_cols)
    if task == "clf":
        X, y = make_classification(n, total, n_informative=total // 2 + 1, random_state=seed)
    elif task == "multi":
        X, y = make_classification(
            n, total, n_informative=total // 2 + 1, n_classes=3, random_state=seed
        )
    else:
        X, y = make_regression(n, total, noise=5.0, random_state=seed)
    rng = np.random.default_rng(seed)
    X[rng.random(X.shape) < nan] = np.nan
    ids = [f"cust-{i:05d}" for i in range(n)]
    joined = pd.DataFrame(X, index=ids, columns=[f"c{j}" for j in range(total)])
    guest = joined.iloc[:, :n_guest]
    apps, hosts, start = {}, {}, n_guest
    for h, k in enumerate(host_cols):
        name = f"host{h}"
        hosts[name] = joined.iloc[:, start : start + k]
        start += k
        apps[name] = (
            create_app(write_host(tmp_path / name, hosts[name], name=name)),
            "customers",
            TOKEN,
        )
    return joined, guest, pd.Series(y, index=ids), hosts, apps


def host_records(apps, clf, h):
    app = apps[clf._host_names[h]][0]
    _, arrays = app.extensions["fedsk"].models.load(clf._host_model_ids[h], "bank")
    return arrays


def assert_same_trees(fed, local, apps, n_guest, host_offsets):
    assert len(fed._predictors) == len(local._predictors)
    for rf, rl in zip(fed._predictors, local._predictors):
        for tf, tl in zip(rf, rl):
            np.testing.assert_array_equal(tf.left, tl.left)
            np.testing.assert_array_equal(tf.value, tl.value)
            np.testing.assert_array_equal(tf.missing_left, tl.missing_left)
            for i in np.flatnonzero(tf.left >= 0):
                if tf.host[i] < 0:
                    assert tf.feature[i] == tl.feature[i] < n_guest
                    assert tf.threshold[i] == tl.threshold[i]
                else:
                    rec = host_records(apps, fed, tf.host[i])
                    r = tf.record[i]
                    assert host_offsets[tf.host[i]] + rec["feature"][r] == tl.feature[i]
                    assert rec["threshold"][r] == tl.threshold[i]


@pytest.mark.parametrize(
    "task,host_cols,params",
    [
        ("clf", (4,), {}),
        ("clf", (2, 3), {"subsample": 0.7, "colsample": 0.6, "max_depth": 4}),
        ("multi", (4,), {"n_estimators": 3}),
        ("reg", (3,), {"min_samples_leaf": 5, "l2_regularization": 0.5}),
    ],
)
def test_federated_equals_centralised(tmp_path, task, host_cols, params):
    joined, guest, y, hosts, apps = make_parties(tmp_path, task=task, host_cols=host_cols)
    Est = SecureBoostRegressor if task == "reg" else SecureBoostClassifier
    kw = dict(n_estimators=4, random_state=0, key_length=KEY) | params
    fed = Est(federation=InProcessFederation(apps), **kw).fit(guest, y)
    local = Est(**kw).fit(joined.to_numpy(), y.to_numpy())
    offsets = np.cumsum([guest.shape[1], *host_cols])[:-1]
    assert_same_trees(fed, local, apps, guest.shape[1], offsets)
    # equal predictions on any data, including rows never seen in training
    rng = np.random.default_rng(1)
    new = joined + rng.normal(scale=0.5, size=joined.shape)
    for name, app in apps.items():
        fedsk_state = app[0].extensions["fedsk"]
        fedsk_state.datasets["customers"].X[:] = new[hosts[name].columns].to_numpy()
    if task == "reg":
        np.testing.assert_allclose(
            fed.predict(new[guest.columns]), local.predict(new.to_numpy()), rtol=0, atol=1e-9
        )
    else:
        np.testing.assert_allclose(
            fed.predict_proba(new[guest.columns]),
            local.predict_proba(new.to_numpy()),
            rtol=0,
            atol=1e-6,
        )
    assert fed.n_estimators_ == local.n_estimators_
    np.testing.assert_allclose(fed.train_score_, local.train_score_)


def test_host_leaves_out_each_features_last_non_empty_bin():
    kept = np.array(
        [[0, 1, 1, 0, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=bool
    )
    sent = sent_bins(kept.ravel(), 4).reshape(4, 5)
    expected = kept.copy()
    expected[0, 4] = expected[2, 0] = expected[3, 4] = False
    np.testing.assert_array_equal(sent, expected)
    assert sent_bins(np.zeros(0, bool), 0).size == 0


def test_early_stopping_matches_centralised(tmp_path):
    joined, guest, y, _, apps = make_parties(tmp_path, n=300)
    kw = dict(
        n_estimators=30,
        early_stopping=True,
        n_iter_no_change=2,
        validation_fraction=0.2,
        learning_rate=1.0,
        random_state=3,
        key_length=KEY,
    )
    fed = SecureBoostClassifier(federation=InProcessFederation(apps), **kw).fit(guest, y)
    local = SecureBoostClassifier(**kw).fit(joined.to_numpy(), y.to_numpy())
    assert fed.n_estimators_ == local.n_estimators_ < 30
    np.testing.assert_allclose(fed.validation_score_, local.validation_score_)


def test_importances_name_host_columns(tmp_path):
    joined, guest, y, hosts, apps = make_parties(tmp_path)
    clf = SecureBoostClassifier(
        federation=InProcessFederation(apps), n_estimators=3, key_length=KEY
    ).fit(guest, y)
    table = clf.importances_
    assert list(table.party) == ["guest"] * 3 + ["host0"] * 4
    assert list(table.feature) == list(joined.columns)
    assert table.gain.sum() == pytest.approx(1.0)
    assert clf.feature_importances_.shape == (3,)
    assert clf.host_n_features_ == {"host0": 4}
    assert set(clf.host_feature_importances_["host0"].index) == set(hosts["host0"].columns)


def test_host_that_does_not_publish_names_is_indexed(tmp_path):
    _, guest, y, hosts, _ = make_parties(tmp_path)
    app = create_app(write_host(tmp_path / "p", hosts["host0"], publish=False))
    clf = SecureBoostClassifier(
        federation=InProcessFederation({"h": (app, "customers", TOKEN)}),
        n_estimators=2,
        key_length=KEY,
    ).fit(guest, y)
    assert list(clf.host_feature_importances_["h"].index) == ["0", "1", "2", "3"]


def test_privacy_of_fit_and_predict(tmp_path):
    joined, guest, y, hosts, apps = make_parties(tmp_path, nan=0.0)
    rec = RecordingFederation(InProcessFederation(apps))
    clf = SecureBoostClassifier(federation=rec, n_estimators=3, key_length=KEY, random_state=0)
    clf.fit(guest, y)
    clf.predict_proba(guest)
    assert_absent(rec, y.to_numpy(), "labels")
    assert_absent(rec, y.to_numpy().astype(float), "labels as floats")
    assert_absent(rec, hosts["host0"].to_numpy(), "host feature values")
    assert_absent(rec, guest.to_numpy(), "guest feature values")
    recs = host_records(apps, clf, 0)
    assert len(recs["threshold"]) > 0
    assert_absent(rec, recs["threshold"], "host thresholds", as_vector=False)
    # plaintext gradients of the first round
    p = np.full(len(y), y.mean())
    assert_absent(rec, p - y.to_numpy(), "first-round gradients")
    assert_absent(rec, p * (1 - p), "first-round hessians", one_by_one=False)


def test_fit_raw_ids_must_be_held_by_every_host(tmp_path):
    _, guest, y, _, apps = make_parties(tmp_path)
    extra = pd.DataFrame({c: [0.0] for c in guest.columns}, index=["stranger"])
    X = pd.concat([guest, extra])
    with pytest.raises(ValueError, match="1 of 241 rows of X have sample IDs that host"):
        SecureBoostClassifier(federation=InProcessFederation(apps), key_length=KEY).fit(
            X, np.r_[y, 0]
        )


def test_federated_fit_needs_a_dataframe(tmp_path):
    _, guest, y, _, apps = make_parties(tmp_path)
    clf = SecureBoostClassifier(federation=InProcessFederation(apps), key_length=KEY)
    with pytest.raises(TypeError, match="DataFrame indexed by sample ID"):
        clf.fit(guest.to_numpy(), y)
    dup = guest.copy()
    dup.index = ["same"] * len(dup)
    with pytest.raises(ValueError, match="duplicate sample IDs"):
        clf.fit(dup, y)


def test_key_shorter_than_host_minimum_is_refused(tmp_path):
    _, guest, y, hosts, _ = make_parties(tmp_path)
    app = create_app(write_host(tmp_path / "strict", hosts["host0"], min_key_length=2048))
    clf = SecureBoostClassifier(
        federation=InProcessFederation({"h": (app, "customers", TOKEN)}), key_length=1024
    )
    with pytest.raises(ProtocolError, match="at least 2048"):
        clf.fit(guest, y)


def test_warm_start_adds_rounds_and_matches_one_long_fit(tmp_path):
    joined, guest, y, _, apps = make_parties(tmp_path)
    fed = InProcessFederation(apps)
    kw = dict(random_state=0, key_length=KEY)
    a = SecureBoostClassifier(federation=fed, n_estimators=2, warm_start=True, **kw).fit(guest, y)
    model_id = a._host_model_ids[0]
    a.set_params(n_estimators=4).fit(guest, y)
    assert a.n_estimators_ == 4 and a._host_model_ids[0] == model_id
    b = SecureBoostClassifier(federation=fed, n_estimators=4, **kw).fit(guest, y)
    np.testing.assert_allclose(a.predict_proba(guest), b.predict_proba(guest), atol=1e-12)


def test_rounds_take_their_randomness_from_the_stock(tmp_path, monkeypatch):
    """Every round's encryptions come from randomness made ahead when there was time."""
    import time

    from fedsk.crypto import ObfuscatorStock

    take = ObfuscatorStock.take

    def take_when_made(self, count):  # as if the hosts had worked long enough
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with self._lock:
                if all(f.done() for fs, _ in self._pending for f in fs):
                    break
            time.sleep(0.01)
        return take(self, count)

    monkeypatch.setattr(ObfuscatorStock, "take", take_when_made)
    joined, guest, y, _, apps = make_parties(tmp_path)
    kw = dict(n_estimators=3, random_state=0, key_length=KEY)
    fed = SecureBoostClassifier(federation=InProcessFederation(apps), n_jobs=2, **kw)
    fed.fit(guest, y)
    counts = fed._crypto_counts
    assert counts["encryptions"] == counts["encryptions_ahead"] == 3 * len(guest)
    local = SecureBoostClassifier(**kw).fit(joined.to_numpy(), y.to_numpy())
    assert_same_trees(fed, local, apps, guest.shape[1], [guest.shape[1]])
    one_core = SecureBoostClassifier(federation=InProcessFederation(apps), n_jobs=1, **kw)
    assert one_core.fit(guest, y)._crypto_counts["encryptions_ahead"] == 0


def test_the_host_reports_the_additions_and_squarings_its_answers_took(tmp_path, monkeypatch):
    """The benchmark's floor prices the hosts' reported work: recount it from what the
    guest sees of every answer (bin counts and record widths travel in the clear)."""
    from fedsk.ensemble import _protocol

    seen = {"additions": 0, "shifts": 0, "packed": 0}
    decode = _protocol.FederatedSource._decode

    def recount(self, plaintexts, qg, rows, n_features, kept, counts, host):
        sent = sent_bins(kept, n_features)
        all_counts = np.zeros(len(kept), dtype=np.int64)
        all_counts[kept] = counts
        widths = record_widths(all_counts[sent], self.engine.n_active, self.engine.max_values)
        sizes = plaintext_groups(widths, self.engine.public_key.key_length)
        seen["additions"] += int((all_counts[sent] - 1).sum()) + len(widths) - len(sizes)
        firsts = np.cumsum([0, *sizes[:-1]]).astype(np.int64)
        seen["shifts"] += int(widths.sum()) - int(widths[firsts].sum()) if len(sizes) else 0
        seen["packed"] += len(sizes)
        return decode(self, plaintexts, qg, rows, n_features, kept, counts, host)

    monkeypatch.setattr(_protocol.FederatedSource, "_decode", recount)
    _, guest, y, _, apps = make_parties(tmp_path)
    clf = SecureBoostClassifier(
        federation=InProcessFederation(apps), n_estimators=2, random_state=0, key_length=KEY
    ).fit(guest, y)
    counts = clf._crypto_counts
    assert seen["packed"] > 0 and counts["decryptions"] == seen["packed"]
    assert counts["host_additions"] == seen["additions"]
    assert counts["host_shifts"] == seen["shifts"]
    assert counts["host_rerandomisations"] == seen["packed"]


def test_guest_with_labels_only_splits_on_host_columns(tmp_path):
    joined, guest, y, _, apps = make_parties(tmp_path, n_guest=0, host_cols=(5,))
    assert guest.shape[1] == 0
    kw = dict(n_estimators=3, random_state=0, key_length=KEY)
    fed = SecureBoostClassifier(federation=InProcessFederation(apps), **kw).fit(guest, y)
    local = SecureBoostClassifier(**kw).fit(joined.to_numpy(), y.to_numpy())
    assert fed.n_features_in_ == 0 and fed.feature_importances_.shape == (0,)
    np.testing.assert_allclose(
        fed.predict_proba(guest.iloc[:50]), local.predict_proba(joined.to_numpy()[:50]), atol=1e-6
    )


def test_hosts_are_matched_by_name_not_by_order(tmp_path):
    _, guest, y, _, apps = make_parties(tmp_path, host_cols=(2, 2))
    kw = dict(n_estimators=2, random_state=0, key_length=KEY, warm_start=True)
    clf = SecureBoostClassifier(federation=InProcessFederation(apps), **kw).fit(guest, y)
    before = clf.predict_proba(guest)
    swapped = InProcessFederation(dict(reversed(list(apps.items()))))
    assert list(swapped.hosts) == ["host1", "host0"]
    clf.set_params(federation=swapped)
    np.testing.assert_array_equal(clf.predict_proba(guest), before)
    clf.set_params(n_estimators=3).fit(guest, y)  # continued across the reordered hosts
    again = SecureBoostClassifier(
        federation=InProcessFederation(apps), **(kw | {"n_estimators": 3})
    ).fit(guest, y)
    np.testing.assert_allclose(clf.predict_proba(guest), again.predict_proba(guest), atol=1e-12)
    with pytest.raises(ValueError, match=r"same hosts \(this one has \['host0'\]\)"):
        clf.set_params(federation=InProcessFederation({"host0": apps["host0"]})).predict(guest)


@pytest.mark.parametrize(
    "params,match",
    [
        ({"key_length": 1025}, "must be an even number of bits"),
        ({"n_jobs": 0}, "cannot be 0"),
    ],
)
@pytest.mark.parametrize("federated", [False, True])
def test_key_length_and_n_jobs_are_checked_before_any_work(tmp_path, params, match, federated):
    from sklearn.utils._param_validation import InvalidParameterError

    _, guest, y, _, apps = make_parties(tmp_path, n=60)
    fed = InProcessFederation(apps) if federated else None
    with pytest.raises(InvalidParameterError, match=match):
        SecureBoostClassifier(federation=fed, **params).fit(guest, y)


def test_warm_start_with_other_columns_is_refused_and_keeps_the_model():
    X = pd.DataFrame(np.random.default_rng(0).normal(size=(120, 3)), columns=["a", "b", "c"])
    y = (X.c > 0).astype(int)
    clf = SecureBoostClassifier(n_estimators=2, warm_start=True).fit(X, y)
    before = clf.predict_proba(X)
    clf.set_params(n_estimators=4)
    with pytest.raises(ValueError, match="yet now missing:\n- c"):
        clf.fit(X[["a", "b"]], y)
    with pytest.raises(ValueError, match="feature names should match"):
        clf.fit(X.rename(columns={"a": "z"}), y)
    assert list(clf.feature_names_in_) == ["a", "b", "c"] and clf.n_estimators_ == 2
    np.testing.assert_array_equal(clf.predict_proba(X), before)
    assert isinstance(clf.train_score_, np.ndarray) and clf.train_score_.shape == (3,)


def test_labels_of_mixed_types_say_what_to_do():
    X = pd.DataFrame({"a": np.arange(10.0)})
    with pytest.raises(ValueError, match=r"mixes labels of types \['int', 'str'\]"):
        SecureBoostClassifier(n_estimators=2).fit(X, np.array(["a", 1] * 5, dtype=object))


def test_host_prepares_at_most_two_keys_at_a_time():
    import threading

    from fedsk.ensemble import _host

    release = threading.Event()
    started = []

    class SlowKey:
        def prepare_obfuscation(self, *, rerandomise_only=False):
            started.append(rerandomise_only)
            release.wait(10)

    for _ in range(5):
        _host._prepare_in_background(SlowKey(), {}, 1)  # (one worker: the table here)
    release.set()
    _host._PREPARE.submit(lambda: None).result(10)  # the queue has drained
    assert started == [True, True]  # (the host only re-randomises under the guest's key)
    assert _host._PREPARE_SLOTS.acquire(blocking=False)  # slots are given back
    _host._PREPARE_SLOTS.release()


def test_host_re_randomises_with_encryptions_of_zero_made_ahead(keypair):
    from fedsk.crypto import EncryptedArray, decrypt_integers, encrypt_integers, packed_histograms
    from fedsk.ensemble import _host

    pub, priv = keypair
    state = {}
    _host._PREPARE.submit(lambda: None).result(10)  # (earlier tests' keys are done)
    _host._prepare_in_background(pub, state, 2)
    _host._PREPARE.submit(lambda: None).result(30)
    stock = state["rerandomisers"]
    assert stock.workers == 2 and stock._lane == "rerandomise"
    deadline = time.monotonic() + 60
    while len(stock._ready) < _host.RERANDOMISERS_AHEAD and time.monotonic() < deadline:
        with stock._lock:
            stock._collect()
        time.sleep(0.05)
    # three nodes' histograms: every packed ciphertext takes one of them
    rng = np.random.default_rng(0)
    enc = encrypt_integers(priv, rng.integers(0, 1000, size=40).tolist())
    bins = rng.integers(0, 4, size=(40, 2))
    widths = [20] * 8
    nodes = [(np.arange(40), bins, np.ones(8, bool), widths, [3, 3, 2])]
    plain = packed_histograms(enc, nodes, 4, n_jobs=1)
    ahead = packed_histograms(enc, nodes, 4, n_jobs=2, stock=stock)
    assert stock.taken == 3 and len(stock._ready) == _host.RERANDOMISERS_AHEAD - 3
    assert decrypt_integers(priv, ahead[0]) == decrypt_integers(priv, plain[0])
    assert not set(ahead[0].ciphertexts) & set(plain[0].ciphertexts)
    # what the worker made is r**n's fast form: encryptions of zero, all different
    zeros = stock.take(5)
    assert len(set(zeros)) == 5
    assert decrypt_integers(priv, EncryptedArray(pub, zeros, 0)) == [0] * 5


@pytest.mark.parametrize("task", ["clf", "reg"])
def test_only_g_is_packed_when_every_h_is_equal_and_that_is_public(tmp_path, task):
    """A fresh fit's first round starts from one baseline (every h equal) and half squared
    error has h = 1: then only g is encrypted, and the trees stay the centralised ones."""
    from fedsk.federation import message_from_wire

    joined, guest, y, _, apps = make_parties(tmp_path, task=task)
    rec = RecordingFederation(InProcessFederation(apps))
    Est = SecureBoostRegressor if task == "reg" else SecureBoostClassifier
    kw = dict(n_estimators=3, max_depth=3, random_state=0, key_length=KEY)
    fed = Est(federation=rec, warm_start=True, **kw).fit(guest, y)
    fed.set_params(n_estimators=4).fit(guest, y)  # warm start: not a fresh first round
    layouts = [
        message_from_wire(sent).meta["max_values"]
        for _, path, sent, _ in rec.records
        if path.endswith("/gradients")
    ]
    full, g_only = list(GH_MAX_VALUES), list(G_MAX_VALUES)
    if task == "reg":
        assert layouts == [g_only] * 4
    else:
        assert layouts == [g_only, full, full, full]
    local = Est(**kw | {"n_estimators": 4}).fit(joined.to_numpy(), y.to_numpy())
    offsets = np.cumsum([guest.shape[1], 4])[:-1]
    assert_same_trees(fed, local, apps, guest.shape[1], offsets)


@pytest.mark.parametrize("task", ["clf", "multi", "reg"])
def test_sample_weight_is_lossless_private_and_encrypts_h(tmp_path, task):
    """Weights scale g and h at the guest: the federated fit equals the local one on the
    joined columns with the same weights, weights change the model, they never cross
    the wire, and h is encrypted in every round (h equal or not would tell a host
    whether the weights differ)."""
    from fedsk.federation import message_from_wire

    joined, guest, y, hosts, apps = make_parties(tmp_path, task=task)
    w = np.random.default_rng(3).choice([0.0, 0.5, 1.0, 3.0], size=len(y))
    rec = RecordingFederation(InProcessFederation(apps))
    Est = SecureBoostRegressor if task == "reg" else SecureBoostClassifier
    kw = dict(n_estimators=3, random_state=0, key_length=KEY)
    fed = Est(federation=rec, **kw).fit(guest, y, sample_weight=w)
    local = Est(**kw).fit(joined.to_numpy(), y.to_numpy(), sample_weight=w)
    assert_same_trees(fed, local, apps, guest.shape[1], [guest.shape[1]])
    np.testing.assert_allclose(fed.train_score_, local.train_score_)
    unweighted = Est(**kw).fit(joined.to_numpy(), y.to_numpy())
    assert not np.allclose(local.train_score_, unweighted.train_score_)
    ones = Est(**kw).fit(joined.to_numpy(), y.to_numpy(), sample_weight=np.ones(len(y)))
    np.testing.assert_array_equal(ones.train_score_, unweighted.train_score_)
    layouts = [
        message_from_wire(sent).meta["max_values"]
        for _, path, sent, _ in rec.records
        if path.endswith("/gradients")
    ]
    assert layouts == [list(GH_MAX_VALUES)] * 3
    assert_absent(rec, w, "sample weights", one_by_one=False)
    with pytest.raises(ValueError, match="at least one non-zero"):
        Est(**kw).fit(joined.to_numpy(), y.to_numpy(), sample_weight=np.zeros(len(y)))
    for bad in (-np.ones(len(y)), np.full(len(y), np.nan)):
        with pytest.raises(ValueError, match=r"[Nn]egative|NaN"):
            Est(**kw).fit(joined.to_numpy(), y.to_numpy(), sample_weight=bad)


def _boosting_requests(rec, party):
    """(route, request, answer) of ``party``'s boosting requests, in order."""
    from fedsk.federation import message_from_wire

    routes = ("/gradients", "/histograms", "/splits")
    return [
        (path.rsplit("/", 1)[1], message_from_wire(sent), message_from_wire(answer))
        for who, path, sent, answer in rec.records
        if who == party and path.endswith(routes)
    ]


def test_one_request_per_layer_with_children_named_by_reference(tmp_path):
    """A layer's splits travel with the next layer's histograms (a host's own split's
    child by reference), a round's gradients with the roots' and its end with the order
    to persist: at most max_depth + 1 requests per round, and the same trees."""
    joined, guest, y, _, apps = make_parties(tmp_path, host_cols=(4,))
    rec = RecordingFederation(InProcessFederation(apps))
    kw = dict(n_estimators=4, max_depth=3, random_state=0, key_length=KEY)
    fed = SecureBoostClassifier(federation=rec, **kw).fit(guest, y)
    rounds = []
    for route, sent, answer in _boosting_requests(rec, "host0"):
        if route == "gradients":
            rounds.append([])
            assert sent.arrays["features"].shape[0] == 1  # the root's histogram request
            assert "packed" in answer.arrays
        rounds[-1].append((route, sent, answer))
    assert len(rounds) == 4
    persisted = []
    for r, steps in enumerate(rounds):
        assert len(steps) <= kw["max_depth"] + 1
        route, sent, answer = steps[-1]
        assert route == "splits" and sent.meta["n_rounds"] == r + 1
        assert answer.meta["model_id"] == fed._host_model_ids[0]
        persisted.append(answer.meta["n_records"])
        assert all("n_rounds" not in s.meta for _, s, _ in steps[:-1])
    assert fed._crypto_counts["requests"] == 1 + sum(map(len, rounds))  # setup + layers
    assert persisted == sorted(persisted)
    assert persisted[-1] == len(host_records(apps, fed, 0)["feature"]) > 0
    by_reference = [s for steps in rounds for route, s, _ in steps if "child_of" in s.arrays]
    assert by_reference, "the host never won a split whose child needed a histogram"
    for sent in by_reference:
        refs = sent.arrays["child_of"]
        offsets = sent.arrays["offsets"]
        assert (np.diff(offsets)[refs >= 0] == 0).all()  # no rows sent for those nodes
    local = SecureBoostClassifier(**kw).fit(joined.to_numpy(), y.to_numpy())
    assert_same_trees(fed, local, apps, guest.shape[1], [guest.shape[1]])


def test_child_of_one_hosts_split_is_asked_of_the_others_once_known(tmp_path):
    """Host 0 wins the root: host 1 builds the smaller child's histogram in a second
    request, with the rows host 0's answer gave."""
    rng = np.random.default_rng(3)
    n = 200
    ids = [f"id{i:04d}" for i in range(n)]
    y = pd.Series((rng.random(n) < 0.5).astype(int), index=ids)
    strong = y.to_numpy() + rng.normal(scale=0.3, size=n)
    guest = pd.DataFrame({"g0": rng.normal(size=n)}, index=ids)
    h0 = pd.DataFrame({"a": strong}, index=ids)
    h1 = pd.DataFrame({"b": rng.normal(size=n), "c": rng.normal(size=n)}, index=ids)
    apps = {
        name: (create_app(write_host(tmp_path / name, df, name=name)), "customers", TOKEN)
        for name, df in (("host0", h0), ("host1", h1))
    }
    rec = RecordingFederation(InProcessFederation(apps))
    kw = dict(n_estimators=1, max_depth=2, random_state=0, key_length=KEY)
    fed = SecureBoostClassifier(federation=rec, **kw).fit(guest, y)
    first = _boosting_requests(rec, "host0")[1]
    assert first[0] == "splits" and (first[1].arrays["child_of"] >= 0).all()
    later = _boosting_requests(rec, "host1")[1]
    assert later[0] == "histograms" and "child_of" not in later[1].arrays
    parent = first[1].arrays["parent_rows"]
    go = np.unpackbits(first[2].arrays["go_left"], count=len(parent)).astype(bool)
    (ref,) = first[1].arrays["child_of"]
    child = parent[go] if ref % 2 == 0 else parent[~go]
    np.testing.assert_array_equal(later[1].arrays["rows"], child)
    joined = pd.concat([guest, h0, h1], axis=1).to_numpy()
    local = SecureBoostClassifier(**kw).fit(joined, y.to_numpy())
    assert_same_trees(fed, local, apps, 1, [1, 2])


@pytest.mark.parametrize("max_values", [GH_MAX_VALUES, G_MAX_VALUES])
def test_records_are_as_wide_as_their_bins_rows_need(max_values):
    """A bin of c rows packs its g sum in the bits c values need; the h slot keeps the
    width of the round's encryption. Sums of real samples decode exactly, and a slot
    above its bin's bound is refused."""
    rng = np.random.default_rng(0)
    n_terms, key_length = 300, 512
    counts = rng.integers(1, 40, size=50)
    top = np.asarray(max_values) + 1
    samples = [rng.integers(0, top, size=(c, len(max_values))) for c in counts]
    sums = np.array([s.sum(axis=0) for s in samples])
    encrypted = RecordLayout.for_sums(max_values, n_terms)  # how each sample was packed
    records = [sum(encrypted.pack(s)) for s in samples]  # what a bin's sum decrypts to
    widths = record_widths(counts, n_terms, max_values)
    low = sum(encrypted.slot_bits[1:])
    assert (widths == [(max_values[0] * int(c)).bit_length() + low for c in counts]).all()
    assert (widths < encrypted.record_bits).all()  # narrower than the round's layout
    sizes = plaintext_groups(widths, key_length)
    assert sum(sizes) == len(counts) and len(sizes) > 1
    plaintexts, pos = [], 0
    for size in sizes:
        assert widths[pos : pos + size].sum() < key_length
        m = 0
        for r, w in zip(records[pos : pos + size], widths[pos : pos + size]):
            m = (m << int(w)) + r
        plaintexts.append(m)
        pos += size
    got = unpack_records(plaintexts, widths, sizes, counts, n_terms, max_values)
    np.testing.assert_array_equal(got, sums)
    # the first plaintext's last record (least significant) with g one above its bound
    last = sizes[0] - 1
    too_big = list(plaintexts)
    too_big[0] += (int(max_values[0]) * int(counts[last]) + 1 - int(sums[last, 0])) << low
    with pytest.raises(PackingOverflowError):
        unpack_records(too_big, widths, sizes, counts, n_terms, max_values)
    with pytest.raises(ValueError, match="does not fit"):
        plaintext_groups([600], 512)


@pytest.mark.parametrize("top_bits", [40, 53])
def test_unpacking_with_numpy_matches_python_integers(top_bits):
    """Slots are cut from the plaintexts' bytes (up to 56 bits) or with Python integers
    (wider): both read the same records and refuse the same overflows."""
    from fedsk.ensemble._gh import _unpack_records

    rng = np.random.default_rng(top_bits)
    draw = random.Random(top_bits)
    max_values = (1 << top_bits, 1 << 10)
    n_terms = 300
    low = list(RecordLayout.for_sums(max_values, n_terms).slot_bits[1:])
    for trial in range(20):
        counts = rng.integers(1, 300, size=int(rng.integers(1, 80)))
        counts[0] = 299  # (the widest slot: which path the case takes)
        widths = record_widths(counts, n_terms, max_values)
        sizes = plaintext_groups(widths, 2048)
        values = [[draw.randrange(c * v + 1) for v in max_values] for c in counts.tolist()]
        if trial == 0:  # every slot at its bound
            values = [[c * v for v in max_values] for c in counts.tolist()]
        plaintexts, pos = [], 0
        for size in sizes:
            m = 0
            for j in range(pos, pos + size):
                m = (m << int(widths[j])) | (values[j][0] << low[0]) | values[j][1]
            plaintexts.append(m)
            pos += size
        got = unpack_records(plaintexts, widths, sizes, counts, n_terms, max_values)
        assert got.dtype == np.int64 and got.tolist() == values
        assert (widths.max() - low[0] > 56) == (top_bits > 50)  # (the path this case takes)
        slow = _unpack_records(
            plaintexts, np.asarray(widths), np.asarray(sizes), counts, low, max_values
        )
        assert slow.tolist() == values
        k = int(rng.integers(len(plaintexts)))
        above = list(plaintexts)
        above[k] |= 1 << int(widths[sum(sizes[:k]) : sum(sizes[: k + 1])].sum())
        with pytest.raises(PackingOverflowError, match="overflowed"):
            unpack_records(above, widths, sizes, counts, n_terms, max_values)
        with pytest.raises(PackingOverflowError, match="expected"):
            unpack_records(plaintexts[:-1], widths, sizes, counts, n_terms, max_values)
