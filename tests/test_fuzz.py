"""Property-based fuzzing of every party-server route (hypothesis).

Every route in :data:`fedsk.federation.ROUTES` is fuzzed, by iterating the tuple, so a
protocol added later is covered without touching this file. Bodies: random bytes,
wrong content types, broken framing, generated fedsk messages, and (most of the budget)
valid requests recorded from real estimator runs with exactly one thing broken (a
field dropped or retyped, huge integers and deeply nested JSON in meta, index arrays
out of range/negative/duplicated, ciphertexts out of range or of the wrong width,
count or exponent), sent into a session in the state the valid request was made in
(PSI done, SecureBoost set up, gradients sent, ...) so that the deep validation of the
host half is reached. Around them: missing/invalid tokens, another peer's sessions
and models, unknown sessions, missing/invalid request IDs, replayed request IDs,
wrong methods, oversized bodies.

Every answer must be a 4xx JSON ``{"error": {"code", "message", "request_id"}}`` (or
a 200 where the request happens to be valid), never a 5xx, a traceback, a token or key
material; afterwards a correct fit still works and the audit chain verifies.

``FEDSK_FUZZ_REQUESTS`` (default 2200) sets the in-process budget for longer runs;
``FEDSK_FUZZ_RANDOM=1`` draws new examples on every run instead of CI's fixed ones.
"""

import contextlib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning

from fedsk import FederatedLogisticRegression, SecureBoostClassifier
from fedsk.crypto import generate_keypair
from fedsk.exceptions import NotFoundError, ProtocolError
from fedsk.federation import (
    CONTENT_TYPE,
    ROUTES,
    InProcessFederation,
    LocalFederation,
    Message,
    message_from_wire,
    message_to_wire,
    url_for,
)
from fedsk.federation._psi import align
from fedsk.stats import federated_pearson
from party_server import create_app
from party_server._app import REQUEST_ID
from party_server._audit import verify

from ._fuzz import (
    TrafficRecorder,
    _snapshot_copy,
    bad_path_ids,
    body_strategy,
    check_error_answer,
    field_names,
    raw_wire,
)
from .conftest import TOKEN, write_host

OTHER = "telco-token-0123456789"
MAX_BODY = 64 * 1024
N_ROWS = 40
TARGET = int(os.environ.get("FEDSK_FUZZ_REQUESTS", "2200"))
RANDOM = os.environ.get("FEDSK_FUZZ_RANDOM") == "1"
BAD_AUTH = [
    None,
    "",
    "Bearer",
    "Bearer ",
    "Bearer wrong-token-0123456789",
    "Basic Z3Vlc3Q6dG9rZW4=",
    "Bearer: " + TOKEN,  # ("bearer <token>" is accepted: schemes ignore case)
    TOKEN,
    "Bearer " + TOKEN + "x",
    "Bearer " + TOKEN[:-1],
    "Bearer " + "x" * 10_000,
    "Bearer  " + "\t",
]
BAD_REQUEST_IDS = [None, "", "short", "x" * 65, "bad id!", "../../etc/passwd", "é" * 10]


def _data():
    rng = np.random.default_rng(7)
    ids = [f"c{i:04d}" for i in range(N_ROWS)]
    host = pd.DataFrame(rng.normal(size=(N_ROWS, 3)), index=ids, columns=["a", "b", "c"])
    guest = pd.DataFrame(rng.normal(size=(N_ROWS, 2)), index=ids, columns=["g0", "g1"])
    y = pd.Series((guest.g0 + host.a > 0).astype(int), index=ids)
    return host, guest, y


def _patch_keys(monkeypatch, keypair):
    """Make every guest half use the test's key pair, so the fuzzer knows its factors."""
    for name, module in list(sys.modules.items()):
        if name.startswith("fedsk.") and getattr(module, "generate_keypair", None) is (
            generate_keypair
        ):
            monkeypatch.setattr(module, "generate_keypair", lambda *a, **k: keypair)
    # (and no fit takes a key pair an earlier one made ahead)
    monkeypatch.setattr("fedsk.federation._guest.take_keypair_ahead", lambda *a, **k: None)


