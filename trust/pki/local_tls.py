"""TLS for the loopback hop from the SuperNode to its sidecar, made at enrolment.

Flower's SuperNode refuses node authentication over plain HTTP, so even the hop
that never leaves the host is TLS. A throw-away local CA signs one server
certificate for 127.0.0.1, ::1 and localhost and is then forgotten (its key is
never written), so no one can mint another certificate the SuperNode would trust.
The CA is also name-constrained to those loopback names.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .authority import CLOCK_SKEW, SIGNATURE_HASH
from .keyfiles import generate_private_key, write_private_key, write_public_file
from .layout import LocalTlsLayout

__all__ = ["LOCAL_TLS_VALIDITY_DAYS", "LOOPBACK_HOSTS", "create_local_tls"]

LOCAL_TLS_VALIDITY_DAYS: Final = 397
LOOPBACK_HOSTS: Final = ("localhost", "127.0.0.1", "::1")


def create_local_tls(local_dir: Path, *, now: datetime | None = None) -> LocalTlsLayout:
    """Write ca.pem, server.pem and server-key.pem (0600) into ``local_dir`` (made 0700).

    Refuses to overwrite an existing server key; delete the folder to make new material.
    """
    layout = LocalTlsLayout(Path(local_dir))
    layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    not_after = moment + timedelta(days=LOCAL_TLS_VALIDITY_DAYS)
    ca_key = generate_private_key()  # kept in memory only
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ztfl loopback CA")])
    loopback: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
        x509.IPAddress(ipaddress.ip_network("::1/128")),
    ]
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(moment - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.NameConstraints(permitted_subtrees=loopback, excluded_subtrees=None),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, SIGNATURE_HASH)
    )
    server_key = generate_private_key()
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(moment - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, SIGNATURE_HASH)
    )
    write_private_key(layout.server_key, server_key)
    write_public_file(layout.server_certificate, server.public_bytes(serialization.Encoding.PEM))
    write_public_file(layout.ca_certificate, ca.public_bytes(serialization.Encoding.PEM))
    return layout
