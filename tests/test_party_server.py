"""The party server app: auth, validation, sessions, idempotency, models, audit."""

import json

import numpy as np
import pandas as pd
import pytest

from fedsk.exceptions import NotFoundError
from fedsk.federation import CONTENT_TYPE, Message, message_from_wire, message_to_wire
from party_server import ConfigError, create_app
from party_server._audit import verify
from party_server._cli import main as cli_main
from party_server._storage import StorageError

from .conftest import TOKEN, write_host

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def rid(i=0):
    return {"Fedsk-Request-Id": f"req-{i:08d}"}


def post(client, path, msg, headers=None, i=0):
    return client.post(
        path,
        data=message_to_wire(msg),
        content_type=CONTENT_TYPE,
        headers={**AUTH, **rid(i), **(headers or {})},
    )


def open_session(client):
    r = post(client, "/v1/sessions", Message({"dataset": "customers", "protocol": "t"}), i=99)
    assert r.status_code == 200, r.data
    from fedsk.federation import message_from_wire

    return message_from_wire(r.data).meta


def error_of(resp):
    assert resp.content_type == "application/json", resp.data[:200]
    body = json.loads(resp.data)
    assert set(body["error"]) == {"code", "message", "request_id"}
    return body["error"]


@pytest.fixture
def client(host_app):
    return host_app.test_client()


def test_health_needs_no_token(client):
    r = client.get("/v1/health")
    assert r.status_code == 200 and r.json["status"] == "ok"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-xxxxxxxx"}, {"Authorization": "Basic abc"}],
)
def test_unknown_or_missing_token_is_401(client, headers):
    r = client.post("/v1/sessions", data=b"", headers={**headers, **rid()})
    assert r.status_code == 401
    assert error_of(r)["code"] == "unauthorized"


def test_session_open_describes_dataset(client, host_df):
    meta = open_session(client)
    assert meta["n_features"] == 3 and meta["feature_names"] == list(host_df.columns)
    assert len(meta["session_id"]) == 32


def test_unpublished_feature_names_stay_private(tmp_path, host_df):
    app = create_app(write_host(tmp_path, host_df, publish=False))
    meta = open_session(app.test_client())
    assert "feature_names" not in meta and meta["n_features"] == 3


def _npy_body(shape, data):
    """A message whose one array claims ``shape`` in its .npy header, with ``data``."""
    import json
    import struct

    head = ("{'descr': '<i8', 'fortran_order': False, 'shape': " + shape + ", }").encode()
    head += b" " * (64 - (10 + len(head) + 1) % 64) + b"\n"
    blob = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head + data
    meta = {"meta": {"dataset": "customers"}, "arrays": [{"name": "a", "nbytes": len(blob)}]}
    header = json.dumps(meta).encode()
    return b"FEDSK1" + struct.pack(">I", len(header)) + header + blob


@pytest.mark.parametrize(
    "body,ctype,code",
    [
        (b"junk", CONTENT_TYPE, "bad_message"),
        (_npy_body("(-1, -1)", b"\0" * 8), CONTENT_TYPE, "bad_message"),  # count 1 = 8 bytes
        (_npy_body("(0, 4611686018427387904)", b""), CONTENT_TYPE, "bad_message"),
        (_npy_body("(0, 18446744073709551616)", b""), CONTENT_TYPE, "bad_message"),
        (b"FEDSK1\x00\x00\x00\x05{bad}", CONTENT_TYPE, "bad_message"),
        (message_to_wire(Message({"dataset": "customers"}))[:-3], CONTENT_TYPE, "bad_message"),
        (b'{"dataset": "customers"}', "application/json", "unsupported_media_type"),
    ],
)
def test_malformed_bodies_are_json_4xx(client, body, ctype, code):
    r = client.post("/v1/sessions", data=body, content_type=ctype, headers={**AUTH, **rid()})
    assert 400 <= r.status_code < 500
    assert error_of(r)["code"] == code
    assert client.get("/v1/health").status_code == 200


def test_wrong_field_types_and_unknown_dataset(client):
    r = post(client, "/v1/sessions", Message({"dataset": 5}))
    assert r.status_code == 400 and "dataset" in error_of(r)["message"]
    r = post(client, "/v1/sessions", Message({"dataset": "nope"}), i=1)
    assert r.status_code == 404


def test_pickle_is_refused(client):
    import io
    import pickle

    arr = np.array([object()], dtype=object)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=True)
    blob = buf.getvalue()
    header = json.dumps({"meta": {}, "arrays": [{"name": "x", "nbytes": len(blob)}]}).encode()
    body = b"FEDSK1" + len(header).to_bytes(4, "big") + header + blob
    r = client.post("/v1/sessions", data=body, content_type=CONTENT_TYPE, headers={**AUTH, **rid()})
    assert r.status_code == 400 and "dtype" in error_of(r)["message"]
    r = client.post(
        "/v1/sessions",
        data=pickle.dumps({"a": 1}),
        content_type=CONTENT_TYPE,
        headers={**AUTH, **rid(1)},
    )
    assert r.status_code == 400


def test_oversized_body_is_413(tmp_path, host_df):
    app = create_app(write_host(tmp_path, host_df, max_body_bytes=4096))
    c = app.test_client()
    msg = Message({"dataset": "customers"}, arrays={"big": np.zeros(10_000)})
    r = post(c, "/v1/sessions", msg)
    assert r.status_code == 413 and error_of(r)["code"] == "request_entity_too_large"
    assert "(max_body_bytes = 4096 bytes)" in error_of(r)["message"]
    assert c.get("/v1/health").status_code == 200


def test_unknown_session_and_foreign_session(tmp_path, host_df):
    cfg = write_host(tmp_path, host_df)
    cfg["peers"]["telco"] = {"token": "telco-token-0123456789"}
    app = create_app(cfg)
    c = app.test_client()
    sid = open_session(c)["session_id"]
    r = post(c, "/v1/sessions/0123/psi", Message(), i=2)
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    r = c.post(
        f"/v1/sessions/{sid}/psi",
        data=message_to_wire(Message()),
        content_type=CONTENT_TYPE,
        headers={"Authorization": "Bearer telco-token-0123456789", **rid(3)},
    )
    assert r.status_code == 404  # another peer's session does not exist for telco


