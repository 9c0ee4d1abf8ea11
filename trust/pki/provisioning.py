"""A whole federation on one disk, in one call: for tests and local demonstrations.

Runs the same steps as the CLI — CA, then for every member enrol → sign →
install — with the CA folder next to the members' folders, which a real
deployment never does (the CA key stays offline). Deployment tests build their
fixture with :func:`provision_federation`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization

from .authority import init_authority, open_authority
from .enrolment import create_enrolment_request, install_certificate
from .identity import Identity, Role
from .issuance import issue_certificate, load_request
from .keyfiles import write_public_file
from .layout import AuthorityLayout, ClientLayout

__all__ = ["FederationPaths", "enrol_member", "provision_federation"]

GATEWAY_NAME: Final = "gateway"
DEFAULT_GATEWAY_HOSTS: Final = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class FederationPaths:
    """Where :func:`provision_federation` put everything."""

    root: Path
    federation: str
    authority: AuthorityLayout
    clients: Mapping[str, ClientLayout]
    operators: Mapping[str, ClientLayout]
    gateway: ClientLayout
    """The gateway's server certificate (role server) in a member layout."""

    @property
    def ca_certificate(self) -> Path:
        """The federation CA certificate."""
        return self.authority.ca_certificate

    @property
    def crl(self) -> Path:
        """The current CRL (reissued in place by revocations)."""
        return self.authority.crl


def enrol_member(
    authority_dir: Path,
    member_dir: Path,
    identity: Identity,
    *,
    days: int | None = None,
    hosts: Sequence[str] = (),
    trust_anchor: Path | None = None,
    app_bundles: Sequence[str] = (),
    require_client_anchors: bool = True,
    passphrase: bytes | None = None,
    now: datetime | None = None,
) -> ClientLayout:
    """Enrol one member end to end: key and CSR, issue from the CA, install."""
    layout = create_enrolment_request(member_dir, identity.federation, identity.name, identity.role)
    with open_authority(authority_dir, passphrase=passphrase) as authority:
        _, certificate = issue_certificate(
            authority, load_request(layout.request), identity, days=days, hosts=hosts, now=now
        )
    issued = layout.root / "issued.pem"
    write_public_file(issued, certificate.public_bytes(serialization.Encoding.PEM))
    install_certificate(
        layout.root,
        issued,
        AuthorityLayout(Path(authority_dir)).ca_certificate,
        trust_anchor=trust_anchor,
        app_bundles=app_bundles,
        require_client_anchors=require_client_anchors,
        now=now,
    )
    issued.unlink()
    return layout


def provision_federation(
    root: Path,
    federation: str,
    clients: Sequence[str] = (),
    operators: Sequence[str] = (),
    *,
    gateway_hosts: Sequence[str] = DEFAULT_GATEWAY_HOSTS,
    trust_anchor: Path | None = None,
    app_bundles: Sequence[str] = (),
    now: datetime | None = None,
) -> FederationPaths:
    """CA in ``root/ca``, clients in ``root/clients/<name>``, operators in
    ``root/operators/<name>``, the gateway's server certificate in ``root/gateway``.

    Clients get the trust anchor and app-bundle allow-list when given; a test of
    the PKI alone may leave both out (``ztfl client install-certificate`` never may).
    """
    root = Path(root)
    authority = init_authority(root / "ca", federation, now=now)
    anchors = trust_anchor is not None or bool(app_bundles)
    client_layouts = {
        name: enrol_member(
            authority.root,
            root / "clients" / name,
            Identity(federation, Role.CLIENT, name),
            trust_anchor=trust_anchor,
            app_bundles=app_bundles,
            require_client_anchors=anchors,
            now=now,
        )
        for name in clients
    }
    operator_layouts = {
        name: enrol_member(
            authority.root,
            root / "operators" / name,
            Identity(federation, Role.OPERATOR, name),
            now=now,
        )
        for name in operators
    }
    gateway = enrol_member(
        authority.root,
        root / GATEWAY_NAME,
        Identity(federation, Role.SERVER, GATEWAY_NAME),
        hosts=gateway_hosts,
        now=now,
    )
    return FederationPaths(root, federation, authority, client_layouts, operator_layouts, gateway)
