"""The coordinator's ServerApp (``[tool.flwr.app.components] serverapp``).

``flwr run .`` starts it with the run config of pyproject.toml (overridable
with ``--run-config``); it builds the configured model, then runs the robust
round loop against whatever SuperNodes the SuperLink has.
"""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ztfl.client.models import build_model
from ztfl.client.trainer import model_weights

from .config import CoordinatorConfig
from .coordinator import Coordinator
from .history import RoundRecord

logger = logging.getLogger(__name__)

app = ServerApp()


class LoggingObserver:
    """Logs one line per round: what was accepted, refused and measured."""

    def on_run_start(self, num_rounds: int, initial_metrics: dict[str, float]) -> None:
        logger.info("starting %d rounds; initial metrics %s", num_rounds, initial_metrics)

    def on_round_end(self, record: RoundRecord) -> None:
        metrics = record.central_metrics or record.federated_metrics
        logger.info(
            "round %d: %d accepted, %d refused, %s%s",
            record.server_round,
            len(record.accepted_nodes),
            len(record.refused),
            "committed" if record.committed else f"skipped ({record.skip_reason})",
            f", accuracy {metrics['accuracy']:.4f}" if "accuracy" in metrics else "",
        )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured federated training."""
    logging.basicConfig(level=logging.INFO)
    # Under a SuperLink the Grid is an HTTP client (httpx) that logs every request
    # at INFO; each log upload is itself a request, so the run log would fill
    # with its own transport chatter.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = CoordinatorConfig.from_run_config(context.run_config)
    if config.num_byzantine == 0:
        logger.warning(
            "num-byzantine is 0: pipeline '%s' is configured to tolerate no Byzantine clients",
            config.pipeline,
        )
    initial = model_weights(build_model(config.model, seed=config.seed))
    coordinator = Coordinator(config, initial, observers=[LoggingObserver()])
    history = coordinator.run(grid)
    last = history.rounds[-1] if history.rounds else None
    if last is not None:
        logger.info(
            "finished: last round metrics %s", last.federated_metrics or last.central_metrics
        )
