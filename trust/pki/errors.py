"""Why a PKI operation could not be done: one exception, one enum of reasons.

Verification outcomes are :class:`~ztfl.trust.pki.verification.CertificateRefused`;
these are the operator's and the enrolling client's problems: files, modes,
requests that ask for something other than what was approved.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["PkiError", "PkiErrorReason"]


class PkiErrorReason(StrEnum):
    """What went wrong; stable values for scripts and the audit log."""

    KEY_FILE_PERMISSIONS = "key_file_permissions"
    """A private key file is readable by its group or by others."""
    BAD_KEY = "bad_key"
    """A key file is unreadable, encrypted without a passphrase, or not ECDSA P-384."""
    BAD_FILE = "bad_file"
    """A certificate, request, registry or anchor file is missing or malformed."""
    ALREADY_EXISTS = "already_exists"
    """The operation would overwrite a CA, a key or an enrolment."""
    BAD_REQUEST_SIGNATURE = "bad_request_signature"
    """A CSR whose signature does not verify: its key holder did not make it."""
    IDENTITY_MISMATCH = "identity_mismatch"
    """The CSR or certificate names another identity than the one approved or enrolled."""
    KEY_MISMATCH = "key_mismatch"
    """The certificate is not for this client's key, or the CA key is not the CA's."""
    UNTRUSTED = "untrusted"
    """The certificate does not chain to the given CA, or is not valid now."""
    UNKNOWN_CERTIFICATE = "unknown_certificate"
    """No certificate in the registry matches the serial or name."""
    AMBIGUOUS = "ambiguous"
    """A name that matches several identities; give the SPIFFE ID or the serial."""
    ALREADY_REVOKED = "already_revoked"
    """The certificate is revoked; it cannot be renewed or revoked again."""
    BAD_VALUE = "bad_value"
    """A lifetime, host, hash or name outside what is allowed."""


class PkiError(Exception):
    """A PKI operation was refused; ``reason`` says why, the message says what to do."""

    def __init__(self, reason: PkiErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
