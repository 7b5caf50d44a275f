"""Faults over real party-server processes on 127.0.0.1.

A fault-injecting proxy between the guest and a real party server delays, truncates,
corrupts or replaces answers; guests vanish mid-session; the state directory is
unwritable at start or fills up at run time (a per-process file-size limit, which fails
writes exactly as a full disk does, without root). Each time the guest gets a clear
error within its configured timeout, never a silently wrong model, and the host's model
store and audit log are never half-written. (A host killed mid-fit and restarted is in
``test_secureboost_integration.py``.)
"""

import errno
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from fedsk import SecureBoostClassifier
from fedsk.exceptions import FedskError, PartyUnavailableError, ProtocolError
from fedsk.federation import (
    Federation,
    InProcessFederation,
    Message,
    message_from_wire,
    message_to_wire,
    public_key_to_wire,
)
from fedsk.federation._psi import align
from party_server import ConfigError, create_app
from party_server._audit import verify

from ._servers import FaultProxy, PartyServer, Reply, array_span
from .conftest import TOKEN, write_host

pytestmark = pytest.mark.integration
KEY = 1024
N = 120


def make_data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"p{i:04d}" for i in range(n)]
    guest = pd.DataFrame(rng.normal(size=(n, 3)), index=ids, columns=["g0", "g1", "g2"])
    host = pd.DataFrame(rng.normal(size=(n, 3)), index=ids, columns=["h0", "h1", "h2"])
    y = pd.Series(((guest.g0 + host.h0 - 0.5 * host.h1) > 0).astype(int), index=ids)
    return guest, host, y


def make_clf(federation, n_estimators=3, **kw):
    return SecureBoostClassifier(
        federation=federation,
        n_estimators=n_estimators,
        max_depth=2,
        key_length=KEY,
        random_state=0,
        **kw,
    )


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def server(tmp_path_factory, data):
    with PartyServer(tmp_path_factory.mktemp("faults"), data[1]) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference(server, data):
    """The model a fault-free fit gives, and the federation that talks to it directly."""
    guest, _, y = data
    fed = Federation({"insurer": server.host_spec()}, timeout=(5.0, 60.0), retries=0)
    clf = make_clf(fed).fit(guest, y)
    return fed, clf.predict_proba(guest)


def via(proxy, **kw):
    from ._servers import TOKEN as token

    spec = {"url": proxy.url, "dataset": "customers", "token": token}
    kw.setdefault("timeout", (5.0, 60.0))
    kw.setdefault("retries", 0)
    return Federation({"insurer": spec}, **kw)


def on(route_suffix, change):
    """A fault that applies ``change(reply)`` to answers of paths ending in the suffix."""

    def fault(method, path, reply):
        if path.endswith(route_suffix):
            return change(reply)
        return reply

    return fault


# -- slow hosts -----------------------------------------------------------------------------
def test_slow_host_within_the_timeout_gives_the_same_model(server, data, reference):
    guest, _, y = data
    fed_direct, expected = reference
    with FaultProxy(server.url) as proxy:
        proxy.fault = lambda m, p, r: Reply(r.status, r.headers, r.body, delay=0.15)
        clf = make_clf(via(proxy, timeout=(5.0, 10.0))).fit(guest, y)
        assert proxy.faults >= 10
    clf.federation = fed_direct
    np.testing.assert_array_equal(clf.predict_proba(guest), expected)


@pytest.mark.parametrize("route", ["/psi", "/boosting", "/gradients", "/splits"])
def test_host_slower_than_the_timeout_is_unavailable_in_bounded_time(server, data, route):
    guest, _, y = data
    with FaultProxy(server.url) as proxy:
        proxy.fault = on(route, lambda r: Reply(r.status, r.headers, r.body, delay=120))
        fed = via(proxy, timeout=(2.0, 1.5), retries=1)
        started = time.monotonic()
        with pytest.raises(PartyUnavailableError) as err:
            make_clf(fed).fit(guest, y)
        elapsed = time.monotonic() - started
    # two attempts of 1.5 s plus backoff and the fit's own work: far below the 120 s delay
    assert elapsed < 30, elapsed
    msg = str(err.value)
    assert err.value.party == "insurer" and proxy.url in msg
    assert "2 attempts" in msg and "read timeout 1.5 s" in msg
    assert proxy.faults >= 2  # the retry was delayed too


