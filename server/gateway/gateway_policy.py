"""The gateway's decision for each request: admit the certificate, then the request.

In order, every request, on every connection, kept-alive or not:

1. the client certificate verified against the federation CA and the *current* CRL, role
   ``client`` (NODE_REFUSED with the PKI's reason; 403, or 503 while the CRL is unusable);
2. the identity's token bucket (REQUEST_REFUSED ``rate_limited``; 429);
3. POST to one canonical ``/v1/fleet/<endpoint>`` path (REQUEST_REFUSED with the path
   reason; 405, 403 for a foreign path, 400 for an ambiguous one);
4. the ``flwr-public-key`` header equal to the certificate's key (REQUEST_REFUSED; 403);
5. the body within ``max_request_bytes`` (the relay refuses 413; REQUEST_REFUSED).

Nothing else reaches the SuperLink: no Control API, no Runtime API, no health endpoint,
whatever the certificate's role. Operators use the Control API on the coordinator host's
loopback (docs/gateway.md).
"""

from __future__ import annotations

import logging
from enum import Enum
from http import HTTPStatus
from typing import Final

from cryptography import x509

from ztfl.server.gateway.federation_trust_file import FederationTrustFile
from ztfl.server.gateway.node_key import NODE_KEY_HEADER, check_node_key
from ztfl.server.gateway.rate_limit import TokenBucketLimiter
from ztfl.server.gateway.refusal import HandshakeRefusalReason, RequestRefusalReason
from ztfl.server.gateway.refusal_audit import RefusalAuditor
from ztfl.trust.audit import AuditEventKind
from ztfl.trust.pki import (
    CertificateRefusalReason,
    CertificateRefused,
    Role,
    public_key_der,
    verify_certificate,
)
from ztfl.trust.pki.verification import certificate_identity
from ztfl.trust.transport import (
    Forward,
    PathRefusal,
    Peer,
    Reject,
    RelayFailure,
    RequestHead,
    fleet_api_path,
)

__all__ = ["GatewayPolicy"]

_log = logging.getLogger(__name__)

_TRUST_UNAVAILABLE: Final = frozenset(
    {CertificateRefusalReason.BAD_CRL, CertificateRefusalReason.STALE_CRL}
)
# Relay refusals caused by the client (audited); upstream failures are the coordinator's
# own trouble, logged but not refusals of anyone.
_CLIENT_FAILURES: Final = frozenset(
    {
        RelayFailure.MALFORMED_REQUEST,
        RelayFailure.AMBIGUOUS_FRAMING,
        RelayFailure.HEADERS_TOO_LARGE,
        RelayFailure.BODY_TOO_LARGE,
        RelayFailure.CLIENT_TIMEOUT,
    }
)
# OpenSSL's verification messages, mapped to the reasons the per-request check would give.
_VERIFY_MESSAGES: Final = {
    "certificate has expired": CertificateRefusalReason.EXPIRED,
    "certificate is not yet valid": CertificateRefusalReason.NOT_YET_VALID,
    "unable to get local issuer certificate": CertificateRefusalReason.UNTRUSTED_ISSUER,
    "self-signed certificate": CertificateRefusalReason.UNTRUSTED_ISSUER,
    "self signed certificate": CertificateRefusalReason.UNTRUSTED_ISSUER,
    "certificate signature failure": CertificateRefusalReason.UNTRUSTED_ISSUER,
    "unsupported certificate purpose": CertificateRefusalReason.WRONG_ROLE,
}


def handshake_refusal_reason(error: Exception) -> Enum:
    """The audit reason for a failed TLS handshake."""
    message = str(getattr(error, "verify_message", "") or "").lower()
    for text, reason in _VERIFY_MESSAGES.items():
        if text in message:
            return reason
    if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in str(error).upper():
        return HandshakeRefusalReason.NO_CLIENT_CERTIFICATE
    return HandshakeRefusalReason.TLS_HANDSHAKE_FAILED


