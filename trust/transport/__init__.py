"""Authenticated transport shared by gateway and sidecar.

TLS contexts with fixed secure settings, request-path normalisation, and a streaming
HTTP/1.1 relay whose policy decides what is forwarded.
"""

from ztfl.trust.transport.http_relay import (
    Forward,
    HttpRelay,
    Peer,
    Reject,
    RelayFailure,
    RelayLimits,
    RelayPolicy,
    RelayServer,
    RequestHead,
    ResponseHead,
    ResponseInspector,
    UpstreamTarget,
)
from ztfl.trust.transport.request_path import (
    FLEET_API_PREFIX,
    PathRefusal,
    RequestPath,
    fleet_api_path,
    normalise_path,
)
from ztfl.trust.transport.tls_contexts import client_tls_context, server_tls_context

__all__ = [
    "FLEET_API_PREFIX",
    "Forward",
    "HttpRelay",
    "PathRefusal",
    "Peer",
    "Reject",
    "RelayFailure",
    "RelayLimits",
    "RelayPolicy",
    "RelayServer",
    "RequestHead",
    "RequestPath",
    "ResponseHead",
    "ResponseInspector",
    "UpstreamTarget",
    "client_tls_context",
    "fleet_api_path",
    "normalise_path",
    "server_tls_context",
]