def record_flows(federation):
    """Run every federated estimator and protocol once, as a user would.

    The one place new protocols plug in: add a fit/predict (or API call) here and its
    routes get template-based (deep) fuzzing; without it they still get generic fuzzing.
    """
    host, guest, y = _data()
    clf = SecureBoostClassifier(
        federation=federation,
        n_estimators=2,
        max_depth=2,
        key_length=1024,
        warm_start=True,
        random_state=0,
    )
    clf.fit(guest, y)
    clf.set_params(n_estimators=3).fit(guest, y)  # warm start: setup with a model ID
    clf.predict_proba(guest)
    # labels only the host's column explains: it wins the root, and the child of its
    # split is asked for by reference in the same request as the split
    host_driven = (host["a"] > 0).astype(int)
    SecureBoostClassifier(
        federation=federation, n_estimators=1, max_depth=2, key_length=1024, random_state=0
    ).fit(guest, host_driven)
    federated_pearson(guest, federation, key_length=1024)
    with warnings.catch_warnings():  # two iterations on purpose: enough for templates
        warnings.simplefilter("ignore", ConvergenceWarning)
        for protocol in ("taylor", "exact"):
            lr = FederatedLogisticRegression(
                federation=federation, protocol=protocol, max_iter=2, key_length=1024
            )
            lr.fit(guest, y).predict(guest)
    return clf


