"""The Federation handle and the guest's live connection to one host."""

import contextlib
import ipaddress
import os
import re
from urllib.parse import urlsplit

import numpy as np

from ..exceptions import ProtocolError
from ._routes import route, url_for
from ._transport import HttpTransport, InProcessTransport, new_request_id
from ._wire import Message

__all__ = ["Federation", "HostClient", "InProcessFederation"]

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# what the estimators call the guest itself where they label parties (importances,
# operation counts); "." and ".." would be directories where a name becomes a path
_RESERVED = {"guest", ".", ".."}


def check_host_name(name):
    """A host's name: 1-64 letters, digits, '_.-', and not a name the guest uses."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"host name {name!r} must be 1-64 ASCII letters, digits, '_', '-' or '.'")
    if name.lower() in _RESERVED:
        raise ValueError(
            f"host name {name!r} is reserved ({sorted(_RESERVED)}: the estimators label the "
            "guest's own columns and counts 'guest'); name the host after its organisation"
        )


def is_loopback_host(host):
    """Whether ``host`` (a name or an IP address) is this machine: plain HTTP stays here."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_loopback_url(url):
    return is_loopback_host(urlsplit(url).hostname or "")


class HostClient:
    """The guest's live connection to one host (created by :meth:`Federation.connect`)."""

    def __init__(self, name, transport, dataset):
        self.name, self.transport, self.dataset = name, transport, dataset

    def __repr__(self):
        return f"HostClient({self.name!r}, url={self.transport.url!r}, dataset={self.dataset!r})"

    def open_session(self, protocol, *, alignment=None, positions=None):
        """Open a session on this host's dataset; returns ``(session_id, info)``.

        ``alignment`` and ``positions``: reuse that earlier alignment's rows at those
        positions (see :func:`fedsk.federation._psi.open_aligned`).
        """
        msg = Message({"dataset": self.dataset, "protocol": protocol})
        if alignment is not None:
            msg.meta["alignment"] = alignment
            msg.add_array("positions", np.asarray(positions, dtype=np.int64))
        try:
            answer = self.transport.request("POST", url_for("sessions.create"), msg)
        except ProtocolError as exc:
            if getattr(exc, "code", None) != "not_found":
                raise
            raise ProtocolError(
                f"host {self.name!r} has no dataset {self.dataset!r} for this federation's "
                f"token ({exc}); check hosts[{self.name!r}]['dataset'] in your Federation "
                "(the host's operator knows its dataset names)"
            ) from None
        sid = answer.meta.get("session_id")
        if not isinstance(sid, str):
            raise ProtocolError(f"{self.name} did not return a session ID")
        return sid, answer.meta

    def call(self, route_name, session_id, message=None, *, request_id=None):
        """Send ``message`` to ``route_name`` of session ``session_id``; return the answer."""
        r = route(route_name)
        return self.transport.request(
            r.method,
            url_for(route_name, session_id=session_id),
            message if message is not None else Message(),
            request_id=request_id or new_request_id(),
        )

    def close_session(self, session_id, *, discard_models=False):
        """Close a session, ignoring a host that has already forgotten it.

        With ``discard_models`` (the fit failed) the host deletes the models the session
        made.
        """
        path = url_for("sessions.delete", session_id=session_id)
        with contextlib.suppress(ProtocolError):
            self.transport.request("DELETE", path + ("?discard_models=true" * discard_models))

    def delete_model(self, model_id):
        self.transport.request("DELETE", url_for("models.delete", model_id=model_id))

    def model_info(self, model_id):
        return self.transport.request("GET", url_for("models.get", model_id=model_id)).meta

    def close(self):
        self.transport.close()


