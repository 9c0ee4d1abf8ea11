"""Client code integrity: the sidecar passes on only app bundles the client agreed to run.

A SuperNode runs whatever app bundle (FAB) the SuperLink serves, so a compromised
coordinator could push new code to every data holder. The sidecar reads each
``/v1/fleet/get-fab`` response whole (the bundle, not a model: bounded by
``max_app_bundle_bytes``), decodes it with Flower's own protobuf class, hashes the bundle
as Flower does (``sha256(content).hexdigest()``, the FAB hash of ``flwr run``), and answers
the SuperNode 403 unless that hash is in the enrolled allow-list and equals the hash the
response claims. The allow-list file is read for every bundle, so an updated list applies
without a restart, and an unreadable list refuses everything.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from enum import StrEnum
from http import HTTPStatus
from pathlib import Path

from flwr.proto.fab_pb2 import GetFabResponse
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from ztfl.trust.audit import AuditEventKind, AuditLog
from ztfl.trust.pki.enrolment import read_app_bundle_allow_list
from ztfl.trust.pki.errors import PkiError
from ztfl.trust.transport import Reject, ResponseHead

__all__ = ["AppBundleCheck", "AppBundleRefusalReason", "app_bundle_sha256"]

_log = logging.getLogger(__name__)


class AppBundleRefusalReason(StrEnum):
    """Why an app bundle was not passed on (APP_BUNDLE_REFUSED in the client's audit log)."""

    NOT_ALLOW_LISTED = "app_bundle_not_allow_listed"
    """Its SHA-256 is not in the enrolled allow-list."""
    HASH_MISMATCH = "app_bundle_hash_mismatch"
    """The hash the response claims is not the hash of the bundle it carries."""
    MALFORMED_RESPONSE = "app_bundle_response_malformed"
    """Not a GetFabResponse, or content-encoded (the sidecar asks for identity)."""
    ALLOW_LIST_UNREADABLE = "app_bundle_allow_list_unreadable"
    """The allow-list is missing or invalid: no list, no code."""


def app_bundle_sha256(content: bytes) -> str:
    """The FAB hash as Flower computes it: lower-case hex SHA-256 of the bundle's bytes."""
    return hashlib.sha256(content).hexdigest()


class AppBundleCheck:
    """A response inspector for ``/v1/fleet/get-fab`` (see the module docstring)."""

    def __init__(
        self, allow_list: Path, audit_log: AuditLog, run_id: str, max_body_bytes: int
    ) -> None:
        self._allow_list = allow_list
        self._audit_log = audit_log
        self._run_id = run_id
        self._max_body_bytes = max_body_bytes

    @property
    def max_body_bytes(self) -> int:
        """The largest get-fab response buffered; a larger one is refused (502)."""
        return self._max_body_bytes

    async def inspect(self, head: ResponseHead, body: bytes) -> Reject | None:
        """Pass an allow-listed bundle (or an error response) on; refuse anything else."""
        if head.status != HTTPStatus.OK:
            return None  # an error carries no bundle; the SuperNode sees the error
        details: dict[str, object] = {}
        reason = self._check(head, body, details)
        if reason is None:
            return None
        _log.error("app bundle refused (%s): %s", reason.value, details)
        await asyncio.to_thread(
            self._audit_log.append,
            AuditEventKind.APP_BUNDLE_REFUSED,
            run_id=self._run_id,
            reason=reason,
            details=details,
        )
        return Reject(HTTPStatus.FORBIDDEN, reason)

    def _check(
        self, head: ResponseHead, body: bytes, details: dict[str, object]
    ) -> AppBundleRefusalReason | None:
        if any(value.strip().lower() != "identity" for value in head.values("content-encoding")):
            return AppBundleRefusalReason.MALFORMED_RESPONSE
        response = GetFabResponse()
        try:
            response.ParseFromString(body)
        except DecodeError:
            return AppBundleRefusalReason.MALFORMED_RESPONSE
        actual = app_bundle_sha256(response.fab.content)
        details.update(
            fab_sha256=actual,
            claimed_sha256=response.fab.hash_str[:64],
            fab_bytes=len(response.fab.content),
        )
        if response.fab.hash_str != actual:
            return AppBundleRefusalReason.HASH_MISMATCH
        try:
            allowed = read_app_bundle_allow_list(self._allow_list)
        except PkiError as error:
            details["allow_list_error"] = str(error)[:300]
            return AppBundleRefusalReason.ALLOW_LIST_UNREADABLE
        if actual not in allowed:
            return AppBundleRefusalReason.NOT_ALLOW_LISTED
        return None
