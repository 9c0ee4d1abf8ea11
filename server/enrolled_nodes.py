"""Which node keys the SuperLink should know: the keys of the federation's client certificates.

A client's certificate key is its SuperNode's node key (docs/pki.md), so the coordinator
needs no separate list: every certificate in the CA folder's ``issued/`` that verifies now
with role ``client`` (chained to the CA, valid, not on the CRL) names a node to register.
The CA folder here may be a copy of its public part only (``ca.pem``, ``crl.pem``,
``issued/``); the CA key never has to be on the coordinator host.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ztfl.client.launch_error import LaunchError, LaunchErrorReason
from ztfl.trust.pki import (
    AuthorityLayout,
    CertificateRefused,
    FederationTrust,
    Identity,
    Role,
    verify_certificate,
)
from ztfl.trust.pki.keyfiles import write_public_file
from ztfl.trust.pki.verification import load_certificate_pem

__all__ = ["EnrolledNode", "enrolled_nodes", "write_node_key"]


@dataclass(frozen=True)
class EnrolledNode:
    """A client that may run a SuperNode: its identity and its (node) public key."""

    identity: Identity
    public_key: ec.EllipticCurvePublicKey

    def openssh_public_key(self) -> bytes:
        """The key as ``flwr supernode register`` reads it, with the SPIFFE ID as comment."""
        key = self.public_key.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        return key + f" {self.identity.spiffe_id}\n".encode()


def enrolled_nodes(ca_dir: Path) -> list[EnrolledNode]:
    """The clients whose certificate verifies now, one per key, ordered by name.

    LaunchError(MISSING_FILE) when the CA certificate or CRL is missing, (BAD_CONFIG) when
    they do not verify (a stale CRL, another federation's).
    """
    layout = AuthorityLayout(Path(ca_dir))
    for path in (layout.ca_certificate, layout.crl):
        if not path.is_file():
            raise LaunchError(LaunchErrorReason.MISSING_FILE, f"{path} is missing")
    try:
        trust = FederationTrust.load(layout.ca_certificate, layout.crl)
        trust.check_crl_fresh()
    except CertificateRefused as refusal:
        raise LaunchError(LaunchErrorReason.BAD_CONFIG, refusal.message) from None
    nodes: dict[bytes, EnrolledNode] = {}
    issued = sorted(layout.issued.glob("*.pem")) if layout.issued.is_dir() else []
    for path in issued:
        try:
            certificate = load_certificate_pem(path.read_bytes(), path)
            identity = verify_certificate(certificate, trust, required_role=Role.CLIENT)
        except (CertificateRefused, OSError):
            continue  # an operator's, the gateway's, a revoked or expired certificate
        public_key = certificate.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            continue
        der = public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        nodes[der] = EnrolledNode(identity, public_key)
    return sorted(nodes.values(), key=lambda node: node.identity.name)


def write_node_key(folder: Path, node: EnrolledNode) -> Path:
    """Write ``node``'s OpenSSH public key into ``folder`` for ``flwr supernode register``."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{node.identity.name}.pub"
    write_public_file(path, node.openssh_public_key())
    return path
