"""Transports: how the guest's requests reach a host's party server.

:class:`HttpTransport` speaks HTTP(S) with ``requests``: timeouts always set, retries
with backoff on connection errors and 502/503/504 (safe for POSTs because every request
carries a request ID that the server answers once), TLS verification on by default.
:class:`InProcessTransport` calls a WSGI app in the same process, for fast protocol
tests that still go through the real server code and the real wire format.
"""

import io
import json
import secrets
import threading
import time
import warnings
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ..exceptions import AuthenticationError, BadMessageError, PartyUnavailableError, ProtocolError
from ._wire import CONTENT_TYPE, message_from_wire, message_to_wire

__all__ = ["HttpTransport", "InProcessTransport", "Transport", "new_request_id", "ping"]

REQUEST_ID_HEADER = "Fedsk-Request-Id"
TOKEN_EXPIRES_HEADER = "Fedsk-Token-Expires"
MODELS_REMOVED_HEADER = "Fedsk-Models-Removed"
TOKEN_WARNING_DAYS = 14  # the guest (and the server's log) hear of an expiry this early
EXPIRES_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # of the Fedsk-Token-Expires header (UTC)
_warned_expiry = set()  # (party, url, expiry) warned of in this process
_warned_lock = threading.Lock()


def new_request_id():
    return secrets.token_hex(12)


class Transport:
    """Send one request to one party and return its answer as a :class:`Message`."""

    party = "?"
    url = "?"

    def request(self, method, path, message=None, *, request_id=None):  # pragma: no cover
        raise NotImplementedError

    def close(self):
        pass

    # shared answer handling -----------------------------------------------------------
    def _note_expiry(self, value):
        """Warn (once per process) when the party says our token expires within 14 days."""
        if not value:
            return
        try:
            expires = datetime.strptime(value, EXPIRES_FORMAT).replace(tzinfo=timezone.utc)
        except ValueError:
            return  # (a header we cannot read changes nothing)
        left = expires - datetime.now(timezone.utc)
        if left > timedelta(days=TOKEN_WARNING_DAYS) or left <= timedelta(0):
            return  # (far off, or past: then the party refuses the token, saying so)
        with _warned_lock:
            if (self.party, self.url, value) in _warned_expiry:
                return
            _warned_expiry.add((self.party, self.url, value))
        days = left.total_seconds() / 86400
        warnings.warn(
            f"the token for {self.party} expires at {expires:%Y-%m-%d %H:%M} UTC (in {days:.1f} "
            f"days); ask its operator for a new one and put it in this federation",
            UserWarning,
            stacklevel=2,
        )

    def _note_headers(self, headers):
        self._note_expiry(headers.get(TOKEN_EXPIRES_HEADER))
        removed = headers.get(MODELS_REMOVED_HEADER)
        if removed:
            count, _, limit = removed.partition("; max_models=")
            if count.isdigit() and limit.isdigit():
                warnings.warn(
                    f"{self.party} removed {count} of your older models to keep at most "
                    f"{limit} per peer (its retention, oldest first): estimators fitted "
                    "with them can no longer predict (fit them again). If you need more at "
                    f"once (e.g. a grid search's estimators), ask {self.party}'s operator "
                    "to raise max_models",
                    UserWarning,
                    stacklevel=2,
                )

    def _answer(self, method, path, status, content_type, body):
        if status == 200:
            if (content_type or "").split(";")[0].strip() != CONTENT_TYPE:
                raise ProtocolError(
                    f"{self.party} answered {method} {path} with "
                    f"{content_type!r} instead of a fedsk message"
                )
            try:
                answer = message_from_wire(body)
            except BadMessageError as exc:
                raise ProtocolError(
                    f"{self.party} sent a malformed answer to {method} {path}: {exc}"
                ) from None
            answer.origin = f"{self.party}'s answer to {method} {path}"
            return answer
        code, text = "error", body[:200].decode("utf-8", "replace")
        try:
            err = json.loads(body)["error"]
            code, text = str(err["code"]), str(err["message"])
        except (ValueError, KeyError, TypeError):
            pass
        if status in (401, 403):
            what = (
                "this federation's token for it has expired: ask its operator for a new one"
                if code == "token_expired"
                else "check the token this federation uses for it"
            )
            raise AuthenticationError(
                f"{self.party} at {self.url} refused our token ({text}); {what}"
            )
        if status in (502, 503, 504):
            raise PartyUnavailableError(
                self.party, self.url, f"{method} {path} answered {status}", text
            )
        hint = ""
        if status == 404 and text.startswith("unknown model"):
            hint = (
                f". {self.party} no longer holds its half of this model (deleted, removed by "
                "its retention policy, or the estimator was fitted against another party "
                "server, or by another peer: a model serves only the token that trained it): "
                "fit the estimator again, with warm_start=False if it was set "
                "(a continued fit needs the host's half of the previous one)"
            )
        if status == 413:
            hint = (
                f". Ask {self.party}'s operator to raise max_body_bytes in its party server's "
                "config, or send less per call: fit or predict on fewer rows at a time "
                "(at 2048-bit keys each row costs about 512 bytes per encrypted value)"
            )
        if status == 404 and text.startswith("unknown or expired session"):
            hint = (
                f". {self.party} no longer knows this session: its party server restarted "
                "(sessions live in its memory), or the session stayed idle longer than its "
                "session_ttl. Start the fit (or prediction) again: a SecureBoost fit with "
                "warm_start=True keeps the rounds both sides completed and continues from them"
            )
        exc = ProtocolError(
            f"{self.party} refused {method} {path} with {status} [{code}]: {text}{hint}"
        )
        exc.status, exc.code = status, code  # for callers that can say what to do about it
        raise exc


