"""verify_model: every refusal reason, lineage across rounds, revocation and key rotation."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from datetime import timedelta

import numpy as np
import pytest

from ztfl.trust.keys import SigningKey, generate_signing_key
from ztfl.trust.refusal import ModelRefusal, ModelRefusalReason
from ztfl.trust.revocation import sign_revocation_list
from ztfl.trust.rotation import KeyRotation, rotate_key
from ztfl.trust.signing import SignedManifest, sign_manifest
from ztfl.trust.verification import LineageState, TrustAnchor, verify_model

R = ModelRefusalReason
EMPTY = LineageState.empty()

MakeSigned = Callable[..., tuple[list[tuple[str, np.ndarray]], SignedManifest]]


def refusal_reason(call: object, *args: object, **kwargs: object) -> ModelRefusalReason:
    assert callable(call)
    with pytest.raises(ModelRefusal) as refusal:
        call(*args, **kwargs)
    return refusal.value.reason


def accept(
    arrays: object, signed: SignedManifest, anchor: TrustAnchor, **kwargs: object
) -> LineageState:
    kwargs.setdefault("lineage", EMPTY)
    kwargs.setdefault("now", signed.manifest.created_at)
    return verify_model(arrays, signed, anchor=anchor, **kwargs)  # type: ignore[arg-type]


def test_fresh_client_accepts_a_correctly_signed_model(
    make_signed: MakeSigned, anchor: TrustAnchor
) -> None:
    arrays, signed = make_signed(round=3)
    state = accept(arrays, signed, anchor)
    assert state.last is not None
    assert (state.last.digest, state.last.round) == (signed.digest, 3)
    assert state.run_id == anchor.run_id


def test_lineage_state_json_round_trips(make_signed: MakeSigned, anchor: TrustAnchor) -> None:
    arrays, signed = make_signed()
    state = accept(arrays, signed, anchor)
    assert LineageState.from_json(state.to_json()) == state
    assert len(state.to_json()) < 400


@pytest.mark.parametrize("data", [b"", b"{}", b"[1]", b'{"schema":"ztfl.lineage-state/v1"}'])
def test_malformed_lineage_state_is_refused(data: bytes) -> None:
    assert refusal_reason(LineageState.from_json, data) is R.MALFORMED_LINEAGE_STATE


def test_one_flipped_tensor_byte_is_refused(make_signed: MakeSigned, anchor: TrustAnchor) -> None:
    arrays, signed = make_signed()
    tampered = [(name, array.copy()) for name, array in arrays]
    tampered[0][1].view(np.uint8)[7] ^= 0x01
    assert refusal_reason(accept, tampered, signed, anchor) is R.TENSOR_MISMATCH


@pytest.mark.parametrize("change", ["missing", "extra", "dtype", "shape", "renamed"])
def test_tensor_set_must_match_the_manifest(
    make_signed: MakeSigned, anchor: TrustAnchor, change: str
) -> None:
    arrays, signed = make_signed()
    name, first = arrays[0]
    altered = {
        "missing": arrays[1:],
        "extra": [*arrays, ("extra", np.zeros(1, np.float32))],
        "dtype": [(name, first.astype(np.float64)), *arrays[1:]],
        "shape": [(name, first.reshape(-1)), *arrays[1:]],
        "renamed": [("other", first), *arrays[1:]],
    }[change]
    assert refusal_reason(accept, altered, signed, anchor) is R.TENSOR_MISMATCH


def test_tensor_order_does_not_matter(make_signed: MakeSigned, anchor: TrustAnchor) -> None:
    arrays, signed = make_signed()
    accept(list(reversed(arrays)), signed, anchor)


def test_edited_manifest_field_is_refused(make_signed: MakeSigned, anchor: TrustAnchor) -> None:
    arrays, signed = make_signed()
    edited = dataclasses.replace(signed.manifest, participants=("101", "102", "103", "666"))
    forged = SignedManifest(edited, signed.bundle)
    assert refusal_reason(accept, arrays, forged, anchor) is R.BAD_SIGNATURE


def test_model_signed_by_an_unpinned_key_is_refused(
    make_signed: MakeSigned, anchor: TrustAnchor, other_key: SigningKey
) -> None:
    arrays, signed = make_signed(signer=other_key)
    assert refusal_reason(accept, arrays, signed, anchor) is R.UNKNOWN_KEY


def test_forged_signature_under_the_pinned_key_id_is_refused(
    make_signed: MakeSigned, anchor: TrustAnchor, other_key: SigningKey, key: SigningKey
) -> None:
    arrays, signed = make_signed(signer=other_key)
    bundle = json.loads(signed.bundle)
    bundle["dsseEnvelope"]["signatures"][0]["keyid"] = key.key_id
    forged = SignedManifest(signed.manifest, json.dumps(bundle).encode())
    assert refusal_reason(accept, arrays, forged, anchor) is R.BAD_SIGNATURE


def test_altered_signed_payload_is_refused(make_signed: MakeSigned, anchor: TrustAnchor) -> None:
    arrays, signed = make_signed()
    bundle = json.loads(signed.bundle)
    payload = base64.b64decode(bundle["dsseEnvelope"]["payload"]).replace(b"files", b"filez")
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    forged = SignedManifest(signed.manifest, json.dumps(bundle).encode())
    assert refusal_reason(accept, arrays, forged, anchor) is R.BAD_SIGNATURE


@pytest.mark.parametrize("bundle", [b"", b"{}", b"not json", b'{"mediaType":"x"}'])
def test_malformed_signature_bundle_is_refused(
    make_signed: MakeSigned, anchor: TrustAnchor, bundle: bytes
) -> None:
    arrays, signed = make_signed()
    broken = SignedManifest(signed.manifest, bundle)
    assert refusal_reason(accept, arrays, broken, anchor) is R.MALFORMED_MANIFEST


def test_model_of_another_run_is_refused(make_signed: MakeSigned, anchor: TrustAnchor) -> None:
    arrays, signed = make_signed(run_id="another-run")
    assert refusal_reason(accept, arrays, signed, anchor) is R.WRONG_RUN


def test_lineage_state_of_another_run_is_refused(
    make_signed: MakeSigned, anchor: TrustAnchor
) -> None:
    arrays, signed = make_signed()
    state = dataclasses.replace(accept(arrays, signed, anchor), run_id="another-run")
    assert refusal_reason(accept, arrays, signed, anchor, lineage=state) is R.WRONG_RUN


def test_expired_model_is_refused(make_signed: MakeSigned, anchor: TrustAnchor) -> None:
    arrays, signed = make_signed(valid_for=timedelta(minutes=10))
    assert (
        refusal_reason(accept, arrays, signed, anchor, now=signed.manifest.expires_at) is R.EXPIRED
    )


def test_model_from_the_future_is_refused_beyond_the_clock_skew(
    make_signed: MakeSigned, anchor: TrustAnchor
) -> None:
    arrays, signed = make_signed(created_offset=timedelta(minutes=6))
    now = signed.manifest.created_at - timedelta(minutes=6)
    assert refusal_reason(accept, arrays, signed, anchor, now=now) is R.NOT_YET_VALID


def test_model_from_the_future_is_accepted_within_the_clock_skew(
    make_signed: MakeSigned, anchor: TrustAnchor
) -> None:
    arrays, signed = make_signed(created_offset=timedelta(minutes=4))
    accept(arrays, signed, anchor, now=signed.manifest.created_at - timedelta(minutes=4))


def test_descendant_of_the_last_accepted_model_is_accepted(
    make_signed: MakeSigned, anchor: TrustAnchor
) -> None:
    arrays1, first = make_signed(round=1)
    arrays2, second = make_signed(round=2, parent=first)
    state = accept(arrays1, first, anchor)
    state = accept(arrays2, second, anchor, lineage=state)
    assert [item.round for item in state.accepted] == [1, 2]


def test_descent_through_a_supplied_chain_is_accepted(
    make_signed: MakeSigned, anchor: TrustAnchor
) -> None:
    arrays1, first = make_signed(round=1)
    _, second = make_signed(round=2, parent=first)
    _, third = make_signed(round=3, parent=second)
    arrays4, fourth = make_signed(round=4, parent=third)
    state = accept(arrays1, first, anchor)
    state = accept(arrays4, fourth, anchor, lineage=state, chain=[second, third])
    assert [item.round for item in state.accepted] == [1, 4]


def test_missing_chain_link_breaks_the_lineage(
    make_signed: MakeSigned, anchor: TrustAnchor
) -> None:
    arrays1, first = make_signed(round=1)
    _, second = make_signed(round=2, parent=first)
    arrays3, third = make_signed(round=3, parent=second)
    state = accept(arrays1, first, anchor)
    assert refusal_reason(accept, arrays3, third, anchor, lineage=state) is R.BROKEN_LINEAGE


def test_forged_chain_link_is_refused(
    make_signed: MakeSigned, anchor: TrustAnchor, other_key: SigningKey
) -> None:
    arrays1, first = make_signed(round=1)
    _, second = make_signed(round=2, parent=first, signer=other_key)
    arrays3, third = make_signed(round=3, parent=second)
    state = accept(arrays1, first, anchor)
    reason = refusal_reason(accept, arrays3, third, anchor, lineage=state, chain=[second])
    assert reason is R.UNKNOWN_KEY


def test_model_of_another_lineage_is_refused(make_signed: MakeSigned, anchor: TrustAnchor) -> None:
    arrays1, first = make_signed(round=1)
    _, fork_root = make_signed(round=1, seed=99)
    arrays2, fork = make_signed(round=2, parent=fork_root)
    state = accept(arrays1, first, anchor)
    assert refusal_reason(accept, arrays2, fork, anchor, lineage=state) is R.BROKEN_LINEAGE
    reason = refusal_reason(accept, arrays2, fork, anchor, lineage=state, chain=[fork_root])
    assert reason is R.BROKEN_LINEAGE


def test_new_root_after_accepting_a_model_is_refused(
    make_signed: MakeSigned, anchor: TrustAnchor
) -> None:
    arrays1, first = make_signed(round=1)
    arrays5, root = make_signed(round=5)
    state = accept(arrays1, first, anchor)
    assert refusal_reason(accept, arrays5, root, anchor, lineage=state) is R.BROKEN_LINEAGE


def test_older_round_is_refused(make_signed: MakeSigned, anchor: TrustAnchor) -> None:
    arrays1, first = make_signed(round=1)
    arrays2, second = make_signed(round=2, parent=first)
    state = accept(arrays2, second, anchor, lineage=accept(arrays1, first, anchor))
    assert refusal_reason(accept, arrays1, first, anchor, lineage=state) is R.STALE_ROUND


def test_same_round_with_another_model_is_refused(
    make_signed: MakeSigned, anchor: TrustAnchor
) -> None:
    arrays1, first = make_signed(round=1)
    arrays_other, other = make_signed(round=1, seed=42)
    state = accept(arrays1, first, anchor)
    reason = refusal_reason(accept, arrays_other, other, anchor, lineage=state)
    assert reason is R.ROUND_DIGEST_MISMATCH


def test_same_model_again_is_accepted_without_changing_the_state(
    make_signed: MakeSigned, anchor: TrustAnchor
) -> None:
    arrays, signed = make_signed(round=1)
    state = accept(arrays, signed, anchor)
    assert accept(arrays, signed, anchor, lineage=state) == state


def test_lineage_state_stays_bounded(make_signed: MakeSigned, anchor: TrustAnchor) -> None:
    state, parent = EMPTY, None
    for round_number in range(1, LineageState.MAX_ACCEPTED + 6):
        arrays, signed = make_signed(round=round_number, parent=parent)
        state, parent = accept(arrays, signed, anchor, lineage=state), signed
    assert len(state.accepted) == LineageState.MAX_ACCEPTED
    assert state.last is not None
    assert state.last.round == LineageState.MAX_ACCEPTED + 5


def test_revoked_model_is_refused(
    make_signed: MakeSigned, anchor: TrustAnchor, key: SigningKey
) -> None:
    arrays, signed = make_signed()
    revocations = sign_revocation_list(anchor.run_id, 1, [signed.digest], key)
    configured = dataclasses.replace(anchor, revocations=revocations)
    assert refusal_reason(accept, arrays, signed, configured) is R.REVOKED


def test_model_descending_through_a_revoked_model_is_refused(
    make_signed: MakeSigned, anchor: TrustAnchor, key: SigningKey
) -> None:
    arrays1, first = make_signed(round=1)
    _, bad = make_signed(round=2, parent=first)
    arrays3, third = make_signed(round=3, parent=bad)
    state = accept(arrays1, first, anchor)
    revocations = sign_revocation_list(anchor.run_id, 1, [bad.digest], key)
    reason = refusal_reason(
        accept, arrays3, third, anchor, lineage=state, chain=[bad], revocations=revocations
    )
    assert reason is R.REVOKED


def test_revoked_last_model_restarts_lineage_from_its_accepted_ancestor(
    make_signed: MakeSigned, anchor: TrustAnchor, key: SigningKey
) -> None:
    arrays1, first = make_signed(round=1)
    arrays2, bad = make_signed(round=2, parent=first)
    arrays_fix, replacement = make_signed(round=2, parent=first, seed=77)
    state = accept(arrays2, bad, anchor, lineage=accept(arrays1, first, anchor))
    revocations = sign_revocation_list(anchor.run_id, 1, [bad.digest], key)
    state = accept(arrays_fix, replacement, anchor, lineage=state, revocations=revocations)
    assert [item.digest for item in state.accepted] == [first.digest, replacement.digest]


def test_revocations_seen_are_remembered(
    make_signed: MakeSigned, anchor: TrustAnchor, key: SigningKey
) -> None:
    arrays1, first = make_signed(round=1)
    arrays2, second = make_signed(round=2, parent=first)
    revocations = sign_revocation_list(anchor.run_id, 3, [second.digest], key)
    state = accept(arrays1, first, anchor, revocations=revocations)
    assert state.revocation_sequence == 3
    assert refusal_reason(accept, arrays2, second, anchor, lineage=state) is R.REVOKED


def test_older_revocation_list_is_refused(
    make_signed: MakeSigned, anchor: TrustAnchor, key: SigningKey
) -> None:
    arrays, signed = make_signed()
    newer = sign_revocation_list(anchor.run_id, 5, [signed.digest], key)
    older = sign_revocation_list(anchor.run_id, 4, [], key)
    state = accept(*make_signed(round=0), anchor, revocations=newer)
    reason = refusal_reason(accept, arrays, signed, anchor, lineage=state, revocations=older)
    assert reason is R.STALE_REVOCATION_LIST


def test_conflicting_revocation_list_of_the_same_sequence_is_refused(
    make_signed: MakeSigned, anchor: TrustAnchor, key: SigningKey
) -> None:
    arrays, signed = make_signed(round=1)
    seen = sign_revocation_list(anchor.run_id, 2, ["b" * 64], key)
    conflicting = sign_revocation_list(anchor.run_id, 2, [], key)
    state = accept(arrays, signed, anchor, revocations=seen)
    reason = refusal_reason(accept, arrays, signed, anchor, lineage=state, revocations=conflicting)
    assert reason is R.STALE_REVOCATION_LIST


def test_revocation_list_signed_by_an_untrusted_key_is_refused(
    make_signed: MakeSigned, anchor: TrustAnchor, other_key: SigningKey
) -> None:
    arrays, signed = make_signed()
    revocations = sign_revocation_list(anchor.run_id, 1, [], other_key)
    reason = refusal_reason(accept, arrays, signed, anchor, revocations=revocations)
    assert reason is R.BAD_REVOCATION_LIST


def test_revocation_list_of_another_run_is_refused(
    make_signed: MakeSigned, anchor: TrustAnchor, key: SigningKey
) -> None:
    arrays, signed = make_signed()
    revocations = sign_revocation_list("another-run", 1, [], key)
    assert refusal_reason(accept, arrays, signed, anchor, revocations=revocations) is R.WRONG_RUN


def test_model_signed_by_a_rotated_to_key_is_accepted(
    make_signed: MakeSigned, anchor: TrustAnchor, key: SigningKey
) -> None:
    new_key = generate_signing_key()
    rotation = KeyRotation.from_bytes(rotate_key(key, new_key.public_key()).to_bytes())
    arrays, signed = make_signed(signer=new_key)
    accept(arrays, signed, anchor, rotations=[rotation])


def test_rotation_chain_of_two_steps_is_followed(
    make_signed: MakeSigned, anchor: TrustAnchor, key: SigningKey
) -> None:
    middle, newest = generate_signing_key(), generate_signing_key()
    rotations = [rotate_key(middle, newest.public_key()), rotate_key(key, middle.public_key())]
    arrays, signed = make_signed(signer=newest)
    accept(arrays, signed, anchor, rotations=rotations)


def test_rotation_signed_by_an_unpinned_key_is_refused(
    make_signed: MakeSigned, anchor: TrustAnchor, other_key: SigningKey
) -> None:
    new_key = generate_signing_key()
    rotation = rotate_key(other_key, new_key.public_key())
    arrays, signed = make_signed(signer=new_key)
    assert refusal_reason(accept, arrays, signed, anchor, rotations=[rotation]) is R.BAD_ROTATION


def test_forged_rotation_claiming_the_pinned_key_is_refused(
    make_signed: MakeSigned, anchor: TrustAnchor, key: SigningKey, other_key: SigningKey
) -> None:
    attacker = generate_signing_key()
    genuine = rotate_key(other_key, attacker.public_key())
    bundle = json.loads(genuine.to_bytes())
    payload = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    payload["predicate"]["previous_key_id"] = key.key_id
    payload["subject"][0]["digest"]["sha256"] = (
        __import__("hashlib")
        .sha256(json.dumps(payload["predicate"], sort_keys=True, separators=(",", ":")).encode())
        .hexdigest()
    )
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    bundle["dsseEnvelope"]["signatures"][0]["keyid"] = key.key_id
    forged = KeyRotation.from_bytes(json.dumps(bundle).encode())
    arrays, signed = make_signed(signer=attacker)
    assert refusal_reason(accept, arrays, signed, anchor, rotations=[forged]) is R.BAD_ROTATION


def test_malformed_rotation_statement_is_refused() -> None:
    assert refusal_reason(KeyRotation.from_bytes, b"{}") is R.BAD_ROTATION


def test_unknown_key_stays_unknown_without_a_rotation(
    make_signed: MakeSigned, anchor: TrustAnchor, key: SigningKey
) -> None:
    new_key = generate_signing_key()
    manifest = make_signed()[1].manifest
    signed = sign_manifest(manifest, new_key)
    assert refusal_reason(accept, make_signed()[0], signed, anchor) is R.UNKNOWN_KEY
