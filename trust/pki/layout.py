"""Where each party's PKI files live: one layout per role, shared by every component.

The CA operator's folder, a client's (or operator's) enrolment folder and its
loopback TLS subfolder. The gateway, the sidecar and the launchers take a folder
and read the paths here, so nobody spells a file name twice. docs/pki.md shows
the same trees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["AuthorityLayout", "ClientLayout", "LocalTlsLayout"]


@dataclass(frozen=True)
class AuthorityLayout:
    """The CA folder (``ztfl pki init --dir``): keep it, and above all ca-key.pem, offline."""

    root: Path

    @property
    def ca_certificate(self) -> Path:
        """``ca.pem``: the federation CA certificate; public, given to every party."""
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        """``ca-key.pem``: the CA private key (0600, optionally passphrase-encrypted)."""
        return self.root / "ca-key.pem"

    @property
    def crl(self) -> Path:
        """``crl.pem``: the current signed CRL; copy it to the gateway after each change."""
        return self.root / "crl.pem"

    @property
    def registry(self) -> Path:
        """``registry.json``: every certificate issued, with its state."""
        return self.root / "registry.json"

    @property
    def issued(self) -> Path:
        """``issued/``: a copy of every issued certificate, named ``<serial hex>.pem``."""
        return self.root / "issued"

    @property
    def lock(self) -> Path:
        """``.lock``: serialises issuing and revoking, so no registry update is lost."""
        return self.root / ".lock"

    def issued_certificate(self, serial: int) -> Path:
        """The copy of the certificate with ``serial``."""
        return self.issued / f"{serial:x}.pem"


@dataclass(frozen=True)
class LocalTlsLayout:
    """``<client>/local/``: TLS for the loopback hop SuperNode → sidecar (never leaves the host)."""

    root: Path

    @property
    def ca_certificate(self) -> Path:
        """``ca.pem``: the local CA; the SuperNode's ``--root-certificates``. Its key is
        discarded once the server certificate is signed, so nothing else can be minted."""
        return self.root / "ca.pem"

    @property
    def server_certificate(self) -> Path:
        """``server.pem``: the sidecar's server certificate for 127.0.0.1, ::1 and localhost."""
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        """``server-key.pem``: its private key (0600)."""
        return self.root / "server-key.pem"


@dataclass(frozen=True)
class ClientLayout:
    """An enrolment folder (``ztfl client enrol --dir``), for a client or an operator."""

    root: Path

    @property
    def enrolment(self) -> Path:
        """``enrolment.json``: the identity this folder asked for (federation, role, name)."""
        return self.root / "enrolment.json"

    @property
    def key(self) -> Path:
        """``key.pem``: the private key, PKCS#8 PEM (0600): the sidecar's TLS client key."""
        return self.root / "key.pem"

    @property
    def node_key(self) -> Path:
        """``node-key``: the same key in OpenSSH format (0600), for Flower's SuperNode
        ``--auth-supernode-private-key``: transport identity and node identity are one key."""
        return self.root / "node-key"

    @property
    def node_public_key(self) -> Path:
        """``node-key.pub``: OpenSSH public key, for ``flwr supernode register``."""
        return self.root / "node-key.pub"

    @property
    def request(self) -> Path:
        """``request.csr.pem``: the CSR to take to the CA operator."""
        return self.root / "request.csr.pem"

    @property
    def certificate(self) -> Path:
        """``certificate.pem``: the issued certificate, after ``install-certificate``."""
        return self.root / "certificate.pem"

    @property
    def ca_certificate(self) -> Path:
        """``ca.pem``: the federation CA; the sidecar verifies the gateway with it."""
        return self.root / "ca.pem"

    @property
    def trust_anchor_dir(self) -> Path:
        """``trust-anchor/``: the coordinator's model-signing anchor and the keys it names."""
        return self.root / "trust-anchor"

    @property
    def trust_anchor(self) -> Path:
        """``trust-anchor/trust-anchor.toml``: the ClientApp's ``--node-config trust-anchor``."""
        return self.trust_anchor_dir / "trust-anchor.toml"

    @property
    def app_bundle_allow_list(self) -> Path:
        """``app-bundles.json``: SHA-256 of the app bundles (FABs) this client agreed to run."""
        return self.root / "app-bundles.json"

    @property
    def local(self) -> LocalTlsLayout:
        """``local/``: the loopback TLS material."""
        return LocalTlsLayout(self.root / "local")
