"""Why a model, manifest or signed statement was refused: one exception, one enum."""

from __future__ import annotations

import enum


class ModelRefusalReason(enum.Enum):
    """Every reason a client (or ``ztfl model verify``) refuses a model."""

    BAD_SIGNATURE = "bad_signature"
    """The signature does not verify under the key it names (or the bundle is forged)."""
    UNKNOWN_KEY = "unknown_key"
    """Signed by a key that is neither pinned nor reached by a valid rotation."""
    MALFORMED_MANIFEST = "malformed_manifest"
    """The manifest, bundle or transport bytes are not in the expected format."""
    WRONG_RUN = "wrong_run"
    """The manifest (or lineage state, or revocation list) belongs to another ztfl run."""
    BROKEN_LINEAGE = "broken_lineage"
    """The model does not descend from the last model this client accepted."""
    STALE_ROUND = "stale_round"
    """The round is older than the last accepted one (a rollback or replay)."""
    ROUND_DIGEST_MISMATCH = "round_digest_mismatch"
    """Same round as the last accepted model but a different model (equivocation)."""
    TENSOR_MISMATCH = "tensor_mismatch"
    """The received arrays do not hash to the manifest (names, dtypes, shapes or bytes)."""
    EXPIRED = "expired"
    """The manifest's expiry has passed."""
    NOT_YET_VALID = "not_yet_valid"
    """The manifest was created in the future, beyond the allowed clock skew."""
    REVOKED = "revoked"
    """The model, or an ancestor it descends through, is on the revocation list."""
    STALE_REVOCATION_LIST = "stale_revocation_list"
    """A revocation list older than one already seen (or a conflicting one of the same age)."""
    BAD_REVOCATION_LIST = "bad_revocation_list"
    """A revocation list that is malformed or not signed by a trusted key."""
    BAD_ROTATION = "bad_rotation"
    """A key-rotation statement that is malformed, forged, or signed by an untrusted key."""
    MALFORMED_LINEAGE_STATE = "malformed_lineage_state"
    """The client's stored lineage state cannot be read."""


class ModelRefusal(Exception):  # noqa: N818 - a refusal is an outcome, not an error
    """A model was refused; ``reason`` says why, the message says what exactly."""

    def __init__(self, reason: ModelRefusalReason, message: str) -> None:
        super().__init__(f"{reason.name}: {message}")
        self.reason = reason
        self.message = message
