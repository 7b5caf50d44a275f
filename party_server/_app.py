"""The Flask application factory: HTTP in, a call into fedsk's host half, HTTP out.

Every request is authenticated (bearer token of a configured peer, compared in
constant time), validated, dispatched, answered and appended to the audit log. Any
refusal is a JSON ``{"error": {"code", "message", "request_id"}}`` with a 4xx status;
an unexpected failure is a 500 without details (the traceback goes to the server log
only). The server holds no algorithm code: each session route names its host half.
"""

import contextlib
import dataclasses
import hashlib
import hmac
import importlib
import logging
import os
import re
import signal
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from fedsk.exceptions import NotFoundError, RequestError
from fedsk.federation import (
    CONTENT_TYPE,
    ON_SESSION_OPEN,
    ROUTES,
    HostContext,
    Message,
    message_from_wire,
    message_to_wire,
)
from fedsk.federation._transport import (
    EXPIRES_FORMAT,
    MODELS_REMOVED_HEADER,
    TOKEN_EXPIRES_HEADER,
    TOKEN_WARNING_DAYS,
)

from ._audit import AuditLog, printable
from ._config import Config, ConfigError, config_from_dict, load_config
from ._datasets import load_datasets
from ._models import UNFINISHED, ModelStore
from ._sessions import SessionStore
from ._storage import (
    StateDirInUse,
    StateDirLock,
    StorageError,
    check_state_dir,
    check_writable,
    unusable,
)

__all__ = ["create_app"]

log = logging.getLogger("party_server")
REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{8,64}$")
REQUEST_ID_HEADER = "Fedsk-Request-Id"
MODEL_ID = re.compile(r"^[0-9a-f]{24}$")
CLAIM_WAIT = 30.0  # seconds a forked worker waits for the one it replaces to let go


class Unauthorized(RequestError):
    status = 401
    code = "unauthorized"


# the config file's names of Config's fields, where they differ (for the operator)
_CONFIG_KEYS = {
    "host": "bind",
    "port": "bind",
    "max_models": "models.max_models",
    "max_model_age_days": "models.max_age_days",
    "audit_fsync": "audit.fsync",
}


