"""Federation handles, the HTTP transport and LocalFederation over real processes."""

import copy
import os
import pickle
import time

import numpy as np
import pandas as pd
import pytest

from fedsk import SecureBoostClassifier
from fedsk.exceptions import AuthenticationError, PartyUnavailableError, ProtocolError
from fedsk.federation import (
    Federation,
    HttpTransport,
    LocalFederation,
    Message,
    message_from_wire,
    message_to_wire,
    public_key_from_wire,
    public_key_to_wire,
)
from fedsk.federation._psi import align

pytestmark = pytest.mark.integration


def test_message_roundtrip(keypair):
    from fedsk.crypto import encrypt

    pub, priv = keypair
    enc = encrypt(pub, [1.5, -2.0])
    msg = Message(
        {"a": 1, "b": [1, "x"]},
        arrays={"x": np.arange(6).reshape(2, 3), "m": np.array([True, False])},
    )
    msg.add_encrypted("ct", enc)
    back = message_from_wire(message_to_wire(msg))
    assert back.meta == msg.meta
    assert back.array("x").tolist() == [[0, 1, 2], [3, 4, 5]]
    assert back.array("m", kind="b").tolist() == [True, False]
    got = back.encrypted("ct", pub)
    assert got.exponent == enc.exponent and got.ciphertexts == enc.ciphertexts
    assert back.n_ciphertexts == 2


@pytest.mark.parametrize(
    "dtype", ["bool", "int8", "int16", "int32", "int64", "uint8", "uint32", "uint64", "float64"]
)
def test_npy_blobs_are_numpys_and_any_valid_header_reads(dtype):
    import io

    from fedsk.federation._wire import _npy_bytes, _read_npy

    rng = np.random.default_rng(0)
    for shape in [(), (0,), (1,), (5,), (2, 3), (0, 7), (3, 1, 2), (2, 2, 2, 2), (600, 9)]:
        a = (rng.random(shape) * 100).astype(dtype)
        ref = io.BytesIO()
        np.lib.format.write_array(ref, a, allow_pickle=False)
        assert _npy_bytes(a) == ref.getvalue()  # byte for byte what numpy writes
        back = _read_npy(ref.getvalue(), "a")
        assert back.dtype == a.dtype and back.shape == a.shape and np.array_equal(back, a)
    # headers in other valid forms go through numpy's reader: version 2.0, other spacing
    a = (np.arange(6) % 2).astype(dtype).reshape(2, 3)
    ref = io.BytesIO()
    np.lib.format.write_array(ref, a, version=(2, 0), allow_pickle=False)
    assert np.array_equal(_read_npy(ref.getvalue(), "a"), a)
    head = f"{{'shape': (2, 3), 'fortran_order': False, 'descr': '{a.dtype.str}'}}".encode()
    head += b" " * (-(10 + len(head) + 1) % 64) + b"\n"
    blob = b"\x93NUMPY\x01\x00" + len(head).to_bytes(2, "little") + head + a.tobytes()
    assert np.array_equal(_read_npy(blob, "a"), a)
    # and what is refused stays refused: a Fortran-ordered array, a count that lies
    fortran = io.BytesIO()
    np.lib.format.write_array(fortran, np.asfortranarray(np.ones((2, 3))), allow_pickle=False)
    with pytest.raises(ValueError, match="unsupported"):
        _read_npy(fortran.getvalue(), "a")
    with pytest.raises(ValueError, match="truncated"):
        _read_npy(_npy_bytes(a)[:-1], "a")


def test_public_key_roundtrip_and_min_length(keypair):
    from fedsk.exceptions import BadMessageError

    pub = keypair[0]
    assert public_key_from_wire(public_key_to_wire(pub), min_key_length=1024) == pub
    with pytest.raises(BadMessageError, match="at least 2048"):
        public_key_from_wire(public_key_to_wire(pub), min_key_length=2048)


