"""The message contract between the coordinator and its clients.

Both sides import these names, so a renamed key fails loudly in one place
instead of silently dropping an update.
"""

from __future__ import annotations

from enum import IntEnum

GLOBAL_MODEL_KEY = "arrays"
"""ArrayRecord with the global model, coordinator → client."""
CONFIG_KEY = "config"
"""ConfigRecord with the round configuration, coordinator → client."""
UPDATE_KEY = "update"
"""ArrayRecord with the client's update (trained − global), client → coordinator."""
METRICS_KEY = "metrics"
"""MetricRecord with what the client measured, client → coordinator."""

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