class State:
    """What the app keeps: config, datasets, sessions, models, audit log, handlers."""

    def __init__(self, config):
        self.config = config
        check_state_dir(config.state_dir)
        try:
            check_writable(config.state_dir, parents=False)
        except OSError as exc:
            problem = unusable(exc, "write to the state directory", config.state_dir)
            raise type(problem)(f"config key 'state_dir': {problem}") from None
        # one process per state_dir: two would fork the audit chain (see StateDirLock)
        self.lock = StateDirLock.acquire(config.state_dir, config_file=config.source)
        network = StateDirLock.network_file_system(config.state_dir)
        if network:
            log.warning(
                "state_dir %s is on a network file system (%s): the lock that keeps a "
                "second party server off it may not hold for a server on another machine; "
                "run one server per state_dir, or put state_dir on a local disk",
                config.state_dir,
                network,
            )
        self._refusing = False
        self._audit_problem = None  # why a forked process could not take the log over
        self.datasets = load_datasets(config)
        try:
            self.models = ModelStore(
                config.state_dir / "models",
                max_models=config.max_models,
                max_age_days=config.max_model_age_days,
            )
        except OSError as exc:
            raise unusable(exc, "use the model store", config.state_dir / "models") from None
        self.audit = AuditLog(config.state_dir / "audit.log", fsync=config.audit_fsync)
        self.sessions = SessionStore(config.session_ttl)
        self.created = {}  # (peer, request_id) -> (fingerprint, answer) of sessions.create
        self.created_lock = threading.Lock()
        self.handlers = {}
        self._tokens = _token_table(config.peers)
        self._expired_seen = set()  # (peer, which token) already logged as expired
        _warn_expiring(config.peers)
        for route in ROUTES:  # import every host half now, not during a peer's request
            if route.handler:
                with contextlib.suppress(NotFoundError):  # not shipped here: logged, then 404
                    self.handler(route)
        self.on_session_open = [_resolve(path) for path in ON_SESSION_OPEN]

    def claim(self):
        """Make sure this process owns the state directory before it serves a request.

        A process forked after the app was created (gunicorn ``--preload``) takes the
        lock over at its first request and reads the audit log's head from disk (the
        copy in its memory is the forking process's, perhaps behind the log). A second
        such process is refused: it cannot serve without forking the audit chain.
        """
        try:
            taken = self.lock.claim(wait=CLAIM_WAIT)
        except StateDirInUse as exc:
            if not self._refusing:  # (the details are for the operator, once)
                self._refusing = True
                log.error("process %d cannot serve: %s", os.getpid(), exc)
            raise RequestError(
                "this party server process cannot serve: another process of the server "
                "holds its state directory; its operator must run one server process",
                code="state_dir_in_use",
                status=503,
            ) from None
        if taken or self._audit_problem is not None:
            try:
                self.audit.reload()
            except ConfigError as exc:  # (tried again at every request until it works)
                if self._audit_problem != str(exc):
                    log.error("process %d cannot serve: %s", os.getpid(), exc)
                self._audit_problem = str(exc)
                raise RequestError(
                    "this party server process cannot serve: it cannot use its audit log; "
                    "its operator must see the server's log",
                    code="audit_log_unusable",
                    status=503,
                ) from None
            self._audit_problem = None

    def handler(self, route):
        fn = self.handlers.get(route.name)
        if fn is None:
            module = route.handler.partition(":")[0]
            try:
                fn = _resolve(route.handler)
            except (ModuleNotFoundError, AttributeError) as exc:
                missing = getattr(exc, "name", None)
                if isinstance(exc, ModuleNotFoundError) and not module.startswith(missing or "?"):
                    raise  # the host half exists but a dependency of it is missing
                # a guest newer than this server's fedsk asks for a protocol it lacks
                log.warning("route %s: host half %s is not installed", route.name, route.handler)
                raise NotFoundError(
                    f"this party server does not serve {route.name!r}: its fedsk has no "
                    f"{route.handler}; ask its operator to upgrade fedsk",
                    code="unsupported_route",
                ) from None
            self.handlers[route.name] = fn
        return fn

    def authenticate(self, header):
        scheme, _, token = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():  # (schemes ignore case: RFC 7235)
            raise Unauthorized("missing 'Authorization: Bearer <token>' header")
        token = token.strip().encode()
        match = None
        for known, *entry in self._tokens:  # check every token: time does not depend on which
            if hmac.compare_digest(known, token):
                match = entry
        if match is None:
            raise Unauthorized("unknown token")
        peer, expires, which = match
        if expires is not None:
            g.token_expires = expires
            if _now() >= expires:
                if (peer, which) not in self._expired_seen:
                    self._expired_seen.add((peer, which))
                    log.warning(
                        "peer %s presented its %s, which expired at %s", peer, which, _when(expires)
                    )
                raise Unauthorized(
                    f"this token expired at {_when(expires)}; ask the operator of "
                    f"{self.config.party} for a new one",
                    code="token_expired",
                )
        return peer

    def reload_peers(self):
        """Read the config file again and serve its ``[peers]`` from now on.

        Tokens, their expiry and the datasets each peer may use change without a
        restart, so sessions in progress go on (a token rotation, a new peer, a peer
        removed). Other settings need a restart: a change to them is logged and left.
        A config that does not load leaves everything as it was. Returns whether the
        peers were replaced.
        """
        source = self.config.source
        if source is None:
            log.error("reload: this server was not started from a config file")
            return False
        try:
            new = load_config(source)
        except ConfigError as exc:
            log.error("reload: %s; still serving the peers loaded before", exc)
            return False
        changed = sorted(
            {
                _CONFIG_KEYS.get(f.name, f.name)
                for f in dataclasses.fields(Config)
                if f.name not in ("peers", "source")
                and getattr(new, f.name) != getattr(self.config, f.name)
            }
        )
        if changed:
            log.warning("reload: %s changed; that takes a restart", ", ".join(changed))
        old = self.config.peers
        # requests look up config.peers after authenticating: a peer is in it before its
        # tokens are accepted and stays in it until they are no longer accepted
        self.config.peers = {**old, **new.peers}
        self._tokens = _token_table(new.peers)
        self.config.peers = new.peers
        self._expired_seen = set()
        added, removed = sorted(set(new.peers) - set(old)), sorted(set(old) - set(new.peers))
        log.warning(  # (the level the server's log shows without --verbose)
            "reload: serving %d peer(s) from %s%s%s",
            len(new.peers),
            source,
            f"; added {', '.join(added)}" if added else "",
            f"; removed {', '.join(removed)}" if removed else "",
        )
        _warn_expiring(new.peers)
        return True


