"""Why ``ztfl server up``, ``ztfl client up`` or ``ztfl run`` could not start: one exception,
one enum of reasons, shared by the coordinator's service and the client's launcher."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["LaunchError", "LaunchErrorReason"]


class LaunchErrorReason(StrEnum):
    """What stopped a launch; stable values for scripts."""

    MISSING_FILE = "missing_file"
    """A certificate, key, CA, allow-list, trust anchor or executable is not there."""
    KEY_FILE_PERMISSIONS = "key_file_permissions"
    """A private key file that its group or others may read."""
    BAD_CONFIG = "bad_config"
    """A configuration value or file that cannot be used."""
    PORT_IN_USE = "port_in_use"
    """A port to listen on is taken."""
    PROCESS_EXITED = "process_exited"
    """A Flower process ended before it was ready, or while it should be running."""
    NOT_READY = "not_ready"
    """A Flower process did not answer in time."""
    CONTROL_API_FAILED = "control_api_failed"
    """A ``flwr`` command against the loopback Control API failed."""


class LaunchError(Exception):
    """A launch was refused or failed; ``reason`` says why, the message what to do.

    Messages name files and ports, never key material.
    """

    def __init__(self, reason: LaunchErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
