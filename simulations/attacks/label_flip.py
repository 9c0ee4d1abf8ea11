"""Label flipping: train honestly on labels mapped y → (C − 1 − y)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ztfl.client.data import ClientData


@dataclass(frozen=True)
class LabelFlip:
    """A data attack; the update is whatever honest training on the flipped labels gives."""

    num_classes: int = 10

    def poison(self, data: ClientData) -> ClientData:
        flip = torch.tensor(self.num_classes - 1, dtype=data.train_labels.dtype)
        return replace(data, train_labels=flip - data.train_labels)
