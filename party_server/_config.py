"""The party server's TOML configuration, validated at start.

A bad file fails with :class:`ConfigError`, whose message is one line naming the key
and what is wrong with it.
"""

import datetime as dt
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fedsk.federation._federation import is_loopback_host

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["Config", "ConfigError", "DatasetConfig", "PeerConfig", "load_config"]

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TOP_KEYS = {
    "party",
    "bind",
    "state_dir",
    "datasets",
    "peers",
    "max_body_bytes",
    "session_ttl",
    "n_jobs",
    "min_key_length",
    "threads",
    "models",
    "audit",
    "behind_tls_proxy",
}


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key."""


@dataclass
class DatasetConfig:
    name: str
    path: Path
    id_column: str
    features: list | None = None
    publish_feature_names: bool = False


@dataclass
class PeerConfig:
    name: str
    token: str = field(repr=False)
    datasets: list | None = None  # None: every dataset
    expires: datetime | None = None  # the token is refused from then on (UTC)
    # during a rotation the peer's old token keeps working until its own expiry
    previous_token: str | None = field(default=None, repr=False)
    previous_expires: datetime | None = None

    def tokens(self):
        """``(token, expires, which)`` of every token this peer may present."""
        out = [(self.token, self.expires, "token")]
        if self.previous_token is not None:
            out.append((self.previous_token, self.previous_expires, "previous_token"))
        return out


@dataclass
class Config:
    party: str
    host: str
    port: int
    state_dir: Path
    datasets: dict
    peers: dict
    max_body_bytes: int = 256 * 1024 * 1024
    session_ttl: float = 3600.0
    n_jobs: int = 1
    min_key_length: int = 2048
    threads: int = 8
    max_models: int = 100
    max_model_age_days: float | None = None
    audit_fsync: bool = True
    behind_tls_proxy: bool = False
    source: Path | None = None

    @property
    def bind(self):
        return f"{self.host}:{self.port}"


def _fail(key, problem):
    raise ConfigError(f"config key {key!r}: {problem}")


def _get(table, key, kind, where, default=...):
    if key not in table:
        if default is ...:
            _fail(where + key, "is required")
        return default
    value = table[key]
    if kind is int and isinstance(value, bool):
        _fail(where + key, "must be an integer")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind):
        _fail(where + key, f"must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    if kind is float and not math.isfinite(value):
        _fail(where + key, f"must be a finite number, got {value}")
    return value


_PEER_KEYS = {
    "token",
    "token_env",
    "token_file",
    "expires",
    "previous_token",
    "previous_token_env",
    "previous_token_file",
    "previous_expires",
    "datasets",
}


def _peer_token(table, where, key, base_dir, environ):
    """The token of ``key``, ``key + '_env'`` or ``key + '_file'`` (exactly one of them).

    ``environ`` is where ``_env`` variables are looked up; None accepts any name
    (``party-server reload`` checks a config for a server whose environment it lacks).
    """
    given = [k for k in (key, key + "_env", key + "_file") if k in table]
    if len(given) != 1:
        _fail(where + key, f"give exactly one of '{key}', '{key}_env' or '{key}_file'")
    if key in table:
        token = _get(table, key, str, where)
    elif given[0].endswith("_env"):
        env = _get(table, given[0], str, where)
        if environ is None:
            return f"(environment variable {env} of the server)"
        token = environ.get(env)
        if token is None:
            _fail(where + given[0], f"environment variable {env} is not set")
        # (as a token file's: `export T=$(cat f)` keeps a CRLF file's \r; pasted spaces)
        token = token.strip()
        if not token:
            _fail(where + given[0], f"environment variable {env} is empty")
    else:
        path = Path(_get(table, given[0], str, where))
        if not path.is_absolute():
            path = base_dir / path
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            _fail(where + given[0], f"cannot read {path}: {getattr(exc, 'strerror', exc)}")
        if not token:
            _fail(where + given[0], f"file {path} is empty; write the token in it")
    if len(token) < 16:
        _fail(where + given[0], "must be at least 16 characters (use a random token)")
    return token


def _expiry(table, where, key):
    """A TOML date (00:00 UTC that day) or offset date-time as an aware UTC datetime."""
    if key not in table:
        return None
    value = table[key]
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value) if "T" in value else dt.date.fromisoformat(value)
        except ValueError:
            value = None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            _fail(
                where + key,
                "needs a time zone (e.g. 2027-01-31T00:00:00Z), or give a date: a date "
                "means 00:00 UTC of that day",
            )
        return value.astimezone(dt.timezone.utc)
    if isinstance(value, dt.date):
        return datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    _fail(where + key, "must be a date such as 2027-01-31 or a date-time with a time zone")


def _parse_bind(text):
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        _fail("bind", f"must look like '127.0.0.1:8443', got {text!r}")
    return host.strip("[]"), int(port)


def config_from_dict(raw, base_dir=Path("."), environ=os.environ):
    """Validate a parsed TOML document (also used by tests and LocalFederation).

    ``environ`` holds the ``token_env`` variables; None takes them on trust (to check a
    config meant for a server whose environment this process does not have).
    """
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        _fail(sorted(unknown)[0], "is not a known setting")
    party = _get(raw, "party", str, "")
    if not _NAME.match(party):
        _fail("party", "must be 1-64 ASCII letters, digits, '_', '-' or '.'")
    host, port = _parse_bind(_get(raw, "bind", str, ""))
    state_dir = Path(_get(raw, "state_dir", str, ""))
    if not state_dir.is_absolute():
        state_dir = base_dir / state_dir

    datasets = {}
    for name, table in _get(raw, "datasets", dict, "", default={}).items():
        where = f"datasets.{name}."
        if not _NAME.match(name) or not isinstance(table, dict):
            _fail(f"datasets.{name}", "must be a table with a valid name")
        extra = set(table) - {"path", "id_column", "features", "publish_feature_names"}
        if extra:
            _fail(where + sorted(extra)[0], "is not a known dataset setting")
        path = Path(_get(table, "path", str, where))
        if not path.is_absolute():
            path = base_dir / path
        features = _get(table, "features", list, where, default=None)
        if features is not None and not all(isinstance(f, str) for f in features):
            _fail(where + "features", "must be a list of column names")
        datasets[name] = DatasetConfig(
            name,
            path,
            _get(table, "id_column", str, where),
            features,
            _get(table, "publish_feature_names", bool, where, default=False),
        )
    if not datasets:
        _fail("datasets", "at least one [datasets.<name>] table is required")

    peers = {}
    for name, table in _get(raw, "peers", dict, "", default={}).items():
        where = f"peers.{name}."
        if not _NAME.match(name) or not isinstance(table, dict):
            _fail(f"peers.{name}", "must be a table with a valid name")
        extra = set(table) - _PEER_KEYS
        if extra:
            _fail(where + sorted(extra)[0], "is not a known peer setting")
        token = _peer_token(table, where, "token", base_dir, environ)
        expires = _expiry(table, where, "expires")
        previous = previous_expires = None
        if {"previous_token", "previous_token_env", "previous_token_file"} & set(table):
            previous = _peer_token(table, where, "previous_token", base_dir, environ)
            previous_expires = _expiry(table, where, "previous_expires")
            if previous_expires is None:
                _fail(
                    where + "previous_expires",
                    "is required with a previous token: the date the old token stops "
                    "working (e.g. previous_expires = 2027-01-31), so that it does not "
                    "stay valid forever",
                )
            if previous == token:
                _fail(where + "previous_token", "is the same as the peer's token")
        elif "previous_expires" in table:
            _fail(where + "previous_expires", "needs a previous_token (or _env, _file)")
        allowed = _get(table, "datasets", list, where, default=None)
        if allowed is not None:
            for d in allowed:
                if d not in datasets:
                    _fail(where + "datasets", f"names unknown dataset {d!r}")
        peers[name] = PeerConfig(name, token, allowed, expires, previous, previous_expires)
    if not peers:
        _fail("peers", "at least one [peers.<name>] table is required")
    tokens = [t for p in peers.values() for t, _, _ in p.tokens()]
    if len(set(tokens)) != len(tokens):
        _fail("peers", "two peers share a token; give each peer its own")

    behind_proxy = _get(raw, "behind_tls_proxy", bool, "", default=False)
    if not is_loopback_host(host) and not behind_proxy:
        _fail(
            "bind",
            f"{host} is not a loopback address: the CLI serves plain HTTP, so put a "
            "TLS reverse proxy in front and set behind_tls_proxy = true, or serve "
            "party_server.wsgi with gunicorn and TLS certificates",
        )

    models = _get(raw, "models", dict, "", default={})
    audit = _get(raw, "audit", dict, "", default={})
    for table, where, known in (
        (models, "models.", {"max_models", "max_age_days"}),
        (audit, "audit.", {"fsync"}),
    ):
        extra = set(table) - known
        if extra:  # (a typo such as max_age_day would silently keep models forever)
            _fail(where + sorted(extra)[0], f"is not a known setting (known: {sorted(known)})")
    cfg = Config(
        party=party,
        host=host,
        port=port,
        state_dir=state_dir,
        datasets=datasets,
        peers=peers,
        max_body_bytes=_get(raw, "max_body_bytes", int, "", default=256 * 1024 * 1024),
        session_ttl=_get(raw, "session_ttl", float, "", default=3600.0),
        n_jobs=_get(raw, "n_jobs", int, "", default=1),
        min_key_length=_get(raw, "min_key_length", int, "", default=2048),
        threads=_get(raw, "threads", int, "", default=8),
        max_models=_get(models, "max_models", int, "models.", default=100),
        max_model_age_days=_get(models, "max_age_days", float, "models.", default=None),
        audit_fsync=_get(audit, "fsync", bool, "audit.", default=True),
        behind_tls_proxy=behind_proxy,
    )
    if cfg.max_body_bytes < 1024:
        _fail("max_body_bytes", "must be at least 1024")
    if cfg.session_ttl < 1:
        _fail("session_ttl", "must be at least 1 (seconds a session may stay idle)")
    if cfg.min_key_length < 1024:
        _fail("min_key_length", "must be at least 1024")
    if cfg.max_models < 1:
        _fail("models.max_models", "must be at least 1")
    if cfg.max_model_age_days is not None and cfg.max_model_age_days <= 0:
        _fail(
            "models.max_age_days",
            "must be positive (days a model is kept); leave it out to keep models until "
            "max_models pushes them out",
        )
    if not 1 <= cfg.threads <= 1024:
        _fail("threads", f"must be 1-1024 (threads serving requests), got {cfg.threads}")
    if cfg.n_jobs == 0:
        _fail("n_jobs", "must be a positive number of workers or -1 for all cores")
    return cfg


def load_config(path, environ=os.environ):
    """Read and validate a TOML config file (``environ``: see :func:`config_from_dict`)."""
    path = Path(path)
    cfg = config_from_dict(_read_toml(path), path.resolve().parent, environ)
    cfg.source = path.resolve()
    return cfg


def load_state_dir(path):
    """Only the ``state_dir`` of a config file (what the audit commands need).

    Reading the log needs neither the peers' tokens (which may live in environment
    variables a cron job does not have) nor the datasets.
    """
    path = Path(path)
    state_dir = Path(_get(_read_toml(path), "state_dir", str, ""))
    return state_dir if state_dir.is_absolute() else path.resolve().parent / state_dir


def _read_toml(path):
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; give the TOML file") from None
    except OSError as exc:  # permissions, a file in the path, an I/O error
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return raw