_reload_held = threading.Event()


def hold_sighup():
    """From now until :func:`serve_sighup`, a SIGHUP is remembered instead of ending
    the process: ``party-server reload`` may signal a server that holds its state
    directory's lock while it is still loading its datasets."""
    if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, lambda signum, frame: _reload_held.set())


def serve_sighup(state):
    """From now on a SIGHUP makes ``state`` reread its peers; one held back is done now."""
    if not hasattr(signal, "SIGHUP"):  # pragma: no cover - Windows
        return
    signal.signal(signal.SIGHUP, lambda signum, frame: state.reload_peers())
    if _reload_held.is_set():
        _reload_held.clear()
        state.reload_peers()


def _now():
    return datetime.now(timezone.utc)


def _when(moment):
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _token_table(peers):
    """``[(token bytes, peer, expires, which)]`` of every token the peers may present."""
    return [
        (token.encode(), peer.name, expires, which)
        for peer in peers.values()
        for token, expires, which in peer.tokens()
    ]


def _warn_expiring(peers):
    soon = _now() + timedelta(days=TOKEN_WARNING_DAYS)
    for peer in peers.values():
        for _, expires, which in peer.tokens():
            if expires is not None and expires <= soon:
                verb = "expired" if expires <= _now() else "expires"
                log.warning("peer %s: its %s %s at %s", peer.name, which, verb, _when(expires))


def _error(status, code, message):
    body = {
        "error": {"code": code, "message": message, "request_id": getattr(g, "request_id", None)}
    }
    resp = jsonify(body)
    resp.status_code = status
    return resp


def _state():
    return current_app.extensions["fedsk"]


def _message_in():
    if request.method != "POST":
        return Message()
    ctype = (request.content_type or "").split(";")[0].strip().lower()  # (ignores case)
    if ctype != CONTENT_TYPE:
        raise RequestError(
            f"Content-Type must be {CONTENT_TYPE}", code="unsupported_media_type", status=415
        )
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise RequestError(
            f"Content-Encoding {encoding!r} is not supported: send the body uncompressed "
            "(ciphertexts do not compress)",
            code="unsupported_media_type",
            status=415,
        )
    msg = message_from_wire(request.get_data(cache=True))
    g.ct_in = msg.n_ciphertexts
    _note_model(msg.meta.get("model_id") or msg.meta.get("warm_start"))
    return msg


def _note_model(model_id):
    """The model a request uses or makes, for its audit record (which file is whose)."""
    if isinstance(model_id, str) and MODEL_ID.match(model_id):
        g.model_id = model_id


def _reply(msg):
    bad = msg.non_finite()
    if bad:  # e.g. a peer's finite but huge values overflowed: its mistake, not ours
        raise RequestError(
            f"the answer to this request would hold NaN or infinity (in {', '.join(bad)}); "
            "values in the request are out of range for this step",
            code="non_finite_result",
        )
    g.ct_out = msg.n_ciphertexts
    _note_model(msg.meta.get("model_id"))
    return Response(message_to_wire(msg), status=200, content_type=CONTENT_TYPE)


