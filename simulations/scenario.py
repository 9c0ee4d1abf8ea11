"""Scenarios: who trains, who attacks, which defences run — described in TOML.

A scenario file has a ``[scenario]`` table (clients, attackers, rounds, data
split, attack, training settings), one ``[[defence]]`` table per defence to run
side by side, and an optional ``[matrix]`` table (attacks × defences × seeds).
The embedded default lives in ``scenarios/default.toml``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from ztfl.aggregation import build_pipeline
from ztfl.server.config import ConfigError, CoordinatorConfig

from .attacks import resolve_attack
from .datasets import check_partitioning


class ScenarioError(ValueError):
    """A scenario file is missing a value or holds an invalid one."""


Setting = bool | int | float | str


@dataclass(frozen=True)
class Defence:
    """One aggregation pipeline, the number of Byzantine clients it is built to tolerate, and
    optionally differential privacy (``dp-*`` coordinator settings, e.g. ``dp = true``,
    ``dp-target-epsilon = 4.0``; docs/configuration.md) and secure mode
    (``secure-aggregation = true``, ``group-size = 3``: the pipeline then runs over group
    means, and ``num-byzantine`` counts corrupted groups)."""

    label: str
    pipeline: str
    num_byzantine: int
    settings: tuple[tuple[str, Setting], ...] = ()

    @property
    def private(self) -> bool:
        """Whether this defence runs with differential privacy."""
        return dict(self.settings).get("dp") is True

    @property
    def secure(self) -> bool:
        """Whether this defence runs in secure mode (grouped SecAgg+, ``secure-aggregation``)."""
        return dict(self.settings).get("secure-aggregation") is True


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
    attack: str = "none"
    model: str = "mlp"
    local_epochs: int = 5
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
        check_partitioning(self.num_clients, self.partition_alpha)
        for attack in (self.attack, *self.matrix_attacks):
            resolve_attack(attack)
        for defence in (*self.defences, *self.matrix_defences):
            pipeline = build_pipeline(defence.pipeline, num_byzantine=defence.num_byzantine)
            per_round = self.clients_per_round or self.num_clients
            pipeline.check(per_round)
            if defence.settings:
                self.coordinator_settings(defence)

    def coordinator_settings(self, defence: Defence) -> CoordinatorConfig:
        """The coordinator configuration of one defence in this scenario (file paths unset).

        Raises ScenarioError naming the defence for a setting the coordinator refuses.
        """
        base = CoordinatorConfig(
            num_rounds=self.rounds,
            clients_per_round=self.clients_per_round,
            min_nodes=self.num_clients,
            pipeline=defence.pipeline,
            num_byzantine=defence.num_byzantine,
            max_update_norm=self.max_update_norm,
            model=self.model,
            local_epochs=self.local_epochs,
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            federated_evaluation=False,
            # Simulations compare aggregation rules: quarantine would take attackers out and
            # change what is compared, so a defence opts in with ``("quarantine", True)``.
            # Scores and reputations are recorded either way (docs/monitoring.md).
            quarantine=False,
        )
        if not defence.settings:
            return base
        try:
            return CoordinatorConfig.from_run_config(
                {**base.to_run_config(), "seed": "", **dict(defence.settings)}
            )
        except ConfigError as error:
            raise ScenarioError(f"defence {defence.label!r}: {error}") from error

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

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dictionary; :meth:`from_json` rebuilds the same scenario."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Scenario:
        """Rebuild a scenario written by :meth:`to_json` (e.g. to resume a simulation)."""
        values = dict(data)
        for name in ("defences", "matrix_defences"):
            values[name] = tuple(
                Defence(
                    **{
                        **item,
                        "settings": tuple(
                            (str(key), value) for key, value in item.get("settings", ())
                        ),
                    }
                )
                for item in values.get(name, ())
            )
        for name in ("seeds", "matrix_attacks", "matrix_seeds"):
            values[name] = tuple(values.get(name, ()))
        try:
            return cls(**values)
        except TypeError as error:
            raise ScenarioError(f"not a saved scenario: {error}") from None

    def with_overrides(self, **changes: Any) -> Scenario:
        """A copy with some fields replaced (command-line overrides), re-validated."""
        return replace(self, **{key: value for key, value in changes.items() if value is not None})


def builtin_scenarios() -> tuple[str, ...]:
    """Names of the scenarios shipped in the package (``ztfl simulate NAME``)."""
    folder = resources.files("ztfl.simulations").joinpath("scenarios")
    return tuple(
        sorted(
            item.name.removesuffix(".toml")
            for item in folder.iterdir()
            if item.name.endswith(".toml")
        )
    )


def load_scenario(path: Path | None = None) -> Scenario:
    """Read a scenario file, a built-in scenario by name, or the embedded default (None).

    A ``path`` that names no file but a built-in scenario (``dp``, ``alie-stress``…) loads
    that one.
    """
    if path is None or (not path.exists() and path.name in builtin_scenarios()):
        name = "default" if path is None else path.name
        text = resources.files("ztfl.simulations").joinpath(f"scenarios/{name}.toml").read_text()
        source = f"<built-in {name}>"
    else:
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ScenarioError(
                f"no scenario file {path}, and no built-in scenario of that name "
                f"({', '.join(builtin_scenarios())})"
            ) from None
        except OSError as error:
            raise ScenarioError(f"cannot read scenario {path}: {error}") from error
        source = str(path)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(f"{source}: invalid TOML: {error}") from error
    return scenario_from_document(document, source)


SCENARIO_KEYS: Mapping[str, tuple[str, type]] = {
    "name": ("name", str),
    "num-clients": ("num_clients", int),
    "num-byzantine": ("num_byzantine", int),
    "rounds": ("rounds", int),
    "partition-alpha": ("partition_alpha", float),
    "seeds": ("seeds", list),
    "attack": ("attack", str),
    "model": ("model", str),
    "local-epochs": ("local_epochs", int),
    "learning-rate": ("learning_rate", float),
    "batch-size": ("batch_size", int),
    "clients-per-round": ("clients_per_round", int),
    "max-update-norm": ("max_update_norm", float),
    "clean-reference": ("clean_reference", bool),
}
DEFENCE_KEYS = frozenset({"label", "pipeline", "num-byzantine"})
DEFENCE_SETTING_PREFIX = "dp"
"""Further defence keys: the coordinator's differential-privacy settings (``dp``, ``dp-*``)."""
SECURE_DEFENCE_KEYS = frozenset({"secure-aggregation", "group-size", "secagg-threshold"})
"""Secure mode per defence: ``secure-aggregation = true``, ``group-size`` (k) and
``secagg-threshold`` (t), as the coordinator names them."""
MONITORING_DEFENCE_KEYS = frozenset(
    {"quarantine", "reputation-decay", "quarantine-threshold", "quarantine-min-rounds"}
)
"""Quarantine per defence (off in simulations unless ``quarantine = true``; docs/monitoring.md)."""
MATRIX_KEYS = frozenset({"seeds", "attacks", "defence"})
TOP_LEVEL_KEYS = frozenset({"scenario", "defence", "matrix"})


