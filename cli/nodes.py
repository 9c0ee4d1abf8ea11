"""``ztfl nodes``: list reputations and quarantined nodes, release a quarantined node.

Both read the coordinator's state folder. A release is an audit event
(QUARANTINE, reason ``released``) appended to the run's audit log; the running
coordinator — or the next one to resume the run — applies it before its next
round, so the state file keeps a single writer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ztfl.server.ledger import AUDIT_FILE, STATE_FILE
from ztfl.server.quarantine import Decision, NodeRecord, read_policy_state
from ztfl.server.run_state import StateFileError, read_state
from ztfl.trust.audit import AuditEventKind, AuditLog, AuditLogError, AuditRecord

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_UNREADABLE = 2

console = Console()
errors = Console(stderr=True)

nodes_app = typer.Typer(
    name="nodes",
    help="Node reputations and quarantine: list them, release a quarantined node.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

StateDir = Annotated[
    Path, typer.Option("--state-dir", help="The run's state folder (run config state-dir).")
]


@dataclass(frozen=True)
class NodeStatus:
    """One node as ``ztfl nodes list`` shows it."""

    node_id: int
    record: NodeRecord
    release_pending: bool

    @property
    def status(self) -> str:
        """``active``, ``quarantined`` or ``released (pending)``."""
        if not self.record.quarantined:
            return "active"
        return "released (pending)" if self.release_pending else "quarantined"


def _fail(message: str, code: int) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}", soft_wrap=True, highlight=False)
    return typer.Exit(code=code)


def _released_after(state_dir: Path, seq: int) -> Iterator[AuditRecord]:
    """Release events the coordinator has not applied yet (after its recorded seq)."""
    log = AuditLog.open(state_dir / AUDIT_FILE, create=False)
    try:
        for record in log.records(seq + 1):
            if (
                record.kind is AuditEventKind.QUARANTINE
                and record.reason == Decision.RELEASED.value
            ):
                yield record
    finally:
        log.close()


def node_statuses(state_dir: Path) -> tuple[str, int, list[NodeStatus]]:
    """The run id, last round and every known node's status; StateFileError / AuditLogError."""
    state = read_state(state_dir / STATE_FILE)
    records = read_policy_state(state.quarantine)
    seen = int((state.quarantine or {}).get("audit_seen", 0))
    pending = {int(item.node_id) for item in _released_after(state_dir, seen) if item.node_id}
    statuses = [
        NodeStatus(node, record, node in pending) for node, record in sorted(records.items())
    ]
    return state.run_id, state.round, statuses


@nodes_app.command("list")
def list_nodes(state_dir: StateDir) -> None:
    """Show each node's reputation, status and latest evidence."""
    try:
        run_id, server_round, statuses = node_statuses(state_dir)
    except (StateFileError, AuditLogError) as error:
        raise _fail(str(error), EXIT_UNREADABLE) from None
    table = Table(title=f"run {run_id}, after round {server_round}")
    for column in ("node", "reputation", "rounds observed", "status", "latest evidence"):
        table.add_column(column)
    for item in statuses:
        latest = item.record.evidence[-1] if item.record.evidence else None
        evidence = (
            ""
            if latest is None
            else f"round {latest.server_round}: {latest.signal.value}"
            + ("" if latest.score is None else f" (score {latest.score:.2f})")
        )
        if item.record.quarantined_round is not None:
            evidence += f"; quarantined in round {item.record.quarantined_round}"
        table.add_row(
            str(item.node_id),
            f"{item.record.reputation:.3f}",
            str(item.record.observations),
            item.status,
            evidence,
        )
    console.print(table)


@nodes_app.command("release")
def release(
    node: Annotated[int, typer.Argument(help="The quarantined node's Flower node id.")],
    state_dir: StateDir,
    note: Annotated[
        str, typer.Option("--note", help="Why the node is reinstated (recorded in the audit log).")
    ] = "",
) -> None:
    """Reinstate a quarantined node: audited now, applied before the coordinator's next round."""
    try:
        _, server_round, statuses = node_statuses(state_dir)
    except (StateFileError, AuditLogError) as error:
        raise _fail(str(error), EXIT_UNREADABLE) from None
    found = {item.node_id: item for item in statuses}.get(node)
    if found is None or not found.record.quarantined:
        raise _fail(f"node {node} is not quarantined in {state_dir}", EXIT_REFUSED)
    if found.release_pending:
        raise _fail(f"node {node} already has a pending release", EXIT_REFUSED)
    state = read_state(state_dir / STATE_FILE)
    try:
        log = AuditLog.open(state_dir / AUDIT_FILE, create=False)
        try:
            log.append(
                AuditEventKind.QUARANTINE,
                run_id=state.run_id,
                round=server_round,
                node_id=node,
                reason=Decision.RELEASED.value,
                details={
                    "node": str(node),
                    "decision": Decision.RELEASED.value,
                    "by": "operator",
                    "note": note[:500],
                    "reputation": found.record.reputation,
                    "quarantined_round": found.record.quarantined_round,
                    "rounds": [item.server_round for item in found.record.evidence],
                    "scores": [item.score for item in found.record.evidence],
                },
            )
        finally:
            log.close()
    except AuditLogError as error:
        raise _fail(str(error), EXIT_UNREADABLE) from None
    console.print(
        f"node {node} released; the coordinator reinstates it before its next round",
        highlight=False,
    )
