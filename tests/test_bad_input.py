"""Bad input to the estimators and protocols: one clear error each, saying what to do.

Guest side (X, y, the Federation) and host side (its dataset, at start). Every
federated estimator and protocol goes through the same guest helpers
(``check_federated_X``, ``aligned_sessions``), so the checks are shared.
"""

import time

import numpy as np
import pandas as pd
import pytest

from fedsk import (
    FederatedLogisticRegression,
    Federation,
    LocalFederation,
    SecureBoostClassifier,
    SecureBoostRegressor,
)
from fedsk.exceptions import AuthenticationError, ProtocolError
from fedsk.federation import InProcessFederation, Message
from fedsk.stats import federated_pearson
from party_server import ConfigError, create_app

from .conftest import TOKEN, write_host

KEY = 1024
N = 40


@pytest.fixture(scope="module")
def parties(tmp_path_factory):
    rng = np.random.default_rng(0)
    ids = [f"c{i:03d}" for i in range(N)]
    host = pd.DataFrame(rng.normal(size=(N, 2)), index=ids, columns=["h0", "h1"])
    guest = pd.DataFrame(rng.normal(size=(N, 2)), index=ids, columns=["g0", "g1"])
    y = pd.Series((guest.g0 + host.h0 > 0).astype(int), index=ids)
    app = create_app(write_host(tmp_path_factory.mktemp("bad"), host))
    return guest, y, app


def fed_of(app, dataset="customers", token=TOKEN):
    return InProcessFederation({"insurer": (app, dataset, token)})


def clf_of(fed, cls=SecureBoostClassifier):
    return cls(federation=fed, n_estimators=1, max_depth=2, key_length=KEY, random_state=0)


def _with(guest, **columns):
    out = guest.copy()
    for k, v in columns.items():
        out[k] = v
    return out


