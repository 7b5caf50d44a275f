"""Peer tokens: expiry, a previous token during a rotation, and reloading [peers] live."""

import datetime as dt
import logging
import subprocess
import sys
import time
import warnings

import pytest
import requests

from fedsk import SecureBoostClassifier
from fedsk.exceptions import AuthenticationError
from fedsk.federation import InProcessFederation, Message
from fedsk.federation._transport import InProcessTransport
from party_server import ConfigError, create_app
from party_server._config import config_from_dict, load_config
from party_server._storage import running_server_pid

from ._servers import PartyServer, gunicorn_server, write_toml
from .conftest import TOKEN, write_host
from .test_party_server import error_of, post

NEW = "rotated-token-0123456789abcdef"
OTHER = "second-bank-token-0123456789"
UTC = dt.timezone.utc


def _now():
    return dt.datetime.now(UTC)


def _peer(tmp_path, host_df, **bank):
    cfg = write_host(tmp_path, host_df)
    cfg["peers"]["bank"].update(bank)
    return cfg


def _session(client, token, i=0):
    return post(
        client,
        "/v1/sessions",
        Message({"dataset": "customers", "protocol": "t"}),
        headers={"Authorization": f"Bearer {token}"},
        i=i,
    )


# -- config ------------------------------------------------------------------------------


