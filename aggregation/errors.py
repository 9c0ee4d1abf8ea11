"""Errors raised by the aggregation engine.

They are distinct types so the coordinator can tell a misconfigured defence
(refuse to start) from a round that simply has too few valid updates (skip the
round, audit it) from a caller bug (bad matrix).
"""


class AggregationError(Exception):
    """Base class for every error the aggregation engine raises."""


class InvalidUpdatesError(AggregationError, ValueError):
    """The update matrix or weights handed to a rule are malformed."""


class PipelineConfigError(AggregationError, ValueError):
    """A pipeline description names an unknown step or an invalid parameter."""


class ToleranceError(AggregationError, ValueError):
    """A rule cannot tolerate the configured number of Byzantine clients.

    Raised with the rule's own requirement (for example Krum's n > 2f + 2) so
    the operator sees which bound failed and by how much.
    """