def test_missing_request_id_is_refused(client):
    r = client.post(
        "/v1/sessions",
        data=message_to_wire(Message({"dataset": "customers"})),
        content_type=CONTENT_TYPE,
        headers=AUTH,
    )
    assert r.status_code == 400 and error_of(r)["code"] == "missing_request_id"


def test_what_http_allows_in_headers_is_understood(client):
    body = message_to_wire(Message({"dataset": "customers"}))
    token = AUTH["Authorization"].split()[1]
    for i, headers in enumerate(
        [
            {"Authorization": f"bearer {token}"},  # auth schemes ignore case (RFC 7235)
            {**AUTH, "Content-Type": CONTENT_TYPE.upper()},  # so do media types
        ]
    ):
        r = client.post(
            "/v1/sessions", data=body, content_type=CONTENT_TYPE, headers={**rid(i), **headers}
        )
        assert r.status_code == 200, r.get_data()
    r = client.head("/v1/models/000000000000000000000000", headers=AUTH)  # HEAD: like GET
    assert r.status_code == 404
    r = client.post(
        "/v1/sessions",
        data=body,
        content_type=CONTENT_TYPE,
        headers={**AUTH, "Fedsk-Request-Id": "{6f1c2a9e-1f7e-4a51-9d0b-1b2c3d4e5f60}"},
    )
    assert r.status_code == 400 and "must be 8-64 characters" in error_of(r)["message"]
    r = client.post(
        "/v1/sessions",
        data=body,
        content_type=CONTENT_TYPE,
        headers={**AUTH, **rid(9), "Content-Encoding": "gzip"},
    )
    assert r.status_code == 415 and "send the body uncompressed" in error_of(r)["message"]


def test_unknown_route_and_method_are_json(client):
    r = client.get("/v1/nothing", headers=AUTH)
    assert r.status_code == 404 and error_of(r)
    r = client.get("/v1/sessions", headers=AUTH)
    assert r.status_code == 405 and error_of(r)


def test_retried_request_is_answered_once(client):
    sid = open_session(client)["session_id"]
    from fedsk.federation._psi import hash_ids

    msg = Message(arrays={"points": hash_ids(["c0001", "zz"], sid)})
    a = post(client, f"/v1/sessions/{sid}/psi", msg, i=7)
    b = post(client, f"/v1/sessions/{sid}/psi", msg, i=7)
    c = post(client, f"/v1/sessions/{sid}/psi", msg, i=8)
    assert a.status_code == b.status_code == c.status_code == 200
    assert a.data == b.data  # replayed, not recomputed (fresh keys would differ)
    assert a.data != c.data
    # a retried session creation returns the same session
    assert open_session(client)["session_id"] == open_session(client)["session_id"]


def test_a_request_id_is_carried_out_once_per_session(host_app):
    """An old request replayed after its answer left the replay cache is refused, not rerun."""
    from fedsk.federation._psi import hash_ids
    from party_server._sessions import REPLAY_CACHE

    client = host_app.test_client()
    sid = open_session(client)["session_id"]
    exchange = Message(arrays={"points": hash_ids(["c0001", "c0002", "zz"], sid)})
    first = post(client, f"/v1/sessions/{sid}/psi", exchange, i=7)
    assert first.status_code == 200
    n_host = message_from_wire(first.data).meta["n_host"]
    picked = Message(arrays={"host_indices": np.array([0, n_host - 1])})
    assert post(client, f"/v1/sessions/{sid}/intersection", picked, i=8).status_code == 200
    session = host_app.extensions["fedsk"].sessions.get(sid, "bank").session
    rows = session.state["rows"].copy()
    # later requests (refusals count too) push the exchange's answer out of the cache
    for i in range(100, 100 + REPLAY_CACHE + 4):
        r = post(client, f"/v1/sessions/{sid}/linear/steps", Message({"op": "finish"}), i=i)
        assert r.status_code == 409 and error_of(r)["code"] == "conflict"
    again = post(client, f"/v1/sessions/{sid}/linear/steps", Message({"op": "finish"}), i=100)
    assert again.status_code == 409 and "already used" in error_of(again)["message"]
    for body in (exchange, Message(arrays={"points": hash_ids(["x1"], sid)})):
        r = post(client, f"/v1/sessions/{sid}/psi", body, i=7)
        assert r.status_code == 409
        err = error_of(r)
        assert err["code"] == "request_id_reused" and "already used" in err["message"]
        assert err["request_id"] == "req-00000007"
    np.testing.assert_array_equal(session.state["rows"], rows)  # the exchange did not rerun
    # a recent refusal is answered again, identically, without running it again
    last = 100 + REPLAY_CACHE + 3
    a = post(client, f"/v1/sessions/{sid}/linear/steps", Message({"op": "finish"}), i=last)
    assert a.status_code == 409 and error_of(a)["code"] == "conflict"


def test_sessions_remember_every_request_id_compactly(monkeypatch, host_app):
    from fedsk.exceptions import ConflictError
    from party_server import _sessions

    entry = _sessions.SessionStore(60).create("bank", "customers")
    ids = [f"id-{i:08d}" for i in range(10_000)]  # several merges into the sorted array
    for r in ids:
        entry.remember(r, ("fingerprint", r))
    assert len(entry.seen) == len(ids) and len(entry.replies) == _sessions.REPLAY_CACHE
    assert all(r in entry.seen for r in ids[::7])
    assert not any(f"other-{i:06d}" in entry.seen for i in range(2000))
    assert entry.replay(ids[-1]) == ("fingerprint", ids[-1])
    with pytest.raises(ConflictError, match=f"request ID {ids[5]} was already used"):
        entry.replay(ids[5])
    assert entry.replay("never-used-01") is None
    # a session takes at most MAX_REQUESTS requests: beyond, a JSON 409 says to open another
    monkeypatch.setattr(_sessions, "MAX_REQUESTS", 3)
    client = host_app.test_client()
    sid = open_session(client)["session_id"]
    for i in range(3):
        post(client, f"/v1/sessions/{sid}/intersection", Message(), i=i)
    r = post(client, f"/v1/sessions/{sid}/intersection", Message(), i=3)
    assert r.status_code == 409 and error_of(r)["code"] == "session_exhausted"


