"""Composable aggregation pipelines: ``arc -> nnm -> trimmed_mean(beta=0.25)``.

A pipeline is zero or more pre-aggregation steps followed by one final rule,
built from a configuration string or a TOML list, and checked against the
number of Byzantine clients it must tolerate before it ever runs.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import secrets
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .composition import RowComposition
from .errors import InvalidUpdatesError, PipelineConfigError, ToleranceError
from .matrix import check_update_matrix, normalized_weights
from .steps import (
    FINAL_RULES,
    PRE_AGGREGATION_STEPS,
    AggregationResult,
    Bucketing,
    FinalRule,
    ParamValue,
    PreAggregationStep,
)

STEP_SEPARATOR = re.compile(r"\s*(?:->|→)\s*")
STEP_SYNTAX = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?:\((?P<params>.*)\))?$")


@dataclass(frozen=True)
class StepSpec:
    """One parsed step: its registry name and its parameters."""

    name: str
    params: Mapping[str, ParamValue]

    def describe(self) -> str:
        """The step as it would be written in a configuration string."""
        if not self.params:
            return self.name
        inner = ", ".join(f"{key}={value!r}" for key, value in sorted(self.params.items()))
        return f"{self.name}({inner})"


@dataclass(frozen=True)
class Pipeline:
    """Pre-aggregation steps and a final rule, for a declared number of Byzantine clients."""

    pre_steps: tuple[PreAggregationStep, ...]
    rule: FinalRule
    num_byzantine: int
    specs: tuple[StepSpec, ...]

    @property
    def description(self) -> str:
        """Canonical configuration string, e.g. ``arc -> nnm -> trimmed_mean``."""
        return " -> ".join(spec.describe() for spec in self.specs)

    @property
    def stated(self) -> str:
        """Self-contained statement for the signed manifest: every step with its effective
        parameters (defaults included) and the declared number of Byzantine clients, e.g.
        ``nnm -> trimmed_mean(beta=None); num_byzantine=4``."""
        steps = []
        for spec, step in zip(self.specs, (*self.pre_steps, self.rule), strict=True):
            params = {name: getattr(step, name) for name in step_parameters(type(step))}
            steps.append(StepSpec(spec.name, params).describe())
        return f"{' -> '.join(steps)}; num_byzantine={self.num_byzantine}"

    @property
    def preserves_rows(self) -> bool:
        """Whether row i of the final rule's input still belongs to client i (no bucketing)."""
        return not any(isinstance(step, Bucketing) for step in self.pre_steps)

    @property
    def supports_weights(self) -> bool:
        """Whether the final rule uses client weights."""
        return self.rule.supports_weights

    def check(self, num_clients: int) -> None:
        """Raise ToleranceError unless every step's bound holds for ``num_clients`` inputs."""
        rows = num_clients
        for step in self.pre_steps:
            step.check(rows, self.num_byzantine)
            rows = step.output_rows(rows)
        self.rule.check(rows, self.num_byzantine)

    def minimum_clients(self, limit: int = 10_000) -> int:
        """The smallest number of updates this pipeline accepts (for configuration checks)."""
        for num_clients in range(1, limit + 1):
            try:
                self.check(num_clients)
            except ToleranceError:
                continue
            return num_clients
        raise PipelineConfigError(
            f"no number of clients up to {limit} satisfies {self.description}"
        )

    def __call__(
        self,
        updates: torch.Tensor,
        weights: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        validated: bool = False,
    ) -> AggregationResult:
        """Aggregate an (n, d) update matrix. The matrix is never modified.

        ``validated=True`` skips the finiteness scan when every row was already
        checked. Random steps (bucketing) draw from ``generator``, or from a
        generator seeded with 64 secret bits when none is given, so clients
        cannot predict the buckets.
        """
        check_update_matrix(updates, validated=validated)
        normalized = normalized_weights(weights, updates)
        if normalized is not None and not self.rule.supports_weights:
            raise InvalidUpdatesError(
                f"{self.rule.name} does not use client weights; configure uniform weighting"
            )
        self.check(updates.shape[0])
        if generator is None and any(isinstance(step, Bucketing) for step in self.pre_steps):
            generator = torch.Generator().manual_seed(secrets.randbits(64))
        rows = RowComposition(updates)
        row_weights = None if normalized is None else normalized.to(torch.float64)
        for step in self.pre_steps:
            step_map = step.apply(rows, self.num_byzantine, generator)
            row_weights = step.propagate_weights(step_map, row_weights)
        result = self.rule.aggregate(rows, row_weights, self.num_byzantine)
        return dataclasses.replace(result, num_inputs=updates.shape[0])


