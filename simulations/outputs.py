"""What a simulation leaves behind: a run folder with metrics, per-round CSV, tables, plots."""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .runner import RunResult
from .scenario import Scenario


@dataclass(frozen=True)
class SummaryRow:
    """Final accuracy of one defence under one attack, over seeds."""

    defence: str
    pipeline: str
    attack: str
    mean_accuracy: float
    std_accuracy: float
    seeds: int
    refused_updates: int


PLAN_FILE = "plan.json"
PRIVACY_PLOT = "privacy.png"


class SavedPlanError(ValueError):
    """A run folder's saved plan is missing or unreadable; the message names the file."""


def save_plan(run_dir: Path, scenario: Scenario, *, matrix: bool) -> None:
    """Record what this run folder runs, so ``ztfl simulate --resume`` can run it again."""
    state = run_dir / "state"
    state.mkdir(parents=True, exist_ok=True)
    document = {"scenario": scenario.to_json(), "matrix": matrix}
    (state / PLAN_FILE).write_text(json.dumps(document, indent=2))


def read_saved_plan(run_dir: Path) -> tuple[Scenario, bool]:
    """The scenario and the matrix flag :func:`save_plan` recorded in ``run_dir``."""
    path = run_dir / "state" / PLAN_FILE
    try:
        document = json.loads(path.read_text())
        return Scenario.from_json(document["scenario"]), bool(document["matrix"])
    except FileNotFoundError:
        raise SavedPlanError(f"{path}: missing; not a ztfl simulate run folder") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SavedPlanError(f"{path}: unreadable saved plan: {error}") from None


