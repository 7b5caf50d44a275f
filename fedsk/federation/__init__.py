"""Federation handles, transports, the wire format and private set intersection."""

from ._federation import Federation, HostClient, InProcessFederation
from ._guest import (
    GuestSession,
    aligned_sessions,
    check_federated_X,
    check_key_and_workers,
    columnless,
    in_model_order,
    keyed_sessions,
    sample_ids,
    unique_ids,
)
from ._hostapi import (
    HostContext,
    HostDataset,
    HostSession,
    ModelStoreAPI,
    aligned_rows,
    model_columns,
)
from ._local import LocalFederation
from ._routes import ON_SESSION_OPEN, ROUTES, Route, route, url_for
from ._transport import HttpTransport, InProcessTransport, Transport
from ._wire import (
    CONTENT_TYPE,
    Message,
    message_from_wire,
    message_to_wire,
    public_key_from_wire,
    public_key_to_wire,
)

__all__ = [
    "CONTENT_TYPE",
    "ON_SESSION_OPEN",
    "ROUTES",
    "Federation",
    "GuestSession",
    "HostClient",
    "HostContext",
    "HostDataset",
    "HostSession",
    "HttpTransport",
    "InProcessFederation",
    "InProcessTransport",
    "LocalFederation",
    "Message",
    "ModelStoreAPI",
    "Route",
    "Transport",
    "aligned_rows",
    "aligned_sessions",
    "check_federated_X",
    "check_key_and_workers",
    "columnless",
    "in_model_order",
    "keyed_sessions",
    "message_from_wire",
    "message_to_wire",
    "model_columns",
    "public_key_from_wire",
    "public_key_to_wire",
    "route",
    "sample_ids",
    "unique_ids",
    "url_for",
]