def build_pipeline(description: str | Sequence[Any], *, num_byzantine: int) -> Pipeline:
    """Build a pipeline from ``"arc -> nnm -> trimmed_mean(beta=0.25)"`` or a TOML list.

    The TOML form is a list whose items are step names or tables with a
    ``name`` key and the step's parameters, e.g.
    ``["arc", "nnm", {name = "trimmed_mean", beta = 0.25}]``.
    """
    if num_byzantine < 0:
        raise PipelineConfigError(f"num_byzantine must be ≥ 0, got {num_byzantine}")
    specs = parse_steps(description)
    if not specs:
        raise PipelineConfigError("a pipeline needs at least a final rule, e.g. 'median'")
    *pre_specs, final_spec = specs
    pre_steps = tuple(
        _instantiate(spec, PRE_AGGREGATION_STEPS, "pre-aggregation step") for spec in pre_specs
    )
    if final_spec.name in PRE_AGGREGATION_STEPS:
        raise PipelineConfigError(
            f"a pipeline must end with an aggregation rule, not '{final_spec.name}'; "
            f"rules: {', '.join(sorted(FINAL_RULES))}"
        )
    rule = _instantiate(final_spec, FINAL_RULES, "aggregation rule")
    return Pipeline(pre_steps, rule, num_byzantine, tuple(specs))


def parse_steps(description: str | Sequence[Any]) -> tuple[StepSpec, ...]:
    """Parse either configuration form into step specs, refusing malformed input."""
    if isinstance(description, str):
        parts = [part for part in STEP_SEPARATOR.split(description.strip()) if part]
        return tuple(_parse_step_text(part) for part in parts)
    if isinstance(description, Sequence):
        return tuple(_parse_step_item(item) for item in description)
    raise PipelineConfigError(f"a pipeline is a string or a list, got {type(description).__name__}")


def _parse_step_item(item: Any) -> StepSpec:
    if isinstance(item, str):
        return _parse_step_text(item)
    if isinstance(item, Mapping):
        params = dict(item)
        name = params.pop("name", None)
        if not isinstance(name, str):
            raise PipelineConfigError(f"a pipeline step table needs a 'name' string, got {item!r}")
        for key, value in params.items():
            if not isinstance(value, int | float | str | bool):
                raise PipelineConfigError(
                    f"step '{name}': parameter {key} has unsupported value {value!r}"
                )
        return StepSpec(name, params)
    raise PipelineConfigError(f"a pipeline step is a name or a table, got {item!r}")


def _parse_step_text(text: str) -> StepSpec:
    match = STEP_SYNTAX.match(text.strip())
    if match is None:
        raise PipelineConfigError(
            f"cannot parse pipeline step {text!r}; write name or name(key=value, ...)"
        )
    params: dict[str, ParamValue] = {}
    raw = match.group("params")
    if raw and raw.strip():
        for assignment in raw.split(","):
            key, sep, value = assignment.partition("=")
            if not sep or not key.strip().isidentifier():
                raise PipelineConfigError(
                    f"step {text!r}: expected key=value, got {assignment.strip()!r}"
                )
            params[key.strip()] = _parse_value(value.strip())
    return StepSpec(match.group("name"), params)


def _parse_value(text: str) -> ParamValue:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text.strip("'\"")


def _instantiate(spec: StepSpec, registry: Mapping[str, Callable[..., Any]], kind: str) -> Any:
    factory = registry.get(spec.name)
    if factory is None:
        known = ", ".join(sorted(registry))
        raise PipelineConfigError(f"unknown {kind} '{spec.name}'; known: {known}")
    accepted = step_parameters(factory)
    unknown = sorted(set(spec.params) - set(accepted))
    if unknown:
        allowed = ", ".join(sorted(accepted)) or "none"
        raise PipelineConfigError(
            f"{spec.name}: unknown parameter(s) {', '.join(unknown)}; accepted: {allowed}"
        )
    arguments = {
        key: _coerce(spec.name, key, value, accepted[key]) for key, value in spec.params.items()
    }
    return factory(**arguments)


def step_parameters(factory: Callable[..., Any]) -> dict[str, Any]:
    """The configurable parameters of a registry entry and their annotated types."""
    hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    return {
        name: hints.get(name, Any)
        for name in inspect.signature(factory).parameters
        if name not in NON_CONFIGURABLE
    }


NON_CONFIGURABLE = frozenset({"name", "supports_weights"})


def _coerce(step: str, key: str, value: ParamValue, annotation: Any) -> ParamValue:
    """Check a parameter against its annotation; ints are accepted where floats are."""
    allowed = set(typing.get_args(annotation)) or {annotation}
    allowed.discard(type(None))
    if float in allowed and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    if any(
        isinstance(value, kind) and kind is not int for kind in allowed if isinstance(kind, type)
    ):
        return value
    names = " or ".join(sorted(getattr(kind, "__name__", str(kind)) for kind in allowed))
    raise PipelineConfigError(f"{step}: parameter {key} must be {names}, got {value!r}")