class FuzzEnv:
    """An in-process party server, templates of valid traffic, counters."""

    def __init__(self, tmp_path, keypair, monkeypatch):
        self.host_df, self.guest, self.y = _data()
        cfg = write_host(tmp_path, self.host_df, max_body_bytes=MAX_BODY)
        cfg["peers"]["telco"] = {"token": OTHER}
        self.app = create_app(cfg)
        self.client = self.app.test_client()
        self.state = self.app.extensions["fedsk"]
        self.audit_path = tmp_path / "insurer" / "state" / "audit.log"
        self.pub, self.priv = keypair
        _patch_keys(monkeypatch, keypair)
        self.federation = InProcessFederation({"insurer": (self.app, "customers", TOKEN)})
        self.recorder = TrafficRecorder(self.federation, self.state.sessions)
        self.clf = record_flows(self.recorder)
        self.reference = self.clf.predict_proba(self.guest)
        self.templates = self.recorder.templates
        self.states = self.recorder.states()
        p, q = int(self.priv.p), int(self.priv.q)
        # the guest owns the key: it can send ciphertexts sharing a factor with n
        self.extra_cipher = [("multiple of p", p * 12345), ("multiple of q", q)]
        self.secrets = [
            TOKEN.encode(),
            OTHER.encode(),
            str(p).encode(),
            format(p, "x").encode(),
            format(int(self.pub.n), "x").encode(),
        ]
        self.bank_sid = self.state.sessions.create("bank", "customers").session.id
        self.telco_sid = self.state.sessions.create("telco", "customers").session.id
        self.dummy_model = self.state.models.create("bank", "dummy")
        self.state.models.save(self.dummy_model, "bank", {"kind": "dummy"}, {"w": np.zeros(1)})
        self.telco_model = self.state.models.create("telco", "dummy")
        self.state.models.save(self.telco_model, "telco", {"kind": "dummy"}, {"w": np.zeros(1)})
        self.bodies = {
            r.name: body_strategy(
                r,
                self.templates.get(r.name, []),
                field_names(r)
                | {k for t in self.templates.get(r.name, []) for k in t.message.meta},
                self.pub,
                n_rows=N_ROWS,
                max_body=MAX_BODY,
                extra_cipher=self.extra_cipher,
                known_values=[self.dummy_model, self.telco_model, self.telco_sid, "customers"],
            )
            for r in ROUTES
        }
        self.count = 0
        self.audited = 0
        self.per_route = Counter()
        self.statuses = Counter()
        self.kinds = Counter()
        self.ok_by_kind = Counter()
        self._rid = 0

    # -- requests ----------------------------------------------------------------------
    def rid(self):
        self._rid += 1
        return f"fuzz-{self._rid:010d}"

    def restore(self, snapshot):
        """Put the fuzz session back into ``snapshot`` (it may have been closed)."""
        entries = self.state.sessions._entries
        if self.bank_sid not in entries:
            self.bank_sid = self.state.sessions.create("bank", "customers").session.id
        entries[self.bank_sid].session.state = _snapshot_copy(snapshot or {})
        entries[self.bank_sid].replies.clear()
        if self.telco_sid not in entries:
            self.telco_sid = self.state.sessions.create("telco", "customers").session.id
        for mid, peer in ((self.dummy_model, "bank"), (self.telco_model, "telco")):
            if not (self.state.models.root / f"{mid}.npz").exists():
                self.state.models.save(mid, peer, {"kind": "dummy"}, {"w": np.zeros(1)})

    def path_of(self, route, session_id=None, model_id=None):
        params = {}
        if "<session_id>" in route.path:
            params["session_id"] = session_id or self.bank_sid
        if "<model_id>" in route.path:
            params["model_id"] = model_id or self.dummy_model
        return url_for(route.name, **params)

    def send(self, route, method, path, body, *, auth="bank", rid=..., ctype=CONTENT_TYPE):
        headers = {}
        if auth == "bank":
            headers["Authorization"] = f"Bearer {TOKEN}"
        elif auth == "telco":
            headers["Authorization"] = f"Bearer {OTHER}"
        elif auth is not None:
            headers["Authorization"] = auth
        rid = self.rid() if rid is ... else rid
        if rid is not None:
            headers["Fedsk-Request-Id"] = rid
        kwargs = {"data": body, "headers": headers}
        if ctype is not None:
            kwargs["content_type"] = ctype
        resp = self.client.open(path, method=method, **kwargs)
        self.count += 1
        self.per_route[route.name] += 1
        self.statuses[resp.status_code] += 1
        reached_health_view = route.name == "health" and method == "GET" and path == route.path
        self.audited += not reached_health_view
        if resp.status_code == 200 and route.name == "sessions.create":
            sid = message_from_wire(resp.get_data()).meta["session_id"]
            peer = "telco" if auth == "telco" else "bank"
            with contextlib.suppress(NotFoundError):  # a replay names a deleted session
                self.state.sessions.delete(sid, peer)  # stay within the per-peer limit
        return resp, (rid if rid and REQUEST_ID.match(rid) else None)

    def expect_error(self, resp, rid):
        return check_error_answer(resp, rid, self.secrets)

    def expect_ok_or_error(self, resp, rid, may_succeed, what):
        assert resp.status_code < 500, (what, resp.status_code, resp.get_data()[:300])
        if resp.status_code == 200:
            assert may_succeed, (what, "answered 200 to a request that must be refused")
            data = resp.get_data()
            for s in self.secrets:
                assert s not in data
            if resp.content_type == CONTENT_TYPE:
                message_from_wire(data)
            return None
        return self.expect_error(resp, rid)

    # -- one fuzz example ---------------------------------------------------------------
    def fuzz_one(self, route, data):
        kind = data.draw(
            st.sampled_from(
                ["body"] * 12 + ["auth", "request id", "method", "path", "foreign", "replay"]
            )
        )
        self.kinds[kind] += 1
        templates = self.templates.get(route.name, [])
        body = data.draw(self.bodies[route.name])
        snapshot = data.draw(st.sampled_from(self.states))
        if body.template is not None and body.template.snapshot is not None:
            # the state the valid request was made in: its validation is reached in depth
            snapshot = body.template.snapshot
        self.restore(snapshot)
        no_body_route = route.method != "POST"
        if kind == "body":
            resp, rid = self.send(
                route, route.method, self.path_of(route), body.data, ctype=body.content_type
            )
            may = body.may_succeed or no_body_route
            if body.kind == "oversized" and not no_body_route:
                assert resp.status_code == 413, resp.get_data()[:200]
            if body.kind in ("bytes", "content type") and not no_body_route:
                may = False
            if route.name == "health":
                assert resp.status_code == 200 and resp.json["status"] == "ok"
                return
            err = self.expect_ok_or_error(resp, rid, may, body.kind)
            if resp.status_code == 200:
                self.ok_by_kind[body.kind] += 1
            elif body.kind == "content type" and not no_body_route:
                assert err["code"] == "unsupported_media_type"
            return
        valid = _valid_body(templates)
        if kind == "auth":
            auth = data.draw(st.sampled_from(BAD_AUTH))
            resp, rid = self.send(route, route.method, self.path_of(route), valid, auth=auth)
            if route.name == "health":
                assert resp.status_code == 200
                return
            assert resp.status_code == 401
            assert self.expect_error(resp, rid)["code"] == "unauthorized"
        elif kind == "request id":
            bad = data.draw(st.sampled_from(BAD_REQUEST_IDS))
            resp, rid = self.send(route, route.method, self.path_of(route), valid, rid=bad)
            if route.name == "health" or route.method == "GET":
                assert resp.status_code in (200, 404), resp.get_data()[:200]
                return
            assert resp.status_code == 400, resp.get_data()[:200]
            assert self.expect_error(resp, rid)["code"] == "missing_request_id"
        elif kind == "method":
            served = {r.method for r in ROUTES if r.path == route.path}
            if "GET" in served:
                served.add("HEAD")
            method = data.draw(
                st.sampled_from(
                    [
                        m
                        for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD")
                        if m not in served
                    ]
                )
            )
            resp, rid = self.send(route, method, self.path_of(route), valid)
            assert resp.status_code == 405, (method, resp.status_code)
            if method != "HEAD":
                self.expect_error(resp, rid)
        elif kind == "path":
            junk = data.draw(bad_path_ids())
            if "<session_id>" in route.path:
                path = self.path_of(route, session_id=junk)
            elif "<model_id>" in route.path:
                path = self.path_of(route, model_id=junk)
            else:
                path = route.path + "/" + junk
            resp, rid = self.send(route, route.method, path, valid)
            assert resp.status_code in (404, 405), (path[:80], resp.status_code)
            self.expect_error(resp, rid)
        elif kind == "foreign":
            if "<session_id>" in route.path:
                who = data.draw(st.sampled_from(["telco into bank", "bank into telco"]))
                if who == "telco into bank":
                    resp, rid = self.send(
                        route, route.method, self.path_of(route), valid, auth="telco"
                    )
                else:
                    path = self.path_of(route, session_id=self.telco_sid)
                    resp, rid = self.send(route, route.method, path, valid)
                assert resp.status_code == 404, resp.get_data()[:200]
                assert self.expect_error(resp, rid)["code"] == "not_found"
            elif "<model_id>" in route.path:
                who = data.draw(st.sampled_from(["telco reads bank", "bank reads telco"]))
                if who == "telco reads bank":
                    resp, rid = self.send(
                        route, route.method, self.path_of(route), valid, auth="telco"
                    )
                else:
                    path = self.path_of(route, model_id=self.telco_model)
                    resp, rid = self.send(route, route.method, path, valid)
                assert resp.status_code == 404
                self.expect_error(resp, rid)
            else:  # no foreign object to reach: an unknown token instead
                resp, rid = self.send(route, route.method, self.path_of(route), valid, auth=None)
                assert resp.status_code == (200 if route.name == "health" else 401)
        else:  # replay: the same request ID answers once; a different request with it is refused
            rid = self.rid()
            first, _ = self.send(route, route.method, self.path_of(route), valid, rid=rid)
            again, _ = self.send(route, route.method, self.path_of(route), valid, rid=rid)
            assert first.status_code < 500
            if route.name in ("sessions.delete", "models.delete") and first.status_code == 200:
                assert again.status_code == 404  # deleting twice: it is gone
                return
            assert again.status_code == first.status_code
            if first.status_code == 200 and route.name != "health":
                if route.method != "GET" and route.name not in ("sessions.delete", "models.delete"):
                    assert again.get_data() == first.get_data()
                if route.method == "POST":  # same ID, another (well-formed) request
                    changed = _valid_body(templates, extra={"zz_changed": 1})
                    other, vrid = self.send(route, "POST", self.path_of(route), changed, rid=rid)
                    assert other.status_code == 409, other.get_data()[:200]
                    assert self.expect_error(other, vrid)["code"] == "request_id_reused"
            elif first.status_code >= 400:
                self.expect_error(first, rid)
                self.expect_error(again, rid)


