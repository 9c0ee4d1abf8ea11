"""Live progress for simulations: one rich progress bar per run, updated every round."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from ztfl.server.history import RoundRecord

from .scenario import RunSpec


def simulation_progress() -> Progress:
    """The progress display `ztfl simulate` draws."""
    return Progress(
        TextColumn("{task.description}", style="bold"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("acc {task.fields[accuracy]}"),
        TextColumn("{task.fields[epsilon]}"),
        TextColumn("{task.fields[note]}", style="yellow"),
        TimeElapsedColumn(),
    )


class ProgressObserver:
    """Advances one progress bar as the coordinator finishes rounds."""

    def __init__(
        self,
        progress: Progress,
        spec: RunSpec,
        rounds: int,
        *,
        overall: TaskID | None = None,
    ) -> None:
        self._progress = progress
        self._overall = overall
        self._name = f"{spec.defence.label} (seed {spec.seed})"
        self._private = spec.defence.private
        self._task = progress.add_task(
            spec.label, total=rounds, accuracy="  —  ", epsilon="", note="", start=False
        )

    def on_run_start(self, num_rounds: int, initial_metrics: dict[str, float]) -> None:
        self._progress.start_task(self._task)
        self._progress.update(self._task, accuracy=_percent(initial_metrics))

    def on_round_end(self, record: RoundRecord) -> None:
        refused = len(record.refused)
        note = f"{refused} refused" if refused else ""
        if not record.committed:
            note = f"skipped: {record.skip_reason}"
        epsilon = "" if record.privacy is None else f"ε {record.privacy['epsilon']:.3g}"
        self._progress.update(
            self._task,
            advance=1,
            accuracy=_percent(record.central_metrics),
            epsilon=epsilon,
            note=note,
        )
        if self._private and record.privacy is not None:
            # DP runs print every round's ε (δ fixed), so the spending stays on screen.
            privacy = record.privacy
            self._progress.console.print(
                f"{self._name} round {record.server_round}: "
                f"acc {_percent(record.central_metrics).strip()}, ε {privacy['epsilon']:.3g} "
                f"(δ {privacy['delta']:g}), C {privacy['clip_norm']:.3g}",
                highlight=False,
            )
        task = next(t for t in self._progress.tasks if t.id == self._task)
        if self._overall is not None and task.finished:
            # In a matrix only the overall bar stays; finished runs make room.
            self._progress.advance(self._overall)
            self._progress.remove_task(self._task)


def _percent(metrics: dict[str, float]) -> str:
    accuracy = metrics.get("accuracy")
    return "  —  " if accuracy is None else f"{100 * accuracy:5.1f}%"
