"""WSGI entry point for production servers.

    FEDSK_PARTY_CONFIG=/etc/fedsk/host.toml \\
        gunicorn -c python:party_server.gunicorn_config --certfile cert.pem \\
                 --keyfile key.pem --bind 0.0.0.0:8443 party_server.wsgi:app

Use one worker process (sessions live in that process's memory) with several threads;
:mod:`party_server.gunicorn_config` sets that, and answers the requests gunicorn
refuses itself in JSON.
"""

import os

from ._app import create_app

app = create_app(os.environ.get("FEDSK_PARTY_CONFIG", "host.toml"))
