"""WSGI entry point for production servers.

    FEDSK_PARTY_CONFIG=/etc/fedsk/host.toml \\
        gunicorn -c python:party_server.gunicorn_config --certfile cert.pem \\
                 --keyfile key.pem --bind 0.0.0.0:8443 party_server.wsgi:app

Use one worker process (sessions live in that process's memory) with several threads;
:mod:`party_server.gunicorn_config` sets that, and answers the requests gunicorn
refuses itself in JSON.
"""

import os
import sys

from ._app import create_app
from ._config import ConfigError


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


try:
    app = create_app(_config_path())
except ConfigError as exc:  # one line naming the key, in gunicorn's log
    sys.exit(f"party_server.wsgi: {exc}")
