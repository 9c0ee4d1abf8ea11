"""Who a certificate speaks for: a SPIFFE-style ID ``spiffe://<federation>/<role>/<name>``.

The URI SAN is the one place a ztfl certificate states its identity; the gateway
and the sidecar read it through :meth:`Identity.parse`, which is strict (no
query, fragment, port, user info, percent-encoding, empty or dot segments), so
two spellings of one identity cannot exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = ["SPIFFE_SCHEME", "Identity", "Role", "validate_federation", "validate_name"]

SPIFFE_SCHEME: Final = "spiffe://"

# A SPIFFE trust domain is lower-case letters, digits, dots, dashes and underscores.
_FEDERATION_PATTERN: Final = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?")
# A name is one path segment; it also names files and Flower node records, so it stays plain.
_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})")


class Role(StrEnum):
    """What a certificate may do; the URI path's first segment."""

    CLIENT = "client"
    """A data holder's SuperNode: the Fleet API only."""
    OPERATOR = "operator"
    """A person or tool that runs the federation: the Control API."""
    SERVER = "server"
    """The coordinator's gateway, as a TLS server (serverAuth); never accepted as a client."""


def validate_federation(federation: str) -> str:
    """Return ``federation`` if it is a valid trust domain; ValueError otherwise."""
    if not isinstance(federation, str) or not _FEDERATION_PATTERN.fullmatch(federation):
        raise ValueError(
            f"federation {federation!r} is not a valid name: 1 to 63 lower-case letters, digits, "
            "'.', '-' or '_', starting and ending with a letter or digit"
        )
    if ".." in federation:
        raise ValueError(f"federation {federation!r} must not contain '..'")
    return federation


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid identity name; ValueError otherwise."""
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"name {name!r} is not valid: 1 to 63 letters, digits, '.', '-' or '_', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Identity:
    """A federation member: federation (trust domain), role and name; validated when built."""

    federation: str
    role: Role
    name: str

    def __post_init__(self) -> None:
        validate_federation(self.federation)
        try:
            object.__setattr__(self, "role", Role(self.role))
        except ValueError:
            raise ValueError(
                f"role {self.role!r} is not one of {', '.join(r.value for r in Role)}"
            ) from None
        validate_name(self.name)

    @property
    def spiffe_id(self) -> str:
        """``spiffe://<federation>/<role>/<name>``."""
        return f"{SPIFFE_SCHEME}{self.federation}/{self.role.value}/{self.name}"

    @classmethod
    def parse(cls, spiffe_id: str) -> Identity:
        """Parse a SPIFFE ID exactly as :attr:`spiffe_id` writes it; ValueError otherwise."""
        if not isinstance(spiffe_id, str):
            raise ValueError(f"a SPIFFE ID must be a string, got {type(spiffe_id).__name__}")
        if not spiffe_id.startswith(SPIFFE_SCHEME):
            raise ValueError(f"not a SPIFFE ID (spiffe://…): {spiffe_id[:80]!r}")
        parts = spiffe_id[len(SPIFFE_SCHEME) :].split("/")
        if len(parts) != 3:
            raise ValueError(
                f"a ztfl SPIFFE ID is spiffe://<federation>/<role>/<name>, got {spiffe_id[:120]!r}"
            )
        federation, role, name = parts
        try:
            parsed_role = Role(role)
        except ValueError:
            raise ValueError(
                f"role {role[:40]!r} in {spiffe_id[:120]!r} is not one of "
                f"{', '.join(r.value for r in Role)}"
            ) from None
        return cls(federation, parsed_role, name)

    def __str__(self) -> str:
        return self.spiffe_id
