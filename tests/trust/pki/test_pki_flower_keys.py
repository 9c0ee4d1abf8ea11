"""Flower 1.42 loads the enrolled key with its own loaders: node identity = certificate key."""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import public_key_to_bytes, uses_nist_ec_curve
from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

from ztfl.trust.pki.provisioning import FederationPaths


def test_supernode_loads_the_client_node_key(federation: FederationPaths) -> None:
    layout = federation.clients["alice"]
    arguments = argparse.Namespace(
        auth_supernode_private_key=str(layout.node_key), auth_supernode_public_key=None
    )
    loaded = _try_setup_client_authentication(arguments)
    assert loaded is not None
    private_key, public_key = loaded
    certificate = x509.load_pem_x509_certificate(layout.certificate.read_bytes())
    assert public_key_to_bytes(public_key) == certificate.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert uses_nist_ec_curve(private_key.public_key())


def test_flwr_supernode_register_loads_the_node_public_key(federation: FederationPaths) -> None:
    layout = federation.clients["alice"]
    registered = try_load_public_key(Path(layout.node_public_key))
    certificate = x509.load_pem_x509_certificate(layout.certificate.read_bytes())
    assert registered == certificate.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