READ_RETRIES = 1  # asking again for an answer that did not come (see HttpTransport)


class HttpTransport(Transport):
    """HTTP(S) transport on a :class:`requests.Session`.

    Parameters
    ----------
    party : str
    url : str
        Base URL of the party server, e.g. ``https://insurer.example:8443``.
    token : str
    timeout : (float, float), default=(5.0, 300.0)
        Connect and read timeouts in seconds; never ``None``.
    retries : int, default=4
        Retries on connection errors and 502/503/504, with exponential backoff starting
        at ``backoff`` seconds. An answer that does not come within the read timeout,
        or breaks off, is asked for once more at most: a party that accepts the
        connection and never answers fails a request after twice the read timeout.
    verify : bool or str, default=True
        TLS verification, or the path of a CA bundle. Disabling it is refused.
    """

    def __init__(
        self, party, url, token, *, timeout=(5.0, 300.0), retries=4, backoff=0.25, verify=True
    ):
        if verify is False:
            raise ValueError(
                "TLS verification cannot be disabled; pass a CA bundle path "
                "to trust a private certificate authority"
            )
        self.party, self.url, self.token = party, url.rstrip("/"), token
        self.timeout = tuple(float(t) for t in timeout)
        self.retries, self.backoff, self.verify = retries, backoff, verify
        self.read_retries = min(retries, READ_RETRIES)  # (a hung party: not 5 x 300 s)
        self._session = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_session"] = None
        return state

    def _http(self):
        if self._session is None:
            retry = Retry(
                total=self.retries,
                connect=self.retries,
                read=self.read_retries,
                status=self.retries,
                other=0,
                backoff_factor=self.backoff,
                status_forcelist=(502, 503, 504),
                allowed_methods=None,
                raise_on_status=False,
            )
            s = requests.Session()
            adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=4)
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            s.verify = self.verify
            s.trust_env = False
            self._session = s
        return self._session

    def close(self):
        if self._session is not None:
            self._session.close()
            self._session = None

    def request(self, method, path, message=None, *, request_id=None):
        headers = {
            "Authorization": f"Bearer {self.token}",
            REQUEST_ID_HEADER: request_id or new_request_id(),
        }
        body = None
        if message is not None:
            body = message_to_wire(message)
            headers["Content-Type"] = CONTENT_TYPE
        started = time.monotonic()
        try:
            for attempt in range(self.retries + 1):
                try:
                    resp = self._http().request(
                        method, self.url + path, data=body, headers=headers, timeout=self.timeout
                    )
                    break
                except requests.exceptions.ChunkedEncodingError as exc:
                    # the answer broke off after its headers: ask again (same request ID,
                    # so the party replays its answer instead of doing the work twice)
                    if attempt == self.retries:
                        raise ProtocolError(
                            f"{self.party}'s answer to {method} {path} was cut off before its "
                            f"end, {attempt + 1} times ({exc.__class__.__name__}); check the "
                            "network or proxy between the parties"
                        ) from None
                    time.sleep(self.backoff * 2**attempt)
        except requests.exceptions.SSLError as exc:
            raise PartyUnavailableError(
                self.party,
                self.url,
                "TLS failed",
                str(exc),
                advice=_advice(exc, self.url, self.timeout[1]),
            ) from None
        except requests.exceptions.RequestException as exc:
            no_answer = _read_timed_out(exc)
            attempts = (self.read_retries if no_answer else self.retries) + 1
            tried = (
                f"{method} {path}: {attempts} attempt{'s' if attempts > 1 else ''} over "
                f"{time.monotonic() - started:.1f} s (connect timeout {self.timeout[0]:g} s,"
                f" read timeout {self.timeout[1]:g} s)"
            )
            raise PartyUnavailableError(
                self.party,
                self.url,
                tried,
                "no answer within the read timeout" if no_answer else type(exc).__name__,
                advice=_advice(exc, self.url, self.timeout[1]),
            ) from None
        self._note_headers(resp.headers)
        return self._answer(
            method, path, resp.status_code, resp.headers.get("Content-Type"), resp.content
        )


