"""Round keys: X25519 agreement, HKDF-SHA256 derivation, AEAD-encrypted Shamir shares.

Each member draws two fresh X25519 key pairs per round (Bonawitz et al., 2017): one agrees
the symmetric key that encrypts the shares it sends a peer, the other agrees the pairwise mask
key. Every derived key is bound to the group fingerprint and the two member ids, and the
shares' AEAD (ChaCha20-Poly1305) additionally binds sender and receiver as associated data, so
a ciphertext moved to another pair, round, run or group fails authentication.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .params import GroupParams
from .refusal import SecAggRefusal, SecAggRefusalReason
from .shamir import SHARE_BYTES
from .transcript import derive_key, labelled

PUBLIC_KEY_BYTES = 32
SHARE_ENCRYPTION = "share-encryption"
"""HKDF purpose of the key that encrypts the shares a member sends a peer."""
PAIRWISE_MASK = "pairwise-mask"
"""HKDF purpose of the key whose keystream is a pair's mask."""
_NONCE_BYTES = 12
_RAW = serialization.Encoding.Raw
_RAW_PUBLIC = serialization.PublicFormat.Raw
_RAW_PRIVATE = serialization.PrivateFormat.Raw


def public_bytes(private_key: x25519.X25519PrivateKey) -> bytes:
    """The raw 32-byte public key."""
    return private_key.public_key().public_bytes(_RAW, _RAW_PUBLIC)


def private_bytes(private_key: x25519.X25519PrivateKey) -> bytes:
    """The raw 32-byte private key (a secret: it is what gets Shamir-shared)."""
    return private_key.private_bytes(_RAW, _RAW_PRIVATE, serialization.NoEncryption())


def load_public_key(data: bytes) -> x25519.X25519PublicKey:
    """A peer's advertised public key (MALFORMED unless 32 bytes)."""
    if not isinstance(data, bytes) or len(data) != PUBLIC_KEY_BYTES:
        raise SecAggRefusal(SecAggRefusalReason.MALFORMED, "an X25519 public key has 32 bytes")
    return x25519.X25519PublicKey.from_public_bytes(data)


def agreed_key(
    params: GroupParams,
    purpose: str,
    private_key: x25519.X25519PrivateKey,
    peer_public_key: bytes,
    member: str,
    peer: str,
) -> bytes:
    """HKDF-SHA256 of the X25519 secret, bound to ``purpose``, the group and both members
    (ordered by roster position, so both ends derive the same key)."""
    try:
        secret = private_key.exchange(load_public_key(peer_public_key))
    except ValueError as error:  # a low-order point gives the all-zero secret
        raise SecAggRefusal(
            SecAggRefusalReason.MALFORMED, f"key agreement failed: {error}"
        ) from error
    first, second = sorted((member, peer), key=params.position)
    return derive_key(secret, purpose, params.fingerprint(), first, second)


def self_mask_key(params: GroupParams, seed: bytes, member: str) -> bytes:
    """The key of a member's self mask, derived from its 32-byte seed b."""
    return derive_key(seed, "self-mask", params.fingerprint(), member)


def encrypt_shares(
    params: GroupParams, key: bytes, sender: str, receiver: str, plaintext: bytes
) -> bytes:
    """nonce ‖ ChaCha20-Poly1305(key, plaintext, associated data = group, sender, receiver)."""
    nonce = os.urandom(_NONCE_BYTES)
    aad = _associated_data(params, sender, receiver)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def decrypt_shares(
    params: GroupParams, key: bytes, sender: str, receiver: str, ciphertext: bytes
) -> tuple[bytes, bytes]:
    """The (self-mask seed share, mask-key share) a sender encrypted for this receiver.

    Raises:
        SecAggRefusal: BAD_SHARE when the ciphertext fails authentication (tampered, replayed
            from another round or pair), MALFORMED when it has the wrong size.
    """
    if not isinstance(ciphertext, bytes) or len(ciphertext) <= _NONCE_BYTES:
        raise SecAggRefusal(SecAggRefusalReason.MALFORMED, f"ciphertext from {sender} too short")
    nonce, body = ciphertext[:_NONCE_BYTES], ciphertext[_NONCE_BYTES:]
    try:
        plaintext = ChaCha20Poly1305(key).decrypt(
            nonce, body, _associated_data(params, sender, receiver)
        )
    except InvalidTag as error:
        raise SecAggRefusal(
            SecAggRefusalReason.BAD_SHARE, f"the shares from {sender} fail authentication"
        ) from error
    if len(plaintext) != 2 * SHARE_BYTES:
        raise SecAggRefusal(SecAggRefusalReason.MALFORMED, f"shares from {sender} wrong size")
    return plaintext[:SHARE_BYTES], plaintext[SHARE_BYTES:]


def _associated_data(params: GroupParams, sender: str, receiver: str) -> bytes:
    return labelled(
        "share-encryption",
        params.run_id,
        params.round,
        params.group_id,
        params.fingerprint(),
        sender,
        receiver,
    )
