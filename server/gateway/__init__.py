"""The policy enforcement point: the mutual-TLS gateway in front of the SuperLink.

``Gateway(GatewayConfig(...))`` with ``start()``/``stop()`` or ``serve()``; ``run_gateway``
for the CLI; ``python -m ztfl.server.gateway`` from a shell. docs/gateway.md.
"""

from ztfl.server.gateway.config import GatewayConfig
from ztfl.server.gateway.gateway import Gateway, run_gateway
from ztfl.server.gateway.health import HEALTH_PATH
from ztfl.server.gateway.refusal import HandshakeRefusalReason, RequestRefusalReason

__all__ = [
    "HEALTH_PATH",
    "Gateway",
    "GatewayConfig",
    "HandshakeRefusalReason",
    "RequestRefusalReason",
    "run_gateway",
]
