"""The federation PKI: a CA, certificates with SPIFFE-style identities and roles, revocation.

Safe verbs with secure defaults here; the explicit primitives live in the
submodules (``identity``, ``verification``, ``authority``, ``issuance``,
``enrolment``, ``local_tls``, ``keyfiles``, ``registry``, ``layout``,
``provisioning``). See docs/pki.md.
"""

from .authority import init_authority, open_authority, reissue_crl
from .enrolment import create_enrolment_request, install_certificate, read_app_bundle_allow_list
from .errors import PkiError, PkiErrorReason
from .identity import Identity, Role
from .issuance import issue_certificate, renew_certificate, revoke_certificate
from .keyfiles import check_private_key_file, read_private_key
from .layout import AuthorityLayout, ClientLayout, LocalTlsLayout
from .registry import RevocationReason
from .verification import (
    CertificateRefusalReason,
    CertificateRefused,
    FederationTrust,
    certificate_identity,
    public_key_der,
    verify_certificate,
)

__all__ = [
    "AuthorityLayout",
    "CertificateRefusalReason",
    "CertificateRefused",
    "ClientLayout",
    "FederationTrust",
    "Identity",
    "LocalTlsLayout",
    "PkiError",
    "PkiErrorReason",
    "RevocationReason",
    "Role",
    "certificate_identity",
    "check_private_key_file",
    "create_enrolment_request",
    "init_authority",
    "install_certificate",
    "issue_certificate",
    "open_authority",
    "public_key_der",
    "read_app_bundle_allow_list",
    "read_private_key",
    "reissue_crl",
    "renew_certificate",
    "revoke_certificate",
    "verify_certificate",
]