def scenario_from_document(document: Mapping[str, Any], source: str) -> Scenario:
    """Build a Scenario from a parsed TOML document, refusing unknown keys and wrong types."""
    try:
        _refuse_unknown(document, TOP_LEVEL_KEYS, "top-level table")
        table = _table(document, "scenario")
        _refuse_unknown(table, SCENARIO_KEYS, "[scenario] key")
        values: dict[str, Any] = {}
        for key, (field_name, kind) in SCENARIO_KEYS.items():
            if key not in table:
                continue
            value = table[key]
            if key == "partition-alpha" and value == "iid":
                values[field_name] = None
            elif key == "seeds":
                values[field_name] = tuple(
                    _typed(f"seeds[{i}]", v, int) for i, v in enumerate(value)
                )
            else:
                values[field_name] = _typed(key, value, kind)
        num_byzantine = values.get("num_byzantine", Scenario.num_byzantine)
        values["defences"] = _defences(document.get("defence", []), num_byzantine)
        matrix = _table(document, "matrix")
        _refuse_unknown(matrix, MATRIX_KEYS, "[matrix] key")
        values["matrix_attacks"] = tuple(
            _typed(f"attacks[{i}]", attack, str)
            for i, attack in enumerate(matrix.get("attacks", []))
        )
        values["matrix_defences"] = _defences(matrix.get("defence", []), num_byzantine)
        if "seeds" in matrix:
            values["matrix_seeds"] = tuple(
                _typed(f"matrix seeds[{i}]", v, int) for i, v in enumerate(matrix["seeds"])
            )
        return Scenario(**values, source=source)
    except (TypeError, ValueError) as error:
        if isinstance(error, ScenarioError):
            raise ScenarioError(f"{source}: {error}") from None
        raise ScenarioError(f"{source}: {error}") from error


def _table(document: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    table = document.get(key, {})
    if not isinstance(table, Mapping):
        raise ScenarioError(f"[{key}] must be a table")
    return table


def _refuse_unknown(table: Mapping[str, Any], known: Iterable[str], what: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ScenarioError(f"unknown {what}(s): {', '.join(unknown)}")


def _typed(key: str, value: Any, kind: type) -> Any:
    """Check a TOML value's type; integers are accepted where floats are, nothing else converts."""
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (str, bool, list) and isinstance(value, kind):
        return value
    raise ScenarioError(f"{key} must be {kind.__name__}, got {value!r}")


def _defences(tables: Any, default_byzantine: int) -> tuple[Defence, ...]:
    if not isinstance(tables, list):
        raise ScenarioError("defences are an array of tables: [[defence]]")
    defences = []
    for table in tables:
        if not isinstance(table, Mapping) or "pipeline" not in table:
            raise ScenarioError(f"a defence needs a pipeline, got {table!r}")
        settings = tuple(
            (key, _setting(key, value))
            for key, value in table.items()
            if key == DEFENCE_SETTING_PREFIX
            or key.startswith(f"{DEFENCE_SETTING_PREFIX}-")
            or key in SECURE_DEFENCE_KEYS
            or key in MONITORING_DEFENCE_KEYS
        )
        _refuse_unknown(table, DEFENCE_KEYS | {key for key, _ in settings}, "defence key")
        pipeline = _typed("pipeline", table["pipeline"], str)
        defences.append(
            Defence(
                label=_typed("label", table.get("label", pipeline), str),
                pipeline=pipeline,
                num_byzantine=_typed(
                    "num-byzantine", table.get("num-byzantine", default_byzantine), int
                ),
                settings=settings,
            )
        )
    return tuple(defences)


def _setting(key: str, value: Any) -> Setting:
    if isinstance(value, bool | int | float | str):
        return value
    raise ScenarioError(f"{key} must be a boolean, number or string, got {value!r}")
