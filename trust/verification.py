"""The client's check before it loads a global model: :func:`verify_model`.

The trust anchor comes from local configuration — pinned public keys, the
expected run id, optionally a revocation list — never from the message that
carries the model. The coordinator supplies, with the model, its signed
manifest, the signed manifests between the client's last accepted model and
this one (the chain), any key-rotation statements, and its newest revocation
list. The function either returns the client's updated lineage state or raises
:class:`ModelRefusal`; the arrays are only ever used after every check passed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from .encoding import (
    canonical_json,
    parse_json_object,
    require_digest,
    require_keys,
    require_round,
    require_text,
)
from .keys import VerifyingKey
from .manifest import ModelManifest, hash_tensors
from .refusal import ModelRefusal, ModelRefusalReason
from .revocation import RevocationList
from .rotation import KeyRotation, trusted_keys
from .signing import SignedManifest, verify_signed_manifest

__all__ = [
    "AcceptedModel",
    "LineageState",
    "ModelRefusal",
    "ModelRefusalReason",
    "TrustAnchor",
    "verify_model",
    "verify_signed_manifest",
]

Reason = ModelRefusalReason
LINEAGE_STATE_SCHEMA = "ztfl.lineage-state/v1"
MAX_CHAIN = 10_000


@dataclass(frozen=True)
class TrustAnchor:
    """What a client trusts, from its own configuration: keys, run, revocations, clock skew."""

    run_id: str
    keys: tuple[VerifyingKey, ...]
    revocations: RevocationList | None = None
    clock_skew: timedelta = timedelta(minutes=5)

    def __post_init__(self) -> None:
        require_text(self.run_id, "run_id")
        if not isinstance(self.keys, tuple) or not self.keys:
            raise ValueError("a trust anchor needs at least one pinned key (a tuple)")
        if not all(isinstance(key, VerifyingKey) for key in self.keys):
            raise TypeError("trust anchor keys must be VerifyingKey objects")
        if self.revocations is not None and not isinstance(self.revocations, RevocationList):
            raise TypeError("revocations must be a RevocationList")
        if not timedelta(0) <= self.clock_skew <= timedelta(days=1):
            raise ValueError("clock_skew must be between 0 and one day")


@dataclass(frozen=True)
class AcceptedModel:
    """A model the client verified and loaded."""

    digest: str
    round: int


@dataclass(frozen=True)
class LineageState:
    """The client's memory between rounds: accepted models (oldest → newest) and revocations seen.

    Bounded: at most ``MAX_ACCEPTED`` models are kept, so the JSON stays small
    enough for Flower's ``Context.state``.
    """

    MAX_ACCEPTED = 32

    run_id: str | None = None
    accepted: tuple[AcceptedModel, ...] = ()
    revocation_sequence: int | None = None
    revoked: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def empty(cls) -> LineageState:
        """A client that has accepted nothing yet."""
        return cls()

    @property
    def last(self) -> AcceptedModel | None:
        """The most recently accepted model."""
        return self.accepted[-1] if self.accepted else None

    def to_json(self) -> bytes:
        """Canonical JSON bytes."""
        return canonical_json(
            {
                "schema": LINEAGE_STATE_SCHEMA,
                "run_id": self.run_id,
                "accepted": [[item.digest, item.round] for item in self.accepted],
                "revocation_sequence": self.revocation_sequence,
                "revoked": sorted(self.revoked),
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> LineageState:
        """Parse :meth:`to_json` output; anything else → ModelRefusal(MALFORMED_LINEAGE_STATE)."""
        try:
            if len(data) > 16 << 20:
                raise ValueError("larger than 16 MiB")
            obj = parse_json_object(data, "lineage state")
            require_keys(
                obj,
                {"schema", "run_id", "accepted", "revocation_sequence", "revoked"},
                "lineage state",
            )
            if obj["schema"] != LINEAGE_STATE_SCHEMA:
                raise ValueError(f"schema is not {LINEAGE_STATE_SCHEMA}")
            run_id = obj["run_id"]
            accepted = obj["accepted"]
            revoked = obj["revoked"]
            sequence = obj["revocation_sequence"]
            if not isinstance(accepted, list) or len(accepted) > cls.MAX_ACCEPTED:
                raise ValueError(f"accepted must be a list of at most {cls.MAX_ACCEPTED} entries")
            if not isinstance(revoked, list):
                raise TypeError("revoked must be a list")
            items = []
            for item in accepted:
                if not isinstance(item, list) or len(item) != 2:
                    raise TypeError("accepted entries must be [digest, round]")
                items.append(
                    AcceptedModel(require_digest(item[0], "digest"), require_round(item[1]))
                )
            return cls(
                run_id=None if run_id is None else require_text(run_id, "run_id"),
                accepted=tuple(items),
                revocation_sequence=None
                if sequence is None
                else require_round(sequence, "sequence"),
                revoked=frozenset(require_digest(item, "revoked") for item in revoked),
            )
        except (ValueError, TypeError) as error:
            raise ModelRefusal(Reason.MALFORMED_LINEAGE_STATE, str(error)) from error


def _newest_revocations(
    anchor: TrustAnchor,
    lineage: LineageState,
    supplied: RevocationList | None,
    keys: Sequence[VerifyingKey],
) -> tuple[int | None, frozenset[str]]:
    sequence, revoked = lineage.revocation_sequence, lineage.revoked
    for candidate, from_local_config in ((anchor.revocations, True), (supplied, False)):
        if candidate is None:
            continue
        candidate.verify(keys)
        if candidate.run_id != anchor.run_id:
            raise ModelRefusal(
                Reason.WRONG_RUN,
                f"revocation list is for run {candidate.run_id!r}, not {anchor.run_id!r}",
            )
        if sequence is not None and candidate.sequence < sequence:
            if from_local_config:
                continue  # the configured list is older than one learnt since; keep the newer
            raise ModelRefusal(
                Reason.STALE_REVOCATION_LIST,
                f"revocation list #{candidate.sequence} is older than #{sequence} already seen",
            )
        if candidate.sequence == sequence and candidate.digests != revoked:
            raise ModelRefusal(
                Reason.STALE_REVOCATION_LIST,
                f"revocation list #{sequence} differs from the list #{sequence} already seen",
            )
        sequence, revoked = candidate.sequence, candidate.digests
    return sequence, revoked


def _check_lineage(
    manifest: ModelManifest,
    start: AcceptedModel,
    links: dict[str, ModelManifest],
    revoked: frozenset[str],
) -> None:
    if manifest.digest == start.digest:
        return  # the same model again (Flower re-sends it for evaluation)
    if manifest.round < start.round:
        raise ModelRefusal(
            Reason.STALE_ROUND, f"round {manifest.round} is older than accepted round {start.round}"
        )
    if manifest.round == start.round:
        raise ModelRefusal(
            Reason.ROUND_DIGEST_MISMATCH,
            f"round {manifest.round} was accepted as {start.digest[:16]}…, "
            f"now offered as {manifest.digest[:16]}…",
        )
    current = manifest
    while current.parent_digest != start.digest:
        parent_digest = current.parent_digest
        if parent_digest is None:
            raise ModelRefusal(
                Reason.BROKEN_LINEAGE,
                f"round {current.round} starts a new lineage; expected descent from "
                f"{start.digest[:16]}… (round {start.round})",
            )
        parent = links.get(parent_digest)
        if parent is None:
            raise ModelRefusal(
                Reason.BROKEN_LINEAGE,
                f"parent {parent_digest[:16]}… of round {current.round} is neither the last "
                f"accepted model {start.digest[:16]}… nor in the supplied chain",
            )
        if parent_digest in revoked:
            raise ModelRefusal(
                Reason.REVOKED, f"the model descends from revoked model {parent_digest[:16]}…"
            )
        if parent.round >= current.round:
            raise ModelRefusal(
                Reason.BROKEN_LINEAGE, f"round {current.round} has parent of round {parent.round}"
            )
        current = parent
    if current.round <= start.round:
        raise ModelRefusal(
            Reason.BROKEN_LINEAGE, f"round {current.round} follows accepted round {start.round}"
        )


def _check_tensors(arrays: Sequence[tuple[str, np.ndarray]], manifest: ModelManifest) -> None:
    expected = {record.name: record for record in manifest.tensors}
    names = [name for name, _ in arrays]
    if len(set(names)) != len(names):
        raise ModelRefusal(Reason.TENSOR_MISMATCH, "received duplicate tensor names")
    missing = sorted(expected.keys() - set(names))
    extra = sorted(set(names) - expected.keys())
    if missing or extra:
        raise ModelRefusal(
            Reason.TENSOR_MISMATCH,
            f"tensors missing: {missing[:5]}, not in the manifest: {extra[:5]}",
        )
    for name, array in arrays:
        record = expected[name]
        if not isinstance(array, np.ndarray):
            raise ModelRefusal(Reason.TENSOR_MISMATCH, f"tensor {name!r} is not a numpy array")
        if array.dtype.name != record.dtype or tuple(array.shape) != record.shape:
            raise ModelRefusal(
                Reason.TENSOR_MISMATCH,
                f"tensor {name!r} is {array.dtype.name}{list(array.shape)}, "
                f"the manifest says {record.dtype}{list(record.shape)}",
            )
    try:
        received = hash_tensors(arrays)
    except (ValueError, TypeError) as error:
        raise ModelRefusal(Reason.TENSOR_MISMATCH, str(error)) from error
    for record in received:
        if record.sha256 != expected[record.name].sha256:
            raise ModelRefusal(
                Reason.TENSOR_MISMATCH, f"tensor {record.name!r} bytes differ from the manifest"
            )


def verify_model(
    arrays: Sequence[tuple[str, np.ndarray]],
    signed: SignedManifest,
    *,
    anchor: TrustAnchor,
    lineage: LineageState,
    chain: Sequence[SignedManifest] = (),
    now: datetime | None = None,
    rotations: Sequence[KeyRotation] = (),
    revocations: RevocationList | None = None,
) -> LineageState:
    """Verify a received global model before loading it; returns the lineage state to persist.

    Checks, cheapest first: rotations (BAD_ROTATION), revocation lists
    (BAD_REVOCATION_LIST, WRONG_RUN, STALE_REVOCATION_LIST), the signature by a
    pinned or rotated-to key (UNKNOWN_KEY, BAD_SIGNATURE, MALFORMED_MANIFEST),
    the run id (WRONG_RUN), validity time (NOT_YET_VALID, EXPIRED), revocation
    (REVOKED), every chain link's signature and run, lineage and round
    (BROKEN_LINEAGE, STALE_ROUND, ROUND_DIGEST_MISMATCH), and last the hashes of
    the received arrays (TENSOR_MISMATCH).

    Lineage starts from the newest accepted model that is not revoked; a client
    that has accepted nothing (or only revoked models) accepts any correctly
    signed manifest of its run. ``chain`` holds the signed manifests between
    that model and this one, in any order (oldest → newest is conventional).
    """
    now = datetime.now(UTC) if now is None else now
    if not isinstance(signed, SignedManifest):
        raise ModelRefusal(Reason.MALFORMED_MANIFEST, "expected a SignedManifest")
    if lineage.run_id is not None and lineage.run_id != anchor.run_id:
        raise ModelRefusal(
            Reason.WRONG_RUN, f"lineage state is for run {lineage.run_id!r}, not {anchor.run_id!r}"
        )
    keys = trusted_keys(anchor.keys, rotations)
    sequence, revoked = _newest_revocations(anchor, lineage, revocations, keys)

    manifest = signed.manifest
    verify_signed_manifest(signed, keys)
    if manifest.run_id != anchor.run_id:
        raise ModelRefusal(
            Reason.WRONG_RUN, f"manifest is for run {manifest.run_id!r}, not {anchor.run_id!r}"
        )
    if manifest.created_at > now + anchor.clock_skew:
        raise ModelRefusal(
            Reason.NOT_YET_VALID, f"created at {manifest.created_at.isoformat()}, in the future"
        )
    if now >= manifest.expires_at:
        raise ModelRefusal(Reason.EXPIRED, f"expired at {manifest.expires_at.isoformat()}")
    if manifest.digest in revoked:
        raise ModelRefusal(Reason.REVOKED, f"model {manifest.digest[:16]}… is revoked")

    if len(chain) > MAX_CHAIN:
        raise ModelRefusal(Reason.BROKEN_LINEAGE, f"chain longer than {MAX_CHAIN} manifests")
    links: dict[str, ModelManifest] = {}
    for link in chain:
        if not isinstance(link, SignedManifest):
            raise ModelRefusal(Reason.MALFORMED_MANIFEST, "chain entries must be SignedManifest")
        verify_signed_manifest(link, keys)
        if link.manifest.run_id != anchor.run_id:
            raise ModelRefusal(
                Reason.WRONG_RUN,
                f"chain manifest of round {link.manifest.round} is for another run",
            )
        links[link.manifest.digest] = link.manifest

    kept = list(lineage.accepted)
    while kept and kept[-1].digest in revoked:
        kept.pop()  # a revoked model is no lineage anchor: restart from its accepted ancestor
    if kept:
        _check_lineage(manifest, kept[-1], links, revoked)

    _check_tensors(arrays, manifest)

    if not kept or kept[-1].digest != manifest.digest:
        kept.append(AcceptedModel(manifest.digest, manifest.round))
    return LineageState(
        run_id=anchor.run_id,
        accepted=tuple(kept[-LineageState.MAX_ACCEPTED :]),
        revocation_sequence=sequence,
        revoked=revoked,
    )