def test_models_survive_restart_and_can_be_deleted(tmp_path, host_df):
    cfg = write_host(tmp_path, host_df)
    app = create_app(cfg)
    store = app.extensions["fedsk"].models
    mid = store.create("bank", "test")
    store.save(mid, "bank", {"kind": "test", "n": 3}, {"w": np.arange(3.0)})
    app2 = create_app(cfg)  # a restarted server on the same state directory
    meta, arrays = app2.extensions["fedsk"].models.load(mid, "bank")
    assert meta["n"] == 3 and arrays["w"].tolist() == [0.0, 1.0, 2.0]
    c = app2.test_client()
    assert c.get(f"/v1/models/{mid}", headers=AUTH).status_code == 200
    assert c.delete(f"/v1/models/{mid}", headers={**AUTH, **rid(5)}).status_code == 200
    assert c.get(f"/v1/models/{mid}", headers=AUTH).status_code == 404


def test_state_is_private_to_the_servers_user(tmp_path, host_df):
    """state_dir and models/ are created 0700; models, audit log and head are 0600."""
    app = create_app(write_host(tmp_path, host_df))
    store = app.extensions["fedsk"].models
    mid = store.create("bank", "test")
    store.save(mid, "bank", {"kind": "test"}, {"thresholds": np.arange(3.0)})
    store.save(mid, "bank", {"kind": "test"}, {"thresholds": np.arange(4.0)})  # replaced
    state = tmp_path / "insurer" / "state"
    modes = {
        p.name: p.stat().st_mode & 0o777
        for p in (state, state / "models", state / "models" / f"{mid}.npz")
    }
    modes.update({p.name: p.stat().st_mode & 0o777 for p in state.glob("audit.*")})
    assert modes == {
        "state": 0o700,
        "models": 0o700,
        f"{mid}.npz": 0o600,
        "audit.log": 0o600,
        "audit.head": 0o600,
    }


def test_model_retention_bounds_the_store(tmp_path, host_df):
    app = create_app(write_host(tmp_path, host_df, models={"max_models": 3}))
    store = app.extensions["fedsk"].models
    ids = []
    for i in range(6):
        mid = store.create("bank", "test")
        store.save(mid, "bank", {"i": i}, {"w": np.zeros(2)})
        ids.append(mid)
    kept = [m["model_id"] for m in store.list("bank")]
    assert kept == ids[-3:]
    assert len(list(store.root.glob("*.npz"))) == 3


def test_saving_a_model_again_reads_no_other_model_file(tmp_path, host_df, monkeypatch):
    """Retention runs when a model is first written, and lists every model by its
    metadata only, read again only from files that changed: a host with many stored
    models does not read them all at every boosting round of every fit."""
    import party_server._models as M

    app = create_app(write_host(tmp_path, host_df, models={"max_models": 50}))
    store = app.extensions["fedsk"].models
    ids = [store.create("bank", "t") for _ in range(20)]
    for mid in ids:
        store.save(mid, "bank", {}, {"w": np.zeros(1000)})
    reads = []
    real = M._read_model
    monkeypatch.setattr(
        M, "_read_model", lambda path, **kw: reads.append((path.stem, kw)) or real(path, **kw)
    )
    for r in range(5):  # a fit's rounds
        store.save(ids[3], "bank", {"n_rounds": r + 1}, {"w": np.ones(1000)})
    # (its own metadata, whose owner is checked, once the file has changed)
    assert reads == [(ids[3], {"meta_only": True})] * 4
    reads.clear()
    new = store.create("bank", "t")
    store.save(new, "bank", {}, {"w": np.zeros(1)})  # retention: only changed files
    assert sorted(r[0] for r in reads) == sorted([ids[3], new])
    assert all(kw == {"meta_only": True} for _, kw in reads)
    assert store.load(ids[3], "bank")[0]["n_rounds"] == 5
    assert [m["model_id"] for m in store.list("bank")][-1] == new


def test_an_expired_model_is_gone_without_waiting_for_another_save(tmp_path, host_df, monkeypatch):
    import party_server._models as models_mod

    cfg = write_host(tmp_path, host_df, models={"max_age_days": 1})
    store = create_app(cfg).extensions["fedsk"].models
    old, fresh = store.create("bank", "t"), store.create("telco", "t")
    store.save(old, "bank", {}, {"w": np.zeros(2)})
    now = models_mod.time.time()
    monkeypatch.setattr(models_mod.time, "time", lambda: now + 1.5 * 86400)  # 1.5 days on
    store.save(fresh, "telco", {}, {"w": np.zeros(2)})  # another peer's save: not bank's
    with pytest.raises(NotFoundError, match="expired"):  # served no more, and deleted
        store.load(old, "bank")
    assert not (store.root / f"{old}.npz").exists()
    assert (store.root / f"{fresh}.npz").exists()
    monkeypatch.setattr(models_mod.time, "time", lambda: now + 3 * 86400)
    create_app(cfg)  # a server started after its models expired deletes them at once
    assert list(store.root.glob("*.npz")) == []


def test_a_model_file_the_server_cannot_read_or_delete_is_a_json_4xx(tmp_path, host_df):
    app = create_app(write_host(tmp_path, host_df))
    store, c = app.extensions["fedsk"].models, app.test_client()
    damaged, blocked = store.create("bank", "t"), store.create("bank", "t")
    (store.root / f"{damaged}.npz").write_bytes(b"PK\x03\x04 not a zip archive")
    (store.root / f"{blocked}.npz").mkdir()  # reading or unlinking it fails with OSError
    for mid, what in ((damaged, "damaged on disk"), (blocked, "cannot read model")):
        for r in (
            c.get(f"/v1/models/{mid}", headers=AUTH),
            c.delete(f"/v1/models/{mid}", headers={**AUTH, **rid()}),
        ):
            assert r.status_code == 409 and what in error_of(r)["message"]
    assert c.get("/v1/health").status_code == 200