def test_federation_handle_validates_and_copies():
    spec = {
        "insurer": {
            "url": "https://insurer.example:8443",
            "dataset": "customers",
            "token": "tok-0123456789abcdef",
        }
    }
    fed = Federation(spec)
    assert pickle.loads(pickle.dumps(fed)).hosts == fed.hosts
    assert copy.deepcopy(fed).hosts == fed.hosts
    assert "tok-" not in repr(fed)
    with pytest.raises(ValueError, match="url"):
        Federation({"insurer": {"dataset": "x", "token": "t"}})
    with pytest.raises(ValueError, match="verify"):
        Federation({"i": {**spec["insurer"], "verify": False}})
    with pytest.raises(ValueError, match="TLS verification"):
        HttpTransport("i", "https://x", "t", verify=False)


def test_tls_verification_is_on_by_default():
    t = HttpTransport("i", "https://insurer.example", "token")
    assert t._http().verify is True
    t2 = HttpTransport("i", "https://insurer.example", "token", verify="/etc/ca.pem")
    assert t2._http().verify == "/etc/ca.pem"


def test_unreachable_party_raises_quickly():
    fed = Federation(
        {"insurer": {"url": "http://127.0.0.1:9", "dataset": "d", "token": "tok-0123456789abcdef"}},
        retries=2,
    )
    [client] = fed.connect()
    t = time.monotonic()
    with pytest.raises(PartyUnavailableError) as err:
        client.open_session("x")
    assert time.monotonic() - t < 10
    assert err.value.party == "insurer" and "127.0.0.1:9" in str(err.value)
    assert isinstance(err.value, ConnectionError)


@pytest.fixture(scope="module")
def local_fed():
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        rng.normal(size=(40, 2)), index=[f"id{i}" for i in range(40)], columns=["a", "b"]
    )
    with LocalFederation(hosts={"insurer": df}) as fed:
        yield fed


def test_local_federation_serves_over_http(local_fed):
    [client] = local_fed.connect()
    sid, info = client.open_session("t")
    assert info["feature_names"] == ["a", "b"] and info["min_key_length"] == 1024
    pos = align(client, sid, [f"id{i}" for i in range(30, 50)])
    assert pos.tolist() == list(range(10))
    client.close_session(sid)
    with pytest.raises(ProtocolError, match="404"):
        client.call("psi.exchange", sid, Message())


def test_local_federation_pickles_as_a_plain_handle(local_fed):
    for copied in (pickle.loads(pickle.dumps(local_fed)), copy.deepcopy(local_fed)):
        assert type(copied) is Federation and copied.hosts == local_fed.hosts
        [client] = copied.connect()
        assert client.open_session("t")[0]


def test_wrong_token_is_authentication_error(local_fed):
    spec = dict(local_fed.hosts["insurer"], token="not-the-right-token")
    [client] = Federation({"insurer": spec}).connect()
    with pytest.raises(AuthenticationError, match="insurer"):
        client.open_session("t")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_local_federation_cleans_up_and_killed_host_is_unavailable():
    df = pd.DataFrame({"x": [1.0, 2.0]}, index=["a", "b"])
    fed = LocalFederation(hosts={"h1": df, "h2": df}, retries=1)
    pids = [fed.pid("h1"), fed.pid("h2")]
    tmp = fed.state_dir("h1").parent.parent
    [c1, c2] = fed.connect()
    sid, _ = c1.open_session("t")
    fed.kill("h1")
    t = time.monotonic()
    with pytest.raises(PartyUnavailableError, match="h1"):
        c1.call("psi.exchange", sid, Message())
    assert time.monotonic() - t < 10
    fed.restart("h1")
    assert c1.open_session("t")[0]
    pids.append(fed.pid("h1"))
    fed.close()
    assert not tmp.exists()
    deadline = time.monotonic() + 5
    while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_pid_alive(p) for p in pids)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_key_length": 512}, "min_key_length must be at least 1024, got 512"),
        ({"n_jobs": 0}, "n_jobs must be a positive number of workers or -1, got 0"),
        ({"max_models": 0}, "max_models must be at least 1, got 0"),
        ({"session_ttl": 0.5}, "session_ttl must be at least 1"),
        ({"n_jobs": 1.5}, "n_jobs must be"),
    ],
)
def test_local_federation_names_a_bad_argument_before_starting_a_server(kwargs, match):
    """They were refused by the started server, as a RuntimeError quoting its config key."""
    df = pd.DataFrame({"x": [1.0, 2.0]}, index=["a", "b"])
    with pytest.raises(ValueError, match=f"LocalFederation: {match}"):
        LocalFederation(hosts={"h": df}, **kwargs)


