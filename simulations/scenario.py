"""Scenarios: who trains, who attacks, which defences run — described in TOML.

A scenario file has a ``[scenario]`` table (clients, attackers, rounds, data
split, attack, training settings), one ``[[defence]]`` table per defence to run
side by side, and an optional ``[matrix]`` table (attacks × defences × seeds).
The embedded default lives in ``scenarios/default.toml``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from ztfl.aggregation import build_pipeline

from .attacks import resolve_attack


class ScenarioError(ValueError):
    """A scenario file is missing a value or holds an invalid one."""


@dataclass(frozen=True)
class Defence:
    """One aggregation pipeline and the number of Byzantine clients it is built to tolerate."""

    label: str
    pipeline: str
    num_byzantine: int


@dataclass(frozen=True)
class RunSpec:
    """One simulated federated run."""

    defence: Defence
    attack: str
    num_attackers: int
    seed: int

    @property
    def label(self) -> str:
        """Short human label, e.g. ``median | alie | seed 1``."""
        return f"{self.defence.label} | {self.attack} | seed {self.seed}"


@dataclass(frozen=True)
class Scenario:
    """A complete simulation description, validated when built."""

    name: str = "default"
    num_clients: int = 20
    num_byzantine: int = 4
    rounds: int = 30
    partition_alpha: float | None = 0.5
    seeds: tuple[int, ...] = (0,)
    attack: str = "sign_flip(scale=5)"
    model: str = "mlp"
    local_epochs: int = 2
    learning_rate: float = 0.1
    batch_size: int = 16
    clients_per_round: int = 0
    max_update_norm: float = 100.0
    clean_reference: bool = True
    defences: tuple[Defence, ...] = ()
    matrix_attacks: tuple[str, ...] = ()
    matrix_defences: tuple[Defence, ...] = ()
    matrix_seeds: tuple[int, ...] = (0, 1, 2)
    source: str = field(default="<built-in>", compare=False)

    def __post_init__(self) -> None:
        if self.num_clients < 1 or not 0 <= self.num_byzantine < self.num_clients:
            raise ScenarioError("need num-clients ≥ 1 and 0 ≤ num-byzantine < num-clients")
        if self.rounds < 1 or not self.seeds:
            raise ScenarioError("need rounds ≥ 1 and at least one seed")
        for attack in (self.attack, *self.matrix_attacks):
            resolve_attack(attack)
        for defence in (*self.defences, *self.matrix_defences):
            pipeline = build_pipeline(defence.pipeline, num_byzantine=defence.num_byzantine)
            per_round = self.clients_per_round or self.num_clients
            pipeline.check(per_round)

    def runs(self) -> list[RunSpec]:
        """The side-by-side runs: each defence under the attack (and the clean reference)."""
        specs = []
        for seed in self.seeds:
            if self.clean_reference:
                clean = Defence("clean (mean, no attack)", "mean", 0)
                specs.append(RunSpec(clean, "none", 0, seed))
            specs.extend(RunSpec(d, self.attack, self.num_byzantine, seed) for d in self.defences)
        return specs

    def matrix_runs(self) -> list[RunSpec]:
        """Every matrix attack against every matrix defence for every matrix seed."""
        defences = self.matrix_defences or self.defences
        return [
            RunSpec(defence, attack, self.num_byzantine, seed)
            for seed in self.matrix_seeds
            for attack in self.matrix_attacks
            for defence in defences
        ]

    def with_overrides(self, **changes: Any) -> Scenario:
        """A copy with some fields replaced (command-line overrides), re-validated."""
        return replace(self, **{key: value for key, value in changes.items() if value is not None})


def load_scenario(path: Path | None = None) -> Scenario:
    """Read a scenario file, or the embedded default when ``path`` is None."""
    if path is None:
        text = resources.files("ztfl.simulations").joinpath("scenarios/default.toml").read_text()
        source = "<built-in default>"
    else:
        try:
            text = path.read_text()
        except OSError as error:
            raise ScenarioError(f"cannot read scenario {path}: {error}") from error
        source = str(path)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(f"{source}: invalid TOML: {error}") from error
    return scenario_from_document(document, source)


def scenario_from_document(document: Mapping[str, Any], source: str) -> Scenario:
    """Build a Scenario from a parsed TOML document."""
    try:
        table = dict(document.get("scenario", {}))
        known = {
            "name", "num-clients", "num-byzantine", "rounds", "partition-alpha", "seeds",
            "attack", "model", "local-epochs", "learning-rate", "batch-size",
            "clients-per-round", "max-update-norm", "clean-reference",
        }  # fmt: skip
        unknown = sorted(set(table) - known)
        if unknown:
            raise ScenarioError(f"unknown [scenario] key(s): {', '.join(unknown)}")
        num_byzantine = int(table.get("num-byzantine", 4))
        alpha = table.get("partition-alpha", 0.5)
        matrix = dict(document.get("matrix", {}))
        return Scenario(
            name=str(table.get("name", "scenario")),
            num_clients=int(table.get("num-clients", 20)),
            num_byzantine=num_byzantine,
            rounds=int(table.get("rounds", 30)),
            partition_alpha=None if alpha in ("iid", None) else float(alpha),
            seeds=tuple(int(seed) for seed in table.get("seeds", [0])),
            attack=str(table.get("attack", "none")),
            model=str(table.get("model", "mlp")),
            local_epochs=int(table.get("local-epochs", 2)),
            learning_rate=float(table.get("learning-rate", 0.1)),
            batch_size=int(table.get("batch-size", 16)),
            clients_per_round=int(table.get("clients-per-round", 0)),
            max_update_norm=float(table.get("max-update-norm", 100.0)),
            clean_reference=bool(table.get("clean-reference", True)),
            defences=_defences(document.get("defence", []), num_byzantine),
            matrix_attacks=tuple(str(a) for a in matrix.get("attacks", [])),
            matrix_defences=_defences(matrix.get("defence", []), num_byzantine),
            matrix_seeds=tuple(int(seed) for seed in matrix.get("seeds", [0, 1, 2])),
            source=source,
        )
    except ScenarioError:
        raise
    except (TypeError, ValueError) as error:
        raise ScenarioError(f"{source}: {error}") from error


def _defences(tables: Any, default_byzantine: int) -> tuple[Defence, ...]:
    if not isinstance(tables, list):
        raise ScenarioError("defences are an array of tables: [[defence]]")
    defences = []
    for table in tables:
        if not isinstance(table, Mapping) or "pipeline" not in table:
            raise ScenarioError(f"a defence needs a pipeline, got {table!r}")
        pipeline = str(table["pipeline"])
        defences.append(
            Defence(
                label=str(table.get("label", pipeline)),
                pipeline=pipeline,
                num_byzantine=int(table.get("num-byzantine", default_byzantine)),
            )
        )
    return tuple(defences)
