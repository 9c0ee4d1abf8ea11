"""The coordinator's ServerApp (``[tool.flwr.app.components] serverapp``).

``flwr run .`` starts it with the run config of pyproject.toml (overridable
with ``--run-config``); it builds the configured model, then runs the robust
round loop against whatever SuperNodes the SuperLink has. It needs a state
folder and a model-signing key (``state-dir``, ``signing-key``): every model it
broadcasts is signed, every round is audited, and ``resume=true`` continues
the run in ``state-dir`` from its last committed round.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ztfl.client.models import build_model
from ztfl.client.trainer import model_weights
from ztfl.trust.keys import read_signing_key

from .config import ConfigError, CoordinatorConfig
from .coordinator import Coordinator, open_ledger
from .history import RoundObserver, RoundRecord
from .metrics import (
    CoordinatorMetrics,
    MetricsEndpoint,
    MetricsServer,
    metrics_port,
    serve_metrics,
)

logger = logging.getLogger(__name__)

app = ServerApp()


class LoggingObserver:
    """Logs one line per round: what was accepted, refused and measured."""

    def on_run_start(self, num_rounds: int, initial_metrics: dict[str, float]) -> None:
        logger.info("starting %d rounds; initial metrics %s", num_rounds, initial_metrics)

    def on_round_end(self, record: RoundRecord) -> None:
        metrics = record.central_metrics or record.federated_metrics
        privacy = record.privacy
        logger.info(
            "round %d: %d accepted, %d refused, %s%s%s",
            record.server_round,
            len(record.accepted_nodes),
            len(record.refused),
            "committed" if record.committed else f"skipped ({record.skip_reason})",
            f", accuracy {metrics['accuracy']:.4f}" if "accuracy" in metrics else "",
            "" if privacy is None else _privacy_note(privacy),
        )


def _privacy_note(privacy: dict[str, Any]) -> str:
    return f", ε {privacy['epsilon']:.4g} at δ {privacy['delta']:g} (C {privacy['clip_norm']:.3g})"


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured federated training."""
    logging.basicConfig(level=logging.INFO)
    # Under a SuperLink the Grid is an HTTP client (httpx) that logs every request
    # at INFO; each log upload is itself a request, so the run log would fill
    # with its own transport chatter.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = CoordinatorConfig.from_run_config(context.run_config)  # ignores metrics-port
    try:
        port = metrics_port(context.run_config)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if config.num_byzantine == 0:
        logger.warning(
            "num-byzantine is 0: pipeline '%s' is configured to tolerate no Byzantine clients",
            config.pipeline,
        )
    if not config.state_dir or not config.signing_key:
        raise ConfigError(
            "state-dir and signing-key are required: every model is signed and every round "
            "audited (docs/configuration.md); create a key with `ztfl model keygen` and the "
            "clients' trust anchor with `ztfl coordinator init`"
        )
    key = read_signing_key(Path(config.signing_key))
    initial = model_weights(build_model(config.model, seed=config.seed))
    ledger = open_ledger(
        config, initial, state_dir=Path(config.state_dir), key=key, resume=config.resume
    )
    observers: list[RoundObserver] = [LoggingObserver()]
    metrics_server: MetricsServer | None = None
    try:
        if port:
            # Loopback only, no credentials: remote scrapes go through a local agent or
            # serve_metrics with auth or mutual TLS (docs/metrics.md).
            metrics = CoordinatorMetrics()
            observers.append(metrics)
            metrics_server = serve_metrics(metrics.registry, MetricsEndpoint(port=port))
            logger.info("metrics on %s", metrics_server.url)
        coordinator = Coordinator(config, initial, ledger=ledger, observers=observers)
        history = coordinator.run(grid)
    finally:
        ledger.close()
        if metrics_server is not None:
            metrics_server.close()
    if history.stop_reason:
        logger.warning("training stopped early: %s", history.stop_reason)
    last = history.rounds[-1] if history.rounds else None
    if last is not None:
        logger.info(
            "finished: last round metrics %s", last.federated_metrics or last.central_metrics
        )