def test_column_names_too_long_to_publish_are_refused_saying_what_to_do(tmp_path):
    """26,000 long names overflowed the session's first answer: the guest got "message
    header is too long or truncated"."""
    from party_server import ConfigError, create_app

    from .conftest import write_host

    cols = [f"tfidf_token_{j:07d}_xxxxxxxxxxxxxxxxxxx" for j in range(26_000)]
    df = pd.DataFrame(np.zeros((2, len(cols))), index=["a", "b"], columns=cols)
    with pytest.raises(ValueError, match=r"host 'h': the names of its 26000 columns take 1.1 MiB"):
        LocalFederation(hosts={"h": df})
    with pytest.raises(ConfigError, match=r"publish_feature_names': the names .* set it to false"):
        create_app(write_host(tmp_path, df))
    assert create_app(write_host(tmp_path, df, publish=False))  # positions only: served


def test_local_federation_rejects_duplicate_ids():
    df = pd.DataFrame({"x": [1.0, 2.0]}, index=["a", "a"])
    with pytest.raises(ValueError, match="duplicate"):
        LocalFederation(hosts={"h": df})


@pytest.mark.parametrize(
    "df,match",
    [
        (
            pd.DataFrame({"x": [1.0, 2.0], "s": ["u", "v"]}, index=["a", "b"]),
            r"non-numeric column\(s\) \('s': (object|str)\)",
        ),
        (pd.DataFrame({"x": [1.0, 2.0]}, index=["a", 5]), r"types \['int', 'str'\]"),
        (pd.DataFrame({"x": [1.0, np.inf]}, index=["a", "b"]), r"infinity in column.*\['x'\]"),
        (pd.DataFrame(index=["a", "b"]), "2 rows and 0 columns"),
        (pd.DataFrame({"x": []}, index=pd.Index([], dtype=str)), "0 rows and 1 columns"),
        (pd.DataFrame({"x": [1.0, 2.0]}, index=["a", np.nan]), "1 rows without a sample ID"),
        (pd.DataFrame([[1.0, 2.0]], index=["a"], columns=["x", "x"]), r"duplicated column.*'x'"),
        (pd.DataFrame([[1.0, 2.0]], index=["a"], columns=[0, "0"]), r"same once written"),
        (pd.DataFrame({"__sample_id__": [1.0]}, index=["a"]), "a column named '__sample_id__'"),
        (pd.DataFrame({"c": [1 + 2j]}, index=["a"]), r"non-numeric column\(s\) \('c': complex"),
        (
            pd.DataFrame({"x": [1.0]}, index=pd.MultiIndex.from_tuples([("b1", 7)])),
            "MultiIndex of 2 levels",
        ),
        (
            pd.DataFrame({"x": [1.0]}, index=pd.Index([("b1", 7)], tupleize_cols=False)),
            r"sample IDs of type tuple.*df.index.map\(str\)",
        ),
    ],
)
def test_local_federation_names_the_host_frame_it_cannot_serve(df, match):
    with pytest.raises(ValueError, match=r"hosts\['h'\] .*" + match):
        LocalFederation(hosts={"h": df})


@pytest.mark.parametrize("name", ["../escape", "ins/urer", "", 7, "guest", ".."])
def test_local_federation_refuses_a_bad_host_name_before_writing_anything(tmp_path, name):
    df = pd.DataFrame({"x": [1.0, 2.0]}, index=["a", "b"])
    work = tmp_path / "work"
    with pytest.raises(ValueError, match=r"host name .* (must be|is reserved)"):
        LocalFederation(hosts={name: df}, workdir=work)
    assert not work.exists() and list(tmp_path.iterdir()) == []  # nothing written anywhere
    with pytest.raises(ValueError, match="host name"):
        Federation({name: {"url": "https://x.example", "dataset": "d", "token": "t" * 16}})


