"""SecAgg+ (Bell et al. 2020) as pure state machines: signed key agreement, Shamir shares,
keyed-cipher masks.

Safe verbs at the top: ``GroupParams.create`` (secure defaults t = ⌊k/2⌋ + 1 and the smallest
no-wrap modulus), ``SecAggServer`` and ``SecAggClient`` (one ``collect`` / ``handle`` per stage),
``roster_signer`` / ``roster_verifier`` / ``identity_verifier`` for the keys. The primitives
underneath (``masks``, ``shamir``, ``key_agreement``, ``transcript``, ``quantization``) stay in
their modules. No I/O and no Flower here; docs/secure-aggregation.md describes the protocol.
"""

from .client import ClientPolicy, ClientStage, SecAggClient
from .messages import (
    ClientReply,
    EncryptedShares,
    GroupSetup,
    KeyAdvertisement,
    MaskedInput,
    MaskedInputRequest,
    ServerMessage,
    ShareKeysRequest,
    UnmaskRequest,
    UnmaskShares,
)
from .params import GroupParams
from .quantization import QuantizationParams, dequantize_sum, quantize, scale_for_modulus_bits
from .refusal import SecAggRefusal, SecAggRefusalReason
from .server import GroupOutcome, SecAggServer, ServerStage
from .signatures import (
    IdentityVerifier,
    Roster,
    RosterSigner,
    RosterStage,
    RosterVerifier,
    identity_verifier,
    roster_signer,
    roster_verifier,
)

__all__ = [
    "ClientPolicy",
    "ClientReply",
    "ClientStage",
    "EncryptedShares",
    "GroupOutcome",
    "GroupParams",
    "GroupSetup",
    "IdentityVerifier",
    "KeyAdvertisement",
    "MaskedInput",
    "MaskedInputRequest",
    "QuantizationParams",
    "Roster",
    "RosterSigner",
    "RosterStage",
    "RosterVerifier",
    "SecAggClient",
    "SecAggRefusal",
    "SecAggRefusalReason",
    "SecAggServer",
    "ServerMessage",
    "ServerStage",
    "ShareKeysRequest",
    "UnmaskRequest",
    "UnmaskShares",
    "dequantize_sum",
    "identity_verifier",
    "quantize",
    "roster_signer",
    "roster_verifier",
    "scale_for_modulus_bits",
]
