"""The wire format of SecAgg+ on Flower's Message API: each protocol message as Flower records.

``ztfl.aggregation.secagg`` exchanges plain dataclasses; here each one maps field by field onto
a ``ConfigRecord`` under ``protocol.SECAGG_KEY`` (and a masked input onto an ``ArrayRecord``
of ring words, 4 bytes per coordinate for b ≤ 32). Every record names its kind, the round and
the group, so a member can tell a message for another round or group from the one it is in.
Decoding checks every type and refuses anything else as ``SecAggRefusalReason.MALFORMED``:
nothing that arrives over the network is trusted to be well formed.

A member's identity travels with its keys: the key advertisement carries the member's
certificate (PEM), and the coordinator forwards the certificates of the members whose keys it
forwards, so every peer checks each signature against a certificate it verified itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from ztfl.aggregation.secagg import (
    EncryptedShares,
    GroupParams,
    GroupSetup,
    KeyAdvertisement,
    MaskedInput,
    MaskedInputRequest,
    Roster,
    RosterStage,
    SecAggRefusal,
    SecAggRefusalReason,
    ShareKeysRequest,
    UnmaskRequest,
    UnmaskShares,
)
from ztfl.aggregation.secagg.masks import ring_dtype

from . import protocol

KIND = "kind"
ROUND = "round"
GROUP = "group-id"
PARAMS = "params"
ROSTER_STAGE = "roster-stage"
ROSTER_MEMBERS = "roster-members"
ROSTER_DROPPED = "roster-dropped"
ROSTER_SIGNATURE = "roster-signature"
MEMBER = "member-id"
MEMBERS = "members"
ENCRYPTION_KEYS = "encryption-keys"
MASKING_KEYS = "masking-keys"
SIGNATURES = "signatures"
CERTIFICATES = "certificates"
CERTIFICATE = "certificate"
ENCRYPTION_KEY = "encryption-key"
MASKING_KEY = "masking-key"
SIGNATURE = "signature"
RECEIVERS = "receivers"
SENDERS = "senders"
CIPHERTEXTS = "ciphertexts"
SURVIVORS = "survivors"
SEED_SHARES = "seed-shares"
DROPPED = "dropped"
KEY_SHARES = "key-shares"
MASKED_ARRAY = "masked"

_T = TypeVar("_T")


@dataclass(frozen=True)
class Addressed:
    """Which round and group a record belongs to (a member holds one group per round)."""

    round: int
    group_id: str


# Server → member --------------------------------------------------------------------------
def setup_record(setup: GroupSetup) -> ConfigRecord:
    """Stage 0: the group's parameters (as JSON) and the signed SETUP roster."""
    params = setup.params
    record = _header("setup", params)
    record[PARAMS] = json.dumps(params.as_record(), sort_keys=True)
    _put_roster(record, setup.roster)
    return record


def read_setup(record: ConfigRecord) -> GroupSetup:
    """The setup in ``record`` (parameters validated by ``GroupParams.from_record``)."""
    _expect_kind(record, "setup")
    try:
        params_json = json.loads(_get(record, PARAMS, str))
    except json.JSONDecodeError as error:
        _malformed(f"group parameters are not JSON: {error}")
    if not isinstance(params_json, dict):
        _malformed("group parameters must be a JSON object")
    params = GroupParams.from_record(params_json)
    if (params.round, params.group_id) != (_get(record, ROUND, int), _get(record, GROUP, str)):
        _malformed("the record's round or group differs from its parameters'")
    return GroupSetup(params, _roster(record))


def share_keys_record(
    params: GroupParams, request: ShareKeysRequest, certificates: Mapping[str, bytes]
) -> ConfigRecord:
    """Stage 1: the signed KEYS roster and every advertisement, each with its certificate."""
    record = _header("share-keys", params)
    _put_roster(record, request.roster)
    ads = request.advertisements
    record[MEMBERS] = [ad.member_id for ad in ads]
    record[ENCRYPTION_KEYS] = [ad.encryption_key for ad in ads]
    record[MASKING_KEYS] = [ad.masking_key for ad in ads]
    record[SIGNATURES] = [ad.signature for ad in ads]
    record[CERTIFICATES] = [certificates[ad.member_id] for ad in ads]
    return record


def read_share_keys(record: ConfigRecord) -> tuple[ShareKeysRequest, dict[str, bytes]]:
    """The request in ``record`` and each advertised member's certificate (PEM)."""
    _expect_kind(record, "share-keys")
    members = _strings(record, MEMBERS)
    columns = [
        _byte_list(record, key, len(members))
        for key in (ENCRYPTION_KEYS, MASKING_KEYS, SIGNATURES, CERTIFICATES)
    ]
    if len(set(members)) != len(members):
        _malformed("an advertisement is listed twice")
    ads = tuple(
        KeyAdvertisement(member, encryption, masking, signature)
        for member, encryption, masking, signature in zip(
            members, columns[0], columns[1], columns[2], strict=True
        )
    )
    return ShareKeysRequest(_roster(record), ads), dict(zip(members, columns[3], strict=True))