# -- X --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make,column",
    [
        (lambda g: _with(g, city=["Paris", "Lyon"] * (N // 2)), "city"),
        (lambda g: _with(g, segment=pd.Categorical(["a", "b"] * (N // 2))), "segment"),
        (lambda g: _with(g, opened=pd.date_range("2020-01-01", periods=N)), "opened"),
        (lambda g: _with(g, g1=g.g1.astype(object).where(g.g1 > 0, "n/a")), "g1"),
    ],
    ids=["strings", "categorical", "datetime", "mixed object"],
)
def test_non_numeric_columns(parties, make, column):
    guest, y, app = parties
    with pytest.raises(ValueError, match="non-numeric column") as err:
        clf_of(fed_of(app)).fit(make(guest), y)
    assert column in str(err.value) and "encode them first" in str(err.value)


def test_infinity_in_X_at_fit_and_predict(parties):
    guest, y, app = parties
    bad = guest.copy()
    bad.iloc[[3, 5], 1] = [np.inf, -np.inf]
    with pytest.raises(ValueError, match=r"infinity in column\(s\) \['g1'\] \(2 value") as err:
        clf_of(fed_of(app)).fit(bad, y)
    assert "replace them with finite values" in str(err.value)
    clf = clf_of(fed_of(app)).fit(guest, y)
    with pytest.raises(ValueError, match="infinity"):
        clf.predict(bad)


def test_missing_values_in_X_are_allowed_by_secureboost(parties):
    guest, y, app = parties
    holes = guest.copy()
    holes.iloc[[1, 7], 0] = np.nan
    assert clf_of(fed_of(app)).fit(holes, y).predict(holes).shape == (N,)


@pytest.mark.parametrize("value,what", [(np.nan, "NaN"), (np.inf, "infinity")])
def test_missing_or_infinite_labels(parties, value, what):
    guest, y, app = parties
    bad = y.astype(float)
    bad.iloc[[2, 9]] = value
    cls = SecureBoostClassifier if what == "NaN" else SecureBoostRegressor
    with pytest.raises(ValueError, match=f"Input y contains {what}: 2 of {N} labels") as err:
        clf_of(fed_of(app), cls).fit(guest, bad)
    assert "c002" in str(err.value) and "drop those rows" in str(err.value)


def test_rows_the_host_does_not_hold(parties):
    guest, y, app = parties
    extra = pd.DataFrame([[0.0, 0.0], [1.0, 1.0]], index=["new1", "new2"], columns=guest.columns)
    X = pd.concat([guest, extra])
    with pytest.raises(ValueError, match=f"2 of {N + 2} rows of X have sample IDs") as err:
        clf_of(fed_of(app)).fit(X, np.r_[y, 0, 1])
    assert "'insurer'" in str(err.value) and "drop those rows from X" in str(err.value)
    clf = clf_of(fed_of(app)).fit(guest, y)
    with pytest.raises(ValueError, match="does not hold"):
        clf.predict(X)


def test_every_host_lacking_rows_is_named_in_one_error(tmp_path, parties):
    guest, y, _ = parties
    ids = guest.index
    hosts = {"one": ids[5:], "two": ids[:-7]}  # each lacks other rows
    apps = {
        name: (
            create_app(write_host(tmp_path, pd.DataFrame({"h": 1.0}, index=keep), name=name)),
            "customers",
            TOKEN,
        )
        for name, keep in hosts.items()
    }
    with pytest.raises(ValueError, match=f"12 of {N} rows of X .* a host does not hold") as err:
        clf_of(InProcessFederation(apps)).fit(guest, y)
    assert f"host 'one' does not hold 5 (e.g. {ids[:3].tolist()})" in str(err.value)
    assert f"host 'two' does not hold 7 (e.g. {ids[-7:-4].tolist()})" in str(err.value)


def test_duplicate_and_missing_ids(parties):
    guest, y, app = parties
    dup = guest.copy()
    dup.index = [*guest.index[:-1], guest.index[0]]
    with pytest.raises(ValueError, match="1 duplicate sample IDs") as err:
        clf_of(fed_of(app)).fit(dup, y.set_axis(dup.index))
    assert "'c000'" in str(err.value) and "its own ID" in str(err.value)
    nan = guest.copy()
    nan.index = [np.nan, *guest.index[1:]]
    with pytest.raises(ValueError, match="1 rows without a sample ID") as err:
        clf_of(fed_of(app)).fit(nan, y.set_axis(nan.index))
    assert "give every row the ID" in str(err.value)


def test_X_that_is_not_a_dataframe(parties):
    guest, y, app = parties
    for X in (guest.to_numpy(), guest.to_numpy().tolist()):
        with pytest.raises(TypeError, match="needs X as a pandas DataFrame") as err:
            clf_of(fed_of(app)).fit(X, y)
        assert "set_output(transform='pandas')" in str(err.value)


def test_predict_with_other_columns_than_fit(parties):
    guest, y, app = parties
    clf = clf_of(fed_of(app)).fit(guest, y)
    with pytest.raises(ValueError, match="feature names should match"):
        clf.predict(guest.rename(columns={"g0": "zz"}))


# -- the federation ----------------------------------------------------------------------
def test_dataset_the_host_does_not_have(parties):
    guest, y, app = parties
    with pytest.raises(ProtocolError, match="host 'insurer' has no dataset 'cusotmers'") as err:
        clf_of(fed_of(app, dataset="cusotmers")).fit(guest, y)
    assert "check hosts['insurer']['dataset']" in str(err.value)


def test_bad_token(parties):
    guest, y, app = parties
    with pytest.raises(AuthenticationError, match="refused our token") as err:
        clf_of(fed_of(app, token="not-the-token-0123")).fit(guest, y)
    assert "check the token this federation uses" in str(err.value)


def test_bad_token_over_http(parties):
    guest, y, _ = parties
    host = pd.DataFrame({"h": np.arange(N, dtype=float)}, index=guest.index)
    with LocalFederation(hosts={"insurer": host}) as fed:
        spec = dict(fed.hosts["insurer"], token="not-the-token-0123")
        with pytest.raises(AuthenticationError, match=r"insurer at http://127\.0\.0\.1"):
            clf_of(Federation({"insurer": spec})).fit(guest, y)
        with pytest.raises(AuthenticationError):
            federated_pearson(guest, Federation({"insurer": spec}), key_length=KEY)


def test_token_env_not_set(parties, monkeypatch):
    guest, y, _ = parties
    monkeypatch.delenv("FEDSK_TOKEN_NOT_SET", raising=False)
    fed = Federation(
        {"i": {"url": "http://127.0.0.1:9", "dataset": "d", "token_env": "FEDSK_TOKEN_NOT_SET"}}
    )
    with pytest.raises(ValueError, match=r"FEDSK_TOKEN_NOT_SET .*is not set"):
        clf_of(fed).fit(guest, y)


def test_key_shorter_than_the_host_accepts(parties, tmp_path):
    guest, y, _ = parties
    host = pd.DataFrame({"h": np.arange(N, dtype=float)}, index=guest.index)
    strict = create_app(write_host(tmp_path, host, min_key_length=2048))
    with pytest.raises(ProtocolError, match="at least 2048") as err:
        clf_of(fed_of(strict)).fit(guest, y)
    assert "fit with key_length=2048 or more" in str(err.value)


def test_federated_pearson_shares_the_checks(parties):
    guest, _, app = parties
    with pytest.raises(ValueError, match="non-numeric column"):
        federated_pearson(_with(guest, s="x"), fed_of(app), key_length=KEY)
    with pytest.raises(TypeError, match="DataFrame"):
        federated_pearson(guest.to_numpy(), fed_of(app), key_length=KEY)


# -- the host's dataset (checked when its server starts) ------------------------------------
@pytest.mark.parametrize(
    "change,key,text",
    [
        (lambda d: d.assign(h0=d.h0.where(d.h0 > 0, np.inf)), "datasets.customers", "finite"),
        (lambda d: d.assign(city="Paris"), "datasets.customers", "not numeric"),
        (lambda d: d.set_axis([d.index[0]] * len(d)), "id_column", "duplicate IDs"),
        (lambda d: d.iloc[:0], "datasets.customers.path", "has no rows"),  # only a header
    ],
    ids=["infinity", "text column", "duplicate IDs", "no rows"],
)
def test_bad_host_dataset_fails_at_start(tmp_path, change, key, text):
    rng = np.random.default_rng(1)
    ids = [f"c{i}" for i in range(10)]
    host = change(pd.DataFrame(rng.normal(size=(10, 2)), index=ids, columns=["h0", "h1"]))
    with pytest.raises(ConfigError, match=text) as err:
        create_app(write_host(tmp_path, host))
    assert key in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("url", ["http://insurer.example:8443", "http://10.0.0.7:8443"])
def test_plain_http_to_another_machine_is_refused(url):
    with pytest.raises(ValueError, match="unencrypted; use https://"):
        Federation({"insurer": {"url": url, "dataset": "d", "token": "t" * 16}})
    for ok in ("http://127.0.0.1:8443", "http://localhost:1", "http://[::1]:2", "https://x.org"):
        Federation({"insurer": {"url": ok, "dataset": "d", "token": "t" * 16}})


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_predict_against_a_host_without_the_model_says_to_refit(parties, tmp_path):
    """A host that lost its half (another server, deleted, retention) gets one clear error."""
    from fedsk import FederatedLogisticRegression

    guest, y, app = parties
    host = pd.DataFrame(np.zeros((N, 2)), index=guest.index, columns=["h0", "h1"])
    other = fed_of(create_app(write_host(tmp_path, host)))
    lr = FederatedLogisticRegression(federation=fed_of(app), key_length=KEY, max_iter=3)
    for est in (clf_of(fed_of(app)), lr):
        est.fit(guest, y)
        est.federation = other
        with pytest.raises(ProtocolError, match=r"no longer holds .* fit the estimator again"):
            est.predict(guest)
    # continuing such a fit says how to start over instead
    sb = clf_of(fed_of(app)).set_params(warm_start=True, n_estimators=2).fit(guest, y)
    sb.set_params(federation=other, n_estimators=3)
    with pytest.raises(ProtocolError, match=r"no longer holds .* with warm_start=False"):
        sb.fit(guest, y)
    assert sb.n_estimators_ == 2


def test_predict_with_another_peers_model_says_so(parties, tmp_path):
    guest, y, _ = parties
    host = pd.DataFrame(np.ones((N, 2)), index=guest.index, columns=["h0", "h1"])
    cfg = write_host(tmp_path, host)
    cfg["peers"]["telco"] = {"token": "telco-token-0123456789"}
    app = create_app(cfg)
    clf = clf_of(fed_of(app)).fit(guest, y)
    clf.federation = fed_of(app, token="telco-token-0123456789")
    with pytest.raises(ProtocolError, match=r"no longer holds .* or by another peer: a model"):
        clf.predict(guest)


def test_duplicated_column_names_and_a_multiindex_of_ids(parties):
    guest, y, app = parties
    dup = guest.set_axis(["g0", "g0"], axis=1)
    with pytest.raises(ValueError, match=r"duplicated column names \['g0'\]"):
        clf_of(fed_of(app)).fit(dup, y)
    multi = guest.set_axis(pd.MultiIndex.from_arrays([["b1"] * N, guest.index]))
    with pytest.raises(ValueError, match="MultiIndex of 2 levels") as err:
        clf_of(fed_of(app)).fit(multi, y)
    assert "X.index = X.index.map(" in str(err.value)


def test_numbers_read_as_text_get_the_right_hint(parties):
    guest, y, app = parties
    text = guest.assign(g1=guest.g1.map(str))
    with pytest.raises(ValueError, match="non-numeric column") as err:
        clf_of(fed_of(app)).fit(text, y)
    assert "['g1'] hold numbers as text" in str(err.value) and "pd.to_numeric" in str(err.value)


def test_ids_distinct_for_pandas_but_the_same_for_the_hosts(tmp_path):
    host = pd.DataFrame({"h": [1.0, 2.0, 3.0]}, index=["0", "1", "2"])
    guest = pd.DataFrame({"g": [0.5, 1.5, 2.5]}, index=pd.Index([0, "0", "1"], dtype=object))
    app = create_app(write_host(tmp_path, host))
    with pytest.raises(ValueError, match=r"distinct in X's index but the same ID .*\[0, '0'\]"):
        clf_of(fed_of(app)).fit(guest, [0, 1, 0])


def test_timestamp_ids_match_whatever_their_resolution(tmp_path):
    when = pd.date_range("2021-01-01", periods=N, freq="h")
    rng = np.random.default_rng(1)
    host = pd.DataFrame({"h": rng.normal(size=N)}, index=when.as_unit("ns"))
    guest = pd.DataFrame({"g": rng.normal(size=N)}, index=when.as_unit("s"))
    y = (guest.g.to_numpy() + host.h.to_numpy() > 0).astype(int)
    with LocalFederation(hosts={"insurer": host}) as fed:
        clf = clf_of(fed).fit(guest, y)
        assert clf.predict(guest).shape == (N,)


@pytest.mark.parametrize("cls", ["SecureBoostClassifier", "FederatedLogisticRegression"])
def test_predict_scores_every_row_of_ids_that_repeat(parties, cls):
    import fedsk

    guest, y, app = parties
    est = getattr(fedsk, cls)(federation=fed_of(app), key_length=KEY).fit(guest, y)
    boot = guest.iloc[[3, 0, 3, 7, 0, 0]]  # a bootstrap resample: IDs repeat
    np.testing.assert_array_equal(
        est.predict_proba(boot), est.predict_proba(guest).take([3, 0, 3, 7, 0, 0], axis=0)
    )
    with pytest.raises(ValueError, match="duplicate sample IDs"):  # to fit, each row one ID
        est.fit(boot, y.iloc[[3, 0, 3, 7, 0, 0]])


def test_an_index_of_row_positions_is_called_out(parties):
    guest, y, app = parties
    with pytest.raises(ValueError, match=r"does not hold \(e.g. \[0, 1, 2\]\)") as err:
        clf_of(fed_of(app)).fit(guest.reset_index(drop=True), y)
    assert "row positions rather than sample IDs" in str(err.value)


def test_early_stopping_names_the_class_too_small_to_split(parties):
    guest, y, app = parties
    labels = np.where(y.to_numpy() == 1, "yes", "no").astype(object)
    labels[5] = "rare"
    clf = clf_of(fed_of(app)).set_params(early_stopping=True)
    with pytest.raises(ValueError, match=r"class\(es\) \['rare'\] have a single sample"):
        clf.fit(guest, labels)


def test_a_session_the_host_no_longer_knows_says_why_and_what_to_do(tmp_path, parties):
    guest, y, _ = parties
    host = pd.DataFrame(np.ones((N, 2)), index=guest.index, columns=["h0", "h1"])
    app = create_app(write_host(tmp_path, host, session_ttl=1.0))
    (client,) = fed_of(app).connect()
    sid, _ = client.open_session("secureboost")
    time.sleep(2.5)  # idle past session_ttl (as lost as after a restart of the server)
    with pytest.raises(ProtocolError, match="no longer knows this session") as err:
        client.call("psi.intersection", sid, Message(arrays={"host_indices": np.arange(3)}))
    assert "restarted" in str(err.value) and "Start the fit (or prediction) again" in str(err.value)


def test_labels_or_weights_indexed_by_other_ids_or_in_another_order_are_refused(parties):
    guest, y, app = parties
    fed = fed_of(app)
    shuffled = y.sample(frac=1.0, random_state=0)
    for est in (clf_of(fed), FederatedLogisticRegression(federation=fed, key_length=KEY)):
        with pytest.raises(ValueError, match=r"another order.*y = y.loc\[X.index\]"):
            est.fit(guest, shuffled)
        w = pd.Series(np.linspace(0.5, 2, N), index=guest.index).iloc[::-1]
        with pytest.raises(ValueError, match=r"sample_weight holds the sample IDs of X in an"):
            est.fit(guest, y, sample_weight=w)
    other = y.set_axis([f"x{i}" if i < 5 else guest.index[i] for i in range(N)])
    with pytest.raises(ValueError, match=r"some of X's sample IDs but not all \(e.g. \['x0'"):
        clf_of(fed).fit(guest, other)
    # what a cross-validation split leaves of a default index is positional, as in sklearn
    positional = y.reset_index(drop=True)
    keep = np.arange(N) % 3 > 0
    a = clf_of(fed).fit(guest[keep], positional[keep], sample_weight=positional[keep] + 1.0)
    b = clf_of(fed).fit(guest[keep], y[keep].to_numpy(), sample_weight=y[keep].to_numpy() + 1.0)
    np.testing.assert_array_equal(a.predict_proba(guest), b.predict_proba(guest))
    # aligned, a default index (positional, as in scikit-learn) or an array: all fitted alike
    a = clf_of(fed).fit(guest, shuffled.loc[guest.index]).predict_proba(guest)
    b = clf_of(fed).fit(guest, y.reset_index(drop=True)).predict_proba(guest)
    np.testing.assert_array_equal(a, b)


def test_labels_sorted_by_ids_that_look_like_positions_are_refused_as_ambiguous(parties):
    """IDs 0..n-1 in X's shuffled order, y indexed by the same IDs sorted: y's index looks
    like a default one, and taking it by position gave rows other rows' labels."""
    guest, y, app = parties
    order = np.random.default_rng(0).permutation(N)
    X = guest.iloc[order].set_axis(order)  # sample IDs 0..N-1, shuffled
    labels = pd.Series(y.to_numpy(), index=np.arange(N))  # sorted by ID
    for est in (clf_of(fed_of(app)), FederatedLogisticRegression(federation=fed_of(app))):
        with pytest.raises(ValueError, match=r"y's index is 0..39 .* y.to_numpy\(\) .* y.loc"):
            est.fit(X, labels)
        with pytest.raises(ValueError, match=r"sample_weight's index is 0..39"):
            est.fit(X, labels.loc[X.index], sample_weight=pd.Series(1.0, index=np.arange(N)))


def test_a_labels_only_guest_without_intercept_is_told_what_to_do(parties):
    guest, y, app = parties
    est = FederatedLogisticRegression(federation=fed_of(app), key_length=KEY, fit_intercept=False)
    with pytest.raises(ValueError, match=r"no coefficient of its own.*protocol='exact'"):
        est.fit(guest[[]], y)


@pytest.mark.integration
def test_columns_of_numbers_held_as_objects_are_taken_as_their_numbers():
    """As scikit-learn takes them (e.g. a frame after a transpose), on both sides; they
    were refused as "numbers as text"."""
    rng = np.random.default_rng(0)
    ids = [f"u{i}" for i in range(N)]
    g, h = rng.normal(size=N), rng.normal(size=N)
    guest = pd.DataFrame({"a": pd.Series(g.tolist(), index=ids, dtype=object)})
    guest.iloc[3, 0] = None
    host = pd.DataFrame({"c": pd.Series([int(v * 10) for v in h], index=ids, dtype=object)})
    y = pd.Series((g + h > 0).astype(int), index=ids)
    with LocalFederation(hosts={"h": host}) as fed:
        proba = clf_of(fed).fit(guest, y).predict_proba(guest)
        text = guest.astype(str)  # numbers as text are still refused, saying how to convert
        with pytest.raises(ValueError, match="hold numbers as text"):
            clf_of(fed).fit(text, y)
    joined = guest.join(host).astype(float)
    np.testing.assert_array_equal(proba, clf_of(None).fit(joined, y).predict_proba(joined))


def test_a_categorical_column_of_numbers_is_taken_as_its_numbers(parties):
    guest, y, app = parties
    grades = np.tile([1, 2, 3, 5], N // 4)
    as_category = _with(guest, grade=pd.Categorical(grades))
    as_int = _with(guest, grade=grades)
    a = clf_of(fed_of(app)).fit(as_category, y).predict_proba(as_category)
    b = clf_of(fed_of(app)).fit(as_int, y).predict_proba(as_int)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("Est", [SecureBoostClassifier, FederatedLogisticRegression])
def test_labels_of_mixed_kinds_or_missing_get_the_same_words_from_both(Est):
    X = pd.DataFrame({"a": np.arange(20.0)}, index=[f"r{i}" for i in range(20)])
    for y in ([1] * 10 + ["no"] * 10, ["no"] * 10 + [1] * 10):  # whatever comes first
        with pytest.raises(ValueError, match=r"mixes labels of types \['int', 'str'\]"):
            Est().fit(X, pd.Series(y, dtype=object))
    missing = pd.Series(["yes", "no"] * 10, dtype=object)
    missing.iloc[3] = None
    for y in (
        missing,
        missing.fillna(np.nan),
        (missing == "yes").astype(float).where(missing.notna()),
    ):
        with pytest.raises(ValueError, match=r"1 of 20 labels are missing \(e.g. rows \['r3'\]\)"):
            Est().fit(X, y)


@pytest.mark.parametrize("publish", [True, False])
def test_a_host_data_file_exported_again_keeps_each_models_columns(tmp_path, publish):
    """The host's file gets its columns in another order and one more: stored models
    still apply to the columns they were trained on (by name, host-side); with a
    column gone, prediction is refused rather than made on other columns."""
    rng = np.random.default_rng(0)
    ids = [f"c{i:03d}" for i in range(N)]
    host = pd.DataFrame(rng.normal(size=(N, 3)), index=ids, columns=["h0", "h1", "h2"])
    guest = pd.DataFrame(rng.normal(size=(N, 2)), index=ids, columns=["g0", "g1"])
    y = pd.Series((guest.g0 + host.h0 - host.h2 > 0).astype(int), index=ids)

    app = create_app(write_host(tmp_path, host, publish=publish))
    fed = InProcessFederation({"insurer": (app, "customers", TOKEN)})

    def fed_with(df):  # the host restarts on its file exported again (seam: the dataset)
        again = create_app(write_host(tmp_path / f"{len(df.columns)}", df, publish=publish))
        app.extensions["fedsk"].datasets["customers"] = again.extensions["fedsk"].datasets[
            "customers"
        ]
        return fed

    sb = clf_of(fed).set_params(n_estimators=3, warm_start=True).fit(guest, y)
    lr = FederatedLogisticRegression(federation=fed, key_length=KEY, warm_start=True)
    lr.fit(guest, y)
    before = sb.predict_proba(guest), lr.predict_proba(guest)
    moved = host[["h2", "h0", "h1"]].assign(new=rng.normal(size=N))[["new", "h2", "h0", "h1"]]
    for est, expected in zip((sb, lr), before):
        est.federation = fed_with(moved)
        np.testing.assert_allclose(est.predict_proba(guest), expected, rtol=0, atol=1e-12)
    sb.set_params(n_estimators=4).fit(guest, y)  # warm start continues on the moved file
    lone = clf_of(fed_with(host)).set_params(n_estimators=4).fit(guest, y)
    fed_with(moved)
    np.testing.assert_allclose(sb.predict_proba(guest), lone.predict_proba(guest), atol=1e-12)
    with pytest.raises(ProtocolError, match="warm_start cannot continue it"):
        lr.fit(guest, y)
    for est in (sb, lr):
        est.federation = fed_with(host.drop(columns="h0"))
        with pytest.raises(ProtocolError, match=r"409.*no longer in dataset 'customers'") as err:
            est.predict_proba(guest)
        assert "h0" not in str(err.value)  # (names stay on the host: they may be unpublished)


@pytest.mark.parametrize("Est", [SecureBoostClassifier, FederatedLogisticRegression])
def test_a_local_fit_without_columns_says_so(Est):
    X = pd.DataFrame(index=[f"r{i}" for i in range(20)])
    with pytest.raises(
        ValueError, match=r"0 feature\(s\) \(shape=\(20, 0\)\) while a minimum of 1"
    ):
        Est().fit(X, np.arange(20) % 2)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_regression_targets_too_large_to_square_say_to_rescale():
    """They surfaced as a "split directions from this party" error in a local fit."""
    X = pd.DataFrame({"a": np.random.default_rng(0).normal(size=40)})
    y = np.sign(X["a"].to_numpy()) * 1.7e308
    with pytest.raises(ValueError, match=r"y holds values up to 1.7e\+308 .* rescale y"):
        SecureBoostRegressor(n_estimators=2).fit(X, y)
    assert SecureBoostRegressor(n_estimators=2).fit(X, y / 1e200).score(X, y / 1e200) > 0.5


def test_token_env_is_stripped_as_the_server_strips_it(parties, monkeypatch):
    guest, y, _ = parties
    spec = {"url": "http://127.0.0.1:9", "dataset": "d", "token_env": "FEDSK_TOKEN_PADDED"}
    fed = Federation({"i": spec})
    monkeypatch.setenv("FEDSK_TOKEN_PADDED", f" {TOKEN}\r\n")
    assert [c.transport.token for c in fed.connect()] == [TOKEN]
    monkeypatch.setenv("FEDSK_TOKEN_PADDED", " \r\n")
    with pytest.raises(ValueError, match=r"FEDSK_TOKEN_PADDED .*is empty; set it"):
        clf_of(fed).fit(guest, y)