def _fingerprint(route_name):
    """What a request ID stands for: the route and the exact body."""
    return hashlib.sha256(route_name.encode() + b"\0" + request.get_data(cache=True)).digest()


def _replayable(resp, fingerprint):
    return fingerprint, (resp.status_code, resp.get_data(), resp.content_type, g.get("ct_out", 0))


def _from_replay(cached, fingerprint):
    """The answer given to an earlier request with this ID, if it was the same request."""
    seen, (status, body, ctype, ct_out) = cached
    if not hmac.compare_digest(seen, fingerprint):
        raise RequestError(
            f"request ID {g.request_id} was already used for a different request; "
            "use a fresh ID for every new request (reuse one only to retry it unchanged)",
            code="request_id_reused",
            status=409,
        )
    g.ct_out = ct_out
    return Response(body, status=status, content_type=ctype)


def _make_view(route):
    def view(**params):
        state = _state()
        g.endpoint_name = route.name
        g.session = printable(params.get("session_id"), 40)  # (the URL's, as sent)
        if route.name == "health":
            g.skip_audit = True
            return jsonify({"status": "ok", "party": state.config.party})
        g.peer = state.authenticate(request.headers.get("Authorization"))
        if request.method not in ("GET", "HEAD") and g.request_id is None:
            sent = request.headers.get(REQUEST_ID_HEADER)
            raise RequestError(
                f"header {REQUEST_ID_HEADER} is required"
                if sent is None
                else f"header {REQUEST_ID_HEADER} must be 8-64 characters of letters, digits "
                f"and '_.:-' (got {len(sent)} characters)",
                code="missing_request_id",  # (no valid one: the same code for clients)
            )
        if request.method not in ("GET", "HEAD", "DELETE"):  # (a delete frees space)
            state.audit.check_space()  # (carried out, then unlogged, would be worse)
        msg = _message_in()
        if route.name == "sessions.create":
            return _create_session(state, msg)
        if route.name.startswith("models."):
            return _models(state, route, params["model_id"])
        entry = state.sessions.get(params["session_id"], g.peer)
        if route.name == "sessions.delete":
            discard = _discard_asked()  # the peer's fit failed
            state.sessions.delete(params["session_id"], g.peer)
            if discard:
                discarded = _discard_models(state, entry.session)
            else:
                discarded = []
                _finish_models(state, entry.session)
            return _reply(Message({"closed": True, "discarded": discarded}))
        fingerprint = _fingerprint(route.name)
        with entry.lock:
            cached = entry.replay(g.request_id)  # refuses an old ID whose answer is gone
            if cached is not None:
                return _from_replay(cached, fingerprint)
            entry.check_capacity()
            state.models.pushed_out_count(reset=True)
            try:
                resp = _reply(state.handler(route)(_context(state, entry.session), msg))
                pushed_out = state.models.pushed_out_count(reset=True)
                if pushed_out:  # the guest warns its user (a replayed answer does not)
                    limit = state.models.max_models
                    resp.headers[MODELS_REMOVED_HEADER] = f"{pushed_out}; max_models={limit}"
            except StorageError:
                raise  # nothing was saved: the same request may be sent again
            except Exception as exc:  # a refusal is an answer too: a retry gets it again
                resp = current_app.make_response(current_app.handle_user_exception(exc))
            entry.remember(g.request_id, _replayable(resp, fingerprint))
            return resp

    view.__name__ = "view_" + route.name.replace(".", "_")
    return view


