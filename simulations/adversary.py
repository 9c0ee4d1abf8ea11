"""The simulated adversary: a Grid wrapper through which the coordinator talks to clients.

It plays the part of whoever controls the Byzantine clients. Outgoing messages
get a ``ztfl.simulation`` record telling each simulated client its data share
and role (the simulation's stand-in for "this machine belongs to the
attacker"); incoming training replies of Byzantine clients are replaced by
what the attack forges from their honest updates — and, for omniscient
attacks, from the honest updates of the same round. The coordinator sees an
ordinary Grid and cannot tell. In a secure round nothing in the path sees an
update (only masked ring words travel), so the adversary's clients run the
attack on their own input instead, before masking (``simulations.client_app``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType
from flwr.serverapp import Grid

from ztfl.client import protocol

from .attacks import ResolvedAttack
from .forwarding_grid import ForwardingGrid

SIMULATION_KEY = "ztfl.simulation"
"""ConfigRecord with a simulated client's data share and role; never sent by a real coordinator."""


@dataclass(frozen=True)
class DataShare:
    """How simulated clients split the bundled data."""

    num_partitions: int
    alpha: float | None
    seed: int

    def to_record(
        self, byzantine_partitions: Sequence[int], data_attack: str, update_attack: str = ""
    ) -> ConfigRecord:
        """The record a simulated client reads to load its share and learn its role.

        ``update-attack`` names the attack a Byzantine client runs on its own input in a
        secure round, where no one in the path can see (or forge) an update."""
        return ConfigRecord(
            {
                "num-partitions": self.num_partitions,
                "alpha": -1.0 if self.alpha is None else float(self.alpha),
                "data-seed": self.seed,
                "byzantine-partitions": [int(p) for p in byzantine_partitions] or [-1],
                "attack": data_attack,
                "update-attack": update_attack,
            }
        )


class AdversarialGrid(ForwardingGrid):
    """Delegates to a real Grid; marks Byzantine clients and forges their updates.

    The adversary controls a seeded random set of data partitions (Flower's
    simulated node ids change from session to session, partition ids do not),
    and hands replies to the coordinator ordered by partition, so a scenario
    with a given seed replays identically.
    """

    def __init__(
        self,
        inner: Grid,
        *,
        attack: ResolvedAttack,
        num_byzantine: int,
        share: DataShare,
        seed: int,
    ) -> None:
        super().__init__(inner)
        self._attack = attack
        self._num_byzantine = num_byzantine
        self._share = share
        if num_byzantine > share.num_partitions:
            raise ValueError(f"{num_byzantine} attackers but only {share.num_partitions} clients")
        rng = np.random.default_rng([seed, 0xB12])
        chosen = rng.choice(share.num_partitions, size=num_byzantine, replace=False)
        self.byzantine_partitions = tuple(sorted(int(p) for p in chosen))
        self._generator = torch.Generator().manual_seed(seed)
        self._partition_of: dict[int, int] = {}

    @property
    def byzantine_nodes(self) -> frozenset[int]:
        """Node ids seen so far whose partition the adversary controls."""
        return frozenset(
            node for node, part in self._partition_of.items() if part in self.byzantine_partitions
        )

    # ----------------------------------------------------------- Grid interface
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._inner.push_messages([self._mark(message) for message in messages])

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._unmark(reply) for reply in self._inner.pull_messages(message_ids)]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        outgoing = [self._mark(message) for message in messages]
        replies = [
            self._unmark(reply) for reply in self._inner.send_and_receive(outgoing, timeout=timeout)
        ]
        replies.sort(key=lambda reply: self._partition_of.get(reply.metadata.src_node_id, -1))
        is_training = any(m.metadata.message_type == MessageType.TRAIN for m in outgoing)
        if not is_training or self._attack.update_attack is None:
            return replies
        return self._forge(replies)

    # ----------------------------------------------------------- adversary
    def _mark(self, message: Message) -> Message:
        data_attack = self._attack.description if self._attack.data_attack else ""
        update_attack = self._attack.description if self._attack.update_attack else ""
        message.content[SIMULATION_KEY] = self._share.to_record(
            self.byzantine_partitions, data_attack, update_attack
        )
        return message

    def _unmark(self, reply: Message) -> Message:
        """Learn which partition answered, and hide the simulation record from the coordinator."""
        if reply.has_content() and SIMULATION_KEY in reply.content.config_records:
            record = reply.content.config_records.pop(SIMULATION_KEY)
            partition = record.get("partition-id")
            if isinstance(partition, int):
                self._partition_of[int(reply.metadata.src_node_id)] = partition
        return reply

    def _forge(self, replies: Sequence[Message]) -> list[Message]:
        attack = self._attack.update_attack
        assert attack is not None
        usable = [
            r
            for r in replies
            if not r.has_error() and protocol.UPDATE_KEY in r.content.array_records
        ]
        byzantine = [r for r in usable if r.metadata.src_node_id in self.byzantine_nodes]
        honest = [r for r in usable if r.metadata.src_node_id not in self.byzantine_nodes]
        if not byzantine:
            return list(replies)
        names, shapes, own = _stack(byzantine)
        honest_matrix = _stack(honest)[2] if attack.needs_honest_updates and honest else own[:0]
        forged = attack.forge(own, honest_matrix, self._generator)
        for reply, row in zip(byzantine, forged, strict=True):
            reply.content[protocol.UPDATE_KEY] = _record(names, shapes, row)
        return list(replies)


def _stack(replies: Sequence[Message]) -> tuple[list[str], list[tuple[int, ...]], torch.Tensor]:
    """The replies' updates as a (k, d) float32 matrix, with the tensor names and shapes."""
    first = replies[0].content.array_records[protocol.UPDATE_KEY]
    names = list(first.keys())
    shapes = [tuple(first[name].shape) for name in names]
    rows = [
        np.concatenate(
            [
                r.content.array_records[protocol.UPDATE_KEY][name].numpy().reshape(-1)
                for name in names
            ]
        )
        for r in replies
    ]
    return names, shapes, torch.from_numpy(np.stack(rows).astype(np.float32))


def _record(names: list[str], shapes: list[tuple[int, ...]], row: torch.Tensor) -> ArrayRecord:
    flat = row.detach().to(torch.float32).numpy()
    arrays, offset = {}, 0
    for name, shape in zip(names, shapes, strict=True):
        size = int(np.prod(shape, dtype=np.int64))
        arrays[name] = Array(flat[offset : offset + size].reshape(shape).copy())
        offset += size
    return ArrayRecord(arrays)
