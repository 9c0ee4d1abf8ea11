"""The message contract between the coordinator and its clients.

Both sides import these names, so a renamed key fails loudly in one place
instead of silently dropping an update.
"""

from __future__ import annotations

from enum import IntEnum

from ztfl.trust.refusal import ModelRefusalReason

GLOBAL_MODEL_KEY = "arrays"
"""ArrayRecord with the global model, coordinator → client."""
CONFIG_KEY = "config"
"""ConfigRecord with the round configuration, coordinator → client."""
UPDATE_KEY = "update"
"""ArrayRecord with the client's update (trained − global), client → coordinator."""
METRICS_KEY = "metrics"
"""MetricRecord with what the client measured, client → coordinator."""

MANIFEST_KEY = "ztfl.manifest"
"""ConfigRecord with the global model's provenance, coordinator → client: ``SIGNED_MANIFEST``
(bytes), optionally ``CHAIN`` (the signed manifests between the node's last accepted model and
this one, oldest first), ``REVOCATIONS`` (the coordinator's newest signed revocation list) and
``ROTATIONS`` (key-rotation statements, as a list of bytes, leading from the pinned key to the
one that signed the model)."""
SIGNED_MANIFEST = "signed-manifest"
CHAIN = "chain"
REVOCATIONS = "revocation-list"
ROTATIONS = "key-rotations"
LINEAGE_KEY = "ztfl.lineage"
"""ConfigRecord in a successful reply, client → coordinator: ``ACCEPTED_DIGEST``, the digest of
the model the client verified (the coordinator sends the next chain from there)."""
ACCEPTED_DIGEST = "accepted-digest"

PRIVACY_KEY = "ztfl.privacy"
"""ConfigRecord in a training message, coordinator → client: the round's differential-privacy
settings, which the client checks against its local policy floor (``ztfl.client.policy``)
before it trains: ``DP`` (bool); with DP on also ``CLIP_NORM`` (this round's C, to which the
client clips its whole update), ``NOISE_MULTIPLIER``, ``DELTA``, ``EPSILON_SPENT``,
``EPSILON_BUDGET`` (0: none), ``SAMPLING_RATE`` and ``ACCOUNTANT``."""
DP = "dp"
CLIP_NORM = "clip-norm"
NOISE_MULTIPLIER = "noise-multiplier"
DELTA = "delta"
EPSILON_SPENT = "epsilon-spent"
EPSILON_BUDGET = "epsilon-budget"
SAMPLING_RATE = "sampling-rate"
ACCOUNTANT = "accountant"

ROUND = "server-round"
MODEL = "model"
LOCAL_EPOCHS = "local-epochs"
LEARNING_RATE = "learning-rate"
BATCH_SIZE = "batch-size"
SEED = "seed"

NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
TRAIN_ACCURACY = "train-accuracy"
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"
UNCLIPPED = "unclipped"
"""DP rounds: 1 if the client's update was within the round's clip norm before clipping, else 0
(the bit adaptive clipping sums; Andrew et al., 2021)."""


class ClientErrorCode(IntEnum):
    """Why a client refused a round; sent as the Flower ``Error`` code of its reply."""

    INVALID_MESSAGE = 4001
    """The message lacks the global model or the configuration, or they are malformed."""
    INVALID_CONFIG = 4002
    """A round setting is missing, of the wrong type or outside the client's limits."""
    MODEL_MISMATCH = 4003
    """The global model does not fit the named architecture."""
    UNKNOWN_MODEL = 4004
    """The named model is not registered on this client."""
    NO_DATA = 4005
    """The client has no usable local data."""
    NO_TRUST_ANCHOR = 4006
    """The node has no usable trust anchor (``trust-anchor`` in its node config)."""
    POLICY_FLOOR = 4007
    """The round's configuration is weaker than the node's local policy (e.g. no DP, a clip
    norm above the node's maximum, an ε budget above its limit); the reason says which."""
    INVALID_POLICY = 4008
    """The node's own policy settings (its node config) are malformed."""

    # The client refused the broadcast model: one code per ModelRefusalReason.
    MODEL_BAD_SIGNATURE = 4101
    MODEL_UNKNOWN_KEY = 4102
    MODEL_MALFORMED_MANIFEST = 4103
    MODEL_WRONG_RUN = 4104
    MODEL_BROKEN_LINEAGE = 4105
    MODEL_STALE_ROUND = 4106
    MODEL_ROUND_DIGEST_MISMATCH = 4107
    MODEL_TENSOR_MISMATCH = 4108
    MODEL_EXPIRED = 4109
    MODEL_NOT_YET_VALID = 4110
    MODEL_REVOKED = 4111
    MODEL_STALE_REVOCATION_LIST = 4112
    MODEL_BAD_REVOCATION_LIST = 4113
    MODEL_BAD_ROTATION = 4114
    MODEL_MALFORMED_LINEAGE_STATE = 4115


