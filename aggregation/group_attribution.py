"""Attributing flagged groups to clients across random regroupings (secure mode).

With secure aggregation the coordinator sees only group means, so anomaly
scores exist per group. Groups are redrawn uniformly at random every round, so
an honest client lands in a flagged group about as often as the round's share
of flagged groups; a client that *causes* its group to be flagged is in a
flagged group every round it takes part.

The statistic, per client c: over the rounds r it took part in, let
``X_r = 1`` when its group was flagged, and ``p_r = flagged groups / groups``
in that round — the chance a client placed uniformly at random lands in a
flagged group. Under the null hypothesis "c does not influence flags", the
count ``K = Σ X_r`` follows a Poisson-binomial distribution with success
probabilities ``p_r``; the p-value is the upper tail ``P(K ≥ k)``, computed
exactly by dynamic programming. A client is suspect when its p-value is below
``significance / number of clients`` (Bonferroni over the clients tested), and
it took part in at least ``min_rounds`` rounds.

The null is slightly conservative for honest clients: they share a group with
an attacker a little less often than the flagged share (the attacker's own slot
is taken), so honest p-values are, if anything, larger than uniform.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GroupRound:
    """One round of secure mode: the groups (client ids per group) and the flagged groups."""

    groups: tuple[tuple[int, ...], ...]
    flagged: frozenset[int]
    """Indices into ``groups`` of the groups whose mean was scored anomalous."""
    server_round: int = 0
    """The round's number (lets a released client's history start afresh, ``since``)."""

    def __post_init__(self) -> None:
        seen: set[int] = set()
        for group in self.groups:
            if not group:
                raise ValueError("a group needs at least one client")
            if seen & set(group):
                raise ValueError("a client appears in two groups of one round")
            seen |= set(group)
        if any(not 0 <= index < len(self.groups) for index in self.flagged):
            raise ValueError(f"flagged group indices must be in 0..{len(self.groups) - 1}")

    @property
    def flagged_share(self) -> float:
        """The chance that a client placed at random is in a flagged group (0 without groups)."""
        return len(self.flagged) / len(self.groups) if self.groups else 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (the coordinator's persisted policy state)."""
        return {
            "round": self.server_round,
            "groups": [list(group) for group in self.groups],
            "flagged": sorted(self.flagged),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GroupRound:
        """Rebuild from :meth:`to_json` (ValueError for an inconsistent round)."""
        return cls(
            groups=tuple(tuple(int(client) for client in group) for group in data["groups"]),
            flagged=frozenset(int(index) for index in data["flagged"]),
            server_round=int(data.get("round", 0)),
        )


@dataclass(frozen=True)
class Attribution:
    """One client's evidence across rounds."""

    client: int
    rounds: int
    """Rounds the client took part in."""
    flagged: int
    """Of those, rounds in which its group was flagged."""
    expected: float
    """Σ p_r: flagged rounds expected by chance."""
    p_value: float
    """P(K ≥ flagged) under the Poisson-binomial null."""


def poisson_binomial_tail(probabilities: Sequence[float], count: int) -> float:
    """``P(K ≥ count)`` for K a sum of independent Bernoulli(p_i) (exact, O(n²))."""
    if count <= 0:
        return 1.0
    if count > len(probabilities):
        return 0.0
    distribution = [1.0]
    for p in probabilities:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probabilities must be in [0, 1], got {p!r}")
        following = [0.0] * (len(distribution) + 1)
        for k, mass in enumerate(distribution):
            following[k] += mass * (1.0 - p)
            following[k + 1] += mass * p
        distribution = following
    return min(1.0, max(0.0, sum(distribution[count:])))


def attribute_flags(
    rounds: Iterable[GroupRound], *, since: Mapping[int, int] | None = None
) -> dict[int, Attribution]:
    """Every client's flagged count, chance expectation and p-value over ``rounds``.

    ``since``: per client, the first round that counts for it (a client an operator
    released starts a fresh history); earlier rounds are ignored for that client only.
    """
    start = since or {}
    history: dict[int, list[tuple[bool, float]]] = {}
    for round_ in rounds:
        share = round_.flagged_share
        for index, group in enumerate(round_.groups):
            for client in group:
                if round_.server_round < start.get(client, round_.server_round):
                    continue
                history.setdefault(client, []).append((index in round_.flagged, share))
    attributions = {}
    for client, seen in history.items():
        probabilities = [share for _, share in seen]
        flagged = sum(1 for was_flagged, _ in seen if was_flagged)
        attributions[client] = Attribution(
            client=client,
            rounds=len(seen),
            flagged=flagged,
            expected=sum(probabilities),
            p_value=poisson_binomial_tail(probabilities, flagged),
        )
    return attributions


def suspected_clients(
    rounds: Iterable[GroupRound], *, significance: float = 0.01, min_rounds: int = 3
) -> tuple[int, ...]:
    """Clients in flagged groups far more often than chance (Bonferroni-corrected), sorted."""
    return suspects_among(attribute_flags(rounds), significance=significance, min_rounds=min_rounds)


def suspects_among(
    attributions: Mapping[int, Attribution], *, significance: float = 0.01, min_rounds: int = 3
) -> tuple[int, ...]:
    """The clients of ``attributions`` whose p-value is below ``significance / len``
    (Bonferroni over every client tested) after at least ``min_rounds`` rounds, sorted."""
    if not 0.0 < significance < 1.0:
        raise ValueError(f"significance must be in (0, 1), got {significance!r}")
    if min_rounds < 1:
        raise ValueError(f"min_rounds must be ≥ 1, got {min_rounds!r}")
    if not attributions:
        return ()
    cut_off = significance / len(attributions)
    return tuple(
        sorted(
            item.client
            for item in attributions.values()
            if item.rounds >= min_rounds and item.p_value < cut_off
        )
    )