def masked_input_request_record(params: GroupParams, request: MaskedInputRequest) -> ConfigRecord:
    """Stage 2: the signed SHARES roster and the ciphertexts addressed to this member."""
    record = _header("masked-input-request", params)
    _put_roster(record, request.roster)
    senders = list(request.ciphertexts)
    record[SENDERS] = senders
    record[CIPHERTEXTS] = [request.ciphertexts[sender] for sender in senders]
    return record


def read_masked_input_request(record: ConfigRecord) -> MaskedInputRequest:
    """The request in ``record``."""
    _expect_kind(record, "masked-input-request")
    return MaskedInputRequest(_roster(record), _mapping(record, SENDERS, CIPHERTEXTS))


def unmask_request_record(params: GroupParams, request: UnmaskRequest) -> ConfigRecord:
    """Stage 3: the signed UNMASK roster (survivors, and dropped members)."""
    record = _header("unmask-request", params)
    _put_roster(record, request.roster)
    return record


def read_unmask_request(record: ConfigRecord) -> UnmaskRequest:
    """The request in ``record``."""
    _expect_kind(record, "unmask-request")
    return UnmaskRequest(_roster(record))


# Member → server --------------------------------------------------------------------------
def key_advertisement_record(
    params: GroupParams, advertisement: KeyAdvertisement, certificate: bytes
) -> ConfigRecord:
    """Stage 0 reply: the member's signed round keys and its certificate (PEM)."""
    record = _header("key-advertisement", params)
    record[MEMBER] = advertisement.member_id
    record[ENCRYPTION_KEY] = advertisement.encryption_key
    record[MASKING_KEY] = advertisement.masking_key
    record[SIGNATURE] = advertisement.signature
    record[CERTIFICATE] = certificate
    return record


def read_key_advertisement(record: ConfigRecord) -> tuple[KeyAdvertisement, bytes]:
    """The advertisement and the certificate in ``record``."""
    _expect_kind(record, "key-advertisement")
    advertisement = KeyAdvertisement(
        _get(record, MEMBER, str),
        _get(record, ENCRYPTION_KEY, bytes),
        _get(record, MASKING_KEY, bytes),
        _get(record, SIGNATURE, bytes),
    )
    return advertisement, _get(record, CERTIFICATE, bytes)


def encrypted_shares_record(params: GroupParams, shares: EncryptedShares) -> ConfigRecord:
    """Stage 1 reply: one ciphertext per peer."""
    record = _header("encrypted-shares", params)
    record[MEMBER] = shares.member_id
    receivers = list(shares.ciphertexts)
    record[RECEIVERS] = receivers
    record[CIPHERTEXTS] = [shares.ciphertexts[receiver] for receiver in receivers]
    return record


def read_encrypted_shares(record: ConfigRecord) -> EncryptedShares:
    """The shares in ``record``."""
    _expect_kind(record, "encrypted-shares")
    return EncryptedShares(_get(record, MEMBER, str), _mapping(record, RECEIVERS, CIPHERTEXTS))


def masked_input_content(params: GroupParams, masked: MaskedInput) -> RecordDict:
    """Stage 2 reply: the header record and the masked words as one array (4 bytes each for
    b ≤ 32; Flower's own SecAgg+ uploads int64)."""
    record = _header("masked-input", params)
    record[MEMBER] = masked.member_id
    return RecordDict(
        {
            protocol.SECAGG_KEY: record,
            protocol.SECAGG_MASKED_KEY: ArrayRecord({MASKED_ARRAY: Array(masked.values)}),
        }
    )


def read_masked_input(content: RecordDict, params: GroupParams) -> MaskedInput:
    """The masked input in ``content``, as words of the group's ring type (MALFORMED for
    another type or length; the server checks the range)."""
    record = content.config_records.get(protocol.SECAGG_KEY)
    arrays = content.array_records.get(protocol.SECAGG_MASKED_KEY)
    if record is None or arrays is None or list(arrays) != [MASKED_ARRAY]:
        _malformed("a masked input needs its header and exactly one array")
    _expect_kind(record, "masked-input")
    try:
        values = arrays[MASKED_ARRAY].numpy()
    except Exception as error:  # any decoding failure is a malformed reply
        _malformed(f"the masked input cannot be decoded: {error!r}")
    dtype = ring_dtype(params.modulus_bits)
    if values.dtype != dtype or values.shape != (params.input_length,):
        _malformed(
            f"a masked input is {params.input_length} {dtype} words, got {values.shape} "
            f"{values.dtype}"
        )
    return MaskedInput(_get(record, MEMBER, str), np.ascontiguousarray(values))