def refusal_code(reason: ModelRefusalReason) -> ClientErrorCode:
    """The error code a client replies with when it refuses a model for ``reason``."""
    return ClientErrorCode[f"MODEL_{reason.name}"]


def refusal_reason(code: int) -> ModelRefusalReason | None:
    """The model-refusal reason an error code stands for; None for other codes."""
    try:
        name = ClientErrorCode(code).name
    except ValueError:
        return None
    if not name.startswith("MODEL_"):
        return None
    return ModelRefusalReason[name.removeprefix("MODEL_")]


# Secure aggregation (SecAgg+ in groups, docs/secure-aggregation.md) ------------------------
# One round is four Message API stages, each a ``train.<action>`` message; the first carries
# the broadcast of a plaintext training message (model, config, manifest, privacy) plus the
# group's setup, so the member verifies, trains, clips and quantizes before it advertises keys.
SECAGG_SETUP_ACTION = "secagg_setup"
SECAGG_SHARE_KEYS_ACTION = "secagg_share_keys"
SECAGG_MASKED_INPUT_ACTION = "secagg_masked_input"
SECAGG_UNMASK_ACTION = "secagg_unmask"
SECAGG_SETUP = f"train.{SECAGG_SETUP_ACTION}"
SECAGG_SHARE_KEYS = f"train.{SECAGG_SHARE_KEYS_ACTION}"
SECAGG_MASKED_INPUT = f"train.{SECAGG_MASKED_INPUT_ACTION}"
SECAGG_UNMASK = f"train.{SECAGG_UNMASK_ACTION}"
SECAGG_MESSAGE_TYPES = (SECAGG_SETUP, SECAGG_SHARE_KEYS, SECAGG_MASKED_INPUT, SECAGG_UNMASK)

SECAGG_KEY = "ztfl.secagg"
"""ConfigRecord with one SecAgg+ stage message, both directions (``ztfl.client.secagg_records``)."""
SECAGG_MASKED_KEY = "ztfl.secagg.masked"
"""ArrayRecord with a member's masked input (ring words, uint32 for b ≤ 32), client → server."""


class SecAggErrorCode(IntEnum):
    """Why a member refused a secure-aggregation stage: one code per ``SecAggRefusalReason``
    (``secagg_refusal_code``), plus the node's own missing identity. Sent as the ``Error`` code."""

    SECAGG_BAD_SIGNATURE = 4201
    SECAGG_BAD_ROSTER_SIGNATURE = 4202
    SECAGG_ROSTER_MISMATCH = 4203
    SECAGG_DOUBLE_UNMASK_REQUEST = 4204
    SECAGG_BELOW_THRESHOLD = 4205
    SECAGG_BAD_SHARE = 4206
    SECAGG_WEAK_PARAMETERS = 4207
    SECAGG_OUT_OF_ORDER = 4208
    SECAGG_MALFORMED = 4209
    SECAGG_NO_IDENTITY = 4210
    """The node has no usable identity key, certificate or federation CA (node config)."""


def secagg_refusal_code(reason: str) -> SecAggErrorCode:
    """The error code a member replies with when it refuses a stage for ``reason`` (a
    ``SecAggRefusalReason`` value)."""
    return SecAggErrorCode[f"SECAGG_{reason.upper()}"]


def secagg_refusal_name(code: int) -> str | None:
    """The refusal an error code stands for (``bad_signature``, … ``no_identity``), or None
    for a code that is not a secure-aggregation refusal."""
    try:
        return SecAggErrorCode(code).name.removeprefix("SECAGG_").lower()
    except ValueError:
        return None