def _route_fuzzer(env, route, n):
    @_examples(n)
    @given(data=st.data())
    def fuzz(data):
        env.fuzz_one(route, data)

    return fuzz


def _examples(n):
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=not RANDOM,  # the same requests on every CI run
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def _valid_body(templates, extra=None):
    """The first recorded request of a route (an empty message if none), as bytes."""
    if not templates:
        return message_to_wire(Message(extra))
    msg = templates[0].message
    if not extra:
        return message_to_wire(msg)
    arrays = [(k, np.array(v)) for k, v in msg.arrays.items()]
    return raw_wire({**msg.meta, **extra}, arrays, exponents=dict(msg.exponents))


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory, keypair):
    logging.getLogger("party_server").setLevel(logging.CRITICAL)  # 500s would be logged
    with pytest.MonkeyPatch.context() as mp:
        env = FuzzEnv(tmp_path_factory.mktemp("fuzz"), keypair, mp)
        yield env


def test_recorded_traffic_reaches_every_protocol(fuzz_env):
    """The flows exercise every route they should (deep fuzzing needs their templates)."""
    recorded = set(fuzz_env.templates)
    for name in (
        "sessions.create",
        "psi.exchange",
        "psi.intersection",
        "secureboost.setup",
        "secureboost.gradients",
        "secureboost.histograms",
        "secureboost.splits",
        "secureboost.decisions",
        "pearson.products",
        "logistic.setup",
        "logistic.step",
        "logistic.scores",
        "sessions.delete",
    ):
        assert name in recorded, name
    # a state with gradients sent is among the states fuzzed requests are sent into
    assert any(s.get("sb", {}).get("gh") for s in fuzz_env.states)


