"""Flower's ``Grid`` contract in one process, for coordinator tests.

Each message goes straight to its node's real ``ClientApp`` with the node's own ``Context``
(node config and state kept across messages), the way a SuperLink and its SuperNodes would
deliver it, minus the network. Tests subclass it to watch or alter traffic (``deliver``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run

NodeConfig = Mapping[str, bool | float | int | str]


class InProcessGrid(Grid):
    """Delivers every message to ``client_app`` with the context of its destination node."""

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Mapping[int, NodeConfig],
        *,
        flower_run_id: int = 1,
    ) -> None:
        self.client_app = client_app
        self.contexts = {
            node: Context(
                run_id=flower_run_id,
                node_id=node,
                node_config=dict(config),
                state=RecordDict(),
                run_config={},
            )
            for node, config in node_configs.items()
        }
        self._run = Run.create_empty(1)
        self._pending: dict[str, Message] = {}
        self._message_ids = itertools.count()

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver now, hand the reply out on ``pull_messages`` (a silent node's never comes)."""
        ids = []
        for message in messages:
            message_id = str(next(self._message_ids))
            reply = self.deliver(message)
            if reply is not None:
                self._pending[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._pending.pop(i) for i in message_ids if i in self._pending]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = (self.deliver(message) for message in messages)
        return [reply for reply in replies if reply is not None]

    def deliver(self, message: Message) -> Message | None:
        """The node's reply to ``message``; None: the node stays silent (a dropout)."""
        return self.client_app(message, self.contexts[message.metadata.dst_node_id])
