"""The party server: the small Flask app each organisation runs.

``create_app(config)`` builds the app; ``party-server --config host.toml`` (or
``python -m party_server --config host.toml``) serves it with waitress; for TLS, run
``party_server.wsgi:app`` under gunicorn with certificates or put a TLS proxy in front.
"""

from ._app import create_app
from ._audit import summarize as summarize_audit_log
from ._audit import verify as verify_audit_log
from ._config import Config, ConfigError, load_config

__all__ = [
    "Config",
    "ConfigError",
    "create_app",
    "load_config",
    "summarize_audit_log",
    "verify_audit_log",
]