def test_fuzz_every_route(fuzz_env):
    env = fuzz_env
    started = time.monotonic()
    before = len(env.audit_path.read_text().splitlines())
    per_route = max(40, math.ceil(TARGET / len(ROUTES)))  # each example sends 1-3 requests
    for route in ROUTES:
        _route_fuzzer(env, route, per_route)()
    elapsed = time.monotonic() - started
    print(
        f"\nfuzz: {env.count} requests over {len(ROUTES)} routes in {elapsed:.1f} s; "
        f"statuses {dict(sorted(env.statuses.items()))}; kinds {dict(env.kinds)}; "
        f"valid-by-chance 200s {dict(env.ok_by_kind)}"
    )
    assert env.count >= 2000
    assert set(env.per_route) == {r.name for r in ROUTES}
    assert not any(s >= 500 for s in env.statuses)
    # every request is in the audit log and the chain is intact
    lines = env.audit_path.read_text().splitlines()
    assert len(lines) - before == env.audited
    ok, n, problem = verify(env.audit_path)
    assert ok, problem
    for line in lines[before:]:
        rec = json.loads(line)
        assert TOKEN not in line and OTHER not in line
        assert rec["status"] < 500
    # the server still does its job: a correct fit and predict give the reference model
    env.restore({})
    clf = SecureBoostClassifier(
        federation=env.federation, n_estimators=3, max_depth=2, key_length=1024, random_state=0
    ).fit(env.guest, env.y)
    np.testing.assert_allclose(clf.predict_proba(env.guest), env.reference, atol=1e-12)
    assert verify(env.audit_path)[0]


# -- regressions found by the fuzzer --------------------------------------------------------
def _post(env, path, body, rid):
    return env.client.post(
        path,
        data=body,
        content_type=CONTENT_TYPE,
        headers={"Authorization": f"Bearer {TOKEN}", "Fedsk-Request-Id": rid},
    )


def test_npy_shape_whose_size_overflows_is_refused(fuzz_env):
    import io
    import struct

    buf = io.BytesIO()
    shape = (2**32, 2**32)  # 2**64 elements: wraps to 0 in int64 arithmetic
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f8", "fortran_order": False, "shape": shape}
    )
    blob = buf.getvalue()
    head = json.dumps({"meta": {}, "arrays": [{"name": "x", "nbytes": len(blob)}]}).encode()
    body = b"FEDSK1" + struct.pack(">I", len(head)) + head + blob
    resp = _post(fuzz_env, "/v1/sessions", body, "regress-npy-0001")
    assert resp.status_code == 400
    assert "truncated" in check_error_answer(resp, "regress-npy-0001", [])["message"]