class GatewayPolicy:
    """The relay policy of the gateway (see the module docstring for the order of checks)."""

    def __init__(
        self,
        trust: FederationTrustFile,
        limiter: TokenBucketLimiter,
        auditor: RefusalAuditor,
        max_request_bytes: int,
    ) -> None:
        self._trust = trust
        self._limiter = limiter
        self._auditor = auditor
        self._max_request_bytes = max_request_bytes

    async def decide(self, request: RequestHead, peer: Peer) -> Forward | Reject:
        """Forward a Fleet API request of an admitted client, or refuse and audit it."""
        if peer.certificate_der is None:  # unreachable with CERT_REQUIRED; fail closed anyway
            await self._refuse_node(peer, None, HandshakeRefusalReason.NO_CLIENT_CERTIFICATE, "")
            return Reject(HTTPStatus.UNAUTHORIZED, HandshakeRefusalReason.NO_CLIENT_CERTIFICATE)
        try:
            certificate = x509.load_der_x509_certificate(peer.certificate_der)
            identity = verify_certificate(
                certificate, self._trust.current(), required_role=Role.CLIENT
            )
        except CertificateRefused as refusal:
            await self._refuse_node(peer, peer.certificate_der, refusal.reason, request.target)
            status = (
                HTTPStatus.SERVICE_UNAVAILABLE
                if refusal.reason in _TRUST_UNAVAILABLE
                else HTTPStatus.FORBIDDEN
            )
            return Reject(status, refusal.reason)
        except ValueError:
            reason = CertificateRefusalReason.MALFORMED
            await self._refuse_node(peer, None, reason, request.target)
            return Reject(HTTPStatus.FORBIDDEN, reason)
        spiffe_id = identity.spiffe_id
        early: Reject | None = None
        if not self._limiter.allow(spiffe_id):
            early = Reject(HTTPStatus.TOO_MANY_REQUESTS, RequestRefusalReason.RATE_LIMITED)
        elif request.method != "POST":
            early = Reject(HTTPStatus.METHOD_NOT_ALLOWED, RequestRefusalReason.METHOD_NOT_ALLOWED)
        if early is not None:
            await self._refuse_request(peer, spiffe_id, request, early.reason)
            return early
        path = fleet_api_path(request.target)
        if isinstance(path, PathRefusal):
            status = (
                HTTPStatus.FORBIDDEN
                if path is PathRefusal.NOT_FLEET_API
                else HTTPStatus.BAD_REQUEST
            )
            await self._refuse_request(peer, spiffe_id, request, path)
            return Reject(status, path)
        key_refusal = check_node_key(request.values(NODE_KEY_HEADER), public_key_der(certificate))
        if key_refusal is not None:
            await self._refuse_request(peer, spiffe_id, request, key_refusal)
            return Reject(HTTPStatus.FORBIDDEN, key_refusal)
        return Forward(path.target, request.headers, self._max_request_bytes)

    async def relay_refused(
        self, request: RequestHead | None, peer: Peer, failure: RelayFailure
    ) -> None:
        """Audit the relay's refusals that the client caused; log the upstream's failures."""
        if failure not in _CLIENT_FAILURES:
            _log.warning("request from %s not relayed: %s", peer.address, failure.value)
            return
        await self._refuse_request(peer, self._claimed_identity(peer), request, failure)

    async def handshake_failed(self, address: str, error: Exception) -> None:
        """Audit a failed TLS handshake, aggregated per reason and source address."""
        reason = handshake_refusal_reason(error)
        source = address.rsplit(":", 1)[0]
        details = {"peer": source, "tls_error": str(error)[:200]}
        await self._auditor.record(
            AuditEventKind.NODE_REFUSED,
            reason,
            details,
            aggregate_key=f"handshake|{reason.value}|{source}",
        )

    async def close(self) -> None:
        """Write the suppressed counts of open aggregation windows."""
        await self._auditor.flush_all()

    @staticmethod
    def _claimed_identity(peer: Peer) -> str | None:
        if peer.certificate_der is None:
            return None
        try:
            certificate = x509.load_der_x509_certificate(peer.certificate_der)
            return certificate_identity(certificate).spiffe_id
        except (ValueError, CertificateRefused):
            return None

    async def _refuse_node(
        self, peer: Peer, certificate_der: bytes | None, reason: Enum, target: str
    ) -> None:
        details: dict[str, object] = {"peer": peer.address, "path": target[:200]}
        if certificate_der is not None:
            certificate = x509.load_der_x509_certificate(certificate_der)
            details["certificate_serial"] = format(certificate.serial_number, "x")
            details["identity"] = self._claimed_identity(peer)
        await self._auditor.record(AuditEventKind.NODE_REFUSED, reason, details)

    async def _refuse_request(
        self, peer: Peer, spiffe_id: str | None, request: RequestHead | None, reason: Enum
    ) -> None:
        details = {
            "identity": spiffe_id,
            "peer": peer.address,
            "method": request.method if request else None,
            "path": request.target[:200] if request else None,
        }
        aggregate = f"rate|{spiffe_id}" if reason is RequestRefusalReason.RATE_LIMITED else None
        await self._auditor.record(
            AuditEventKind.REQUEST_REFUSED, reason, details, aggregate_key=aggregate
        )
