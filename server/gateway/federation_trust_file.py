"""The federation CA and CRL as the gateway sees them: reloaded when the files change.

``ztfl pki revoke`` writes a new CRL; the operator copies it over the gateway's (an atomic
rename). The gateway compares the files' identity (device, inode, size, mtime) on every
request and reloads on any change, so a revocation takes effect at the affected client's
next request, on a kept-alive connection too, without a restart. It fails closed: while
the files cannot be read, are not signed by the CA, or would roll the CRL back to an older
number, every request is refused (BAD_CRL) until a good CRL appears; a CRL past its
``next_update`` is refused by the verification itself (STALE_CRL).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ztfl.trust.pki import CertificateRefusalReason, CertificateRefused, FederationTrust

__all__ = ["FederationTrustFile"]

_log = logging.getLogger(__name__)

_FileIdentity = tuple[int, int, int, int]


def _identity(path: Path) -> _FileIdentity | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


class FederationTrustFile:
    """The current ``FederationTrust`` of a CA file and a CRL file, reloaded on change."""

    def __init__(self, ca_path: Path, crl_path: Path) -> None:
        """Load both files now; raise ``CertificateRefused`` when they are not usable."""
        self._ca_path = Path(ca_path)
        self._crl_path = Path(crl_path)
        self._seen = (_identity(self._ca_path), _identity(self._crl_path))
        self._trust: FederationTrust = FederationTrust.load(self._ca_path, self._crl_path)
        self._failure: CertificateRefused | None = None

    @property
    def federation(self) -> str:
        """The federation (trust domain) of the CA."""
        return self._trust.federation

    def current(self) -> FederationTrust:
        """The trust to verify this request against; ``CertificateRefused`` while broken."""
        seen = (_identity(self._ca_path), _identity(self._crl_path))
        if seen != self._seen:
            self._seen = seen
            self._reload()
        if self._failure is not None:
            raise self._failure
        return self._trust

    def _reload(self) -> None:
        try:
            trust = FederationTrust.load(self._ca_path, self._crl_path)
            if trust.federation != self._trust.federation:
                raise CertificateRefused(
                    CertificateRefusalReason.WRONG_FEDERATION,
                    f"{self._ca_path} is now the CA of federation {trust.federation!r}",
                )
            if trust.crl_number < self._trust.crl_number:  # a replayed CRL un-revokes
                raise CertificateRefused(
                    CertificateRefusalReason.BAD_CRL,
                    f"{self._crl_path}: CRL number {trust.crl_number} is older than the "
                    f"current {self._trust.crl_number}",
                )
        except CertificateRefused as refusal:
            _log.error("federation trust unusable, refusing every request: %s", refusal)
            self._failure = refusal
            return
        if self._failure is not None:
            _log.warning("federation trust usable again (CRL number %d)", trust.crl_number)
        self._trust = trust
        self._failure = None