def test_audit_log_records_and_detects_edits(tmp_path, host_df, capsys):
    cfg = write_host(tmp_path, host_df)
    app = create_app(cfg)
    c = app.test_client()
    sid = open_session(c)["session_id"]
    post(c, f"/v1/sessions/{sid}/psi", Message(), i=1)  # refused: logged too
    c.post("/v1/sessions", data=b"x", headers={"Authorization": "Bearer nope", **rid(2)})
    path = tmp_path / "insurer" / "state" / "audit.log"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["status"] for r in records] == [200, 400, 401]
    assert records[0]["peer"] == "bank" and records[2]["peer"] is None
    assert records[1]["session"] == sid and len(records[0]["sha256_in"]) == 64
    # a body without a valid token is not read into memory (nor digested): only its size
    assert records[2]["sha256_in"] is None and records[2]["bytes_in"] == 1
    assert not any(TOKEN in line for line in path.read_text().splitlines())
    assert verify(path)[0]
    cfg_path = tmp_path / "host.toml"
    _write_toml(cfg_path, cfg)
    assert cli_main(["audit", "verify", "--config", str(cfg_path)]) == 0
    assert cli_main(["audit", "show", "--config", str(cfg_path)]) == 0
    assert sid in capsys.readouterr().out
    data = bytearray(path.read_bytes())
    pos = data.index(b'"status":400') + len('"status":4')
    data[pos] = ord("2")  # one byte: 400 -> 420
    path.write_bytes(bytes(data))
    ok, n_good, problem = verify(path)
    assert not ok and n_good == 1 and "record 2" in problem
    assert cli_main(["audit", "verify", "--config", str(cfg_path)]) == 1


