"""WSGI entry point for production servers.

    FEDSK_PARTY_CONFIG=/etc/fedsk/host.toml \\
        gunicorn -c python:party_server.gunicorn_config --certfile cert.pem \\
                 --keyfile key.pem --bind 0.0.0.0:8443 party_server.wsgi:app

Use one worker process with several threads: sessions and the audit log's head live in
that process's memory, and a state directory is locked to one process (a second worker
is refused). :mod:`party_server.gunicorn_config` sets that, refuses ``--workers`` other
than 1, and answers the requests gunicorn refuses itself in JSON.
"""

import logging
import os
import sys
import time

from ._app import create_app, hold_sighup
from ._config import ConfigError
from ._storage import StateDirInUse

LOCK_WAIT = 30.0  # seconds (gunicorn's default graceful_timeout)


def _config_path():
    path = os.environ.get("FEDSK_PARTY_CONFIG")
    if path:
        return path
    if os.path.exists("host.toml"):
        return "host.toml"
    sys.exit(
        "party_server.wsgi: set FEDSK_PARTY_CONFIG to this party's TOML config file "
        f"(it is not set, and there is no host.toml in {os.getcwd()})"
    )


def _create_app(path, wait=LOCK_WAIT):
    """The app; a worker that replaces another (gunicorn's HUP, max_requests) waits for it
    to let go of the state directory, up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return create_app(path)
        except StateDirInUse:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def _log_as_the_cli_does():
    """The server's own log lines (reload, retention, refused starts) in gunicorn's error
    log with their time, logger and level, as ``party-server`` writes them (without a
    handler Python would print the bare message)."""
    logger = logging.getLogger("party_server")
    if logger.handlers or logging.getLogger().handlers:
        return  # (the operator configured logging)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


_log_as_the_cli_does()
# a gunicorn worker holds the state directory's lock from here on: a reload signalled
# before gunicorn_config.post_worker_init serves it is held back, not fatal (in gunicorn's
# master, under --preload, gunicorn's own handlers replace this one)
hold_sighup()
try:
    app = _create_app(_config_path())
except ConfigError as exc:  # one line naming the key, in gunicorn's log
    sys.exit(f"party_server.wsgi: {exc}")