class Federation:
    """Where the hosts are and how to reach them: a handle, not a connection.

    It holds only addresses, dataset names, tokens and options, so ``copy.deepcopy``,
    ``pickle``, :func:`sklearn.base.clone` and ``GridSearchCV(n_jobs=2)`` work on
    estimators that hold one. Connections are opened per fit or predict call.

    Parameters
    ----------
    hosts : dict
        ``{name: {"url": ..., "dataset": ..., "token": ...}}``. Instead of ``token``,
        ``token_env`` names an environment variable that holds it: a fitted estimator
        saved with ``joblib.dump`` holds its federation, so an inline ``token`` is in
        the file, a ``token_env`` only by name. ``verify`` (default True) may be the
        path of a CA bundle for a private certificate authority.
    timeout : (float, float), default=(5.0, 300.0)
        Connect and read timeouts in seconds for every request.
    retries : int, default=4
        Retries (with exponential backoff) on connection errors and 502/503/504; a host
        still unreachable after them raises :class:`~fedsk.exceptions.PartyUnavailableError`.
        An answer that does not come within the read timeout is asked for once more at
        most, so a host that accepts connections but hangs fails a call after twice the
        read timeout.

    Examples
    --------
    >>> fed = Federation(hosts={"insurer": {"url": "https://insurer.example:8443",
    ...                                     "dataset": "customers", "token": "s3cret-token-123"}})
    >>> fed
    Federation(hosts=['insurer'])
    """

    def __init__(self, hosts, *, timeout=(5.0, 300.0), retries=4):
        if not isinstance(hosts, dict) or not hosts:
            raise ValueError("hosts must be a non-empty dict {name: {'url', 'dataset', 'token'}}")
        checked = {}
        for name, spec in hosts.items():
            check_host_name(name)
            if not isinstance(spec, dict):
                raise ValueError(f"hosts[{name!r}] must be a dict with 'url', 'dataset', 'token'")
            unknown = set(spec) - {"url", "dataset", "token", "token_env", "verify"}
            if unknown:
                raise ValueError(f"hosts[{name!r}] has unknown keys {sorted(unknown)}")
            for key in ("url", "dataset"):
                if not isinstance(spec.get(key), str) or not spec[key]:
                    raise ValueError(f"hosts[{name!r}][{key!r}] must be a non-empty string")
            if not spec["url"].startswith(("http://", "https://")):
                raise ValueError(
                    f"hosts[{name!r}]['url'] must start with https:// (or http:// "
                    "for a party server on this machine)"
                )
            if spec["url"].startswith("http://") and not _is_loopback_url(spec["url"]):
                raise ValueError(
                    f"hosts[{name!r}]['url'] is plain http:// to another machine: the token "
                    "and every message would cross the network unencrypted; use https://"
                )
            if ("token" in spec) == ("token_env" in spec):
                raise ValueError(f"hosts[{name!r}] needs exactly one of 'token' or 'token_env'")
            verify = spec.get("verify", True)
            if verify is False:
                raise ValueError(f"hosts[{name!r}]['verify'] cannot be False; give a CA bundle")
            if isinstance(verify, (str, os.PathLike)) and not os.path.exists(verify):
                raise ValueError(
                    f"hosts[{name!r}]['verify']: the CA bundle {os.fspath(verify)!r} does not "
                    "exist; give the path of the PEM file that signed the host's certificate "
                    "(or True for the system's CAs)"
                )
            checked[name] = dict(spec)
        if len(timeout) != 2 or min(timeout) <= 0:
            raise ValueError("timeout must be (connect_seconds, read_seconds), both > 0")
        self.hosts = checked
        self.timeout = (float(timeout[0]), float(timeout[1]))
        self.retries = int(retries)

    def __repr__(self):
        return f"{type(self).__name__}(hosts={list(self.hosts)})"

    @property
    def host_names(self):
        return list(self.hosts)

    def _token(self, name):
        spec = self.hosts[name]
        if "token" in spec:
            return spec["token"]
        var = spec["token_env"]
        token = os.environ.get(var)
        if token is None:
            raise ValueError(f"environment variable {var} (token for host {name!r}) is not set")
        token = token.strip()  # (a '\r' from a file with Windows line ends, pasted spaces)
        if not token:
            raise ValueError(
                f"environment variable {var} (token for host {name!r}) is empty; set it to "
                "the token the host's operator gave you"
            )
        return token

    def intersect(self, ids, *, n_jobs=None):
        """Which of ``ids`` each host holds, by private set intersection only.

        Neither side learns an ID outside the intersection; each host learns which of its
        rows matched. Useful to check the overlap before fitting.

        Returns
        -------
        dict of {str: ndarray of bool}
            For each host, a mask over ``ids``.
        """
        from ._psi import align

        ids = list(ids)
        out = {}
        for client in self.connect():
            sid, _ = client.open_session("psi")
            try:
                found = align(client, sid, ids, n_jobs=n_jobs)
            finally:
                client.close_session(sid)
                client.close()
            mask = np.zeros(len(ids), dtype=bool)
            mask[found] = True
            out[client.name] = mask
        return out

    def connect(self):
        """Open one :class:`HostClient` per host, in the order of ``hosts``."""
        return [
            HostClient(
                name,
                HttpTransport(
                    name,
                    spec["url"],
                    self._token(name),
                    timeout=self.timeout,
                    retries=self.retries,
                    verify=spec.get("verify", True),
                ),
                spec["dataset"],
            )
            for name, spec in self.hosts.items()
        ]


class InProcessFederation(Federation):
    """A federation of party-server apps running in this process (protocol unit tests).

    Parameters
    ----------
    apps : dict
        ``{name: (wsgi_app, dataset, token)}``.
    """

    def __init__(self, apps):
        self.apps = dict(apps)
        self.hosts = {
            name: {"url": f"inprocess://{name}", "dataset": ds, "token": tok}
            for name, (_, ds, tok) in self.apps.items()
        }
        self.timeout, self.retries = (5.0, 300.0), 0

    def __reduce__(self):
        raise TypeError("an InProcessFederation lives in one process and cannot be pickled")

    def connect(self):
        return [
            HostClient(name, InProcessTransport(name, app, tok), ds)
            for name, (app, ds, tok) in self.apps.items()
        ]
