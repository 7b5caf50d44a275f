"""Federation handles, transports, the wire format and private set intersection."""

from ._federation import Federation, HostClient, InProcessFederation
from ._hostapi import HostContext, HostDataset, HostSession, ModelStoreAPI
from ._local import LocalFederation
from ._routes import ROUTES, Route, route, url_for
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
    "ROUTES",
    "Federation",
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
    "message_from_wire",
    "message_to_wire",
    "public_key_from_wire",
    "public_key_to_wire",
    "route",
    "url_for",
]
