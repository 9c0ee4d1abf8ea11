"""``ztfl simulate``: run a scenario on Flower's simulation engine and write its run folder."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from ztfl.simulations.outputs import SummaryRow

console = Console()

BUDGET_EXHAUSTED_EXIT = 3
"""Exit status when a run stopped because its next round would have exceeded its ε budget."""


def simulate(
    scenario_file: Annotated[
        Path | None,
        typer.Argument(
            help="Scenario TOML file, or a built-in scenario's name (default, alie-stress, dp). "
            "Default: the embedded scenario (20 clients, 4 attackers, Dirichlet 0.5, scaled "
            "sign flip; mean vs median vs the ztfl default pipeline).",
            dir_okay=False,
        ),
    ] = None,
    matrix: Annotated[
        bool,
        typer.Option("--matrix", help="Run the scenario's attacks × defences × seeds matrix."),
    ] = False,
    rounds: Annotated[
        int | None, typer.Option(help="Override the number of rounds.", min=1)
    ] = None,
    attack: Annotated[
        str | None, typer.Option(help="Override the attack, e.g. 'alie' or 'ipm(epsilon=10)'.")
    ] = None,
    seeds: Annotated[
        str | None, typer.Option(help="Override the seeds, comma-separated, e.g. '0,1,2'.")
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Folder in which each invocation makes its run folder.")
    ] = Path("runs"),
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Continue the interrupted simulation in this run folder from its last "
            "committed round (takes no other option).",
            file_okay=False,
        ),
    ] = None,
) -> None:
    """Train through Flower with robust aggregation while a simulated adversary attacks.

    Prints a live progress bar per run and a final table; writes metrics.json,
    rounds.csv, summary.md, accuracy.png (with DP also privacy.png, accuracy
    against ε) and report.html (as ``ztfl report`` does) into a fresh run folder,
    whose state/ subfolder holds the signed models, the audit log and the
    coordinator state of every run. DP runs print
    ε after every round. Exit status 3: a run stopped early because its next
    round would have exceeded its privacy budget (its outputs are written).
    """
    from ztfl.server.ledger import LedgerError
    from ztfl.server.run_state import StateFileError
    from ztfl.simulations.outputs import (
        SavedPlanError,
        new_run_dir,
        read_saved_plan,
        save_plan,
        summarise,
        write_outputs,
    )
    from ztfl.simulations.progress import ProgressObserver, simulation_progress
    from ztfl.simulations.report import write_report
    from ztfl.simulations.runner import run_plan
    from ztfl.simulations.scenario import ScenarioError, load_scenario
    from ztfl.trust.audit import AuditLogError
    from ztfl.trust.keys import SigningKeyError
    from ztfl.trust.model_store import ModelStoreError

    overridden = scenario_file or matrix or rounds or attack or seeds
    if resume is not None and overridden:
        console.print("[red]error:[/red] --resume takes no scenario and no overrides")
        raise typer.Exit(code=2)
    try:
        if resume is not None:
            scenario, matrix = read_saved_plan(resume)
        else:
            scenario = load_scenario(scenario_file)
            seed_list = (
                None if seeds is None else tuple(int(s) for s in seeds.split(",") if s.strip())
            )
            scenario = scenario.with_overrides(rounds=rounds, attack=attack, seeds=seed_list)
            if matrix and seed_list is not None:
                scenario = scenario.with_overrides(matrix_seeds=seed_list)
        plan = scenario.matrix_runs() if matrix else scenario.runs()
    except (ScenarioError, SavedPlanError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=2) from error
    if not plan:
        console.print("[red]error:[/red] the scenario defines no runs (no defences or attacks)")
        raise typer.Exit(code=2)
    if resume is None:
        run_dir = new_run_dir(out, scenario, "matrix" if matrix else "simulate")
        save_plan(run_dir, scenario, matrix=matrix)
    else:
        run_dir = resume
    console.print(
        f"[bold]{scenario.name}[/bold]: {scenario.num_clients} clients "
        f"({scenario.num_byzantine} Byzantine), alpha={scenario.partition_alpha}, "
        f"{scenario.rounds} rounds, {len(plan)} run(s) → {run_dir}"
    )
    # Refusals and skipped rounds are in the progress notes, the table and the
    # run folder; per-update warnings would only break the progress display.
    logging.getLogger("ztfl.server").setLevel(logging.ERROR)
    started = time.perf_counter()
    with simulation_progress() as progress:
        overall = (
            progress.add_task("all runs", total=len(plan), accuracy="", note="") if matrix else None
        )
        try:
            results = run_plan(
                scenario,
                plan,
                state_root=run_dir / "state",
                resume=resume is not None,
                observers_for=lambda spec: [
                    ProgressObserver(progress, spec, scenario.rounds, overall=overall)
                ],
            )
        except (
            StateFileError,
            AuditLogError,
            ModelStoreError,
            LedgerError,
            SigningKeyError,
        ) as error:
            progress.stop()
            console.print(f"[red]error:[/red] cannot resume: {error}", soft_wrap=True)
            raise typer.Exit(code=2) from error
    write_outputs(run_dir, scenario, results)
    report = write_report(run_dir)
    _print_summary(summarise(results))
    console.print(f"finished in {time.perf_counter() - started:.0f} s; outputs in {run_dir}")
    if not report.verified:
        console.print(
            f"[red]verification FAILED[/red] for a run's signed models or audit log: {report.path}",
            soft_wrap=True,
        )
    stopped = [result for result in results if result.history.stop_reason]
    for result in stopped:
        console.print(
            f"[yellow]stopped early:[/yellow] {result.spec.label}: {result.history.stop_reason}",
            soft_wrap=True,
        )
    if stopped:
        raise typer.Exit(code=BUDGET_EXHAUSTED_EXIT)


def _print_summary(rows: list[SummaryRow]) -> None:
    clean = next(
        (row.mean_accuracy for row in rows if row.attack == "none" and "clean" in row.defence),
        None,
    )
    table = Table(title="final held-out accuracy")
    for column in ("defence", "attack", "accuracy", "Δ vs clean", "refused updates"):
        table.add_column(column, justify="left" if column in ("defence", "attack") else "right")
    for row in rows:
        spread = f" ± {100 * row.std_accuracy:.1f}" if row.seeds > 1 else ""
        delta = "" if clean is None else f"{100 * (row.mean_accuracy - clean):+.1f}"
        table.add_row(
            row.defence,
            row.attack,
            f"{100 * row.mean_accuracy:.1f}%{spread}",
            delta,
            str(row.refused_updates),
        )
    console.print(table)