def test_a_host_that_never_answers_is_asked_twice_whatever_the_retries(server, data):
    # connection errors are retried `retries` times; a hung host (connection accepted,
    # no answer) only once: five read timeouts of 300 s would keep the user 25 minutes
    guest, _, y = data
    with FaultProxy(server.url) as proxy:
        proxy.fault = on("/boosting", lambda r: Reply(r.status, r.headers, r.body, delay=120))
        started = time.monotonic()
        with pytest.raises(PartyUnavailableError) as err:
            make_clf(via(proxy, timeout=(2.0, 1.0), retries=4)).fit(guest, y)
        elapsed = time.monotonic() - started
    msg = str(err.value)
    assert "2 attempts" in msg and "no answer within the read timeout" in msg, msg
    assert "did not answer within the read timeout (1 s)" in msg
    assert proxy.faults == 2 and elapsed < 20, (proxy.faults, elapsed)


# -- malformed, truncated, replaced answers --------------------------------------------------
def _truncate(r):
    return Reply(r.status, r.headers, r.body[: len(r.body) // 2])


def _cut_mid_body(r):
    return Reply(r.status, r.headers, r.body, cut_at=len(r.body) // 2)


def _html(status):
    return lambda r: Reply(status, {"Content-Type": "text/html"}, b"<html>proxy error</html>")


def _garbage(r):
    return Reply(200, r.headers, os.urandom(len(r.body)))


def _empty(r):
    return Reply(200, r.headers, b"")


def _json_200(r):
    return Reply(200, {"Content-Type": "application/json"}, b'{"ok": true}')


MALFORMED = {
    "truncated body": (_truncate, ProtocolError, "malformed answer"),
    "connection cut mid-body": (_cut_mid_body, ProtocolError, "cut off"),
    "html error page with 200": (_html(200), ProtocolError, "instead of a fedsk message"),
    "html error page with 500": (_html(500), ProtocolError, "with 500"),
    "bad gateway": (_html(502), PartyUnavailableError, "answered 502"),
    "random bytes": (_garbage, ProtocolError, "malformed answer"),
    "empty body": (_empty, ProtocolError, "malformed answer"),
    "json instead of a message": (_json_200, ProtocolError, "instead of a fedsk message"),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_answer_is_a_clear_error(server, data, kind):
    guest, _, y = data
    change, exc_type, text = MALFORMED[kind]
    with FaultProxy(server.url) as proxy:
        proxy.fault = on("/gradients", change)  # the answer carries the roots' histograms
        clf = make_clf(via(proxy, retries=1))
        with pytest.raises(exc_type, match=text) as err:
            clf.fit(guest, y)
        assert "insurer" in str(err.value)
        assert proxy.faults >= 1


@pytest.mark.parametrize(
    "route",
    ["/sessions", "/psi", "/intersection", "/boosting", "/gradients", "/histograms", "/splits"],
)
def test_truncated_answer_on_every_fit_route_is_a_protocol_error(server, data, route):
    guest, _, y = data
    with FaultProxy(server.url) as proxy:
        proxy.fault = on(route, _truncate)
        with pytest.raises(ProtocolError, match="malformed answer"):
            make_clf(via(proxy)).fit(guest, y)
        assert proxy.faults >= 1


# -- corrupted answers: detected, or harmless; never a silently wrong model ----------------------
# Which arrays carry the numbers a model is built from, per answer (a flipped bit there
# must be detected by the guest's consistency checks).
HISTOGRAMS = ["packed", "kept", "n_packed"]
TARGETS = {
    "/gradients": HISTOGRAMS,  # the roots' histograms come with a round's gradients
    "/histograms": HISTOGRAMS,
    "/splits": ["go_left", "records", *HISTOGRAMS],  # and the next layer's with the splits
    "/psi": ["double", "host"],
}


def _flip(body, pos, bit):
    data = bytearray(body)
    data[pos] ^= 1 << bit
    return bytes(data)


class Corruptor:
    """Flip one bit in the ``k``-th answer of a fit (seeded), somewhere or in a target."""

    def __init__(self, k, rng, targeted):
        self.k, self.rng, self.targeted, self.seen = k, rng, targeted, 0
        self.where = None

    def __call__(self, method, path, reply):
        self.seen += 1
        if self.seen - 1 != self.k or reply.status != 200 or not reply.body:
            return reply
        suffix = "/" + path.rsplit("/", 1)[-1]
        names = TARGETS.get(suffix, []) if self.targeted else []
        spans = []
        for name in names:
            try:
                start, end = array_span(reply.body, name)
            except KeyError:
                continue
            if end > start:
                spans.append((name, start, end))
        if spans:
            name, start, end = spans[int(self.rng.integers(len(spans)))]
        else:
            name, start, end = "anywhere", 0, len(reply.body)
        pos = int(self.rng.integers(start, end))
        self.where = f"{suffix} {name} byte {pos}"
        return Reply(reply.status, reply.headers, _flip(reply.body, pos, int(self.rng.integers(8))))


def test_corrupted_answers_never_give_a_silently_wrong_model(server, data, reference):
    """One bit flipped in one answer of a fit: the fit fails, or the model is unchanged.

    Half of the trials flip a bit anywhere in a random answer, half in the arrays a model
    is computed from (histogram ciphertexts, kept-bin bits, split directions, record
    IDs, PSI points). Corrupted *predictions* cannot be detected by the guest (a host's
    decision bits are its word): that is what TLS is for, see SECURITY.md.
    """
    guest, _, y = data
    fed_direct, expected = reference
    with FaultProxy(server.url) as proxy:
        make_clf(via(proxy)).fit(guest, y)
        paths = list(proxy.paths)
    targets = [k for k, p in enumerate(paths) if "/" + p.rsplit("/", 1)[-1] in TARGETS]
    detected, harmless = [], []
    rng = np.random.default_rng(int(os.environ.get("FEDSK_CORRUPT_SEED", "2024")))
    n_trials = int(os.environ.get("FEDSK_CORRUPT_TRIALS", "20"))  # more for a longer campaign
    for trial in range(n_trials):
        targeted = trial % 2 == 0
        k = int(rng.choice(targets)) if targeted else int(rng.integers(len(paths)))
        corruptor = Corruptor(k, rng, targeted=targeted)
        with FaultProxy(server.url) as proxy:
            proxy.fault = corruptor
            clf = make_clf(via(proxy))
            try:
                clf.fit(guest, y)
            except (FedskError, ValueError) as exc:
                detected.append(f"{corruptor.where}: {type(exc).__name__}")
                continue
        clf.federation = fed_direct
        got = clf.predict_proba(guest)
        assert np.array_equal(got, expected), f"silently wrong model after {corruptor.where}"
        harmless.append(corruptor.where)
    print(
        f"\n{n_trials} fits with one corrupted answer: {len(detected)} refused, "
        f"{len(harmless)} unchanged models (flip in a field that does not matter)\n"
        f"refused: {detected}\nharmless: {harmless}"
    )
    assert sum("anywhere" not in d for d in detected) >= n_trials // 4


@pytest.mark.parametrize(
    "route,array",
    [
        ("/splits", "go_left"),
        ("/splits", "records"),
        ("/histograms", "packed"),
        ("/gradients", "packed"),
        ("/gradients", "kept"),
        ("/gradients", "counts"),
    ],
)
def test_corrupted_model_numbers_are_always_detected(server, data, route, array):
    """A flipped bit in split directions, record IDs or histograms stops the fit."""
    guest, _, y = data
    for bit in (0, 7):

        def change(r, bit=bit):
            try:
                start, end = array_span(r.body, array)
            except KeyError:  # e.g. a round's last /splits answer has no histograms
                return r
            if end == start:  # e.g. no split directions when the host won no split
                return r
            return Reply(r.status, r.headers, _flip(r.body, (start + end) // 2, bit))

        with FaultProxy(server.url) as proxy:
            proxy.fault = on(route, change)
            with pytest.raises(ProtocolError, match="insurer"):
                make_clf(via(proxy)).fit(guest, y)


@pytest.mark.parametrize("field,value", [("n_features", 0), ("model_id", "0" * 24)])
def test_setup_answer_that_disagrees_with_the_session_is_refused(server, data, field, value):
    guest, _, y = data

    def change(r):
        from fedsk.federation import message_from_wire, message_to_wire

        msg = message_from_wire(r.body)
        msg.meta[field] = value
        return Reply(r.status, r.headers, message_to_wire(msg))

    route = "/boosting" if field == "n_features" else "/splits"  # where a round is persisted
    with FaultProxy(server.url) as proxy:
        proxy.fault = on(route, change)
        with pytest.raises(ProtocolError, match=field):
            make_clf(via(proxy)).fit(guest, y)


# -- a guest that disappears -----------------------------------------------------------------
def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_vanished_guest_session_is_freed_after_its_ttl(tmp_path, data):
    from fedsk.crypto import generate_keypair

    guest, host, _ = data
    ttl = 3.0  # long enough for 64 session openings on a busy machine
    pub, _ = generate_keypair(KEY)
    with PartyServer(tmp_path, host, session_ttl=ttl) as srv:
        (client,) = Federation({"insurer": srv.host_spec()}).connect()
        before = _files(srv.state_dir)
        # a guest mid-session: PSI done, SecureBoost set up (the host holds its key and
        # binned columns in memory), then it vanishes without closing the session
        opened = time.monotonic()
        sid, _ = client.open_session("secureboost")
        align(client, sid, guest.index.to_numpy())
        client.call(
            "secureboost.setup",
            sid,
            Message(
                {"public_key": public_key_to_wire(pub), "max_bins": 16},
                arrays={"train_positions": np.arange(len(guest))},
            ),
        )
        during = _files(srv.state_dir)
        # abandoned sessions up to the per-peer limit (64): the next one is refused...
        abandoned = [client.open_session("x")[0] for _ in range(63)]
        with pytest.raises(ProtocolError, match="too_many_sessions"):
            client.open_session("x")
        assert time.monotonic() - opened < ttl, "too slow to test the limit within the TTL"
        client.close()  # the guest is gone
        time.sleep(ttl + 1.0)
        # ...and after the TTL every one of them is gone and new sessions open again
        with pytest.raises(ProtocolError, match="unknown or expired session"):
            client.call("secureboost.decisions", sid)
        for other in abandoned[:3]:
            with pytest.raises(ProtocolError, match="404"):
                client.call("psi.intersection", other)
        client.open_session("x")
        after = _files(srv.state_dir)
    # sessions never touch the disk: only the audit log (its head and reserve, all
    # created at start) and the (empty) model store
    assert (
        before
        == during
        == after
        == [".audit.reserve", ".lock", "audit.head", "audit.log", "models"]
    )


def test_session_sweeper_frees_memory_without_any_request(tmp_path, data):
    """The background sweeper drops expired sessions even if nobody asks again."""
    _, host, _ = data
    app = create_app(write_host(tmp_path, host, session_ttl=1.0))
    store = app.extensions["fedsk"].sessions
    for _ in range(5):
        store.create("bank", "customers")
    assert len(store) == 5
    deadline = time.monotonic() + 10
    while len(store) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(store) == 0


# -- the state directory: unwritable at start, full at run time ---------------------------------
def _serve_expecting_failure(cfg_path, *, max_file_bytes=None):
    import resource

    def preexec():
        if max_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    proc = subprocess.run(
        [sys.executable, "-m", "party_server", "--config", str(cfg_path)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=preexec,
    )
    return proc.returncode, proc.stderr.strip()


@pytest.mark.parametrize("case", ["under a file", "missing parent", "disk full", "read-only"])
def test_unwritable_state_dir_is_a_one_line_config_error_at_start(tmp_path, data, case):
    from ._servers import free_port, write_toml

    _, host, _ = data
    cfg = write_host(tmp_path, host, bind=f"127.0.0.1:{free_port()}")
    limit = None
    if case == "under a file":
        (tmp_path / "a-file").write_text("x")
        cfg["state_dir"] = str(tmp_path / "a-file" / "state")
    elif case == "missing parent":
        cfg["state_dir"] = str(tmp_path / "typo" / "state")
    elif case == "disk full":
        limit = 1  # no file may grow past one byte: the write probe fails with EFBIG
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes to read-only directories; the other cases cover it")
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        cfg["state_dir"] = str(ro / "state")
    path = tmp_path / "host.toml"
    write_toml(path, cfg)
    code, err = _serve_expecting_failure(path, max_file_bytes=limit)
    assert code == 2, err
    # (with a file-size limit of 1 byte joblib also warns that it cannot make semaphores)
    line = err.splitlines()[-1]
    assert line.startswith("party-server: config key 'state_dir'"), err
    want = {"under a file": "not a directory", "missing parent": "does not exist"}
    assert want.get(case, "cannot write") in line
    assert not (tmp_path / "typo").exists()


def _audit_ok(path):
    ok, n, problem = verify(path)
    assert ok, problem
    data = path.read_bytes()
    assert data.endswith(b"\n")  # no half-written record
    return n


def _models_ok(root):
    for p in root.iterdir():
        assert not p.name.startswith(".tmp-"), p  # no half-written model left behind
        with np.load(p, allow_pickle=False) as z:
            json.loads(z["__meta__"].tobytes())


def test_disk_full_at_run_time_refuses_cleanly_and_loses_nothing(tmp_path, data):
    guest, host, y = data
    srv = PartyServer(tmp_path, host, max_file_bytes=9_000)
    with srv:
        fed = Federation({"insurer": srv.host_spec()}, retries=0)
        clf = make_clf(fed, n_estimators=8, warm_start=True)
        with pytest.raises(ProtocolError, match="409") as err:
            clf.fit(guest, y)  # the audit log reaches the limit part-way through
        assert "insufficient_storage" in str(err.value) or "storage" in str(err.value)
        done = len(getattr(clf, "_predictors", []))
        assert 1 <= done < 8, done
        # the server is up, refuses with JSON 409 (not 5xx), and wrote nothing by halves
        import requests

        r = requests.post(
            srv.url + "/v1/sessions",
            data=b"x",
            headers={"Authorization": f"Bearer {TOKEN}", "Fedsk-Request-Id": "disk-full-1"},
            timeout=10,
        )
        assert r.status_code == 409 and r.json()["error"]["code"] == "insufficient_storage"
        audit = srv.state_dir / "audit.log"
        assert audit.stat().st_size <= 9_000
        _audit_ok(audit)
        _models_ok(srv.state_dir / "models")
        # the operator frees space: the fit continues from the last round both sides kept
        srv.restart(max_file_bytes=None)
        clf.fit(guest, y)
        assert clf.n_estimators_ == 8
        fresh = make_clf(fed, n_estimators=8).fit(guest, y)
        np.testing.assert_allclose(clf.predict_proba(guest), fresh.predict_proba(guest), atol=1e-12)
        _audit_ok(audit)
        _models_ok(srv.state_dir / "models")


class _FailingFile:
    """A file whose write stores half of the data and then fails as a full disk does."""

    def __init__(self, fh):
        self.fh = fh

    def write(self, data):
        self.fh.write(data[: len(data) // 2])
        self.fh.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def test_model_store_write_failure_keeps_the_previous_model(tmp_path, data, monkeypatch):
    """In-process: the disk fills while a round's model is written (seam: open())."""
    from party_server import _storage

    guest, host, y = data
    app = create_app(write_host(tmp_path, host))
    state = app.extensions["fedsk"]
    fed = InProcessFederation({"insurer": (app, "customers", TOKEN)})
    clf = make_clf(fed, n_estimators=1, warm_start=True).fit(guest, y)
    (mid,) = clf._host_model_ids
    path = state.models.root / f"{mid}.npz"
    saved = hashlib.sha256(path.read_bytes()).hexdigest()

    def full_disk_open(file, mode="r", *args, **kwargs):
        fh = open(file, mode, *args, **kwargs)  # noqa: SIM115
        return _FailingFile(fh) if "w" in mode else fh

    monkeypatch.setattr(_storage, "open", full_disk_open, raising=False)
    clf.set_params(n_estimators=3)
    with pytest.raises(ProtocolError, match="409 \\[insufficient_storage\\]"):
        clf.fit(guest, y)
    assert clf.n_estimators_ == 1  # the round the host could not persist does not count
    assert hashlib.sha256(path.read_bytes()).hexdigest() == saved  # old model intact
    _models_ok(state.models.root)
    _audit_ok(tmp_path / "insurer" / "state" / "audit.log")
    monkeypatch.undo()
    clf.fit(guest, y)  # space freed: warm start continues
    fresh = make_clf(fed, n_estimators=3).fit(guest, y)
    np.testing.assert_allclose(clf.predict_proba(guest), fresh.predict_proba(guest), atol=1e-12)


def test_audit_log_write_failure_refuses_the_request_and_keeps_the_chain(
    tmp_path, data, monkeypatch
):
    """In-process: the audit append fails half-way (seam: os.write); nothing is kept."""
    from party_server import _audit

    guest, host, y = data
    app = create_app(write_host(tmp_path, host))
    fed = InProcessFederation({"insurer": (app, "customers", TOKEN)})
    log_path = tmp_path / "insurer" / "state" / "audit.log"
    make_clf(fed, n_estimators=1).fit(guest, y)
    size = log_path.stat().st_size
    real_write = os.write

    def half_write(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_audit.os, "write", half_write)
    c = app.test_client()
    r = c.post(
        "/v1/sessions",
        data=b"x",
        content_type="application/x-fedsk-message",
        headers={"Authorization": f"Bearer {TOKEN}", "Fedsk-Request-Id": "audit-full-1"},
    )
    assert r.status_code == 409 and r.json["error"]["code"] == "insufficient_storage"
    assert log_path.stat().st_size == size  # the half record was cut off again
    monkeypatch.undo()
    _audit_ok(log_path)
    make_clf(fed, n_estimators=1).fit(guest, y)  # space freed: the chain continues
    assert _audit_ok(log_path) > 0


def _open_session(client, request_id):
    """POST /v1/sessions through a Flask test client, as the peer 'bank'."""
    return client.post(
        "/v1/sessions",
        data=message_to_wire(Message({"dataset": "customers"})),
        content_type="application/x-fedsk-message",
        headers={"Authorization": f"Bearer {TOKEN}", "Fedsk-Request-Id": request_id},
    )


def test_a_disk_that_fills_during_a_request_still_logs_it_from_the_reserve(
    tmp_path, data, monkeypatch
):
    """The disk fills while a request is carried out (another process, a model): the
    audit append gives up the reserve kept next to the log and logs the request all the
    same; later requests are refused before they are carried out until space is freed.
    (Seams: os.write and os.posix_fallocate of the audit module, failing while "full".)"""
    from party_server import _audit

    guest, host, y = data
    app = create_app(write_host(tmp_path, host))
    state = app.extensions["fedsk"]
    reserve = state.audit.reserve
    assert reserve.stat().st_size == state.audit.RESERVE_BYTES
    log_path = tmp_path / "insurer" / "state" / "audit.log"
    full = {"now": False}
    real_write, real_fallocate = os.write, os.posix_fallocate

    def write(fd, data):
        if full["now"] and reserve.exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    def fallocate(fd, offset, size):
        if full["now"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fallocate(fd, offset, size)

    monkeypatch.setattr(_audit.os, "write", write)
    monkeypatch.setattr(_audit.os, "posix_fallocate", fallocate)
    c = app.test_client()

    def open_one(i):
        return _open_session(c, f"filling-{i}")

    full["now"] = True  # fills after the free-space check, while the session is opened
    r = open_one(0)
    assert r.status_code == 200 and len(state.sessions) == 1  # carried out ...
    assert not reserve.exists()
    last = json.loads(log_path.read_bytes().splitlines()[-1])
    assert last["request_id"] == "filling-0" and last["status"] == 200  # ... and logged
    r = open_one(1)  # no reserve left, none can be made: refused before it is carried out
    assert r.status_code == 409 and r.json["error"]["code"] == "insufficient_storage"
    assert "space kept aside for the audit log" in r.json["error"]["message"]
    assert len(state.sessions) == 1
    full["now"] = False  # the operator frees space
    assert open_one(1).status_code == 200 and len(state.sessions) == 2
    assert reserve.stat().st_size == state.audit.RESERVE_BYTES
    _audit_ok(log_path)


def test_a_nearly_full_disk_refuses_a_request_before_carrying_it_out(tmp_path, data, monkeypatch):
    """A request carried out and then refused as unlogged has happened all the same (a
    session opened, 64 of them lock the peer out); below the free-space margin the
    server refuses it first. (Seam: the margin, raised above the disk's real free space.)"""
    from party_server._audit import AuditLog

    guest, host, y = data
    app = create_app(write_host(tmp_path, host))
    sessions = app.extensions["fedsk"].sessions
    c = app.test_client()

    def open_one(i):
        return _open_session(c, f"nearly-full-{i}")

    sid = message_from_wire(open_one(0).get_data()).meta["session_id"]
    monkeypatch.setattr(AuditLog, "MIN_FREE_BYTES", 1 << 62)  # more than any disk has free
    r = c.delete(  # what frees space is still done
        f"/v1/sessions/{sid}",
        headers={"Authorization": f"Bearer {TOKEN}", "Fedsk-Request-Id": "nearly-full-del"},
    )
    assert r.status_code == 200
    r = open_one(1)
    assert r.status_code == 409 and r.json["error"]["code"] == "insufficient_storage"
    assert "before it was carried out" in r.json["error"]["message"]
    assert len(sessions) == 0  # nothing was opened
    assert c.get("/v1/health").status_code == 200  # (health needs no disk)
    monkeypatch.undo()
    assert open_one(1).status_code == 200 and len(sessions) == 1  # same ID: now carried out


# -- one process per state directory -------------------------------------------------------------
def test_a_second_server_on_the_same_state_dir_is_refused_in_one_line(tmp_path, data):
    """Two servers on one state_dir would fork the audit chain (each appends from its own
    head): the second is refused at start, naming the directory and the first one's pid,
    and the first one's log stays intact."""
    from ._servers import free_port, write_toml

    guest, host, _ = data
    srv = PartyServer(tmp_path, host)
    with srv:
        fed = Federation({"insurer": srv.host_spec()})
        assert fed.intersect(guest.index[:5])["insurer"].all()
        twin = tmp_path / "twin.toml"  # the same config on another port
        write_toml(twin, dict(srv.cfg, bind=f"127.0.0.1:{free_port()}"))
        code, err = _serve_expecting_failure(twin)
        assert code == 2, err
        assert err == (
            f"party-server: config key 'state_dir': {srv.state_dir} is in use by another "
            f"party server process (pid {srv.pid}); stop that server first, or give each "
            "server its own state_dir (under gunicorn: one worker process, workers = 1)"
        )
        with pytest.raises(ConfigError, match="is in use by another party server process"):
            create_app(srv.cfg)  # (the same from the app factory)
        assert fed.intersect(guest.index[:5])["insurer"].all()  # the first one serves on
    n = _audit_ok(srv.state_dir / "audit.log")  # both intersections, in one chain
    srv.start()  # stopped: the directory is free again
    srv.stop()
    assert _audit_ok(srv.state_dir / "audit.log") == n > 0


@pytest.mark.parametrize("workers", [2, 3])
def test_gunicorn_with_more_than_one_worker_is_refused(tmp_path, data, workers):
    """The documented gunicorn config refuses --workers > 1 before any worker starts."""
    from ._servers import free_port, write_toml

    pytest.importorskip("gunicorn")
    _, host, _ = data
    cfg_path = tmp_path / "host.toml"
    write_toml(cfg_path, write_host(tmp_path, host))
    proc = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "python:party_server.gunicorn_config"]
        + ["--workers", str(workers), "--bind", f"127.0.0.1:{free_port()}"]
        + ["party_server.wsgi:app"],
        env=dict(os.environ, FEDSK_PARTY_CONFIG=str(cfg_path)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0, proc.stderr
    assert f"--workers {workers} is not supported" in proc.stderr
    assert "Booting worker" not in proc.stderr


# -- a fit that fails leaves no model behind ---------------------------------------------------
def _model_files(srv):
    return set((srv.state_dir / "models").glob("*.npz"))


def _fail_once_a_model_appears(srv, before):
    """A fault: the first answer after ``srv`` saved a new model is a proxy's HTML 502
    (the host did the work; its answer is lost)."""
    failed = []

    def fault(method, path, reply):
        if not failed and _model_files(srv) - before:
            failed.append(path)
            return _html(502)(reply)
        return reply

    return fault


def test_a_failed_secureboost_fit_deletes_the_model_its_host_began(server, data):
    # the host saves its half after every round: a fit that fails in round two or later
    # would leave a model that counts towards max_models and can push out a live one
    guest, _, y = data
    before = _model_files(server)
    clf = make_clf(None, n_estimators=4)
    with FaultProxy(server.url) as proxy:
        proxy.fault = _fail_once_a_model_appears(server, before)
        clf.federation = via(proxy)
        with pytest.raises(PartyUnavailableError, match="502"):
            clf.fit(guest, y)
        assert proxy.faults == 1  # the fit failed after the host had saved a round
    assert _model_files(server) == before
    assert not hasattr(clf, "n_estimators_")  # no half-fitted estimator either
    with pytest.raises(Exception, match="not fitted"):
        clf.predict(guest)


def test_a_failed_secureboost_warm_start_keeps_the_model_it_continues(server, data):
    guest, _, y = data
    clf = make_clf(via_direct(server), n_estimators=2, warm_start=True).fit(guest, y)
    kept = _model_files(server)
    expected = clf.predict_proba(guest)
    with FaultProxy(server.url) as proxy:
        proxy.fault = on("/splits", _html(502))
        clf.set_params(federation=via(proxy), n_estimators=4)
        with pytest.raises(PartyUnavailableError, match="502"):
            clf.fit(guest, y)
    assert _model_files(server) == kept  # the first fit's half is still there
    clf.federation = via_direct(server)
    assert clf.n_estimators_ == 2
    np.testing.assert_array_equal(clf.predict_proba(guest), expected)


def via_direct(srv):
    return Federation({"insurer": srv.host_spec()}, timeout=(5.0, 60.0), retries=0)


def test_a_failed_logistic_fit_deletes_what_the_hosts_that_finished_saved(tmp_path, data):
    from fedsk import FederatedLogisticRegression

    guest, host, y = data
    with (
        PartyServer(tmp_path / "a", host[["h0", "h1"]], name="insurer") as first,
        PartyServer(tmp_path / "b", host[["h2"]], name="telco") as second,
        FaultProxy(second.url) as proxy,
    ):
        before = _model_files(first)
        proxy.fault = _fail_once_a_model_appears(first, before)
        fed = Federation(
            {"insurer": first.host_spec(), "telco": second.host_spec(proxy.url)},
            timeout=(5.0, 60.0),
            retries=0,
        )
        clf = FederatedLogisticRegression(
            federation=fed, protocol="exact", key_length=KEY, max_iter=5
        )
        with pytest.raises(PartyUnavailableError, match="502"):
            clf.fit(guest, y)
        assert proxy.faults == 1  # telco's "finish", after insurer saved its half
        # insurer's half (its ID known to the guest) and telco's (its answer lost)
        assert _model_files(first) == before
        assert not _model_files(second)


def test_a_fit_over_the_hosts_body_limit_says_which_setting_and_what_to_do(tmp_path, data):
    # the gradients of 120 rows at 1024-bit keys are ~31 KB: over waitress's limit
    guest, host, y = data
    with PartyServer(tmp_path, host, max_body_bytes=8000) as srv:
        with pytest.raises(ProtocolError) as err:
            make_clf(via_direct(srv)).fit(guest, y)
        assert srv.proc.poll() is None  # and it serves on
    msg = str(err.value)
    assert "413" in msg and "(max_body_bytes = 8000 bytes)" in msg, msg
    assert "Ask insurer's operator to raise max_body_bytes" in msg
