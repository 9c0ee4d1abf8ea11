"""The CA's issuance registry: every certificate issued, whether it is revoked, and the
CRL counter. One JSON file (``registry.json``), replaced atomically.

The CRL is derived from it (every revoked entry), so the registry is what an
operator backs up with the CA key. Entries hold public facts only: serial,
identity, validity, the SHA-256 of the public key, revocation.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from cryptography import x509

from ztfl.trust.durable_files import write_atomically

from .errors import PkiError, PkiErrorReason
from .identity import Identity, Role

__all__ = [
    "REGISTRY_FORMAT",
    "IssuedCertificate",
    "Registry",
    "RevocationReason",
    "read_registry",
    "write_registry",
]

REGISTRY_FORMAT: Final = "ztfl-pki-registry"
REGISTRY_VERSION: Final = 1


class RevocationReason(StrEnum):
    """Why a certificate was revoked; written into the CRL entry (RFC 5280 reason codes)."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "key_compromise"
    AFFILIATION_CHANGED = "affiliation_changed"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessation_of_operation"

    @property
    def flag(self) -> x509.ReasonFlags:
        """The RFC 5280 reason flag."""
        return {
            RevocationReason.UNSPECIFIED: x509.ReasonFlags.unspecified,
            RevocationReason.KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
            RevocationReason.AFFILIATION_CHANGED: x509.ReasonFlags.affiliation_changed,
            RevocationReason.SUPERSEDED: x509.ReasonFlags.superseded,
            RevocationReason.CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
        }[self]


@dataclass(frozen=True)
class IssuedCertificate:
    """One registry entry."""

    serial: int
    identity: Identity
    not_before: datetime
    not_after: datetime
    public_key_sha256: str
    revoked_at: datetime | None = None
    revocation_reason: RevocationReason | None = None

    @property
    def revoked(self) -> bool:
        """Whether the certificate is on the CRL."""
        return self.revoked_at is not None

    @property
    def serial_hex(self) -> str:
        """The serial as lower-case hex: how the CLI names it."""
        return f"{self.serial:x}"

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in the registry."""
        return {
            "serial": self.serial_hex,
            "spiffe_id": self.identity.spiffe_id,
            "role": self.identity.role.value,
            "name": self.identity.name,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "public_key_sha256": self.public_key_sha256,
            "revoked": self.revoked,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "revocation_reason": self.revocation_reason.value if self.revocation_reason else None,
        }

    @classmethod
    def from_json(cls, item: Any) -> IssuedCertificate:
        """Parse one entry; ValueError/KeyError/TypeError on anything malformed."""
        revoked_at = item["revoked_at"]
        reason = item["revocation_reason"]
        return cls(
            serial=int(item["serial"], 16),
            identity=Identity.parse(item["spiffe_id"]),
            not_before=_aware(item["not_before"]),
            not_after=_aware(item["not_after"]),
            public_key_sha256=str(item["public_key_sha256"]),
            revoked_at=_aware(revoked_at) if revoked_at is not None else None,
            revocation_reason=RevocationReason(reason) if reason is not None else None,
        )


def _aware(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time without a time zone: {text!r}")
    return moment


@dataclass(frozen=True)
class Registry:
    """The whole registry: the federation, CRL settings and every issued certificate."""

    federation: str
    crl_validity_days: int
    crl_number: int
    certificates: tuple[IssuedCertificate, ...] = ()

    def find(self, target: str) -> list[IssuedCertificate]:
        """Entries matching a serial (hex), a SPIFFE ID or a bare name (any role)."""
        text = target.strip()
        if text.startswith("spiffe://"):
            identity = Identity.parse(text)
            return [item for item in self.certificates if item.identity == identity]
        by_name = [item for item in self.certificates if item.identity.name == text]
        if by_name:
            return by_name
        try:
            serial = int(text.lower().removeprefix("0x").replace(":", ""), 16)
        except ValueError:
            return []
        return [item for item in self.certificates if item.serial == serial]

    def get(self, serial: int) -> IssuedCertificate | None:
        """The entry for ``serial``, if any."""
        return next((item for item in self.certificates if item.serial == serial), None)

    def with_certificate(self, entry: IssuedCertificate) -> Registry:
        """A registry with ``entry`` added, or replacing the entry with its serial."""
        others = tuple(item for item in self.certificates if item.serial != entry.serial)
        if len(others) == len(self.certificates):
            return replace(self, certificates=(*self.certificates, entry))
        return replace(
            self,
            certificates=tuple(
                entry if item.serial == entry.serial else item for item in self.certificates
            ),
        )

    def revoked(self) -> Iterable[IssuedCertificate]:
        """Every revoked entry (what the CRL lists)."""
        return (item for item in self.certificates if item.revoked)

    def roles_named(self, name: str) -> set[Role]:
        """The roles under which ``name`` holds certificates."""
        return {item.identity.role for item in self.certificates if item.identity.name == name}


def write_registry(path: Path, registry: Registry) -> None:
    """Replace the registry file atomically."""
    document = {
        "format": REGISTRY_FORMAT,
        "version": REGISTRY_VERSION,
        "federation": registry.federation,
        "crl_validity_days": registry.crl_validity_days,
        "crl_number": registry.crl_number,
        "certificates": [item.to_json() for item in registry.certificates],
    }
    write_atomically(Path(path), (json.dumps(document, indent=2) + "\n").encode("utf-8"))


def read_registry(path: Path) -> Registry:
    """Parse the registry; PkiError(BAD_FILE) naming the file on any problem."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("format") != REGISTRY_FORMAT or document.get("version") != REGISTRY_VERSION:
            raise ValueError(f"not a {REGISTRY_FORMAT} version {REGISTRY_VERSION} file")
        return Registry(
            federation=str(document["federation"]),
            crl_validity_days=int(document["crl_validity_days"]),
            crl_number=int(document["crl_number"]),
            certificates=tuple(IssuedCertificate.from_json(i) for i in document["certificates"]),
        )
    except OSError as error:
        raise PkiError(
            PkiErrorReason.BAD_FILE, f"cannot read the registry {path}: {error.strerror or error}"
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise PkiError(PkiErrorReason.BAD_FILE, f"{path}: malformed registry ({error})") from None
