"""Local training and evaluation on the client's own data (CPU, or CUDA when present)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data import ClientData


@dataclass(frozen=True)
class TrainingConfig:
    """What the coordinator may set for one round of local training, validated on arrival."""

    local_epochs: int = 1
    learning_rate: float = 0.05
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.local_epochs <= 100:
            raise ValueError(f"local-epochs must be in [1, 100], got {self.local_epochs}")
        if not 0.0 < self.learning_rate <= 10.0:
            raise ValueError(f"learning-rate must be in (0, 10], got {self.learning_rate}")
        if not 1 <= self.batch_size <= 65_536:
            raise ValueError(f"batch-size must be in [1, 65536], got {self.batch_size}")


@dataclass(frozen=True)
class TrainingResult:
    """The update (trained − global weights) and what the client measured while training."""

    update: dict[str, np.ndarray]
    num_examples: int
    loss: float
    accuracy: float


def select_device() -> torch.device:
    """CUDA when this host has it, otherwise the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_update(
    model: nn.Module,
    data: ClientData,
    config: TrainingConfig,
    device: torch.device | None = None,
) -> TrainingResult:
    """Train ``model`` (already holding the global weights) with SGD and return the update.

    Shuffling draws from a generator seeded by ``config.seed`` so a client's
    round is reproducible.
    """
    device = device or select_device()
    model = model.to(device)
    start = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(config.seed)
    features = data.train_features.to(device)
    labels = data.train_labels.to(device)
    total_loss, correct, seen = 0.0, 0, 0
    model.train()
    for _ in range(config.local_epochs):
        order = torch.randperm(data.num_train, generator=generator).to(device)
        for batch in torch.split(order, config.batch_size):
            optimizer.zero_grad()
            logits = model(features[batch])
            loss = loss_fn(logits, labels[batch])
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
            correct += int((logits.argmax(dim=1) == labels[batch]).sum())
            seen += len(batch)
    update = {
        name: (tensor.detach() - start[name]).to("cpu", torch.float32).numpy()
        for name, tensor in model.state_dict().items()
    }
    return TrainingResult(update, data.num_train, total_loss / max(seen, 1), correct / max(seen, 1))


def evaluate(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on the given examples."""
    if features.shape[0] == 0:
        return 0.0, 0.0
    device = device or select_device()
    model = model.to(device).eval()
    with torch.no_grad():
        logits = model(features.to(device))
        loss = nn.functional.cross_entropy(logits, labels.to(device))
        accuracy = (logits.argmax(dim=1) == labels.to(device)).float().mean()
    return loss.item(), accuracy.item()


def load_weights(model: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Copy ``weights`` into ``model``; names, shapes and dtypes must match exactly."""
    state = model.state_dict()
    if set(weights) != set(state):
        missing = sorted(set(state) - set(weights))
        extra = sorted(set(weights) - set(state))
        raise ValueError(f"weights do not match the model: missing {missing}, unexpected {extra}")
    for name, tensor in state.items():
        array = weights[name]
        if tuple(array.shape) != tuple(tensor.shape):
            raise ValueError(f"{name}: shape {tuple(array.shape)}, model has {tuple(tensor.shape)}")
        if array.dtype != np.float32:
            raise ValueError(f"{name}: dtype {array.dtype}, expected float32")
    model.load_state_dict({name: torch.from_numpy(np.array(weights[name])) for name in state})


def model_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's weights as float32 numpy arrays, by state-dict name."""
    return {
        name: tensor.detach().to("cpu", torch.float32).numpy().copy()
        for name, tensor in model.state_dict().items()
    }