def test_route_whose_host_half_is_not_installed_is_a_404(fuzz_env, monkeypatch):
    from fedsk.federation import Route

    env = fuzz_env
    env.restore({})
    missing = Route("x.y", "POST", "/v1/sessions/<session_id>/psi", "fedsk.not_installed:h")
    monkeypatch.setattr(
        env.state, "handler", lambda route: env.state.__class__.handler(env.state, missing)
    )
    resp = _post(env, f"/v1/sessions/{env.bank_sid}/psi", message_to_wire(Message()), "r-missing1")
    assert resp.status_code == 404
    err = check_error_answer(resp, "r-missing1", [])
    assert err["code"] == "unsupported_route" and "fedsk" in err["message"]


def test_ciphertext_sharing_a_factor_with_n_is_refused(fuzz_env):
    """A guest knows p: c = p is in range but not a Paillier ciphertext (no inverse)."""
    env = fuzz_env
    tpl = env.templates["pearson.products"][0]
    env.restore(tpl.snapshot)
    msg = Message(dict(tpl.message.meta))
    z = np.array(tpl.message.arrays["z"])
    z[3] = np.frombuffer(int(env.priv.p).to_bytes(z.shape[1], "big"), np.uint8)
    msg.add_array("z", z)
    msg.exponents["z"] = tpl.message.exponents["z"]
    resp = _post(env, f"/v1/sessions/{env.bank_sid}/pearson", message_to_wire(msg), "r-factor01")
    assert resp.status_code == 400
    assert "ciphertext 3" in check_error_answer(resp, "r-factor01", env.secrets)["message"]


def test_decreasing_uint64_positions_are_refused(fuzz_env):
    """uint64 differences wrap around: a decreasing array looked strictly increasing."""
    env = fuzz_env
    tpl = env.templates["secureboost.gradients"][0]
    env.restore(tpl.snapshot)
    msg = Message(dict(tpl.message.meta))
    for k, v in tpl.message.arrays.items():
        msg.add_array(k, v)
    msg.exponents.update(tpl.message.exponents)
    msg.arrays["positions"] = msg.arrays["positions"][::-1].astype(np.uint64).copy()
    resp = _post(env, f"/v1/sessions/{env.bank_sid}/gradients", message_to_wire(msg), "r-decr-01")
    assert resp.status_code == 400
    assert "increasing" in check_error_answer(resp, "r-decr-01", [])["message"]


def test_gradients_packed_another_way_are_refused(fuzz_env):
    """A guest of another fedsk version packs histograms differently: told, not garbled."""
    env = fuzz_env
    tpl = env.templates["secureboost.gradients"][0]
    for packing in (None, 1, 99):
        env.restore(tpl.snapshot)
        meta = {k: v for k, v in tpl.message.meta.items() if k != "packing"}
        msg = Message(meta if packing is None else meta | {"packing": packing})
        for k, v in tpl.message.arrays.items():
            msg.add_array(k, v)
        msg.exponents.update(tpl.message.exponents)
        rid = f"r-pack-{packing}"
        resp = _post(env, f"/v1/sessions/{env.bank_sid}/gradients", message_to_wire(msg), rid)
        assert resp.status_code == 400
        assert "same fedsk version" in check_error_answer(resp, rid, [])["message"]


def test_request_id_reused_for_another_request_is_refused(fuzz_env):
    env = fuzz_env
    env.restore({})
    body = message_to_wire(Message({"dataset": "customers"}))
    a = _post(env, "/v1/sessions", body, "r-reuse-001")
    b = _post(env, "/v1/sessions", body, "r-reuse-001")
    assert a.status_code == b.status_code == 200 and a.get_data() == b.get_data()
    c = _post(env, "/v1/sessions", message_to_wire(Message({"dataset": "other"})), "r-reuse-001")
    assert c.status_code == 409
    assert check_error_answer(c, "r-reuse-001", [])["code"] == "request_id_reused"
    sid = message_from_wire(a.get_data()).meta["session_id"]
    env.state.sessions.delete(sid, "bank")