def unmask_shares_record(params: GroupParams, shares: UnmaskShares) -> ConfigRecord:
    """Stage 3 reply: seed shares of survivors, mask-key shares of dropped members."""
    record = _header("unmask-shares", params)
    record[MEMBER] = shares.member_id
    survivors, dropped = list(shares.self_mask_shares), list(shares.pairwise_key_shares)
    record[SURVIVORS] = survivors
    record[SEED_SHARES] = [shares.self_mask_shares[m] for m in survivors]
    record[DROPPED] = dropped
    record[KEY_SHARES] = [shares.pairwise_key_shares[m] for m in dropped]
    return record


def read_unmask_shares(record: ConfigRecord) -> UnmaskShares:
    """The shares in ``record``."""
    _expect_kind(record, "unmask-shares")
    return UnmaskShares(
        _get(record, MEMBER, str),
        _mapping(record, SURVIVORS, SEED_SHARES),
        _mapping(record, DROPPED, KEY_SHARES),
    )


def addressed(record: ConfigRecord) -> Addressed:
    """The round and group a record names (MALFORMED when it names none)."""
    return Addressed(_get(record, ROUND, int), _get(record, GROUP, str))


def secagg_record(content: RecordDict) -> ConfigRecord:
    """The ``protocol.SECAGG_KEY`` record of a message's content (MALFORMED when absent)."""
    record = content.config_records.get(protocol.SECAGG_KEY)
    if record is None:
        _malformed(f"the message carries no {protocol.SECAGG_KEY} record")
    return record


# Helpers ----------------------------------------------------------------------------------
def _header(kind: str, params: GroupParams) -> ConfigRecord:
    return ConfigRecord({KIND: kind, ROUND: params.round, GROUP: params.group_id})


def _put_roster(record: ConfigRecord, roster: Roster) -> None:
    record[ROSTER_STAGE] = str(roster.stage)
    record[ROSTER_MEMBERS] = list(roster.members)
    record[ROSTER_DROPPED] = list(roster.dropped)
    record[ROSTER_SIGNATURE] = roster.signature


def _roster(record: ConfigRecord) -> Roster:
    try:
        stage = RosterStage(_get(record, ROSTER_STAGE, str))
    except ValueError:
        _malformed(f"unknown roster stage {record.get(ROSTER_STAGE)!r}")
    return Roster(
        stage,
        tuple(_strings(record, ROSTER_MEMBERS)),
        tuple(_strings(record, ROSTER_DROPPED)),
        _get(record, ROSTER_SIGNATURE, bytes),
    )


def _expect_kind(record: ConfigRecord, kind: str) -> None:
    found = record.get(KIND)
    if found != kind:
        raise SecAggRefusal(
            SecAggRefusalReason.OUT_OF_ORDER, f"expected a {kind} record, got {found!r}"
        )


def _get(record: ConfigRecord, key: str, kind: type[_T]) -> _T:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        _malformed(f"{key} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _strings(record: ConfigRecord, key: str) -> list[str]:
    value = record.get(key)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        _malformed(f"{key} must be a list of strings")
    return list(value)  # type: ignore[arg-type]


def _byte_list(record: ConfigRecord, key: str, length: int) -> list[bytes]:
    value = record.get(key)
    if (
        not isinstance(value, list)
        or len(value) != length
        or not all(isinstance(item, bytes) for item in value)
    ):
        _malformed(f"{key} must be a list of {length} byte strings")
    return list(value)  # type: ignore[arg-type]


def _mapping(record: ConfigRecord, names_key: str, values_key: str) -> dict[str, bytes]:
    names = _strings(record, names_key)
    values = _byte_list(record, values_key, len(names))
    if len(set(names)) != len(names):
        _malformed(f"{names_key} lists a member twice")
    return dict(zip(names, values, strict=True))


def _malformed(message: str) -> NoReturn:
    raise SecAggRefusal(SecAggRefusalReason.MALFORMED, message)


__all__ = [
    "Addressed",
    "addressed",
    "encrypted_shares_record",
    "key_advertisement_record",
    "masked_input_content",
    "masked_input_request_record",
    "read_encrypted_shares",
    "read_key_advertisement",
    "read_masked_input",
    "read_masked_input_request",
    "read_setup",
    "read_share_keys",
    "read_unmask_request",
    "read_unmask_shares",
    "secagg_record",
    "setup_record",
    "share_keys_record",
    "unmask_request_record",
    "unmask_shares_record",
]
