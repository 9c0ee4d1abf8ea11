"""The federation PKI: a CA, certificates with SPIFFE-style identities and roles, revocation.

Safe verbs at the top (this module); the explicit primitives live in the
submodules (``identity``, ``verification``, ``authority``, ``issuance``,
``enrolment``, ``local_tls``, ``layout``). See docs/pki.md.
"""

from .identity import Identity, Role
from .verification import (
    CertificateRefusalReason,
    CertificateRefused,
    FederationTrust,
    public_key_der,
    verify_certificate,
)

__all__ = [
    "CertificateRefusalReason",
    "CertificateRefused",
    "FederationTrust",
    "Identity",
    "Role",
    "public_key_der",
    "verify_certificate",
]
