"""Fixtures shared by the simulation tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def attack_factories_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``ztfl_test_attacks`` (attacks added by dotted path) importable in any import mode."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
