"""The client sidecar: presents the client certificate to the gateway and enforces the
app-bundle allow-list.

``Sidecar(SidecarConfig.from_client_dir(...))`` with ``start()``/``stop()`` or ``serve()``;
``run_sidecar`` for the CLI; ``python -m ztfl.client.sidecar`` from a shell.
docs/decisions/0009-client-sidecar.md.
"""

from ztfl.client.sidecar.app_bundle_check import AppBundleRefusalReason, app_bundle_sha256
from ztfl.client.sidecar.config import SidecarConfig
from ztfl.client.sidecar.sidecar import Sidecar, run_sidecar

__all__ = [
    "AppBundleRefusalReason",
    "Sidecar",
    "SidecarConfig",
    "app_bundle_sha256",
    "run_sidecar",
]
