"""Run scenarios on Flower's simulation engine (Ray backend).

All runs of one invocation — the side-by-side defences, or the whole matrix —
share one simulation session: one Ray start, one set of simulated SuperNodes,
and a ServerApp that runs the production ``Coordinator`` once per run behind
the simulated adversary. Ray is shut down by Flower when the session ends.

Every run signs its models and keeps an audit log, like a deployment. The
session's state folder (``<run folder>/state``) holds one model-signing key
pair (the private key 0600), the trust anchor the simulated clients pin, and
one state folder per run (``runs/000``, ``runs/001``, …), and each simulated
client's lineage files (``lineage/partition-<id>/<ztfl run id>.json``). With ``resume``
finished runs are read back from their state and an interrupted one continues
from its last committed round.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ztfl.client.models import build_model
from ztfl.client.trainer import evaluate, load_weights, model_weights
from ztfl.client.trust_anchor import write_trust_anchor
from ztfl.server.config import CoordinatorConfig
from ztfl.server.coordinator import Coordinator, open_ledger
from ztfl.server.history import RoundObserver, RunHistory
from ztfl.server.ledger import PUBLIC_KEY_FILE, STATE_FILE
from ztfl.server.run_state import read_state
from ztfl.trust.keys import (
    SigningKey,
    generate_signing_key,
    read_signing_key,
    write_signing_key,
    write_verifying_key,
)
from ztfl.trust.pki import AuthorityLayout, ClientLayout
from ztfl.trust.pki.provisioning import FederationPaths, provision_federation

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
    byzantine_nodes: frozenset[int] = frozenset()
    """The Flower node ids the adversary controlled (empty for a run read back on resume)."""

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


SIGNING_KEY_FILE = "signing-key.pem"
CURRENT_ANCHOR_FILE = "trust-anchor.toml"
RUNS_DIR = "runs"
LINEAGE_DIR = "lineage"
FEDERATION_DIR = "federation"


@dataclass(frozen=True)
class SessionFiles:
    """Where one simulation session keeps its key, its clients' anchor and each run's state."""

    root: Path

    @property
    def signing_key(self) -> Path:
        """The coordinator's private model-signing key (mode 0600)."""
        return self.root / SIGNING_KEY_FILE

    @property
    def trust_anchor(self) -> Path:
        """The anchor the simulated clients pin: the current run's id and the public key."""
        return self.root / CURRENT_ANCHOR_FILE

    @property
    def lineage(self) -> Path:
        """The simulated clients' lineage folders, one per partition (``lineage-dir``)."""
        return self.root / LINEAGE_DIR

    @property
    def federation(self) -> Path:
        """The simulation's federation CA and one enrolled identity per partition (secure
        mode only): a real CA, kept in the session folder as no deployment would."""
        return self.root / FEDERATION_DIR

    def run_state(self, index: int) -> Path:
        """The state folder of the plan's ``index``-th run."""
        return self.root / RUNS_DIR / f"{index:03d}"

    def provision(self, *, resume: bool) -> SigningKey:
        """A fresh key pair for a new session; the existing one when resuming."""
        if resume:
            return read_signing_key(self.signing_key)
        self.root.mkdir(parents=True, exist_ok=True)
        key = generate_signing_key()
        write_signing_key(key, self.signing_key)
        write_verifying_key(key.public_key(), self.root / "signing-key.pub.pem")
        return key


def simulation_federation(root: Path, num_clients: int, *, resume: bool) -> FederationPaths:
    """The session's simulation CA with one client identity per partition (``partition-<i>``).

    A simulation has no PKI of its own, so the session provisions one (the production steps:
    CA, enrolment, issuance, installation); members and coordinator then verify identities
    exactly as in a deployment. With ``resume`` the existing federation is reused.
    """
    from .client_app import partition_member

    names = [partition_member(partition) for partition in range(num_clients)]
    if resume and root.exists():
        return FederationPaths(
            root,
            "simulation",
            AuthorityLayout(root / "ca"),
            {name: ClientLayout(root / "clients" / name) for name in names},
            {},
            ClientLayout(root / "gateway"),
        )
    return provision_federation(root, "simulation", clients=names)


def coordinator_config(scenario: Scenario, spec: RunSpec) -> CoordinatorConfig:
    """The production coordinator's configuration for one simulated run."""
    return replace(scenario.coordinator_settings(spec.defence), seed=spec.seed)


