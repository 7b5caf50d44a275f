"""What the operator of a party server meets: its config, its state directory, its CLI.

Every mistake in the config or the environment is one line saying what to do, with exit
code 2 for a config or usage problem (3: `audit verify`, `audit show` and `models list`
cannot read the state directory); never a traceback.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from party_server import ConfigError, create_app
from party_server._audit import head_path, verify
from party_server._cli import main as cli_main
from party_server._config import config_from_dict

from ._servers import PartyServer, write_toml
from .conftest import TOKEN, write_host
from .test_party_server import open_session, post

ROOT = Path(__file__).resolve().parents[1]
OTHER = "previous-token-0123456789"


def _modes_bind():
    """Whether file modes stop this process (not root's, unless it runs without
    CAP_DAC_OVERRIDE: `setpriv --inh-caps=-dac_override,-dac_read_search
    --bounding-set=-dac_override,-dac_read_search pytest ...` runs these tests as root)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe"
        probe.write_text("x")
        probe.chmod(0)
        try:
            probe.read_text()
        except PermissionError:
            return True
        return False


as_root = not _modes_bind()  # (modes do not apply: root with its usual capabilities)


def _config(tmp_path, host_df, **extra):
    cfg = write_host(tmp_path, host_df, **extra)
    path = tmp_path / "host.toml"
    write_toml(path, cfg)
    return cfg, path


