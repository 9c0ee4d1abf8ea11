"""What an attack is: a behaviour of the clients an adversary controls.

An attack may poison a client's data before honest training (``poison``) and/or
forge the update the client sends (``forge``). Omniscient attacks
(``needs_honest_updates``) also see the honest updates of the same round —
the strongest adversary of the robust-aggregation literature. All Byzantine
clients of a round collude: ``forge`` receives all of their honestly trained
updates at once.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ztfl.client.data import ClientData


@runtime_checkable
class UpdateAttack(Protocol):
    """Forges the updates of the Byzantine clients of one round."""

    @property
    def needs_honest_updates(self) -> bool:
        """Whether ``forge`` must receive the round's honest updates (omniscient attack)."""
        ...

    def forge(
        self, own: torch.Tensor, honest: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """Return (b, d) forged updates from the (b, d) Byzantine clients' honest updates
        and the (h, d) honest updates (empty unless ``needs_honest_updates``)."""
        ...


@runtime_checkable
class DataAttack(Protocol):
    """Poisons a Byzantine client's local data before it trains."""

    def poison(self, data: ClientData) -> ClientData:
        """The data the client trains on instead."""
        ...