def test_expiry_accepts_dates_and_offset_times(tmp_path, host_df):
    day = dt.date(2031, 5, 17)
    peer = config_from_dict(_peer(tmp_path, host_df, expires=day)).peers["bank"]
    assert peer.expires == dt.datetime(2031, 5, 17, tzinfo=UTC)
    moment = dt.datetime(2031, 5, 17, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    peer = config_from_dict(_peer(tmp_path, host_df, expires=moment)).peers["bank"]
    assert peer.expires == dt.datetime(2031, 5, 17, 7, 30, tzinfo=UTC)
    # written quoted, as many do
    peer = config_from_dict(_peer(tmp_path, host_df, expires="2031-05-17")).peers["bank"]
    assert peer.expires == dt.datetime(2031, 5, 17, tzinfo=UTC)
    # a file as an operator writes it: a TOML date, unquoted
    path = tmp_path / "host.toml"
    write_toml(path, _peer(tmp_path, host_df, expires=day))
    assert "expires = 2031-05-17\n" in path.read_text()
    assert load_config(path).peers["bank"].expires == dt.datetime(2031, 5, 17, tzinfo=UTC)


@pytest.mark.parametrize(
    "bank, key, words",
    [
        ({"expires": dt.datetime(2031, 5, 17, 9, 30)}, "peers.bank.expires", "time zone"),
        ({"expires": "next friday"}, "peers.bank.expires", "must be a date"),
        ({"expires": 20310517}, "peers.bank.expires", "must be a date"),
        ({"previous_token": "old-token-0123456789"}, "peers.bank.previous_expires", "required"),
        ({"previous_expires": dt.date(2031, 1, 1)}, "peers.bank.previous_expires", "needs"),
        (
            {"previous_token": TOKEN, "previous_expires": dt.date(2031, 1, 1)},
            "peers.bank.previous_token",
            "same as",
        ),
        (
            {"previous_token": "short", "previous_expires": dt.date(2031, 1, 1)},
            "peers.bank.previous_token",
            "16 characters",
        ),
        (
            {"previous_token_env": "FEDSK_TEST_UNSET_VAR", "previous_expires": dt.date(2031, 1, 1)},
            "peers.bank.previous_token_env",
            "not set",
        ),
        ({"expiry": dt.date(2031, 1, 1)}, "peers.bank.expiry", "not a known peer setting"),
    ],
)
def test_bad_token_settings_name_the_key(tmp_path, host_df, bank, key, words):
    with pytest.raises(ConfigError, match=words) as info:
        config_from_dict(_peer(tmp_path, host_df, **bank))
    assert repr(key) in str(info.value)


def test_token_files_are_read_relative_to_the_config(tmp_path, host_df):
    (tmp_path / "bank.token").write_text(NEW + "\n")
    cfg = write_host(tmp_path, host_df)
    cfg["peers"]["bank"] = {"token_file": "bank.token"}
    path = tmp_path / "host.toml"
    write_toml(path, cfg)
    assert load_config(path).peers["bank"].token == NEW
    cfg["peers"]["bank"] = {"token_file": "missing.token"}
    write_toml(path, cfg)
    with pytest.raises(ConfigError, match=r"'peers.bank.token_file': cannot read .*missing.token"):
        load_config(path)
    cfg["peers"]["bank"] = {"token_file": "bank.token", "token": NEW}
    write_toml(path, cfg)
    with pytest.raises(ConfigError, match="exactly one of 'token', 'token_env' or 'token_file'"):
        load_config(path)
    # an empty file, or one too short, names the key that points at it
    for text, words in (
        ("\n", r"file .*bank.token is empty"),
        ("short\n", "must be at least 16 characters"),
    ):
        (tmp_path / "bank.token").write_text(text)
        cfg["peers"]["bank"] = {"token_file": "bank.token"}
        write_toml(path, cfg)
        with pytest.raises(ConfigError, match=rf"'peers.bank.token_file': {words}"):
            load_config(path)


def test_a_previous_token_may_not_be_another_peers_token(tmp_path, host_df):
    cfg = _peer(tmp_path, host_df, previous_token=NEW, previous_expires=dt.date(2031, 1, 1))
    cfg["peers"]["telco"] = {"token": NEW}
    with pytest.raises(ConfigError, match="share a token"):
        config_from_dict(cfg)


# -- the server ------------------------------------------------------------------------------


def test_an_expired_token_is_refused_in_json_and_the_server_goes_on(tmp_path, host_df, caplog):
    past = _now() - dt.timedelta(minutes=1)
    cfg = _peer(tmp_path, host_df, expires=past)
    cfg["peers"]["telco"] = {"token": NEW}
    with caplog.at_level(logging.WARNING, logger="party_server"):
        c = create_app(cfg).test_client()
    assert any("peer bank: its token expired" in r.getMessage() for r in caplog.records)
    r = _session(c, TOKEN)
    assert r.status_code == 401
    err = error_of(r)
    assert err["code"] == "token_expired"
    assert past.strftime("%Y-%m-%d %H:%M UTC") in err["message"] and "insurer" in err["message"]
    assert TOKEN not in r.get_data(as_text=True)
    # the other peer is served, and so would bank be with a valid token
    assert _session(c, NEW, i=1).status_code == 200
    assert c.get("/v1/health").status_code == 200


def test_during_a_rotation_both_tokens_serve_one_peer_until_the_old_expires(tmp_path, host_df):
    later = _now() + dt.timedelta(days=30)
    cfg = _peer(tmp_path, host_df, previous_token=NEW, previous_expires=later)
    c = create_app(cfg).test_client()
    r = _session(c, NEW)
    sid = message_of(r)["session_id"]
    # the answer to the old token says when it stops working
    assert r.headers["Fedsk-Token-Expires"] == later.strftime("%Y-%m-%dT%H:%M:%SZ")
    # the session opened with the old token goes on with the new one: both are bank's
    r = c.delete(
        f"/v1/sessions/{sid}",
        headers={"Authorization": f"Bearer {TOKEN}", "Fedsk-Request-Id": "req-delete-1"},
    )
    assert r.status_code == 200, r.data
    assert "Fedsk-Token-Expires" not in r.headers  # (a token without expiry)
    # once the old token's expiry passes, it is refused
    app = create_app(
        _peer(tmp_path, host_df, previous_token=NEW, previous_expires=_now() - dt.timedelta(1))
    )
    assert error_of(_session(app.test_client(), NEW, i=5))["code"] == "token_expired"
    assert _session(app.test_client(), TOKEN, i=6).status_code == 200


def message_of(resp):
    from fedsk.federation import message_from_wire

    assert resp.status_code == 200, resp.data
    return message_from_wire(resp.data).meta


def test_the_guest_is_warned_ahead_and_told_what_to_do_when_expired(tmp_path, host_df):
    soon = _now() + dt.timedelta(days=3)
    app = create_app(_peer(tmp_path / "soon", host_df, expires=soon))
    transport = InProcessTransport("insurer", app, TOKEN)
    with pytest.warns(
        UserWarning, match=r"token for insurer expires at .* \(in (2\.9|3\.0) days\)"
    ):
        transport.request("POST", "/v1/sessions", Message({"dataset": "customers"}))
    app = create_app(_peer(tmp_path / "gone", host_df, expires=_now() - dt.timedelta(days=1)))
    fed = InProcessFederation({"insurer": (app, "customers", TOKEN)})
    X = host_df.iloc[:, :1]
    y = (host_df.iloc[:, 1] > 0).astype(int)
    with (
        warnings.catch_warnings(),  # (no "expires in 0 days" warning besides the error)
        pytest.raises(AuthenticationError, match="has expired: ask its operator for a new one"),
    ):
        warnings.simplefilter("error")
        SecureBoostClassifier(federation=fed, key_length=1024, n_estimators=1).fit(X, y)


def test_reload_rotates_tokens_without_ending_sessions(tmp_path, host_df, caplog):
    path = tmp_path / "host.toml"
    write_toml(path, write_host(tmp_path, host_df))
    app = create_app(path)
    c = app.test_client()
    sid = message_of(_session(c, TOKEN))["session_id"]
    # step 1: the new token is added, the old one kept for a week
    week = _now() + dt.timedelta(days=7)
    cfg = write_host(tmp_path, host_df)
    cfg["peers"]["bank"] = {"token": NEW, "previous_token": TOKEN, "previous_expires": week}
    write_toml(path, cfg)
    assert app.extensions["fedsk"].reload_peers()
    assert _session(c, TOKEN, i=1).status_code == 200
    assert _session(c, NEW, i=2).status_code == 200
    # step 2: the old token is dropped; the session opened with it goes on
    cfg["peers"]["bank"] = {"token": NEW}
    write_toml(path, cfg)
    assert app.extensions["fedsk"].reload_peers()
    assert error_of(_session(c, TOKEN, i=3))["code"] == "unauthorized"
    r = c.delete(
        f"/v1/sessions/{sid}",
        headers={"Authorization": f"Bearer {NEW}", "Fedsk-Request-Id": "req-delete-2"},
    )
    assert r.status_code == 200, r.data
    # a broken config changes nothing, and says why in the log
    path.write_text(path.read_text().replace(f'token = "{NEW}"', 'token = "short"'))
    with caplog.at_level(logging.ERROR, logger="party_server"):
        assert not app.extensions["fedsk"].reload_peers()
    assert any("peers.bank.token" in r.getMessage() for r in caplog.records)
    assert _session(c, NEW, i=4).status_code == 200
    # settings other than [peers] are not applied live: the log says a restart does it
    write_toml(
        path, {**cfg, "session_ttl": 5.0, "bind": "127.0.0.1:9", "models": {"max_models": 3}}
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="party_server"):
        assert app.extensions["fedsk"].reload_peers()
    # (named as in the config file: 'bind', not the port or host it holds)
    restart = "bind, models.max_models, session_ttl changed; that takes a restart"
    assert any(restart in r.getMessage() for r in caplog.records), caplog.text
    assert app.extensions["fedsk"].sessions.ttl != 5.0


@pytest.mark.integration
def test_party_server_reload_on_a_running_server(tmp_path, host_df):
    """`party-server reload` signals the real process; a removed peer is refused at once."""
    with PartyServer(tmp_path, host_df) as server:
        url = server.url + "/v1/sessions"
        body = b"x"  # (authentication comes first: any body shows which token is known)

        def status(token):
            headers = {"Authorization": f"Bearer {token}", "Fedsk-Request-Id": "req-reload-1"}
            return requests.post(url, data=body, headers=headers, timeout=10).status_code

        assert status(TOKEN) != 401 and status(NEW) == 401
        cfg = dict(server.cfg)
        cfg["peers"] = {"bank": {"token": NEW}}
        write_toml(server.config_path, cfg)
        cli = [sys.executable, "-m", "party_server", "reload", "--config", str(server.config_path)]
        done = subprocess.run(cli, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"process {server.pid}" in done.stdout
        deadline = time.monotonic() + 10
        while status(NEW) == 401:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        assert status(TOKEN) == 401
        assert server.proc.poll() is None  # the same process serves on
        # a config with a mistake is named at once, and not sent
        server.config_path.write_text(server.config_path.read_text().replace(NEW, "short"))
        done = subprocess.run(cli, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "peers.bank.token" in done.stderr
        assert status(NEW) != 401
        # a copy of the config (same state_dir) is not what the server rereads: refused
        copy = server.config_path.with_name("host.new.toml")
        write_toml(copy, dict(cfg, peers={"bank": {"token": NEW}, "bank2": {"token": OTHER}}))
        done = subprocess.run([*cli[:-1], str(copy)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stdout
        assert f"was started from {server.config_path.resolve()}; it rereads that file" in (
            done.stderr
        )
        assert status(OTHER) == 401 and not done.stdout
    # no server running: said so. The command's shell need not hold the server's
    # token_env variables (the server reads its own environment)
    cfg["peers"] = {"bank": {"token_env": "FEDSK_TEST_VARIABLE_OF_THE_SERVER"}}
    write_toml(server.config_path, cfg)
    done = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "no party server is running" in done.stderr


@pytest.mark.integration
def test_party_server_reload_under_gunicorn_keeps_the_worker(tmp_path, host_df):
    """Under gunicorn the lock holder is the worker: it rereads [peers] instead of exiting."""
    pytest.importorskip("gunicorn")
    from .test_party_server import _self_signed

    path = tmp_path / "host.toml"
    cfg = write_host(tmp_path, host_df)
    write_toml(path, cfg)
    crt, key = _self_signed(tmp_path)
    with gunicorn_server(tmp_path, path, crt, key) as (url, _, proc):

        def status(token):
            headers = {"Authorization": f"Bearer {token}", "Fedsk-Request-Id": "req-reload-2"}
            r = requests.post(url + "/v1/sessions", data=b"x", headers=headers, verify=str(crt))
            return r.status_code

        worker = running_server_pid(cfg["state_dir"])
        assert worker is not None and worker != proc.pid
        cfg["peers"] = {"bank": {"token": NEW}}
        write_toml(path, cfg)
        cli = [sys.executable, "-m", "party_server", "reload", "--config", str(path)]
        done = subprocess.run(cli, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 10
        while status(NEW) == 401:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert status(TOKEN) == 401
        assert running_server_pid(cfg["state_dir"]) == worker  # the same worker serves on
        # gunicorn's log shows the reload as deploy.md does (logger and level included)
        assert (
            " party_server WARNING reload: serving 1 peer(s) from "
            in (tmp_path / "gunicorn.log").read_text()
        )


@pytest.mark.integration
def test_a_reload_while_the_server_loads_its_data_is_held_not_fatal(tmp_path):
    """The lock (which `reload` finds the pid in) is taken before the datasets load."""
    import os
    import signal

    import numpy as np
    import pandas as pd

    n = 300_000  # (loading takes about a second: the window the signal falls in)
    big = pd.DataFrame(
        np.random.default_rng(0).normal(size=(n, 3)),
        index=[f"c{i}" for i in range(n)],
        columns=["a", "b", "c"],
    )
    server = PartyServer(tmp_path, big)
    server.start(wait=False)
    try:
        deadline = time.monotonic() + 60
        while running_server_pid(server.state_dir) != server.pid:
            assert server.proc.poll() is None and time.monotonic() < deadline, server.log()
            time.sleep(0.01)
        cfg = dict(server.cfg, peers={"bank": {"token": NEW}})
        write_toml(server.config_path, cfg)
        os.kill(server.pid, signal.SIGHUP)
        server.wait_healthy()
        assert server.proc.poll() is None, server.log()
        headers = {"Authorization": f"Bearer {NEW}", "Fedsk-Request-Id": "req-reload-3"}
        r = requests.post(server.url + "/v1/sessions", data=b"x", headers=headers, timeout=10)
        assert r.status_code != 401  # the held-back reload was done once the server served
    finally:
        server.stop()