def _resolve(path):
    """The function ``"module:name"`` names."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _context(state, session):
    return HostContext(
        party=state.config.party,
        session=session,
        dataset=state.datasets[session.dataset],
        models=_SessionModels(state.models, session),
        n_jobs=state.config.n_jobs,
        min_key_length=state.config.min_key_length,
    )


def _discard_asked():
    """``?discard_models=true`` on a session's DELETE (a query, not a body: proxies may
    drop the body of a DELETE)."""
    value = request.args.get("discard_models", "false").strip().lower()
    if value not in ("true", "false"):
        raise RequestError(
            f"query parameter discard_models must be true or false, got {printable(value, 20)!r}"
        )
    return value == "true"


class _SessionModels:
    """The model store as one session's host half sees it: the IDs it creates are kept
    with the session, so that a peer whose fit failed can have them deleted."""

    def __init__(self, store, session):
        self._store, self._session = store, session

    def __getattr__(self, name):
        return getattr(self._store, name)

    def create(self, peer, kind):
        model_id = self._store.create(peer, kind)
        self._session.state.setdefault(_MADE, []).append(model_id)
        return model_id

    def save(self, model_id, peer, meta, arrays):
        # marked unfinished until the session closes as a finished fit's does (a guest
        # killed mid-fit never closes it: ``models list`` shows such a model as such)
        self._store.save(model_id, peer, {**meta, UNFINISHED: self._session.id}, arrays)
        saved = self._session.state.setdefault(_SAVED, [])
        if model_id not in saved:
            saved.append(model_id)


_MADE, _SAVED = "party_server.models_made", "party_server.models_saved"


def _finish_models(state, session):
    """Clear the unfinished mark of the models ``session`` saved (its fit ended)."""
    for model_id in session.state.get(_SAVED, []):
        try:
            meta, arrays = state.models.load(model_id, session.peer)
            if meta.get(UNFINISHED) == session.id:
                del meta[UNFINISHED]
                state.models.save(model_id, session.peer, meta, arrays)
        except (NotFoundError, StorageError) as exc:  # (pushed out, or the disk refused)
            log.warning("model %s stays marked unfinished: %s", model_id, exc)


def _discard_models(state, session):
    """Delete the models ``session`` made (its peer's fit failed, so no estimator holds
    them: left here they would count towards max_models); the IDs deleted."""
    discarded = []
    for model_id in session.state.get(_MADE, []):
        try:
            state.models.delete(model_id, session.peer)
        except NotFoundError:  # never saved (the fit failed before), or already gone
            continue
        discarded.append(model_id)
    if discarded:
        log.warning(
            "peer %s: its fit failed; deleted the %d model(s) its session made: %s",
            session.peer,
            len(discarded),
            ", ".join(discarded),
        )
    return discarded


def _create_session(state, msg):
    key = (g.peer, g.request_id)
    fingerprint = _fingerprint("sessions.create")
    with state.created_lock:
        cached = state.created.get(key)
    if cached is not None:
        return _from_replay(cached, fingerprint)
    name = msg.field("dataset", str)
    allowed = state.config.peers[g.peer].datasets
    if name not in state.datasets or (allowed is not None and name not in allowed):
        raise NotFoundError(f"unknown dataset {name!r}")
    entry = state.sessions.create(g.peer, name)
    g.session = entry.session.id
    extra = {}
    with entry.lock:
        for hook in state.on_session_open:
            extra.update(hook(_context(state, entry.session), msg) or {})
    info = state.datasets[name].describe()
    resp = _reply(
        Message(
            {
                "session_id": entry.session.id,
                "party": state.config.party,
                "min_key_length": state.config.min_key_length,
                **info,
                **extra,
            }
        )
    )
    with state.created_lock:
        state.created[key] = _replayable(resp, fingerprint)
        while len(state.created) > 1024:
            state.created.pop(next(iter(state.created)))
    return resp


def _models(state, route, model_id):
    _note_model(model_id)
    meta, _ = state.models.load(model_id, g.peer)
    if route.name == "models.delete":
        state.models.delete(model_id, g.peer)
        return _reply(Message({"deleted": model_id}))
    public = {k: meta[k] for k in ("model_id", "kind", "created", "updated") if k in meta}
    return _reply(Message(public))


def _before():
    g.started = time.perf_counter()
    rid = request.headers.get(REQUEST_ID_HEADER)
    g.request_id = rid if rid and REQUEST_ID.match(rid) else None
    try:
        _state().claim()
    except RequestError:
        g.skip_audit = True  # the log belongs to the process that holds the lock
        raise


def _after(resp):
    endpoint = g.get("endpoint_name") or printable(request.path, 200)
    if g.get("token_expires") is not None:  # the guest warns its user ahead of time
        resp.headers[TOKEN_EXPIRES_HEADER] = g.token_expires.strftime(EXPIRES_FORMAT)
    if log.isEnabledFor(logging.INFO):  # party-server --verbose: one line per request
        ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        log.info(
            "%s %s %s -> %d (%.1f ms, peer %s)",
            request.method,
            endpoint,
            g.get("session") or "-",
            resp.status_code,
            ms,
            g.get("peer") or "-",
        )
    if g.get("skip_audit"):
        return resp
    state = _state()
    body = b""
    # a body is read (and digested) only for a peer: a client without a token must not
    # make the server hold what it sends in memory
    small = request.content_length is None or request.content_length <= state.config.max_body_bytes
    if g.get("peer") is not None and small:
        try:
            body = request.get_data(cache=True)
        except Exception:  # the body was refused (too large): log without a digest
            body = b""
    try:
        state.audit.append(
            peer=g.get("peer"),
            method=request.method,
            endpoint=endpoint,
            session=g.get("session"),
            request_id=g.get("request_id"),
            model=g.get("model_id"),
            addr=printable(request.remote_addr, 64),
            status=resp.status_code,
            bytes_in=request.content_length or len(body),
            bytes_out=resp.calculate_content_length() or 0,
            sha256_in=hashlib.sha256(body).hexdigest() if body else None,
            ct_in=g.get("ct_in", 0),
            ct_out=g.get("ct_out", 0),
            ms=round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 1),
        )
    except StorageError as exc:
        return _error(exc.status, exc.code, str(exc))
    if g.get("request_id"):
        resp.headers[REQUEST_ID_HEADER] = g.request_id
    return resp


def _handle_request_error(exc):
    return _error(exc.status, exc.code, str(exc))


def _handle_http_error(exc):
    code = (exc.name or "error").lower().replace(" ", "_")
    if exc.code == 413:
        return _error(413, code, too_large_message(_state().config.max_body_bytes))
    return _error(exc.code or 400, code, exc.description or exc.name)


def too_large_message(limit):
    """What a peer whose request body is over ``max_body_bytes`` is told (by the app, or
    by waitress before the app)."""
    return (
        f"the request body is larger than this party server accepts (max_body_bytes = "
        f"{limit} bytes)"
    )


def _handle_unexpected(exc):
    log.exception("unexpected error while serving %s %s", request.method, request.path)
    return _error(
        500,
        "internal_error",
        "internal error; the party's operator can find the details in the server log",
    )


def create_app(config):
    """Create the party server's Flask app.

    Parameters
    ----------
    config : str, pathlib.Path, dict or Config
        A TOML file, an already parsed document, or a validated :class:`Config`.
        Problems raise :class:`ConfigError` with a one-line message naming the key.
    """
    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict):
        config = config_from_dict(config)
    elif not isinstance(config, Config):
        raise TypeError("config must be a path, a dict or a Config")
    app = Flask("party_server")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.sort_keys = False
    app.extensions["fedsk"] = State(config)
    bp = Blueprint("v1", __name__)
    for route in ROUTES:
        bp.add_url_rule(
            route.path.replace("<", "<string:"),
            endpoint=route.name.replace(".", "_"),
            view_func=_make_view(route),
            methods=[route.method],
            provide_automatic_options=False,  # OPTIONS is a JSON 405 like any other method
        )
    app.register_blueprint(bp)
    app.before_request(_before)
    app.after_request(_after)
    app.register_error_handler(RequestError, _handle_request_error)
    app.register_error_handler(HTTPException, _handle_http_error)
    app.register_error_handler(Exception, _handle_unexpected)
    return app