def test_what_a_client_puts_in_the_url_reaches_the_audit_log_escaped(tmp_path, host_df, capsys):
    """No token needed to send a URL: its session ID and path are logged as printable
    text of bounded length, and `audit show` prints no terminal escape or forged line."""
    cfg = write_host(tmp_path, host_df)
    c = create_app(cfg).test_client()
    forged = "%1b%5b2J%1b%5b31mALL-DELETED%1b%5b0m%0aforged%20line" + "x" * 5000
    c.post(f"/v1/sessions/{forged}/psi", data=b"", headers=rid(1))
    c.get("/%1b%5d0;pwned%07%0aFAKE", headers=rid(2))
    path = tmp_path / "insurer" / "state" / "audit.log"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 2 and records[0]["status"] == 401 and records[1]["status"] == 404
    for r in records:
        for field in ("session", "endpoint"):
            text = r[field] or ""
            assert text.isprintable() and text.isascii() and len(text) <= 200
    assert records[0]["session"].startswith("\\x1b[2J") and len(records[0]["session"]) <= 40
    cfg_path = tmp_path / "host.toml"
    _write_toml(cfg_path, cfg)
    assert cli_main(["audit", "show", "--config", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert not any(line.startswith(("forged", "FAKE")) for line in out.splitlines())


def test_audit_show_into_a_reader_that_stops_early_is_no_error(tmp_path, host_df):
    """`party-server audit show | head`: no BrokenPipeError traceback, exit 0."""
    import subprocess
    import sys

    cfg = write_host(tmp_path, host_df)
    c = create_app(cfg).test_client()
    new_session = Message({"dataset": "customers", "protocol": "t"})
    for i in range(700):  # ~100 kB of summary: more than a pipe holds
        r = post(c, "/v1/sessions", new_session, i=1000 + i)
        sid = message_from_wire(r.data).meta["session_id"]
        assert c.delete(f"/v1/sessions/{sid}", headers={**AUTH, **rid(5000 + i)}).status_code == 200
    cfg_path = tmp_path / "host.toml"
    _write_toml(cfg_path, cfg)
    proc = subprocess.Popen(
        [sys.executable, "-m", "party_server", "audit", "show", "--config", str(cfg_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.readline().startswith(b"audit log ")
    proc.stdout.close()  # as head does after its lines
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0 and b"Traceback" not in err, err


def test_audit_commands_need_no_tokens_or_datasets(tmp_path, host_df, capsys, monkeypatch):
    """A cron job checking the log has no tokens in its environment, and needs none."""
    cfg = write_host(tmp_path, host_df)
    c = create_app(cfg).test_client()
    open_session(c)
    cfg["peers"] = {"bank": {"token_env": "FEDSK_TEST_UNSET_TOKEN"}}
    monkeypatch.delenv("FEDSK_TEST_UNSET_TOKEN", raising=False)
    (tmp_path / "insurer" / "customers.csv").unlink()
    cfg_path = tmp_path / "host.toml"
    _write_toml(cfg_path, cfg)
    assert cli_main(["--config", str(cfg_path)]) == 2  # serving needs them
    assert "FEDSK_TEST_UNSET_TOKEN" in capsys.readouterr().err
    assert cli_main(["audit", "verify", "--config", str(cfg_path)]) == 0
    assert cli_main(["audit", "show", "--config", str(cfg_path)]) == 0
    assert "1 requests" in capsys.readouterr().out


def test_audit_verify_detects_records_removed_from_the_end(tmp_path, host_df, capsys):
    cfg = write_host(tmp_path, host_df)
    cfg_path = tmp_path / "host.toml"
    _write_toml(cfg_path, cfg)
    path = tmp_path / "insurer" / "state" / "audit.log"
    head = path.with_suffix(".head")
    verify_cli = ["audit", "verify", "--config", str(cfg_path)]
    c = create_app(cfg).test_client()
    assert verify(path) == (True, 0, None)  # a fresh server's log is empty, and intact
    sid = open_session(c)["session_id"]
    post(c, f"/v1/sessions/{sid}/intersection", Message(), i=1)
    post(c, f"/v1/sessions/{sid}/intersection", Message(), i=2)
    behind = head.read_bytes()
    post(c, f"/v1/sessions/{sid}/intersection", Message(), i=3)
    assert path.stat().st_mode & 0o777 == head.stat().st_mode & 0o777 == 0o600
    assert cli_main(verify_cli) == 0
    assert "4 records, chain intact" in capsys.readouterr().out
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 4
    for kept in (3, 1, 0):  # the last record removed, the last three, every one
        path.write_bytes(b"".join(lines[:kept]))
        ok, n, problem = verify(path)
        assert not ok and n == kept and f"record {kept + 1} was removed" in problem
        assert cli_main(verify_cli) == 1
        assert f"record {kept + 1} was removed" in capsys.readouterr().err
        with pytest.raises(ConfigError, match="records were removed from its end"):
            create_app(cfg)  # starting would overwrite the head, the evidence
    path.unlink()
    assert cli_main(verify_cli) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["audit", "show", "--config", str(cfg_path)]) == 1
    # a log rewritten into another valid chain does not match its head either
    path.write_bytes(b"".join(lines))
    head.write_text(json.dumps(dict(json.loads(head.read_text()), hash="f" * 64)))
    assert "was rewritten" in verify(path)[2]
    # the head one record behind the log (a crash between the two writes) is accepted
    head.write_bytes(behind)
    assert verify(path) == (True, 4, None)
    create_app(cfg)  # and brought up to date at start
    assert head.read_bytes() != behind and verify(path) == (True, 4, None)
    # without its head, removal from the end cannot be ruled out: said, not "intact"
    head.unlink()
    ok, n, problem = verify(path)
    assert not ok and n == 4 and "audit.head is missing" in problem


def _write_toml(path, cfg):
    lines = []
    for k, v in cfg.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {json.dumps(v)}")
    for table in ("datasets", "peers"):
        for name, sub in cfg[table].items():
            lines.append(f"[{table}.{name}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in sub.items()]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "mutate,key",
    [
        (lambda c: c.pop("party"), "party"),
        (lambda c: c.update(bind="nonsense"), "bind"),
        (lambda c: c.update(bind="0.0.0.0:8443"), "bind"),
        (lambda c: c["datasets"]["customers"].update(id_column="nope"), "id_column"),
        (lambda c: c["datasets"]["customers"].update(path="/does/not/exist.csv"), "path"),
        (lambda c: c["peers"]["bank"].update(token="short"), "peers.bank.token"),
        (lambda c: c["peers"]["bank"].update(token_env="FEDSK_NOT_SET_XYZ"), "peers.bank.token"),
        (lambda c: c.update(session_ttl=-1), "session_ttl"),
        (lambda c: c.update(session_ttl=float("nan")), "session_ttl"),
        (lambda c: c.update(session_ttl=1e-9), "session_ttl"),
        (lambda c: c.update(threads=100_000), "threads"),
        (lambda c: c.update(models={"max_age_day": 90}), "models.max_age_day"),
        (lambda c: c.update(audit={"fsnyc": False}), "audit.fsnyc"),
        (lambda c: c.update(models={"max_age_days": 0}), "models.max_age_days"),
        (lambda c: c.update(models={"max_age_days": -1.5}), "models.max_age_days"),
        (lambda c: c.update(models={"max_age_days": float("inf")}), "models.max_age_days"),
        (lambda c: c.update(surprise=1), "surprise"),
    ],
)
def test_bad_config_fails_naming_the_key(tmp_path, host_df, mutate, key):
    cfg = write_host(tmp_path, host_df)
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        create_app(cfg)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_cli_reports_bad_config_in_one_line(tmp_path, capsys):
    bad = tmp_path / "host.toml"
    bad.write_text('party = "x"\nbind = "127.0.0.1:1"\n')
    assert cli_main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("party-server: config key") and "\n" not in err


def _self_signed(tmp_path):
    """A certificate and key for 127.0.0.1 (what the guest trusts with ``verify=...``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    crt, pem = tmp_path / "tls.crt", tmp_path / "tls.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


def _raw_https(port, cafile, data):
    """Send ``data`` over TLS as is; return (status, headers, body) of the answer."""
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.mark.integration
def test_gunicorn_with_tls_answers_its_own_refusals_in_json(tmp_path, host_df):
    """The deployment docs/deploy.md documents: gunicorn's own 414 and 400 are JSON too."""
    import requests

    from ._servers import gunicorn_server, write_toml

    pytest.importorskip("gunicorn")
    cfg_path = tmp_path / "host.toml"
    write_toml(cfg_path, write_host(tmp_path, host_df))
    crt, key = _self_signed(tmp_path)
    with gunicorn_server(tmp_path, cfg_path, crt, key) as (url, port, _):
        # gunicorn's own refusal of a request line over its limit
        r = requests.get(url + "/v1/models/" + "x" * 5000, verify=str(crt), timeout=10)
        assert r.status_code == 414 and r.headers["Content-Type"] == "application/json"
        err = r.json()["error"]
        assert set(err) == {"code", "message", "request_id"} and err["code"] == "uri_too_long"
        # ... and of malformed HTTP
        status, headers, body = _raw_https(
            port,
            crt,
            b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        )
        assert status == 400 and headers["Content-Type"] == "application/json"
        err = json.loads(body)["error"]
        assert set(err) == {"code", "message", "request_id"} and err["code"] == "bad_request"
        assert int(headers["Content-Length"]) == len(body)
        # the app's own refusals are unchanged, and it still serves
        r = requests.post(url + "/v1/sessions", data=b"x", verify=str(crt), timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert requests.get(url + "/v1/health", verify=str(crt), timeout=5).ok


@pytest.mark.integration
def test_gunicorn_preload_serves_a_fit_and_a_replaced_worker_continues_the_chain(tmp_path, host_df):
    """A real gunicorn --preload run (the app made in the master, its worker forked):
    the worker takes the state directory over and serves a fit; killed, the worker
    gunicorn starts in its place continues the same audit chain."""
    import os
    import signal
    import time

    import pandas as pd

    from fedsk import Federation, SecureBoostClassifier
    from party_server._storage import running_server_pid

    from ._servers import gunicorn_server, write_toml

    pytest.importorskip("gunicorn")
    cfg = write_host(tmp_path, host_df)
    cfg_path = tmp_path / "host.toml"
    write_toml(cfg_path, cfg)
    crt, key = _self_signed(tmp_path)
    log = tmp_path / "insurer" / "state" / "audit.log"
    guest = pd.DataFrame({"g": np.arange(len(host_df), dtype=float)}, index=host_df.index)
    y = (host_df.age > 0).astype(int)
    with gunicorn_server(tmp_path, cfg_path, crt, key, ["--preload"]) as (url, _, proc):
        spec = {"url": url, "dataset": "customers", "token": TOKEN, "verify": str(crt)}
        fed = Federation({"insurer": spec})
        clf = SecureBoostClassifier(federation=fed, n_estimators=2, key_length=1024)
        proba = clf.fit(guest, y).predict_proba(guest)
        worker = running_server_pid(cfg["state_dir"])
        assert worker not in (None, proc.pid)
        n_records = verify(log)[1]
        assert verify(log)[0] and n_records > 5
        os.kill(worker, signal.SIGKILL)  # gunicorn's master starts another worker
        deadline = time.monotonic() + 30
        while True:
            try:
                again = clf.predict_proba(guest)
                break
            except Exception:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        np.testing.assert_array_equal(again, proba)
        assert running_server_pid(cfg["state_dir"]) not in (None, worker, proc.pid)
    ok, n, problem = verify(log)
    assert ok and n > n_records, problem


def test_verbose_logs_one_line_per_request(tmp_path, host_df, caplog):
    import logging

    c = create_app(write_host(tmp_path, host_df)).test_client()
    with caplog.at_level(logging.INFO, logger="party_server"):
        sid = open_session(c)["session_id"]
        c.get("/v1/health")
        c.get("/nope", headers=AUTH)
    lines = [r.getMessage() for r in caplog.records if r.name == "party_server"]
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"POST sessions.create {sid} -> 200") and "peer bank" in lines[0]
    assert lines[1].startswith("GET health - -> 200") and "-> 404" in lines[2]
    assert sid not in " ".join(lines[1:]) and TOKEN not in " ".join(lines)


def test_kept_answers_for_retries_are_bounded_in_bytes_but_the_newest_stays(monkeypatch):
    from fedsk.exceptions import ConflictError
    from party_server import _sessions

    monkeypatch.setattr(_sessions, "REPLAY_CACHE_BYTES", 1000)
    entry = _sessions._Entry(session=None)
    for i in range(5):
        entry.remember(f"req-{i:05d}", ("fp", (200, b"x" * 400, CONTENT_TYPE, 0)))
    assert list(entry.replies) == ["req-00002", "req-00003", "req-00004"]  # 800 B + newest
    entry.remember("req-big00", ("fp", (200, b"x" * 5000, CONTENT_TYPE, 0)))  # over alone
    assert entry.replay("req-big00") is not None  # the newest is kept for its retry
    assert list(entry.replies) == ["req-00003", "req-00004", "req-big00"]
    with pytest.raises(ConflictError, match="already used"):  # not carried out again
        entry.replay("req-00002")


def _in_child(fn):
    """Run ``fn()`` in a forked process (as gunicorn --preload forks its worker); return
    what it returned, or raise what it raised, in text."""
    import os
    import traceback

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            out = json.dumps(["ok", fn()])
        except BaseException:
            out = json.dumps(["error", traceback.format_exc()])
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    kind, value = json.loads(data)
    assert kind == "ok", value
    return value


def test_a_forked_worker_takes_the_state_dir_over_and_a_second_one_is_refused(
    tmp_path, host_df, monkeypatch
):
    """gunicorn --preload creates the app once and forks its workers from that process.
    The first worker to serve takes the state_dir's lock over (and reads the audit head
    from disk, so a replacement worker continues the chain); a second worker alive at the
    same time answers 503 state_dir_in_use and appends nothing."""
    import os
    import signal

    import party_server._app as app_mod

    monkeypatch.setattr(app_mod, "CLAIM_WAIT", 0.0)
    app = create_app(write_host(tmp_path, host_df))
    state = tmp_path / "insurer" / "state"
    log = state / "audit.log"

    def serve():  # two requests; then who the lock file names
        c = app.test_client()
        sid = open_session(c)["session_id"]
        assert c.delete(f"/v1/sessions/{sid}", headers={**AUTH, **rid(5)}).status_code == 200
        return int((state / ".lock").read_text()) == os.getpid()

    assert _in_child(serve) is True
    assert verify(log) == (True, 2, None)
    # a worker that replaces it starts from the forking process's (stale) head: it
    # continues the chain all the same
    assert _in_child(serve) is True
    assert verify(log) == (True, 4, None)
    # two workers at once: the first holds the directory, the second is refused
    ready, go = os.pipe()
    first = os.fork()
    if first == 0:  # pragma: no cover - the child
        serve()
        os.write(go, b"x")
        signal.pause()
    try:
        assert os.read(ready, 1) == b"x"

        def refused():
            r = app.test_client().get("/v1/health")
            return r.status_code, error_of(r)["code"], error_of(r)["message"]

        status, code, message = _in_child(refused)
        assert (status, code) == (503, "state_dir_in_use")
        assert "must run one server process" in message and str(state) not in message
    finally:
        os.kill(first, signal.SIGTERM)
        os.waitpid(first, 0)
    assert verify(log) == (True, 6, None)  # the refused request is in no log


def test_a_forked_worker_that_cannot_take_the_audit_log_over_answers_503(
    tmp_path, host_df, monkeypatch
):
    """QA: under --preload, the worker reads the audit log at its first request; a log
    broken (or made unusable) since the app was created gave a JSON 500. It is a 503
    saying the operator must look at the log, and the worker serves once it is fixed."""
    import party_server._app as app_mod

    monkeypatch.setattr(app_mod, "CLAIM_WAIT", 0.0)
    app = create_app(write_host(tmp_path, host_df))
    log = tmp_path / "insurer" / "state" / "audit.log"
    open_session(app.test_client())  # (a record to edit)
    good = log.read_bytes()
    assert good.count(b'"status":') == 1

    def serve(damage):
        c = app.test_client()
        if damage == "edit":
            log.write_bytes(good.replace(b'"status":', b'"status" :', 1))
        else:  # something in the log's place
            log.unlink()
            log.mkdir()
        broken = c.get("/v1/health")
        if damage != "edit":
            log.rmdir()
        log.write_bytes(good)
        fixed = c.get("/v1/health")
        return broken.status_code, error_of(broken), fixed.status_code

    for damage in ("edit", "directory"):
        status, error, fixed = _in_child(lambda d=damage: serve(d))
        assert (status, error["code"], fixed) == (503, "audit_log_unusable", 200), damage
        assert "cannot use its audit log" in error["message"] and str(log) not in error["message"]


def _damaged_model_files(root):
    """Files in the model store that are not models: what a partial restore or a disk
    error leaves. Returns their model IDs."""
    import io

    root.mkdir(parents=True, exist_ok=True)
    npy, not_json, not_object = io.BytesIO(), io.BytesIO(), io.BytesIO()
    np.save(npy, np.arange(3.0))
    np.savez(not_json, __meta__=np.frombuffer(b"{not json", dtype=np.uint8))
    np.savez(not_object, __meta__=np.frombuffer(b"[1, 2]", dtype=np.uint8))
    files = {
        "truncated": b"PK\x03\x04truncated",
        "empty": b"",
        "npy": npy.getvalue(),
        "no metadata": _npz(w=np.zeros(2)),
        "meta not JSON": not_json.getvalue(),
        "meta not an object": not_object.getvalue(),
    }
    ids = {}
    for i, (what, data) in enumerate(files.items()):
        ids[what] = f"{i:024x}"
        (root / f"{ids[what]}.npz").write_bytes(data)
    return ids


def _npz(**arrays):
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_damaged_model_files_concern_only_their_own_model(tmp_path, host_df, caplog):
    """A truncated, empty or foreign file in state_dir/models does not stop the server
    from starting, nor other models from being saved (retention lists every model), nor
    listing: it is skipped with one warning for the operator and left in place. Asking
    for that model is a JSON 409 saying what to do."""
    cfg = write_host(tmp_path, host_df, models={"max_models": 2})
    damaged = _damaged_model_files(tmp_path / "insurer" / "state" / "models")
    with caplog.at_level("WARNING", logger="party_server"):
        app = create_app(cfg)  # retention at start reads every file
    store, c = app.extensions["fedsk"].models, app.test_client()
    for mid in damaged.values():
        assert sum(f"{mid}.npz cannot be read" in r.message for r in caplog.records) == 1
    ids = []
    for i in range(3):  # retention runs at every new model: still once per file in the log
        ids.append(store.create("bank", "t"))
        store.save(ids[-1], "bank", {"i": i}, {"w": np.zeros(2)})
    assert [m["model_id"] for m in store.list("bank")] == ids[1:]
    assert all((store.root / f"{mid}.npz").exists() for mid in damaged.values())
    assert len(caplog.records) == len(damaged)
    for what, mid in damaged.items():
        for r in (
            c.get(f"/v1/models/{mid}", headers=AUTH),
            c.delete(f"/v1/models/{mid}", headers={**AUTH, **rid()}),
        ):
            err = error_of(r)
            assert r.status_code == 409 and err["code"] == "model_damaged", (what, err)
            assert f"model {mid} is damaged on disk" in err["message"]
            assert "restore it from a backup, or you fit it again" in err["message"]
        with pytest.raises(StorageError, match="damaged on disk"):  # nor overwritten
            store.save(mid, "bank", {}, {"w": np.zeros(2)})
    assert c.get(f"/v1/models/{ids[-1]}", headers=AUTH).status_code == 200
    assert c.get("/v1/health").status_code == 200


def test_csv_rows_ending_in_commas_keep_the_configured_id_column(tmp_path, host_df):
    """Spreadsheet exports end rows in commas: pandas would then take the first column
    as the index, and the first *feature* would become the sample IDs."""
    cfg = write_host(tmp_path, host_df)
    path = tmp_path / "insurer" / "customers.csv"
    lines = path.read_text().splitlines()
    path.write_text(
        "\n".join([lines[0] + ","] + [line + "," for line in lines[1:30]] + lines[30:]) + "\n"
    )
    ds = create_app(cfg).extensions["fedsk"].datasets["customers"]
    assert ds.ids.tolist() == host_df.index.tolist()
    assert ds.feature_names == list(host_df.columns)
    np.testing.assert_array_equal(ds.X, host_df.to_numpy())


@pytest.mark.parametrize("row", [3, 40])
def test_a_csv_row_with_more_fields_than_the_header_is_a_one_line_error(tmp_path, host_df, row):
    """What a row holds beyond the header would be dropped (or shift the columns)."""
    cfg = write_host(tmp_path, host_df)
    path = tmp_path / "insurer" / "customers.csv"
    lines = path.read_text().splitlines()
    lines = [line + "," for line in lines]  # trailing commas everywhere: fine
    lines[row - 1] += "17.5"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as err:
        create_app(cfg)
    assert str(err.value) == (
        f"config key 'datasets.customers.path': line {row} of customers.csv has 5 fields but "
        "the header names 4 columns; fix that row or name the extra column in the header"
    )


def test_the_operator_lists_and_deletes_models_with_the_cli(tmp_path, host_df, capsys):
    import pandas as pd

    from fedsk import SecureBoostClassifier
    from fedsk.exceptions import ProtocolError
    from fedsk.federation import InProcessFederation

    cfg = write_host(tmp_path, host_df)
    cfg_path = tmp_path / "host.toml"
    _write_toml(cfg_path, cfg)
    app = create_app(cfg)
    fed = InProcessFederation({"insurer": (app, "customers", TOKEN)})
    guest = pd.DataFrame({"g": np.arange(len(host_df), dtype=float)}, index=host_df.index)
    y = (host_df.age > 0).astype(int)
    clf = SecureBoostClassifier(federation=fed, n_estimators=1, key_length=1024).fit(guest, y)
    (mid,) = clf._host_model_ids
    clf.predict(guest)
    log = tmp_path / "insurer" / "state" / "audit.log"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    uses = [r["endpoint"] for r in records if r.get("model") == mid]  # which file is whose
    assert {"secureboost.setup", "secureboost.decisions"} <= set(uses), uses
    (tmp_path / "insurer" / "state" / "models" / f"{'0' * 24}.npz").write_bytes(b"cut")
    capsys.readouterr()
    assert cli_main(["models", "list", "--config", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert "2 model file(s)" in out
    line = next(row for row in out.splitlines() if row.startswith(mid))
    assert line.split()[1:4] == ["bank", "secureboost", "customers"] and line.endswith("ok")
    assert f"{'0' * 24} " in out and "damaged (ValueError)" in out
    # deleting works while the server runs: the peer is told the model is gone
    assert cli_main(["models", "delete", mid, "--config", str(cfg_path)]) == 0
    assert f"deleted model {mid}" in capsys.readouterr().out
    with pytest.raises(ProtocolError, match="404"):
        clf.predict(guest)
    for bad, what in ((mid, "there is no model"), ("../audit", "is not a model ID")):
        assert cli_main(["models", "delete", bad, "--config", str(cfg_path)]) == 1
        assert what in capsys.readouterr().err
    assert (tmp_path / "insurer" / "state" / "audit.log").exists()


def test_the_guest_is_warned_when_retention_removes_its_models(tmp_path, host_df):
    """A fit past ``max_models`` pushes the peer's oldest model out: the fit that did it
    warns, so a user holding the older estimator knows before predicting with it."""
    import warnings

    from fedsk import FederatedLogisticRegression, SecureBoostClassifier
    from fedsk.exceptions import ProtocolError
    from fedsk.federation import InProcessFederation

    app = create_app(write_host(tmp_path, host_df, models={"max_models": 2}))
    fed = InProcessFederation({"insurer": (app, "customers", TOKEN)})
    guest = pd.DataFrame({"x": np.arange(60.0)}, index=host_df.index)
    y = (host_df["age"] > 0).astype(int)
    sb = dict(federation=fed, key_length=1024, n_estimators=1, max_depth=2)
    first = SecureBoostClassifier(**sb).fit(guest, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning while within max_models
        SecureBoostClassifier(**sb).fit(guest, y)
    said = r"insurer removed 1 of your older models to keep at most 2 per peer"
    with pytest.warns(UserWarning, match=said):
        FederatedLogisticRegression(federation=fed, key_length=1024).fit(guest, y)
    with pytest.raises(ProtocolError, match="no longer holds"):
        first.predict_proba(guest)


@pytest.mark.parametrize("value", ["yes", "1", "%00"])
def test_a_session_delete_with_a_bad_discard_query_is_a_json_400(client, value):
    sid = open_session(client)["session_id"]
    r = client.delete(f"/v1/sessions/{sid}?discard_models={value}", headers={**AUTH, **rid(1)})
    assert r.status_code == 400 and "discard_models" in error_of(r)["message"]
    r = client.delete(f"/v1/sessions/{sid}?discard_models=true", headers={**AUTH, **rid(2)})
    assert r.status_code == 200  # the session was still open; it made no model
    assert message_from_wire(r.data).meta == {"closed": True, "discarded": []}


def test_a_model_whose_fit_never_closed_its_session_is_listed_unfinished(
    tmp_path, host_df, capsys, monkeypatch
):
    """QA: a guest killed mid-fit (it never closes its session) left a partial model that
    ``models list`` showed like any other; a fit that ends marks its models finished."""
    from fedsk import SecureBoostClassifier
    from fedsk.federation import InProcessFederation
    from fedsk.federation._federation import HostClient

    cfg = write_host(tmp_path, host_df)
    cfg_path = tmp_path / "host.toml"
    _write_toml(cfg_path, cfg)
    fed = InProcessFederation({"insurer": (create_app(cfg), "customers", TOKEN)})
    guest = pd.DataFrame({"g": np.arange(len(host_df), dtype=float)}, index=host_df.index)
    y = (host_df.age > 0).astype(int)
    params = dict(federation=fed, key_length=1024, max_depth=2, warm_start=True)
    clf = SecureBoostClassifier(n_estimators=2, **params)
    real = SecureBoostClassifier._record_scores
    rounds = []

    def killed_in_round_two(self, *a, **kw):
        real(self, *a, **kw)
        rounds.append(1)
        if len(rounds) == 3:  # (the scores before the first round, then one per round)
            raise KeyboardInterrupt  # the guest stops after round 2's scores ...

    monkeypatch.setattr(SecureBoostClassifier, "_record_scores", killed_in_round_two)
    monkeypatch.setattr(HostClient, "close_session", lambda *a, **kw: None)  # ... and dies
    with pytest.raises(KeyboardInterrupt):
        clf.fit(guest, y)
    monkeypatch.undo()
    (mid,) = clf._host_model_ids

    def state_of(model_id):
        capsys.readouterr()
        assert cli_main(["models", "list", "--config", str(cfg_path)]) == 0
        out = capsys.readouterr().out
        line = next(row for row in out.splitlines() if row.startswith(model_id))
        return line.split()[-1], out

    state, out = state_of(mid)
    assert state == "unfinished"
    assert "unfinished: saved by a fit whose session has not closed" in out
    # a fit that ends (here: warm start, one more round) closes its session: finished
    clf.set_params(n_estimators=3).fit(guest, y)
    assert clf._host_model_ids == [mid]
    state, out = state_of(mid)
    assert state == "ok" and "unfinished" not in out
    clf.predict_proba(guest)