def test_a_host_with_sparse_columns_serves_them_dense(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"c{i}" for i in range(40)]
    kind = pd.Series(rng.choice(["a", "b", "c"], 40), index=ids)
    dense = pd.get_dummies(kind, dtype=float)
    sparse = pd.get_dummies(kind, dtype=float, sparse=True)
    guest = pd.DataFrame({"g": rng.normal(size=40)}, index=ids)
    y = (guest.g + dense.a > 0.5).astype(int)
    probas = []
    for host in (dense, sparse):
        with LocalFederation(hosts={"h": host}) as fed:
            clf = SecureBoostClassifier(federation=fed, n_estimators=2, key_length=1024)
            probas.append(clf.fit(guest, y).predict_proba(guest))
    np.testing.assert_array_equal(probas[0], probas[1])


def test_a_closed_local_federation_says_so():
    df = pd.DataFrame({"x": [1.0, 2.0]}, index=["a", "b"])
    with LocalFederation(hosts={"h": df}) as fed:
        assert fed.connect()
    t = time.monotonic()
    with pytest.raises(PartyUnavailableError, match="LocalFederation is closed") as err:
        fed.connect()
    assert "start a new LocalFederation" in str(err.value)
    assert "then retry" not in str(err.value)  # retrying cannot help
    assert str(pickle.loads(pickle.dumps(err.value))) == str(err.value)
    assert time.monotonic() - t < 1  # no retries against servers known to be gone


def _host_with_worker_processes():
    """A LocalFederation whose host has started its worker processes (a large PSI)."""
    ids = [f"u{i}" for i in range(21_000)]
    fed = LocalFederation(
        hosts={"h": pd.DataFrame({"x": np.arange(21_000.0)}, index=ids)}, n_jobs=2
    )
    [client] = fed.connect()
    sid, _ = client.open_session("t")
    align(client, sid, ids)  # large enough for the host to use its worker processes
    return fed


def test_stopping_a_server_stops_its_worker_processes():
    psutil = pytest.importorskip("psutil")
    fed = _host_with_worker_processes()
    try:
        children = psutil.Process(fed.pid("h")).children(recursive=True)
        assert children, "the host did not start worker processes"
    finally:
        fed.close()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive


def _answering_server(reply):
    """A TCP server on 127.0.0.1 that reads each connection's first bytes, sends ``reply``
    (nothing if None) and closes it, until the server is closed."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(65536)
            if reply:
                conn.sendall(reply)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return server


def test_connection_failures_say_what_to_check():
    import socket

    def spec(url, **kw):
        return {"h": {"url": url, "dataset": "d", "token": "t" * 16, **kw}}

    with pytest.raises(ValueError, match=r"the CA bundle '/missing/ca.pem' does not exist"):
        Federation(spec("https://h.example", verify="/missing/ca.pem"))
    cases = []
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        cases.append((f"http://127.0.0.1:{s.getsockname()[1]}", "Nothing accepted"))
    server = _answering_server(None)  # closes every connection unanswered
    cases.append((f"http://127.0.0.1:{server.getsockname()[1]}", "use https://"))
    cases.append(("https://no-such-host.invalid", r"does not resolve \(DNS\)"))
    plain = _answering_server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    cases.append((f"https://127.0.0.1:{plain.getsockname()[1]}", "does not speak TLS"))
    try:
        for url, advice in cases:
            with pytest.raises(PartyUnavailableError, match=advice):
                Federation(spec(url), retries=0).intersect(["a"])
    finally:
        server.close()
        plain.close()


def test_a_server_killed_outright_leaves_no_worker_processes():
    """kill -9 (or the OOM killer) runs no clean-up: the workers notice on their own."""
    import signal

    psutil = pytest.importorskip("psutil")
    fed = _host_with_worker_processes()
    try:
        server = psutil.Process(fed.pid("h"))
        workers = [p for p in server.children(recursive=True) if "loky" in " ".join(p.cmdline())]
        assert workers, "the host did not start worker processes"
        os.kill(server.pid, signal.SIGKILL)
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        fed.close()
