"""The party server's HTTP routes, defined once for the client and the server.

Each session route names the *host half* that answers it: a plain function
``handler(ctx: HostContext, msg: Message) -> Message`` in fedsk. The party server
resolves the dotted path, so it holds no algorithm code itself.
"""

from dataclasses import dataclass

__all__ = ["ON_SESSION_OPEN", "ROUTES", "Route", "route", "url_for"]


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str
    handler: str = ""  # "module:function" of the host half; "" = served by the server itself

    @property
    def session_scoped(self):
        return "<session_id>" in self.path


ROUTES = (
    Route("health", "GET", "/v1/health"),
    Route("sessions.create", "POST", "/v1/sessions"),
    Route("sessions.delete", "DELETE", "/v1/sessions/<session_id>"),
    Route("models.get", "GET", "/v1/models/<model_id>"),
    Route("models.delete", "DELETE", "/v1/models/<model_id>"),
    # private set intersection (every session starts with it)
    Route(
        "psi.exchange",
        "POST",
        "/v1/sessions/<session_id>/psi",
        "fedsk.federation._psi:host_exchange",
    ),
    Route(
        "psi.intersection",
        "POST",
        "/v1/sessions/<session_id>/intersection",
        "fedsk.federation._psi:host_intersection",
    ),
    # SecureBoost
    Route(
        "secureboost.setup",
        "POST",
        "/v1/sessions/<session_id>/boosting",
        "fedsk.ensemble._host:setup",
    ),
    Route(
        "secureboost.gradients",
        "POST",
        "/v1/sessions/<session_id>/gradients",
        "fedsk.ensemble._host:gradients",
    ),
    Route(
        "secureboost.histograms",
        "POST",
        "/v1/sessions/<session_id>/histograms",
        "fedsk.ensemble._host:histograms",
    ),
    Route(
        "secureboost.splits",
        "POST",
        "/v1/sessions/<session_id>/splits",
        "fedsk.ensemble._host:splits",
    ),
    Route(
        "secureboost.decisions",
        "POST",
        "/v1/sessions/<session_id>/decisions",
        "fedsk.ensemble._host:decisions",
    ),
    # logistic regression
    Route(
        "logistic.setup",
        "POST",
        "/v1/sessions/<session_id>/linear",
        "fedsk.linear_model._host:setup",
    ),
    Route(
        "logistic.step",
        "POST",
        "/v1/sessions/<session_id>/linear/steps",
        "fedsk.linear_model._host:step",
    ),
    Route(
        "logistic.scores",
        "POST",
        "/v1/sessions/<session_id>/linear/scores",
        "fedsk.linear_model._host:scores",
    ),
    # federated statistics
    Route(
        "pearson.products",
        "POST",
        "/v1/sessions/<session_id>/pearson",
        "fedsk.stats._host:products",
    ),
    Route(
        "pearson.result",
        "POST",
        "/v1/sessions/<session_id>/pearson/result",
        "fedsk.stats._host:result",
    ),
)

# Host halves the party server calls as soon as a session opens (before answering), with
# the new session's context and the opening message: work that depends only on the
# session starts there. A hook may return fields to add to the answer.
ON_SESSION_OPEN = ("fedsk.federation._psi:host_open",)

_BY_NAME = {r.name: r for r in ROUTES}


def route(name):
    """The :class:`Route` called ``name``."""
    return _BY_NAME[name]


def url_for(name, **params):
    """Path of route ``name`` with its ``<param>`` placeholders filled in."""
    path = _BY_NAME[name].path
    for key, value in params.items():
        path = path.replace(f"<{key}>", str(value))
    if "<" in path:
        raise ValueError(f"missing parameters for route {name!r}: {path}")
    return path
