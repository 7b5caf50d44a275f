"""gunicorn settings for the party server, with JSON for the refusals gunicorn makes itself.

    FEDSK_PARTY_CONFIG=/etc/fedsk/host.toml gunicorn -c python:party_server.gunicorn_config \\
        --certfile cert.pem --keyfile key.pem --bind 0.0.0.0:8443 party_server.wsgi:app

gunicorn refuses some requests before the app sees them: a request line longer than
its limit (414), malformed HTTP such as a non-numeric Content-Length (400), too many or
too large header fields (431), a transfer coding it does not implement (501), a failed
TLS handshake on a request (403). Its own answer is an HTML page. Loaded as gunicorn's
config, this module makes those answers the JSON ``{"error": {"code", "message",
"request_id"}}`` of every other refusal (a 501 is a 400 here: the fedsk client never
sends a transfer coding, so it is the peer's mistake). These requests never reach the
app, so they are not in the audit log; gunicorn's own logs have them. Options given on
the command line override the settings below, except that ``--workers`` other than 1
is refused: a party server is one process (its state directory is locked to it).
gunicorn is not a dependency of fedsk: ``pip install "fedsk[gunicorn]"``.
"""

import json as _json

from gunicorn import util as _util

workers = 1  # one process: sessions and the audit log's head live in its memory
threads = 8  # concurrency comes from threads
worker_class = "gthread"
timeout = 600  # seconds a request may take (a large encrypted histogram can take minutes)


def on_starting(server):
    """Refuse more than one worker process before any starts (``--workers 2`` overrides
    the setting above): the state directory is locked to one process, so a second
    worker could not serve (and without the lock it would fork the audit chain). Refuse
    a TLS certificate and key that cannot be loaded together (gunicorn itself would
    serve, and fail every handshake)."""
    if server.cfg.workers != 1:
        raise SystemExit(
            f"party_server.gunicorn_config: --workers {server.cfg.workers} is not supported: "
            "a party server is one process (sessions and the audit log's head live in its "
            "memory); use --workers 1 and raise --threads for concurrency"
        )
    problem = tls_problem(server.cfg.certfile, server.cfg.keyfile)
    if problem:
        raise SystemExit(f"party_server.gunicorn_config: {problem}")


class _Encrypted(Exception):
    pass


def _no_password():
    raise _Encrypted


def tls_problem(certfile, keyfile):
    """One line saying why ``certfile`` and ``keyfile`` cannot serve TLS, or None."""
    import ssl

    if not certfile and not keyfile:
        return None
    if not certfile:
        return "--keyfile without --certfile would serve plain HTTP; give --certfile too"
    for what, option, path in (
        ("certificate", "--certfile", certfile),
        ("private key", "--keyfile", keyfile),
    ):
        if not path:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            return (
                f"cannot read the TLS {what} {path} ({option}): {exc.strerror or exc}; fix "
                "the path, or the file's owner or permissions"
            )
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
            certfile, keyfile, password=_no_password
        )
    except _Encrypted:
        return (
            f"the TLS private key {keyfile or certfile} is encrypted with a password, which "
            "gunicorn would ask for on its terminal; give an unencrypted key readable only "
            "by the server's user"
        )
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            return (
                f"the TLS private key {keyfile} does not belong to the certificate "
                f"{certfile}; give the key the certificate was made for (--keyfile)"
            )
        if not keyfile:
            return f"{certfile} holds no private key for its certificate; give --keyfile"
        return (
            f"cannot load the TLS certificate {certfile} with the key {keyfile} "
            f"({exc.reason or exc}): both must be PEM files"
        )
    except OSError as exc:  # pragma: no cover - read just above
        return f"cannot read {certfile} or {keyfile}: {exc.strerror or exc}"
    return None


def post_worker_init(worker):
    """``party-server reload`` signals the worker (the process that holds the state
    directory) with SIGHUP: it rereads the config's ``[peers]`` instead of exiting.
    (A HUP to gunicorn's master process restarts the worker instead, which loses the
    sessions in progress.)"""
    from party_server._app import serve_sighup

    serve_sighup(worker.wsgi.extensions["fedsk"])


def _write_json_error(sock, status_int, reason, mesg):
    """gunicorn's ``util.write_error``, answering JSON instead of HTML."""
    status = 400 if status_int == 501 else status_int
    code = (reason or "error").lower().replace(" ", "_")
    body = _json.dumps(
        {"error": {"code": code, "message": f"{reason}: {mesg}", "request_id": None}}
    ).encode()  # ASCII: json.dumps escapes anything else
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body) + 1}\r\n"
        "\r\n"
    )
    _util.write_nonblock(sock, head.encode("latin-1") + body + b"\n")


_util.write_error = _write_json_error