GridWrapper = Callable[[Any, RunSpec, Path], Any]
"""Wraps the adversary's Grid for one run (tests: a compromised transport); gets its state dir."""


def run_plan(
    scenario: Scenario,
    plan: Sequence[RunSpec],
    *,
    state_root: Path,
    resume: bool = False,
    observers_for: ObserverFactory | None = None,
    ray_init_args: dict[str, Any] | None = None,
    wrap_grid: GridWrapper | None = None,
) -> list[RunResult]:
    """Run every spec of ``plan`` in one simulation session; results in plan order.

    ``state_root`` is the session's state folder (see the module docstring);
    with ``resume`` it must hold the state of an earlier, interrupted call
    with the same plan.
    """
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from .client_app import build_simulation_client_app

    quiet_simulation_environment()
    files = SessionFiles(state_root)
    key = files.provision(resume=resume)
    federation = (
        simulation_federation(files.federation, scenario.num_clients, resume=resume)
        if any(spec.defence.secure for spec in plan)
        else None
    )
    results: list[RunResult] = []
    score = holdout_evaluation(scenario.model)
    server_app = ServerApp()

    if resume:
        # Refuse a damaged state before Ray starts; the rest is checked on resume.
        for index in range(len(plan)):
            if (files.run_state(index) / STATE_FILE).exists():
                read_state(files.run_state(index) / STATE_FILE)
    failures: list[Exception] = []

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_all(grid)
        except Exception as error:
            # The ServerApp runs in a thread of Flower's; hand the error to the caller.
            failures.append(error)

    def run_all(grid: Grid) -> None:
        for index, spec in enumerate(plan):
            started = time.perf_counter()
            state_dir = files.run_state(index)
            adversary = AdversarialGrid(
                grid,
                attack=resolve_attack(spec.attack),
                num_byzantine=spec.num_attackers,
                share=DataShare(scenario.num_clients, scenario.partition_alpha, spec.seed),
                seed=spec.seed,
            )
            config = replace(
                coordinator_config(scenario, spec),
                state_dir=str(state_dir),
                signing_key=str(files.signing_key),
            )
            if spec.defence.secure and federation is not None:
                config = replace(
                    config,
                    federation_ca=str(federation.ca_certificate),
                    federation_crl=str(federation.crl),
                )
            initial = model_weights(build_model(scenario.model, seed=spec.seed))
            resuming = resume and (state_dir / STATE_FILE).exists()
            if resume and not resuming and state_dir.exists():
                # Killed before its first state commit: nothing of it was committed.
                shutil.move(state_dir, state_dir.with_name(f"{state_dir.name}.abandoned"))
            if resuming and read_state(state_dir / STATE_FILE).round >= config.num_rounds:
                history = RunHistory.from_json(dict(read_state(state_dir / STATE_FILE).history))
                duration = sum(record.round_s for record in history.rounds)
                results.append(RunResult(spec, history, duration, adversary.byzantine_partitions))
                continue
            state_dir.parent.mkdir(parents=True, exist_ok=True)
            ledger = open_ledger(config, initial, state_dir=state_dir, key=key, resume=resuming)
            try:
                write_trust_anchor(
                    files.trust_anchor,
                    ledger.run_id,
                    [(state_dir / PUBLIC_KEY_FILE).resolve()],
                )
                coordinator = Coordinator(
                    config,
                    initial,
                    ledger=ledger,
                    central_evaluation=score,
                    observers=observers_for(spec) if observers_for else (),
                )
                transport = (
                    adversary if wrap_grid is None else wrap_grid(adversary, spec, state_dir)
                )
                history = coordinator.run(transport)
            finally:
                ledger.close()
            results.append(
                RunResult(
                    spec,
                    history,
                    time.perf_counter() - started,
                    adversary.byzantine_partitions,
                    adversary.byzantine_nodes,
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
        client_app=build_simulation_client_app(
            files.trust_anchor.resolve(),
            lineage_root=files.lineage.resolve(),
            federation=federation,
        ),
        num_supernodes=scenario.num_clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": init_args,
        },
    )
    if failures:
        raise failures[0]
    if len(results) != len(plan):
        raise RuntimeError(f"simulation ended after {len(results)} of {len(plan)} runs")
    return results
