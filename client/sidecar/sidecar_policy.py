"""What the sidecar relays: POSTs to the Fleet API, get-fab inspected, nothing else.

The SuperNode on this host is the only expected caller (the sidecar listens on loopback),
but the sidecar lends it the client's certificate, so it relays no more than a SuperNode
needs: canonical ``/v1/fleet/<endpoint>`` POSTs. App bundles are asked for without
content coding, so the bytes inspected are the bytes the SuperNode would run.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Final

from ztfl.client.sidecar.app_bundle_check import AppBundleCheck
from ztfl.trust.transport import (
    Forward,
    PathRefusal,
    Peer,
    Reject,
    RelayFailure,
    RequestHead,
    fleet_api_path,
)

__all__ = ["GET_FAB_PATH", "SidecarPolicy"]

_log = logging.getLogger(__name__)

GET_FAB_PATH: Final = "/v1/fleet/get-fab"


class SidecarPolicy:
    """The relay policy of the sidecar (see the module docstring)."""

    def __init__(self, app_bundle_check: AppBundleCheck, max_request_bytes: int) -> None:
        self._app_bundle_check = app_bundle_check
        self._max_request_bytes = max_request_bytes

    async def decide(self, request: RequestHead, peer: Peer) -> Forward | Reject:
        """Forward a Fleet API POST (inspecting get-fab); refuse anything else."""
        path = fleet_api_path(request.target)
        if isinstance(path, PathRefusal) or request.method != "POST":
            reason = path if isinstance(path, PathRefusal) else PathRefusal.NOT_FLEET_API
            _log.warning("refused %s %s: %s", request.method, request.target[:200], reason.value)
            foreign = reason is PathRefusal.NOT_FLEET_API
            return Reject(HTTPStatus.FORBIDDEN if foreign else HTTPStatus.BAD_REQUEST, reason)
        if path.path != GET_FAB_PATH:
            return Forward(path.target, request.headers, self._max_request_bytes)
        headers = tuple((k, v) for k, v in request.headers if k != "accept-encoding")
        return Forward(
            path.target,
            (*headers, ("accept-encoding", "identity")),
            self._max_request_bytes,
            inspector=self._app_bundle_check,
        )

    async def relay_refused(
        self, request: RequestHead | None, peer: Peer, failure: RelayFailure
    ) -> None:
        """Log the relay's refusals (the gateway audits the coordinator side)."""
        target = request.target[:200] if request else "-"
        _log.warning("request %s not relayed: %s", target, failure.value)