def new_run_dir(base: Path, scenario: Scenario, kind: str) -> Path:
    """A fresh, timestamped folder for one invocation's outputs."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = base / f"{stamp}-{scenario.name}-{kind}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def summarise(results: Sequence[RunResult]) -> list[SummaryRow]:
    """Group runs by (defence, attack) and average the final accuracy over seeds."""
    groups: dict[tuple[str, str, str], list[RunResult]] = defaultdict(list)
    for result in results:
        spec = result.spec
        groups[(spec.defence.label, spec.defence.pipeline, spec.attack)].append(result)
    rows = []
    for (defence, pipeline, attack), members in groups.items():
        accuracies = [member.final_accuracy for member in members]
        rows.append(
            SummaryRow(
                defence=defence,
                pipeline=pipeline,
                attack=attack,
                mean_accuracy=statistics.fmean(accuracies),
                std_accuracy=statistics.pstdev(accuracies) if len(accuracies) > 1 else 0.0,
                seeds=len(members),
                refused_updates=sum(
                    len(record.refused) for m in members for record in m.history.rounds
                ),
            )
        )
    return rows


def write_outputs(run_dir: Path, scenario: Scenario, results: Sequence[RunResult]) -> None:
    """Write metrics.json, rounds.csv, summary.csv/.md and accuracy.png into ``run_dir``, and
    privacy.png (accuracy against ε) when a run used differential privacy."""
    rows = summarise(results)
    (run_dir / "metrics.json").write_text(json.dumps(_metrics(scenario, results, rows), indent=2))
    _write_rounds_csv(run_dir / "rounds.csv", results)
    _write_summary(run_dir, rows)
    plot_accuracy(run_dir / "accuracy.png", scenario, results)
    if any(result.spec.defence.private for result in results):
        plot_accuracy_against_epsilon(run_dir / PRIVACY_PLOT, scenario, results)


def _metrics(scenario: Scenario, results: Sequence[RunResult], rows: list[SummaryRow]) -> Any:
    return {
        "scenario": _jsonable(asdict(scenario)),
        "summary": [asdict(row) for row in rows],
        "runs": [
            {
                "label": result.spec.label,
                "defence": result.spec.defence.label,
                "pipeline": result.spec.defence.pipeline,
                "assumed_byzantine": result.spec.defence.num_byzantine,
                "attack": result.spec.attack,
                "num_attackers": result.spec.num_attackers,
                "seed": result.spec.seed,
                "byzantine_partitions": list(result.byzantine_partitions),
                "final_accuracy": result.final_accuracy,
                "duration_s": result.duration_s,
                "history": result.history.to_json(),
            }
            for result in results
        ],
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def _write_rounds_csv(path: Path, results: Sequence[RunResult]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "defence", "pipeline", "attack", "seed", "round", "accuracy", "loss",
                "accepted", "refused", "committed", "aggregation_s", "round_s", "epsilon",
            ]
        )  # fmt: skip
        for result in results:
            spec = result.spec
            initial = result.history.initial_metrics
            writer.writerow(
                [spec.defence.label, spec.defence.pipeline, spec.attack, spec.seed, 0,
                 initial.get("accuracy", ""), initial.get("loss", ""), "", "", "", "", "",
                 0.0 if spec.defence.private else ""]
            )  # fmt: skip
            for record in result.history.rounds:
                writer.writerow(
                    [
                        spec.defence.label, spec.defence.pipeline, spec.attack, spec.seed,
                        record.server_round, record.central_metrics.get("accuracy", ""),
                        record.central_metrics.get("loss", ""), len(record.accepted_nodes),
                        len(record.refused), record.committed, f"{record.aggregation_s:.6f}",
                        f"{record.round_s:.4f}",
                        "" if record.privacy is None else record.privacy["epsilon"],
                    ]
                )  # fmt: skip


def _write_summary(run_dir: Path, rows: list[SummaryRow]) -> None:
    with (run_dir / "summary.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["defence", "pipeline", "attack", "mean_accuracy", "std_accuracy", "seeds"])
        for row in rows:
            writer.writerow(
                [row.defence, row.pipeline, row.attack, f"{row.mean_accuracy:.4f}",
                 f"{row.std_accuracy:.4f}", row.seeds]
            )  # fmt: skip
    (run_dir / "summary.md").write_text(matrix_markdown(rows))


def matrix_markdown(rows: Sequence[SummaryRow]) -> str:
    """A markdown table: one row per attack, one column per defence, final accuracy in %."""
    if not rows:
        return "_no runs_\n"
    attacks = list(dict.fromkeys(row.attack for row in rows))
    defences = list(dict.fromkeys(row.defence for row in rows))
    cell = {(row.attack, row.defence): row for row in rows}
    lines = [
        "| attack | " + " | ".join(defences) + " |",
        "|---|" + "---|" * len(defences),
    ]
    for attack in attacks:
        cells = []
        for defence in defences:
            row = cell.get((attack, defence))
            if row is None:
                cells.append("")
            elif row.seeds > 1:
                cells.append(f"{100 * row.mean_accuracy:.1f} ± {100 * row.std_accuracy:.1f}")
            else:
                cells.append(f"{100 * row.mean_accuracy:.1f}")
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy(path: Path, scenario: Scenario, results: Sequence[RunResult]) -> None:
    """Held-out accuracy per round, one line per defence (mean over seeds), one panel per attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    # Runs without attackers (the clean reference) are drawn dashed in every panel.
    by_attack: dict[str, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    references: dict[str, list[list[float]]] = defaultdict(list)
    for result in results:
        if result.spec.num_attackers == 0 and result.spec.attack == "none":
            references[result.spec.defence.label].append(result.history.accuracy_series())
            continue
        series = by_attack[result.spec.attack][result.spec.defence.label]
        series.append(result.history.accuracy_series())
    if not by_attack:
        by_attack, references = defaultdict(lambda: defaultdict(list), {"none": references}), {}
    attacks = list(by_attack)
    columns = min(4, len(attacks))
    rows = (len(attacks) + columns - 1) // columns
    width = max(4.2 * columns, 7.0)
    figure, axes = plt.subplots(
        rows, columns, figsize=(width, 3.2 * rows + 0.8), squeeze=False, sharey=True
    )
    for index, attack in enumerate(attacks):
        axis = axes[index // columns][index % columns]
        for defence, runs in by_attack[attack].items():
            axis.plot(*_mean_curve(runs), label=defence)
        for defence, runs in references.items():
            axis.plot(*_mean_curve(runs), label=defence, linestyle="--", color="grey")
        axis.set_title(f"attack: {attack}", fontsize=9)
        axis.set_xlabel("round")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    for index in range(len(attacks), rows * columns):
        axes[index // columns][index % columns].axis("off")
    axes[0][0].set_ylabel("held-out accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    legend_columns = min(4 if columns > 1 else 2, len(labels))
    figure.legend(handles, labels, loc="lower center", ncol=legend_columns, fontsize=8)
    figure.suptitle(
        f"{scenario.name}: {scenario.num_clients} clients, {scenario.num_byzantine} Byzantine, "
        f"alpha={scenario.partition_alpha}",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0.16 if columns == 1 else 0.08, 1, 0.95))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _mean_curve(runs: list[list[float]]) -> tuple[range, list[float]]:
    length = min(len(run) for run in runs)
    return range(length), [statistics.fmean(run[i] for run in runs) for i in range(length)]


def plot_accuracy_against_epsilon(
    path: Path, scenario: Scenario, results: Sequence[RunResult]
) -> None:
    """Held-out accuracy against the ε spent so far (δ fixed), one curve per DP defence (seeds
    averaged round by round); runs without DP are drawn as dashed horizontal lines at their
    final accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[tuple[list[float], list[float]]]] = defaultdict(list)
    finals: dict[str, list[float]] = defaultdict(list)
    delta = None
    for result in results:
        label = result.spec.defence.label
        if not result.spec.defence.private:
            finals[label].append(result.final_accuracy)
            continue
        epsilons, accuracies = [0.0], [result.history.accuracy_series()[0]]
        for record in result.history.rounds:
            if record.privacy is None:
                continue
            delta = record.privacy["delta"]
            epsilons.append(float(record.privacy["epsilon"]))
            accuracies.append(record.central_metrics.get("accuracy", float("nan")))
        curves[label].append((epsilons, accuracies))
    figure, axis = plt.subplots(figsize=(7.0, 4.4))
    for label, runs in curves.items():
        length = min(len(epsilons) for epsilons, _ in runs)
        axis.plot(
            [statistics.fmean(run[0][i] for run in runs) for i in range(length)],
            [statistics.fmean(run[1][i] for run in runs) for i in range(length)],
            marker=".",
            label=label,
        )
    for label, accuracies in finals.items():
        axis.axhline(statistics.fmean(accuracies), linestyle="--", color="grey", linewidth=1)
        axis.annotate(label, (0, statistics.fmean(accuracies)), fontsize=8, color="grey")
    axis.set_xscale("symlog", linthresh=0.1)
    axis.set_xlim(left=0)
    axis.set_xlabel(f"ε spent (δ = {delta:g})" if delta is not None else "ε spent")
    axis.set_ylabel("held-out accuracy")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    axis.set_title(
        f"{scenario.name}: accuracy against privacy spent ({scenario.num_clients} clients)",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