def _read_timed_out(exc):
    """Whether ``exc`` is a party's answer not coming within the read timeout (requests
    calls that a ConnectionError once urllib3's retries are spent)."""
    return isinstance(exc, requests.exceptions.ReadTimeout) or "Read timed out" in repr(exc)


def _advice(exc, url, read_timeout):
    """What to do about a connection that failed, when its cause says more than "retry"."""
    text = repr(exc)
    if _read_timed_out(exc):
        return (
            f"It accepted the connection but did not answer within the read timeout "
            f"({read_timeout:g} s): its party server is stuck or overloaded (its operator "
            "can check its log), or this step needs longer: raise the read timeout, "
            "Federation(..., timeout=(5, seconds))."
        )
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
        return (
            "The server at that address does not speak TLS: check the port, or (for a party "
            "server on this machine, which serves plain HTTP on loopback) use http://."
        )
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            "Its certificate is not signed by a CA this machine trusts: give the CA bundle "
            "that signed it as the host's 'verify' (a PEM file), or fix the certificate."
        )
    if any(k in text for k in ("NameResolutionError", "Failed to resolve", "not known")):
        return (
            f"The host name of {url} does not resolve (DNS): check the URL's spelling, or "
            "the machine's DNS settings."
        )
    if url.startswith("http://") and any(
        k in text for k in ("RemoteDisconnected", "BadStatusLine", "Connection aborted")
    ):
        return (
            "The server closed the connection without an HTTP answer: if it serves TLS, "
            "use https:// in the URL; otherwise check that its party server is running."
        )
    if "Connection refused" in text or "ConnectionRefused" in text:
        return (
            "Nothing accepted the connection at that address: check that its party server "
            "is running and listens on that host and port, then retry."
        )
    return None


class InProcessTransport(Transport):
    """Call a WSGI app (e.g. ``party_server.create_app(config)``) in this process."""

    def __init__(self, party, app, token, *, url="inprocess://"):
        self.party, self.app, self.token, self.url = party, app, token, url

    def request(self, method, path, message=None, *, request_id=None):
        from wsgiref.util import setup_testing_defaults

        body = message_to_wire(message) if message is not None else b""
        parts = urlsplit(path)
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": parts.path,
            "QUERY_STRING": parts.query,
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
            "HTTP_AUTHORIZATION": f"Bearer {self.token}",
            "HTTP_FEDSK_REQUEST_ID": request_id or new_request_id(),
        }
        if message is not None:
            environ["CONTENT_TYPE"] = CONTENT_TYPE
        setup_testing_defaults(environ)
        captured = {}

        def start_response(status, headers, exc_info=None):
            captured["status"] = int(status.split()[0])
            captured["headers"] = dict(headers)

        chunks = self.app(environ, start_response)
        try:
            data = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        self._note_headers(captured["headers"])
        return self._answer(
            method, path, captured["status"], captured["headers"].get("Content-Type"), data
        )


def ping(url, *, timeout=2.0, verify=True):
    """True when ``url``'s health endpoint answers (no token needed)."""
    try:
        r = requests.get(url.rstrip("/") + "/v1/health", timeout=timeout, verify=verify)
        return r.status_code == 200
    except requests.exceptions.RequestException:
        return False
