"""Run scenarios on Flower's simulation engine (Ray backend).

All runs of one invocation — the side-by-side defences, or the whole matrix —
share one simulation session: one Ray start, one set of simulated SuperNodes,
and a ServerApp that runs the production ``Coordinator`` once per run behind
the simulated adversary. Ray is shut down by Flower when the session ends.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ztfl.client.models import build_model
from ztfl.client.trainer import evaluate, load_weights, model_weights
from ztfl.server.config import CoordinatorConfig
from ztfl.server.coordinator import Coordinator
from ztfl.server.history import RoundObserver, RunHistory

from .adversary import AdversarialGrid, DataShare
from .attacks import resolve_attack
from .datasets import digits_holdout
from .scenario import RunSpec, Scenario

ObserverFactory = Callable[[RunSpec], Sequence[RoundObserver]]


@dataclass(frozen=True)
class RunResult:
    """One finished run."""

    spec: RunSpec
    history: RunHistory
    duration_s: float
    byzantine_partitions: tuple[int, ...]

    @property
    def final_accuracy(self) -> float:
        """Central held-out accuracy after the last round."""
        return self.history.accuracy_series()[-1]


def quiet_simulation_environment() -> None:
    """Keep telemetry off and Flower's and Ray's console chatter out of the progress display."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    logging.getLogger("flwr").setLevel(logging.ERROR)


def holdout_evaluation(model_name: str) -> Callable[[dict[str, np.ndarray]], dict[str, float]]:
    """Central evaluation on the held-out 20 % of digits."""
    holdout = digits_holdout()
    features, labels = torch.from_numpy(holdout.features), torch.from_numpy(holdout.labels)
    model = build_model(model_name)

    def score(weights: dict[str, np.ndarray]) -> dict[str, float]:
        load_weights(model, weights)
        loss, accuracy = evaluate(model, features, labels, torch.device("cpu"))
        return {"loss": loss, "accuracy": accuracy}

    return score


def coordinator_config(scenario: Scenario, spec: RunSpec) -> CoordinatorConfig:
    """The production coordinator's configuration for one simulated run."""
    return CoordinatorConfig(
        num_rounds=scenario.rounds,
        clients_per_round=scenario.clients_per_round,
        min_nodes=scenario.num_clients,
        pipeline=spec.defence.pipeline,
        num_byzantine=spec.defence.num_byzantine,
        max_update_norm=scenario.max_update_norm,
        model=scenario.model,
        local_epochs=scenario.local_epochs,
        learning_rate=scenario.learning_rate,
        batch_size=scenario.batch_size,
        seed=spec.seed,
        federated_evaluation=False,
    )


def run_plan(
    scenario: Scenario,
    plan: Sequence[RunSpec],
    *,
    observers_for: ObserverFactory | None = None,
    ray_init_args: dict[str, Any] | None = None,
) -> list[RunResult]:
    """Run every spec of ``plan`` in one simulation session; results in plan order."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from .client_app import build_simulation_client_app

    quiet_simulation_environment()
    results: list[RunResult] = []
    score = holdout_evaluation(scenario.model)
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        for spec in plan:
            started = time.perf_counter()
            adversary = AdversarialGrid(
                grid,
                attack=resolve_attack(spec.attack),
                num_byzantine=spec.num_attackers,
                share=DataShare(scenario.num_clients, scenario.partition_alpha, spec.seed),
                seed=spec.seed,
            )
            coordinator = Coordinator(
                coordinator_config(scenario, spec),
                model_weights(build_model(scenario.model, seed=spec.seed)),
                central_evaluation=score,
                observers=observers_for(spec) if observers_for else (),
            )
            history = coordinator.run(adversary)
            results.append(
                RunResult(
                    spec,
                    history,
                    time.perf_counter() - started,
                    adversary.byzantine_partitions,
                )
            )

    init_args: dict[str, Any] = {
        "num_cpus": os.cpu_count() or 2,
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": "ERROR",
    }
    init_args.update(ray_init_args or {})
    run_simulation(
        server_app=server_app,
        client_app=build_simulation_client_app(),
        num_supernodes=scenario.num_clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": init_args,
        },
    )
    if len(results) != len(plan):
        raise RuntimeError(f"simulation ended after {len(results)} of {len(plan)} runs")
    return results