def _one_line(capsys, *needles):
    """stderr of the last command: one line starting 'party-server: ', holding needles."""
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("party-server: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def _run(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "party_server", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


# -- 1. token_env ----------------------------------------------------------------------------


def test_a_token_from_the_environment_is_stripped_as_a_token_file_is(tmp_path, host_df):
    """`export T=$(cat file)` keeps the \r of a file with Windows line endings, a paste
    may carry spaces or a newline: the token must still match."""
    cfg = write_host(tmp_path, host_df)
    cfg["peers"]["bank"] = {
        "token_env": "T",
        "previous_token_env": "P",
        "previous_expires": "2099-01-01",
    }
    environ = {"T": f"{TOKEN}\n", "P": f"  {OTHER}\r\n"}
    peer = config_from_dict(cfg, environ=environ).peers["bank"]
    assert peer.token == TOKEN and peer.previous_token == OTHER
    app = create_app(config_from_dict(cfg, environ=environ))
    assert open_session(app.test_client())["session_id"]  # the peer's token is accepted
    for value in ("", " \n"):  # set but empty once stripped: named as such
        with pytest.raises(ConfigError, match=r"peers\.bank\.token_env.*variable T is empty"):
            config_from_dict(cfg, environ={**environ, "T": value})
    with pytest.raises(ConfigError, match=r"previous_token_env.*variable P is not set"):
        config_from_dict(cfg, environ={"T": TOKEN})


# -- 2. models list, audit show into a pipe --------------------------------------------------


def test_models_list_that_cannot_read_the_store_says_so(tmp_path, host_df, capsys):
    cfg, path = _config(tmp_path, host_df)
    list_ = ["models", "list", "--config", str(path)]
    # a state_dir that does not exist (a typo, or the server never ran): not "0 models"
    assert cli_main(list_) == 2
    _one_line(capsys, "config key 'state_dir'", cfg["state_dir"], "does not exist")
    assert cli_main(["audit", "show", "--config", str(path)]) == 2
    _one_line(capsys, "does not exist")
    state = Path(cfg["state_dir"])
    state.mkdir()
    assert cli_main(list_) == 1
    _one_line(capsys, f"there is no model store {state / 'models'}")
    # a store that cannot be listed: a file in its place (as root, the way to provoke it)
    (state / "models").write_text("")
    assert cli_main(list_) == 3
    _one_line(capsys, f"cannot list the model store {state / 'models'}", "move it out of the way")
    # models delete says the same (it said '...npz: Not a directory', exit 1)
    assert cli_main(["models", "delete", "0" * 24, "--config", str(path)]) == 3
    _one_line(capsys, f"cannot list the model store {state / 'models'}", "move it out of the way")


@pytest.mark.skipif(as_root, reason="file modes do not bind this process (root)")
def test_models_list_of_an_unreadable_store_says_so(tmp_path, host_df, capsys):
    cfg, path = _config(tmp_path, host_df)
    create_app(cfg)
    models = Path(cfg["state_dir"]) / "models"
    models.chmod(0)
    try:
        assert cli_main(["models", "list", "--config", str(path)]) == 3
        _one_line(capsys, str(models), "fix its owner or permissions")
    finally:
        models.chmod(0o700)


def test_models_list_into_a_reader_that_stops_early_is_no_error(tmp_path, host_df):
    """`party-server models list | head -1`: no BrokenPipeError traceback, exit 0."""
    cfg, path = _config(tmp_path, host_df)
    create_app(cfg)
    models = Path(cfg["state_dir"]) / "models"
    for i in range(2000):  # ~200 kB of listing: more than a pipe holds
        (models / f"{i:024x}.npz").write_bytes(b"cut")
    for command in (["models", "list"],):  # (audit show: test_party_server.py)
        proc = subprocess.Popen(
            [sys.executable, "-m", "party_server", *command, "--config", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        first = proc.stdout.readline()
        proc.stdout.close()  # as head does after its line
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 0 and first, err
        assert b"Traceback" not in err and b"Exception ignored" not in err, err


# -- 3. TLS under gunicorn -------------------------------------------------------------------


def test_tls_certificate_and_key_are_checked_together(tmp_path):
    pytest.importorskip("gunicorn")
    from party_server.gunicorn_config import tls_problem

    from .test_party_server import _self_signed

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    crt, key = _self_signed(tmp_path / "a")
    _, other_key = _self_signed(tmp_path / "b")
    assert tls_problem(None, None) is None and tls_problem(crt, key) is None
    assert "does not belong to the certificate" in tls_problem(crt, other_key)
    assert "cannot read the TLS private key" in tls_problem(crt, tmp_path / "no.key")
    assert "No such file" in tls_problem(crt, tmp_path / "no.key")
    assert "cannot read the TLS certificate" in tls_problem(tmp_path, key)  # a directory
    assert "holds no private key" in tls_problem(crt, None)
    assert "without --certfile would serve plain HTTP" in tls_problem(None, key)
    from cryptography.hazmat.primitives import serialization as ser

    encrypted = tmp_path / "encrypted.key"
    private = ser.load_pem_private_key(key.read_bytes(), None)
    encrypted.write_bytes(
        private.private_bytes(
            ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.BestAvailableEncryption(b"pw")
        )
    )
    assert "is encrypted with a password" in tls_problem(crt, encrypted)  # (no prompt)


@pytest.mark.integration
@pytest.mark.parametrize("which", ["another key", "no key file"])
def test_gunicorn_refuses_a_key_that_does_not_fit_in_one_line(tmp_path, host_df, which):
    pytest.importorskip("gunicorn")
    from ._servers import free_port
    from .test_party_server import _self_signed

    _, path = _config(tmp_path, host_df)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    crt, _ = _self_signed(tmp_path / "a")
    _, key = _self_signed(tmp_path / "b")
    if which == "no key file":
        key = tmp_path / "missing.key"
    proc = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "python:party_server.gunicorn_config"]
        + ["--certfile", str(crt), "--keyfile", str(key)]
        + ["--bind", f"127.0.0.1:{free_port()}", "party_server.wsgi:app"],
        env=dict(os.environ, FEDSK_PARTY_CONFIG=str(path)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "Booting worker" not in proc.stderr  # refused before serving
    expected = "does not belong to" if which == "another key" else "cannot read the TLS private"
    (line,) = [x for x in proc.stderr.splitlines() if "party_server.gunicorn_config" in x]
    assert expected in line and str(key) in line


# -- 4. the audit chain at start -------------------------------------------------------------


def _log_with_records(tmp_path, host_df, n=4):
    cfg, path = _config(tmp_path, host_df)
    c = create_app(cfg).test_client()
    sid = open_session(c)["session_id"]
    for i in range(n - 1):
        post(c, f"/v1/sessions/{sid}/intersection", _message(), i=i + 1)
    log = Path(cfg["state_dir"]) / "audit.log"
    assert verify(log) == (True, n, None)
    return cfg, path, log


def _message():
    from fedsk.federation import Message

    return Message()


def test_the_server_refuses_an_audit_log_edited_in_the_middle(tmp_path, host_df, capsys):
    """Only `audit verify` noticed before; now the start does too, naming the line."""
    cfg, path, log = _log_with_records(tmp_path, host_df)
    lines = log.read_bytes().splitlines(keepends=True)
    edited = lines[1].replace(b'"ct_in":0', b'"ct_in":7')
    assert edited != lines[1]
    log.write_bytes(b"".join([lines[0], edited, *lines[2:]]))
    assert cli_main(["--config", str(path)]) == 2
    _one_line(capsys, f"the audit log {log} is broken at line 2", "was modified", "audit verify")
    assert cli_main(["audit", "verify", "--config", str(path)]) == 1
    assert "record 2 (line 2) was modified" in capsys.readouterr().err
    # also where the head has no digest of the log yet (a head of an older fedsk)
    head = head_path(log)
    head.write_text(
        json.dumps({k: v for k, v in json.loads(head.read_text()).items() if k in ("seq", "hash")})
    )
    with pytest.raises(ConfigError, match="broken at line 2"):
        create_app(cfg)
    # moved aside as the message says, the server starts a new chain
    log.rename(tmp_path / "audit.log.evidence")
    head.rename(tmp_path / "audit.head.evidence")
    create_app(cfg)
    assert verify(log) == (True, 0, None)


def test_a_blank_line_breaks_the_chain_for_the_server_and_for_verify(tmp_path, host_df, capsys):
    cfg, path, log = _log_with_records(tmp_path, host_df)
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join([*lines[:2], b"\n", *lines[2:]]))
    ok, n, problem = verify(log)
    assert not ok and n == 2 and "(line 3) is not a valid record" in problem
    with pytest.raises(ConfigError, match=r"broken at line 3: record 3 \(line 3\) is not a valid"):
        create_app(cfg)


@pytest.mark.parametrize(
    "edit",
    [
        lambda line: line.replace(b'","', b'", "', 1),  # a space between two fields
        lambda line: line.replace(b"\n", b"\r\n"),  # another line ending
        lambda line: line.replace(b'"endpoint"', b'"\\u0065ndpoint"'),  # a key escaped
    ],
    ids=["space", "crlf", "escape"],
)
def test_a_record_reformatted_but_with_the_same_json_is_found(tmp_path, host_df, capsys, edit):
    """QA: spaces added inside a record kept its JSON (and its hash) and went unnoticed."""
    cfg, path, log = _log_with_records(tmp_path, host_df)
    lines = log.read_bytes().splitlines(keepends=True)
    edited = edit(lines[1])
    assert edited != lines[1] and json.loads(edited) == json.loads(lines[1])
    log.write_bytes(b"".join([lines[0], edited, *lines[2:]]))
    ok, n, problem = verify(log)
    assert not ok and n == 1
    assert "record 2 (line 2) was modified" in problem and "bytes" in problem
    assert cli_main(["audit", "verify", "--config", str(path)]) == 1
    assert "BROKEN after 1 good records" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="broken at line 2"):
        create_app(cfg)


def test_the_start_checks_every_record_after_the_heads_digest(tmp_path, host_df):
    """The head keeps the log's size and SHA-256: a start hashes that much (fast) and
    checks only later records one by one; the log the server wrote is accepted."""
    cfg, path, log = _log_with_records(tmp_path, host_df)
    head = json.loads(head_path(log).read_text())
    assert head["bytes"] == log.stat().st_size and len(head["sha256"]) == 64
    app = create_app(cfg)  # the same log, started again: accepted, and appended to
    open_session(app.test_client())
    assert verify(log) == (True, 5, None)
    # a crash between the append and the head's update: the head is one record behind
    before = json.loads(head_path(log).read_text())
    app = create_app(cfg)
    c = app.test_client()
    open_session(c)
    head_path(log).write_text(json.dumps(before))
    del app, c
    create_app(cfg)
    assert verify(log) == (True, 6, None)
    # ... but a record edited after the head's digest is found record by record
    lines = log.read_bytes().splitlines(keepends=True)
    head_path(log).write_text(json.dumps(before))
    log.write_bytes(b"".join([*lines[:-1], lines[-1].replace(b'"ct_in":0', b'"ct_in":7')]))
    with pytest.raises(ConfigError, match="broken at line 6"):
        create_app(cfg)


def _files(log):
    return log.read_bytes(), head_path(log).read_bytes()


def test_a_start_it_refuses_leaves_the_log_and_head_as_they_were(tmp_path, host_df):
    # the partial last line was dropped before the check: a refused start then deleted
    # the record the head names (evidence), and a log `verify` passed became broken
    cfg, path, log = _log_with_records(tmp_path, host_df)
    data, head = _files(log)
    for cut in (len(data) - 20, data.rindex(b"\n", 0, len(data) - 1) + 1):
        log.write_bytes(data[:cut])
        with pytest.raises(ConfigError, match="records were removed from its end"):
            create_app(cfg)
        assert _files(log) == (data[:cut], head)  # not a byte changed
    # the head missing: refused too (records removed from the end would be invisible)
    log.write_bytes(data[: data.rindex(b"\n", 0, len(data) - 1) + 1])
    head_path(log).unlink()
    with pytest.raises(ConfigError, match="has 3 records but no head file"):
        create_app(cfg)
    assert not head_path(log).exists() and log.read_bytes() == data[: log.stat().st_size]
    # the log missing while its head names records
    head_path(log).write_bytes(head)
    log.unlink()
    with pytest.raises(
        ConfigError, match=r"does not exist, but its head audit\.head says it had 4 "
    ):
        create_app(cfg)


def test_a_last_record_without_its_newline_is_kept_and_a_cut_one_dropped(tmp_path, host_df):
    cfg, path, log = _log_with_records(tmp_path, host_df)
    data, head = _files(log)
    log.write_bytes(data[:-1])  # every record whole, the last one's newline missing
    assert verify(log) == (True, 4, None)
    create_app(cfg)
    assert log.read_bytes().startswith(data) and verify(log)[0]  # (+ the start's records)
    # a crash in the middle of an append: a partial line after the record the head names
    cfg, path, log = _log_with_records(tmp_path / "crash", host_df)
    data, head = _files(log)
    log.write_bytes(data + data[data.rindex(b"\n", 0, len(data) - 1) + 1 :][:50])
    create_app(cfg)
    assert log.read_bytes().startswith(data) and verify(log)[0]


# -- 5. permissions and things in the way in state_dir ---------------------------------------


@pytest.mark.parametrize(
    "name, doing",
    [
        ("audit.log", "use the audit log file"),
        ("audit.head", "use the audit log file"),
        (".lock", "open the state directory's lock file"),
    ],
)
def test_a_directory_where_a_state_file_belongs_is_one_line(tmp_path, host_df, capsys, name, doing):
    """(As root, the way to make a file of state_dir unusable whatever its mode.)"""
    cfg, path = _config(tmp_path, host_df)
    create_app(cfg)
    target = Path(cfg["state_dir"]) / name
    target.unlink()
    target.mkdir()
    assert cli_main(["--config", str(path)]) == 2
    _one_line(capsys, f"cannot {doing} {target}", "it is a directory where a file belongs")
    if name == ".lock":
        assert cli_main(["reload", "--config", str(path)]) == 2
        _one_line(capsys, str(target), "is a directory")
    else:
        assert cli_main(["audit", "verify", "--config", str(path)]) == 3  # not 1: "broken"
        _one_line(capsys, f"cannot read {target}", "is a directory")
    if name == "audit.log":
        assert cli_main(["audit", "show", "--config", str(path)]) == 3
        _one_line(capsys, f"cannot read {target}", "is a directory")


def test_a_file_where_the_model_store_belongs_is_one_line(tmp_path, host_df, capsys):
    cfg, path = _config(tmp_path, host_df)
    state = Path(cfg["state_dir"])
    state.mkdir()
    (state / "models").write_text("")
    assert cli_main(["--config", str(path)]) == 2
    _one_line(capsys, f"cannot use the model store {state / 'models'}", "a file is where")


def test_a_state_dir_that_is_a_dangling_link_says_so(tmp_path, host_df, capsys):
    cfg, path = _config(tmp_path, host_df)
    state = Path(cfg["state_dir"])
    state.symlink_to(tmp_path / "unmounted" / "state")
    assert cli_main(["--config", str(path)]) == 2
    _one_line(capsys, str(state), "a symbolic link to", "which does not exist")


@pytest.mark.skipif(as_root, reason="file modes do not bind this process (root)")
@pytest.mark.parametrize("name", ["audit.log", "audit.head", ".lock", "models"])
def test_state_files_without_permission_are_one_line(tmp_path, host_df, capsys, name):
    cfg, path = _config(tmp_path, host_df)
    create_app(cfg)
    target = Path(cfg["state_dir"]) / name
    target.chmod(0)
    try:
        assert cli_main(["--config", str(path)]) == 2
        _one_line(capsys, str(target), "fix its owner or permissions")
        if name.startswith("audit"):
            assert cli_main(["audit", "verify", "--config", str(path)]) == 3
            _one_line(capsys, str(target), "fix its owner or permissions")
    finally:
        target.chmod(0o700)


# -- 6, 7. reload, stop, the command line ----------------------------------------------------


def test_reload_is_in_the_log_at_the_default_level(tmp_path, host_df, caplog):
    import logging

    app = create_app(write_host(tmp_path, host_df))
    write_toml(tmp_path / "host.toml", write_host(tmp_path, host_df))
    app.extensions["fedsk"].config.source = tmp_path / "host.toml"
    with caplog.at_level(logging.WARNING, logger="party_server"):  # (no --verbose)
        assert app.extensions["fedsk"].reload_peers()
    assert any("reload: serving 1 peer(s)" in r.getMessage() for r in caplog.records)


@pytest.mark.integration
def test_a_real_server_logs_its_reload_and_its_stop(tmp_path, host_df):
    server = PartyServer(tmp_path, host_df)
    with server:
        done = _run("reload", "--config", server.config_path)
        assert done.returncode == 0, done.stderr
        pid = server.pid
    assert server.proc.returncode == 0
    log = server.log()
    assert "reload: serving 1 peer(s)" in log, log  # without --verbose
    assert log.rstrip().endswith("party-server: insurer stopped"), log
    assert "Traceback" not in log and pid


def test_the_config_option_may_come_before_the_subcommand(tmp_path, host_df, capsys):
    cfg, path, _ = _log_with_records(tmp_path, host_df, n=1)
    assert cli_main(["audit", "--config", str(path), "verify"]) == 0
    assert "1 records, chain intact" in capsys.readouterr().out
    assert cli_main(["models", "--config", str(path), "list"]) == 0
    assert "0 model file(s)" in capsys.readouterr().out


def test_reload_checks_state_dir_as_the_server_would(tmp_path, host_df, capsys):
    cfg, path = _config(tmp_path, host_df, state_dir=str(tmp_path / "no" / "such" / "state"))
    assert cli_main(["reload", "--config", str(path)]) == 2
    _one_line(capsys, "config key 'state_dir'", str(tmp_path / "no" / "such"), "does not exist")
    assert cli_main(["--config", str(path)]) == 2  # the server says the same
    _one_line(capsys, "config key 'state_dir'", str(tmp_path / "no" / "such"), "does not exist")


def test_a_state_dir_on_a_network_file_system_is_warned_about(
    tmp_path, host_df, caplog, monkeypatch
):
    """QA: the state_dir lock is a flock, which may not hold across machines on NFS."""
    import logging

    from party_server._storage import StateDirLock

    share = tmp_path / "my share" / "state"
    share.mkdir(parents=True)
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/vda / ext4 rw 0 0\n"
        f"server:/export {str(tmp_path / 'my share').replace(' ', chr(92) + '040')} nfs4 rw 0 0\n"
    )
    assert StateDirLock.network_file_system(share, mounts) == "nfs4"
    assert StateDirLock.network_file_system(tmp_path, mounts) is None
    assert StateDirLock.network_file_system(tmp_path / "my", mounts) is None  # (a prefix)
    assert StateDirLock.network_file_system(share, tmp_path / "no such file") is None
    cfg, _ = _config(tmp_path, host_df)
    with caplog.at_level(logging.WARNING, logger="party_server"):
        create_app(cfg)
    assert not [r for r in caplog.records if "network file system" in r.getMessage()]
    real = StateDirLock.network_file_system
    cfg, _ = _config(tmp_path / "other", host_df)
    monkeypatch.setattr(
        StateDirLock, "network_file_system", classmethod(lambda cls, d: real(share, mounts))
    )
    with caplog.at_level(logging.WARNING, logger="party_server"):
        create_app(cfg)
    (said,) = [r.getMessage() for r in caplog.records if "network file system" in r.getMessage()]
    assert "(nfs4)" in said and "one server per state_dir" in said