def test_options_needs_no_special_treatment(fuzz_env):
    """No automatic OPTIONS answer: an unauthenticated probe gets the same JSON 405."""
    resp = fuzz_env.client.options("/v1/sessions")
    assert resp.status_code == 405
    check_error_answer(resp, None, [])


# -- the same over HTTP, against a real party-server process -----------------------------------
N_HTTP_PER_ROUTE = 12


class HttpFuzz:
    """Fuzzed requests over HTTP into one live session of a real party-server process."""

    def __init__(self, env, fed, ids):
        self.env, self.ids = env, ids
        (self.client,) = fed.connect()
        self.base = fed.hosts["insurer"]["url"]
        self.token = fed.hosts["insurer"]["token"]
        self.http = requests.Session()
        self.sid, self.prefix, self.dirty = None, None, True
        self.statuses = Counter()
        self.prefix_refused = 0

    def prepare(self, prefix):
        """A live session with PSI done and ``prefix`` (valid calls) replayed."""
        if self.sid is not None:
            self.client.close_session(self.sid)
        self.sid, _ = self.client.open_session("fuzz")
        align(self.client, self.sid, self.ids)
        for name, msg in prefix:
            try:
                self.client.call(name, self.sid, msg)
            except ProtocolError:  # e.g. a warm start names a model only the in-process host has
                self.prefix_refused += 1
                break
        self.prefix, self.dirty = prefix, False

    def one(self, route, body):
        prefix = body.template.prefix if body.template is not None else []
        if route.session_scoped and (self.prefix is not prefix or self.dirty):
            self.prepare(prefix)
        params = {}
        if route.session_scoped:
            params["session_id"] = self.sid
        if "<model_id>" in route.path:
            params["model_id"] = "0" * 24
        rid = self.env.rid()
        headers = {"Authorization": f"Bearer {self.token}", "Fedsk-Request-Id": rid}
        if body.content_type:
            headers["Content-Type"] = body.content_type
        resp = self.http.request(
            route.method,
            self.base + url_for(route.name, **params),
            data=body.data,
            headers=headers,
            timeout=60,
        )
        self.statuses[resp.status_code] += 1
        assert resp.status_code < 500, (route.name, body.kind, resp.content[:300])
        if resp.status_code == 200:
            self.dirty = True
            if route.name != "health":
                assert body.may_succeed or route.method != "POST", (route.name, body.kind)
        else:
            check_error_answer(resp, rid, [self.token.encode()])

    def fuzzer(self, route):
        @_examples(N_HTTP_PER_ROUTE)
        @given(body=self.env.bodies[route.name])
        def fuzz(body):
            self.one(route, body)

        return fuzz


@pytest.mark.integration
def test_fuzz_over_http_against_a_real_server(fuzz_env):
    """A shorter run over real HTTP (waitress, a party-server process)."""
    host_df, guest, y = _data()
    with LocalFederation(hosts={"insurer": host_df}, retries=0, timeout=(5.0, 60.0)) as fed:
        run = HttpFuzz(fuzz_env, fed, guest.index.to_numpy())
        for route in ROUTES:
            run.dirty = True
            run.fuzzer(route)()
        run.http.close()
        total = sum(run.statuses.values())
        print(f"\nfuzz over HTTP: {total} requests, statuses {dict(sorted(run.statuses.items()))}")
        assert total >= N_HTTP_PER_ROUTE * len(ROUTES)
        assert not any(s >= 500 for s in run.statuses)
        assert fed.is_alive("insurer")
        # still serving: a correct fit and predict work, the audit chain is intact
        clf = SecureBoostClassifier(
            federation=fed, n_estimators=2, max_depth=2, key_length=1024, random_state=0
        ).fit(guest, y)
        assert clf.score(guest, y) > 0.7
        from party_server._cli import main as cli_main

        assert cli_main(["audit", "verify", "--config", str(fed.config_path("insurer"))]) == 0


