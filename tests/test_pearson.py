"""Federated Pearson correlation: exactness, several hosts, what crosses, bad input."""

import numpy as np
import pandas as pd
import pytest

from fedsk.crypto import encrypt, generate_keypair, residues_from_bytes, residues_to_bytes
from fedsk.exceptions import ProtocolError
from fedsk.federation import (
    ROUTES,
    InProcessFederation,
    LocalFederation,
    Message,
    public_key_to_wire,
)
from fedsk.federation._psi import align
from fedsk.stats import federated_pearson
from fedsk.stats._common import (
    GUEST_EXPONENT,
    standardise,
)
from party_server import create_app

from ._privacy import RecordingFederation, assert_absent
from .conftest import TOKEN, write_host

KEY = 1024  # tests use 1024-bit keys; users get 2048


def make_guest(host_df, *, n=50, seed=0):
    """Guest columns for a subset of the host's IDs, shuffled, correlated with the host's."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(host_df.index.to_numpy())[:n]
    h = host_df.loc[ids].to_numpy()
    return pd.DataFrame(
        {
            "income": 2.0 * h[:, 0] + rng.normal(size=n),
            "balance": -h[:, 1] + 0.5 * rng.normal(size=n) + 1e4,
            "debt": rng.normal(size=n) * 1e-3,
        },
        index=ids,
    )


def corrcoef_block(guest, *hosts):
    """np.corrcoef on the joined columns: the guest-rows x host-columns block."""
    joined = np.hstack([guest.to_numpy()] + [h.loc[guest.index].to_numpy() for h in hosts])
    with np.errstate(invalid="ignore", divide="ignore"):
        full = np.corrcoef(joined, rowvar=False)
    p = guest.shape[1]
    return full[:p, p:]


def assert_refused(status, match, call, *args, **kwargs):
    """The host answered a JSON 4xx with ``status`` (never a 5xx) naming the problem."""
    with pytest.raises(ProtocolError, match=match) as info:
        call(*args, **kwargs)
    assert f"with {status} [" in str(info.value), str(info.value)


# -- correctness --------------------------------------------------------------------------


def test_matches_corrcoef(inproc, host_df):
    guest = make_guest(host_df)
    got = federated_pearson(guest, inproc, key_length=KEY)
    assert list(got.index) == ["income", "balance", "debt"]
    assert list(got.columns) == ["insurer:age", "insurer:claims", "insurer:tenure"]
    np.testing.assert_allclose(got.to_numpy(), corrcoef_block(guest, host_df), rtol=0, atol=1e-9)


def test_constant_columns_are_nan(tmp_path, host_df):
    host = host_df.assign(flag=3.0)
    fed = InProcessFederation(
        {"insurer": (create_app(write_host(tmp_path, host)), "customers", TOKEN)}
    )
    guest = make_guest(host_df).assign(branch=7.25)
    got = federated_pearson(guest, fed, key_length=KEY).to_numpy()
    want = corrcoef_block(guest, host)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[3]).all() and np.isnan(got[:, 3]).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_unpublished_names_are_positions(tmp_path, host_df):
    app = create_app(write_host(tmp_path, host_df, publish=False))
    got = federated_pearson(
        make_guest(host_df),
        InProcessFederation({"insurer": (app, "customers", TOKEN)}),
        key_length=KEY,
    )
    assert list(got.columns) == ["insurer:0", "insurer:1", "insurer:2"]


def test_several_hosts(tmp_path):
    rng = np.random.default_rng(7)
    ids = [f"u{i}" for i in range(120)]
    base = rng.normal(size=(120, 2))
    hosts = {
        "insurer": pd.DataFrame(
            {"premium": base[:, 0] + rng.normal(size=120), "claims": rng.normal(size=120)},
            index=ids,
        ),
        "telco": pd.DataFrame(  # holds more IDs than the guest needs, in another order
            {"minutes": base[:, 1] * 3 + rng.normal(size=120), "churn": base[:, 0] > 0},
            index=ids,
        ).iloc[::-1],
    }
    apps = {
        name: (create_app(write_host(tmp_path / name, df, name=name)), "customers", TOKEN)
        for name, df in hosts.items()
    }
    guest = pd.DataFrame(
        base[:100] + rng.normal(size=(100, 2)), index=ids[:100], columns=["a", "b"]
    )
    got = federated_pearson(guest, InProcessFederation(apps), key_length=KEY)
    assert list(got.columns) == [
        "insurer:premium",
        "insurer:claims",
        "telco:minutes",
        "telco:churn",
    ]
    want = corrcoef_block(guest, hosts["insurer"], hosts["telco"].astype(float))
    np.testing.assert_allclose(got.to_numpy(), want, rtol=0, atol=1e-9)


@pytest.mark.integration
def test_over_real_party_servers(host_df):
    guest = make_guest(host_df)
    with LocalFederation(hosts={"insurer": host_df}) as fed:
        got = federated_pearson(guest, fed, key_length=KEY)
        np.testing.assert_allclose(
            got.to_numpy(), corrcoef_block(guest, host_df), rtol=0, atol=1e-9
        )
        # a bad request over HTTP is a 4xx, and the server goes on serving
        client, sid = open_aligned(fed, guest.index)
        pub, _ = generate_keypair(KEY)
        bad = products_request(pub, np.zeros((1, len(guest))))
        bad.arrays["z"][:] = 0xFF  # every ciphertext >= n**2
        assert_refused(400, "out of range", client.call, "pearson.products", sid, bad)
        again = federated_pearson(guest, fed, key_length=KEY)
        # the masks cancel exactly: the same data give bit-identical correlations
        np.testing.assert_array_equal(again.to_numpy(), got.to_numpy())


# -- what crosses the wire ----------------------------------------------------------------


def test_no_value_crosses_in_plaintext(inproc, host_df):
    guest = make_guest(host_df)
    host = host_df.loc[guest.index]
    rec = RecordingFederation(inproc)
    corr = federated_pearson(guest, rec, key_length=KEY)
    paths = {path.rsplit("/", 1)[-1] for _, path, _, _ in rec.records}
    assert {"psi", "intersection", "pearson", "result"} <= paths

    z_guest, _ = standardise(guest.to_numpy())
    z_host, _ = standardise(host.to_numpy())
    assert_absent(rec, guest.to_numpy(), "guest feature values")
    assert_absent(rec, host.to_numpy(), "host feature values")
    assert_absent(rec, z_guest, "guest standardised values")
    assert_absent(rec, z_host, "host standardised values")
    for what, df in (("guest", guest), ("host", host)):
        assert_absent(rec, df.mean().to_numpy(), f"{what} column means")
        assert_absent(rec, df.std(ddof=0).to_numpy(), f"{what} column standard deviations")
    # the harness does find what is disclosed: the correlation matrix crosses (step 6)
    with pytest.raises(AssertionError, match="correlation"):
        assert_absent(rec, corr.to_numpy(), "correlation")


# -- bad input ------------------------------------------------------------------------------


def open_aligned(fed, ids):
    [client] = fed.connect()
    sid, _ = client.open_session("pearson")
    align(client, sid, list(ids))
    return client, sid


def products_request(pub, Z, *, key=None, n_columns=None, exponent=GUEST_EXPONENT):
    """A well-formed pearson.products request for standardised guest columns Z.T."""
    Z = np.atleast_2d(Z)
    msg = Message(
        {
            "public_key": key if key is not None else public_key_to_wire(pub),
            "n_columns": n_columns if n_columns is not None else Z.shape[0],
        }
    )
    return msg.add_encrypted("z", encrypt(pub, Z.ravel(), exponent=exponent))


def test_host_refuses_bad_products(inproc, host_df, keypair):
    pub, _ = keypair
    guest = make_guest(host_df, n=40)
    z = standardise(guest.to_numpy())[0].T  # (3, 40)
    [client] = inproc.connect()
    sid, _ = client.open_session("pearson")
    call = client.call
    assert_refused(409, "align samples", call, "pearson.products", sid, products_request(pub, z))

    client, sid = open_aligned(inproc, guest.index)
    call = client.call
    short = {"n": format((1 << 511) + 1, "x")}
    assert_refused(
        400, "key too short", call, "pearson.products", sid, products_request(pub, z, key=short)
    )
    assert_refused(
        400,
        "public key",
        call,
        "pearson.products",
        sid,
        products_request(pub, z, key={"n": "not hex"}),
    )
    assert_refused(
        400,
        "n_columns.*wrong type",
        call,
        "pearson.products",
        sid,
        products_request(pub, z, n_columns="3"),
    )
    assert_refused(
        400, "n_columns.*>= 1", call, "pearson.products", sid, products_request(pub, z, n_columns=0)
    )
    assert_refused(
        400,
        "must hold 80 ciphertexts",
        call,
        "pearson.products",
        sid,
        products_request(pub, z, n_columns=2),
    )
    assert_refused(
        409,
        "too_many_columns",
        call,
        "pearson.products",
        sid,
        products_request(pub, np.zeros((5, 40))),
    )
    assert_refused(
        400, "exponent", call, "pearson.products", sid, products_request(pub, z, exponent=-8)
    )
    for fill in (0x00, 0xFF):  # c = 0 and c >= n**2
        bad = products_request(pub, z)
        bad.arrays["z"][7] = fill
        assert_refused(400, "ciphertext 7 is out of range", call, "pearson.products", sid, bad)
    plain = Message(
        {"public_key": public_key_to_wire(pub), "n_columns": 3}, arrays={"z": z.ravel()}
    )
    assert_refused(400, "ciphertext array 'z' is missing", call, "pearson.products", sid, plain)

    # the same session, and the server, still answer a correct request
    answer = call("pearson.products", sid, products_request(pub, z))
    assert len(answer.encrypted("masked", pub, length=9)) == 9
    got = federated_pearson(guest, inproc, key_length=KEY)
    np.testing.assert_allclose(got.to_numpy(), corrcoef_block(guest, host_df), atol=1e-9)


def test_host_refuses_bad_result(inproc, host_df, keypair):
    pub, priv = keypair
    guest = make_guest(host_df, n=40)
    z = standardise(guest.to_numpy())[0].T
    client, sid = open_aligned(inproc, guest.index)
    call = client.call
    width = KEY // 8

    def result_request(residues):
        return Message(arrays={"masked": residues})

    good_shape = np.zeros((9, width), np.uint8)
    assert_refused(
        409, "before asking for the result", call, "pearson.result", sid, result_request(good_shape)
    )
    call("pearson.products", sid, products_request(pub, z))
    assert_refused(
        400,
        "must have shape",
        call,
        "pearson.result",
        sid,
        result_request(np.zeros((8, width), np.uint8)),
    )
    assert_refused(
        400,
        "dtype kind",
        call,
        "pearson.result",
        sid,
        result_request(np.zeros((9, width), np.float64)),
    )
    too_big = good_shape.copy()
    too_big[4] = 0xFF  # >= n
    assert_refused(
        400, "residue 4 is out of range", call, "pearson.result", sid, result_request(too_big)
    )
    # well-formed but not what the guest decrypted: unmasks to garbage, refused
    rng = np.random.default_rng(0)
    garbage = residues_to_bytes(pub, [int(v) for v in rng.integers(1, 2**62, size=9)])
    assert_refused(
        400,
        r"does not unmask to correlations in \[-1, 1\]",
        call,
        "pearson.result",
        sid,
        result_request(garbage),
    )
    # masks are used once: the session must start again with products
    assert_refused(
        409, "before asking for the result", call, "pearson.result", sid, result_request(garbage)
    )
    got = federated_pearson(guest, inproc, key_length=KEY)
    np.testing.assert_allclose(got.to_numpy(), corrcoef_block(guest, host_df), atol=1e-9)


def test_host_refuses_short_keys(tmp_path, host_df):
    app = create_app(write_host(tmp_path, host_df, min_key_length=2048))
    fed = InProcessFederation({"insurer": (app, "customers", TOKEN)})
    assert_refused(
        400, "min_key_length", federated_pearson, make_guest(host_df), fed, key_length=KEY
    )


def test_host_refuses_missing_values(tmp_path, host_df):
    host = host_df.copy()
    host.iloc[::7, 1] = np.nan
    app = create_app(write_host(tmp_path, host))
    fed = InProcessFederation({"insurer": (app, "customers", TOKEN)})
    assert_refused(
        409,
        r"missing_values.*\['claims'\]",
        federated_pearson,
        make_guest(host_df),
        fed,
        key_length=KEY,
    )


# -- guest-side checks ----------------------------------------------------------------------


def test_guest_checks_its_input(inproc, host_df):
    guest = make_guest(host_df)
    with pytest.raises(TypeError, match="DataFrame indexed by sample ID"):
        federated_pearson(guest.to_numpy(), inproc)
    with pytest.raises(ValueError, match="NaN"):
        federated_pearson(guest.assign(debt=np.nan), inproc, key_length=KEY)
    with pytest.raises(ValueError, match="key_length"):
        federated_pearson(guest, inproc, key_length=512)
    with pytest.raises(ValueError, match=r"X has 6 columns.*at least 60 rows"):
        federated_pearson(
            guest.iloc[:, [0, 1, 2, 0, 1, 2]].set_axis(list("abcdef"), axis=1),
            inproc,
            key_length=KEY,
        )
    with pytest.raises(ValueError, match=r"host 'insurer' has 3 columns.*at least 30 rows"):
        federated_pearson(guest.iloc[:20, :1], inproc, key_length=KEY)
    with pytest.raises(ValueError, match="does not hold"):
        federated_pearson(guest.set_axis([f"x{i}" for i in range(50)]), inproc, key_length=KEY)


# -- pieces ---------------------------------------------------------------------------------


def test_standardise():
    rng = np.random.default_rng(3)
    X = np.column_stack([rng.normal(5, 3, 30), np.full(30, 0.1), rng.normal(0, 1e-200, 30)])
    Z, constant = standardise(X)
    assert constant.tolist() == [False, True, False]
    np.testing.assert_allclose(Z[:, [0, 2]].mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(Z[:, [0, 2]].std(axis=0), 1, rtol=1e-12)
    assert (Z[:, 1] == 0).all()


def test_residues_round_trip(keypair):
    pub, _ = keypair
    n = int(pub.n)
    values = [0, 1, n - 1, n // 3, 12345678901234567890]
    arr = residues_to_bytes(pub, values)
    assert arr.dtype == np.uint8 and arr.shape == (5, KEY // 8)
    assert residues_from_bytes(pub, arr) == values
    with pytest.raises(ValueError, match="shape"):
        residues_from_bytes(pub, arr[:, 1:])
    with pytest.raises(ValueError, match="outside"):
        residues_to_bytes(pub, [n])
    too_big = np.frombuffer(n.to_bytes(KEY // 8, "big"), dtype=np.uint8).reshape(1, -1)
    with pytest.raises(ValueError, match="residue 0 is out of range"):
        residues_from_bytes(pub, too_big)


def test_routes_resolve_to_host_halves():
    import importlib

    for r in ROUTES:
        if r.name.startswith("pearson."):
            module, _, name = r.handler.partition(":")
            assert callable(getattr(importlib.import_module(module), name))
