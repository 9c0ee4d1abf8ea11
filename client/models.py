"""The model registry: names a coordinator may ask for, and the torch modules behind them.

The coordinator names the model in its round configuration; a client builds
only models registered here (by this package or by the operator's own code
through ``register_model``), never an arbitrary import path sent over the
network.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

DIGITS_FEATURES = 64
DIGITS_CLASSES = 10


class DigitsMLP(nn.Module):
    """Two-layer perceptron for 8×8 digit images flattened to 64 features."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(DIGITS_FEATURES, hidden),
            nn.ReLU(),
            nn.Linear(hidden, DIGITS_CLASSES),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of flattened images."""
        logits: torch.Tensor = self.layers(features)
        return logits


class DigitsCNN(nn.Module):
    """Small convolutional network for 8×8 digit images (given flattened)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(32 * 4 * 4, DIGITS_CLASSES)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of flattened images."""
        images = features.reshape(-1, 1, 8, 8)
        logits: torch.Tensor = self.classifier(self.features(images).flatten(1))
        return logits


ModelFactory = Callable[[], nn.Module]

_REGISTRY: dict[str, ModelFactory] = {"mlp": DigitsMLP, "cnn": DigitsCNN}


class UnknownModelError(LookupError):
    """The configuration names a model this installation does not provide."""


def register_model(name: str, factory: ModelFactory) -> None:
    """Make ``factory`` available under ``name`` (call it from your own app module)."""
    if not name.isidentifier():
        raise ValueError(f"model names are identifiers, got {name!r}")
    _REGISTRY[name] = factory


def available_models() -> tuple[str, ...]:
    """Registered model names."""
    return tuple(sorted(_REGISTRY))


def build_model(name: str, *, seed: int | None = None) -> nn.Module:
    """Instantiate a registered model; ``seed`` makes its initial weights reproducible."""
    factory = _REGISTRY.get(name)
    if factory is None:
        raise UnknownModelError(
            f"unknown model {name!r}; available: {', '.join(available_models())}"
        )
    if seed is None:
        return factory()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()