@pytest.mark.integration
def test_http_level_refusals_are_json_4xx(tmp_path):
    """What waitress refuses before the app (huge bodies, broken HTTP) is a JSON 4xx too."""
    import socket

    from ._servers import PartyServer

    host_df, _, _ = _data()
    with PartyServer(tmp_path, host_df, max_body_bytes=4096) as srv:
        headers = {
            "Authorization": f"Bearer {TOKEN}",
            "Fedsk-Request-Id": "http-level-01",
            "Content-Type": CONTENT_TYPE,
        }
        answers = []
        for size in (4097, 5000, 5121, 100_000, 10_000_000):  # app's limit, then waitress's
            r = requests.post(
                srv.url + "/v1/sessions", data=b"x" * size, headers=headers, timeout=30
            )
            answers.append((f"{size} bytes", r.status_code, r.headers["Content-Type"], r.content))

        def chunks():
            for _ in range(20):
                yield b"x" * 1000

        r = requests.post(srv.url + "/v1/sessions", data=chunks(), headers=headers, timeout=30)
        answers.append(("chunked", r.status_code, r.headers["Content-Type"], r.content))
        for name, raw in (
            ("garbage request line", b"GARBAGE\r\n\r\n"),
            ("bad content-length", b"POST /v1/sessions HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            (
                "gzip transfer coding",
                b"POST /v1/sessions HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            ),
            ("header too large", b"GET /v1/health HTTP/1.1\r\nX: " + b"a" * 300_000 + b"\r\n\r\n"),
        ):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
                s.sendall(raw)
                data = b""
                while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            status = int(head.split()[1])
            ctype = [h for h in head.split(b"\r\n") if h.lower().startswith(b"content-type")]
            answers.append((name, status, ctype[0].split(b":")[1].strip().decode(), body))
        for name, status, ctype, body in answers:
            assert 400 <= status < 500 and ctype.startswith("application/json"), (name, status)
            err = json.loads(body)["error"]
            assert set(err) == {"code", "message", "request_id"}, (name, err)
        assert requests.get(srv.url + "/v1/health", timeout=10).status_code == 200
        assert verify(srv.state_dir / "audit.log")[0]


def test_bad_child_references_are_refused(fuzz_env):
    """A histogram node named as a child of a split: only of a split of the same request,
    and with no rows of its own; anything else is a JSON 400 naming the problem."""
    env = fuzz_env
    with_refs = [t for t in env.templates["secureboost.splits"] if "child_of" in t.message.arrays]
    assert with_refs, "the flows never asked for a host split's child by reference"
    tpl = with_refs[0]
    n_splits = len(tpl.message.arrays["parent_offsets"]) - 1
    n_nodes = len(tpl.message.arrays["offsets"]) - 1

    def send(change, rid):
        env.restore(tpl.snapshot)
        msg = Message(dict(tpl.message.meta))
        for k, v in tpl.message.arrays.items():
            msg.add_array(k, v.copy())
        msg.exponents.update(tpl.message.exponents)
        change(msg)
        return _post(env, f"/v1/sessions/{env.bank_sid}/splits", message_to_wire(msg), rid)

    def out_of_range(msg):
        msg.arrays["child_of"][:] = 2 * n_splits

    def rows_too(msg):
        k = int(np.flatnonzero(msg.arrays["child_of"] >= 0)[0])
        msg.arrays["rows"] = np.concatenate([msg.arrays["rows"], [0]])
        msg.arrays["offsets"] = msg.arrays["offsets"].copy()
        msg.arrays["offsets"][k + 1 :] += 1

    def no_splits(msg):
        for name in ("parent_rows", "parent_offsets", "feature", "bin", "missing_left"):
            del msg.arrays[name]

    def wrong_shape(msg):
        msg.arrays["child_of"] = np.full(n_nodes + 1, -1, dtype=np.int64)

    for change, text in (
        (out_of_range, "child_of"),
        (rows_too, "send no rows"),
        (no_splits, "child_of"),
        (wrong_shape, "child_of"),
    ):
        rid = f"r-child-{change.__name__}"
        resp = send(change, rid)
        assert resp.status_code == 400, (change.__name__, resp.status_code)
        assert text in check_error_answer(resp, rid, [])["message"], change.__name__
    ok = send(lambda msg: None, "r-child-ok")  # the untouched request is still served
    assert ok.status_code == 200
