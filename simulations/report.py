"""The run report: one self-contained HTML page an operator can open, mail or archive.

``write_report`` works on any run folder — a ``ztfl simulate`` folder or a coordinator
state folder — through :func:`ztfl.server.evidence.inspect_run_folder`, which verifies
every signed manifest and the audit chain again instead of trusting what the folder
says about itself. The page carries its plots as PNG data URIs and its style inline, and
a Content-Security-Policy that allows nothing else (no scripts, no fetches): opened
anywhere, it shows the same thing and reaches nothing.

Everything read from the folder (labels, reasons, node ids, details) is untrusted and
HTML-escaped; plot labels are stripped of matplotlib's math markup.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from ztfl.server.evidence import (
    CheckStatus,
    RunEvidence,
    RunFolderEvidence,
    inspect_run_folder,
)
from ztfl.trust.keys import VerifyingKey

__all__ = [
    "IN_DISTRIBUTION_ATTACKS",
    "REPORT_FILE",
    "ReportResult",
    "render_report",
    "write_report",
]

REPORT_FILE: Final = "report.html"
IN_DISTRIBUTION_ATTACKS: Final = frozenset({"alie"})
"""Attacks whose updates sit inside the honest spread: distance scores are not expected to
flag them, and the report says so (issue 7; Baruch et al., 2019)."""

_CSP: Final = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_MAX_LABEL: Final = 60
_MAX_NODES_IN_LEGEND: Final = 10
_ATTACK_NAME: Final = re.compile(r"\s*([A-Za-z0-9_.-]+)")


@dataclass(frozen=True)
class ReportResult:
    """Where the page was written and whether every run in it verified."""

    path: Path
    verified: bool


def write_report(
    run_dir: Path,
    out: Path | None = None,
    *,
    public_keys: Sequence[VerifyingKey] = (),
    check_tensors: bool = True,
) -> ReportResult:
    """Verify and read ``run_dir`` and write its HTML report (default ``run_dir/report.html``).

    Raises RunFolderError when ``run_dir`` is not a run folder. A run that fails
    verification is reported, with FAILED at the top of the page.
    """
    evidence = inspect_run_folder(run_dir, public_keys=public_keys, check_tensors=check_tensors)
    path = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(render_report(evidence), encoding="utf-8")
    temporary.replace(path)
    return ReportResult(path, evidence.verified)


def render_report(evidence: RunFolderEvidence) -> str:
    """The whole page for an inspected run folder."""
    sections = [
        _verification_section(evidence),
        _runs_section(evidence),
        _figure_section(
            "accuracy",
            "Accuracy and loss per round",
            _plot_accuracy_and_loss(evidence.runs),
            "no accuracy or loss was recorded",
        ),
        _figure_section(
            "privacy",
            "Privacy spent (ε) per round",
            _plot_epsilon(evidence.runs),
            "no differentially private rounds in this folder",
        ),
        _figure_section(
            "reputation",
            "Reputation over time",
            _plot_reputation(evidence.runs),
            "no reputation recorded: the rounds carry no anomaly scores or reputation",
        ),
        _quarantine_section(evidence.runs),
        _refusals_section(evidence.runs),
    ]
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>ztfl run report: {_text(evidence.root.name)}</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>ztfl run report</h1>\n"
        f'<p class="meta">{_text(evidence.root)} ({_text(evidence.kind)}, '
        f"{len(evidence.runs)} run(s)); generated {generated}</p>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )


_STYLE: Final = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:70em;padding:0 1em;color:#1b1f24;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}
.meta{color:#57606a}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f6f8fa}
.banner{padding:.8em 1em;border-radius:6px;font-weight:600;font-size:1.1em;margin:1em 0}
.passed{background:#dafbe1;color:#116329}.failed{background:#ffebe9;color:#a40e26}
.not_checked{background:#fff8c5;color:#7d4e00}
.status-passed{color:#116329;font-weight:600}.status-failed{color:#a40e26;font-weight:700}
.status-not_checked{color:#7d4e00;font-weight:600}
.note{background:#ddf4ff;border-left:4px solid #0969da;padding:.6em 1em;margin:.8em 0}
.empty{color:#57606a;font-style:italic}
img{max-width:100%;height:auto;display:block;margin:.6em 0}
code{font-size:.9em;word-break:break-all}
"""


def _text(value: object) -> str:
    """Untrusted text, escaped for HTML element content and attribute values."""
    return html.escape(str(value), quote=True)


def _status(status: CheckStatus) -> str:
    return f'<span class="status-{status.value}">{status.value.upper().replace("_", " ")}</span>'


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _metric(record: Mapping[str, Any], name: str) -> float | None:
    for key in ("central_metrics", "federated_metrics"):
        metrics = record.get(key)
        if isinstance(metrics, Mapping) and _number(metrics.get(name)) is not None:
            return _number(metrics.get(name))
    return None


# ---------------------------------------------------------------- verification


def _verification_section(evidence: RunFolderEvidence) -> str:
    if evidence.verified:
        banner = (
            '<div class="banner passed">Verification PASSED: every signed manifest, the audit '
            "chain and the state file of every run verified.</div>"
        )
    else:
        banner = (
            '<div class="banner failed">Verification FAILED: at least one run has a manifest, '
            "audit chain or state file that does not verify. Do not rely on its models or its "
            "log without investigating; the details are below.</div>"
        )
    rows = []
    problems = []
    for run in evidence.runs:
        signatures, audit = run.signatures, run.audit
        rows.append(
            "<tr>"
            f"<td>{_text(run.label)}</td><td><code>{_text(run.run_id or '')}</code></td>"
            f"<td>{_status(signatures.status)} {signatures.passed} ok, "
            f"{signatures.failed} failed</td>"
            f"<td>{_status(audit.status)} {audit.records} records, "
            f"{audit.anchors_checked} of {audit.anchors} anchors</td>"
            f"<td>{_status(run.state_status)}</td>"
            f"<td>{_text(signatures.key_source)}<br><code>"
            f"{_text(', '.join(key[:16] + '…' for key in signatures.key_ids))}</code></td>"
            "</tr>"
        )
        problems += [
            f"<li>{_text(run.label)}: model <code>{_text(item.digest)}</code> (round "
            f"{_text(item.round)}): {_text(item.problem)}</li>"
            for item in signatures.manifests
            if not item.ok
        ]
        if signatures.problem:
            problems.append(f"<li>{_text(run.label)}: signatures: {_text(signatures.problem)}</li>")
        if audit.status is not CheckStatus.PASSED:
            where = "" if audit.first_bad_seq is None else f" at record {audit.first_bad_seq}"
            problems.append(
                f"<li>{_text(run.label)}: audit chain {_text(audit.failure)}{where}: "
                f"{_text(audit.detail)}</li>"
            )
        if run.state_problem:
            problems.append(f"<li>{_text(run.label)}: state file: {_text(run.state_problem)}</li>")
    details = f'<ul class="problems">{"".join(problems)}</ul>' if problems else ""
    notes = "".join(f'<p class="empty">{_text(note)}</p>' for note in evidence.notes)
    return (
        '<section id="verification">\n<h2>Verification</h2>\n'
        + banner
        + "<table><tr><th>run</th><th>run id</th><th>signed manifests</th><th>audit chain</th>"
        "<th>state file</th><th>verified against</th></tr>"
        + "".join(rows)
        + "</table>"
        + details
        + notes
        + '<p class="meta">Keys from the folder itself prove the files are unchanged since '
        "they were signed only if that key is the one clients pin; compare the key id, or "
        "pass <code>--public-key</code>.</p>\n</section>"
    )


# ---------------------------------------------------------------- runs


def _attack_name(attack: object) -> str:
    match = _ATTACK_NAME.match(str(attack or ""))
    return match.group(1).lower() if match else ""


def _runs_section(evidence: RunFolderEvidence) -> str:
    rows = []
    in_distribution = set()
    for run in evidence.runs:
        description = run.description
        rounds = run.rounds
        final = next(
            (v for v in (_metric(r, "accuracy") for r in reversed(rounds)) if v is not None),
            None,
        )
        epsilon = next(
            (
                _number(r["privacy"].get("epsilon"))
                for r in reversed(rounds)
                if isinstance(r.get("privacy"), Mapping)
            ),
            None,
        )
        refused = sum(len(r["refused"]) for r in rounds if isinstance(r.get("refused"), list))
        attack = description.get("attack", "")
        if _attack_name(attack) in IN_DISTRIBUTION_ATTACKS:
            in_distribution.add(_attack_name(attack))
        stop = run.history.get("stop_reason")
        rows.append(
            "<tr>"
            f"<td>{_text(run.label)}</td>"
            f"<td>{_text(description.get('pipeline') or run.config.get('pipeline', ''))}</td>"
            f"<td>{_text(attack)}</td>"
            f"<td>{len(rounds)}</td>"
            f"<td>{'' if final is None else f'{100 * final:.1f}%'}</td>"
            f"<td>{'' if epsilon is None else f'{epsilon:.3g}'}</td>"
            f"<td>{refused}</td>"
            f"<td>{_text(stop or '')}</td>"
            "</tr>"
        )
    notes = "".join(
        f'<div class="note"><strong>{_text(name.upper())}:</strong> {_IN_DISTRIBUTION_NOTE}</div>'
        for name in sorted(in_distribution)
    )
    return (
        '<section id="runs">\n<h2>Runs</h2>\n'
        "<table><tr><th>run</th><th>pipeline</th><th>attack</th><th>rounds</th>"
        "<th>final accuracy</th><th>ε spent</th><th>refused updates</th><th>stopped early</th>"
        "</tr>" + "".join(rows) + "</table>" + notes + "\n</section>"
    )


_IN_DISTRIBUTION_NOTE: Final = (
    "this attack crafts updates inside the spread of the honest clients' updates, so "
    "distance-based anomaly scores are not expected to single its clients out and quarantine "
    "is not the defence here: the robust aggregation rule is, by bounding how far any set of "
    "at most f updates can move the aggregate. No quarantine under this attack is the expected "
    "outcome, not a missed detection."
)


# ---------------------------------------------------------------- figures


def _figure_section(anchor: str, title: str, image: str | None, empty: str) -> str:
    body = (
        f'<img src="data:image/png;base64,{image}" alt="{_text(title)}">'
        if image is not None
        else f'<p class="empty">{_text(empty)}.</p>'
    )
    return f'<section id="{anchor}">\n<h2>{_text(title)}</h2>\n{body}\n</section>'


def _plot_label(value: object) -> str:
    """Untrusted text for matplotlib: no math markup, bounded length."""
    text = str(value).replace("$", "﹩").replace("\n", " ")
    return text if len(text) <= _MAX_LABEL else text[: _MAX_LABEL - 1] + "…"


def _render(draw: Callable[[Any], Any]) -> str:
    """Run ``draw(pyplot)``; the figure it returns, as base64 PNG (round axes get integer ticks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure = draw(plt)
    for axis in figure.axes:
        if axis.get_xlabel() == "round":
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _series(
    run: RunEvidence, value: Callable[[Mapping[str, Any]], float | None], with_initial: bool
) -> tuple[list[int], list[float]]:
    xs: list[int] = []
    ys: list[float] = []
    initial = run.history.get("initial_metrics")
    if with_initial and isinstance(initial, Mapping):
        start = value({"central_metrics": initial})
        if start is not None:
            xs.append(0)
            ys.append(start)
    for record in run.rounds:
        number = _number(record.get("server_round"))
        y = value(record)
        if number is not None and y is not None:
            xs.append(int(number))
            ys.append(y)
    return xs, ys


def _plot_accuracy_and_loss(runs: Sequence[RunEvidence]) -> str | None:
    curves = {
        name: [(run.label, *_series(run, _metric_reader(name), True)) for run in runs]
        for name in ("accuracy", "loss")
    }
    if not any(xs for items in curves.values() for _, xs, _ in items):
        return None

    def draw(plt: Any) -> Any:
        figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for axis, (name, items) in zip(axes, curves.items(), strict=True):
            for label, xs, ys in items:
                if xs:
                    axis.plot(xs, ys, marker=".", label=_plot_label(label))
            axis.set_xlabel("round")
            axis.set_ylabel(name)
            axis.grid(alpha=0.3)
        axes[0].set_ylim(0, 1)
        handles, labels = axes[0].get_legend_handles_labels()
        if labels:
            figure.legend(handles, labels, loc="lower center", ncol=2, fontsize=8)
        figure.tight_layout(rect=(0, min(0.35, 0.06 * ((len(labels) + 1) // 2)), 1, 1))
        return figure

    return _render(draw)


def _metric_reader(name: str) -> Callable[[Mapping[str, Any]], float | None]:
    return lambda record: _metric(record, name)


def _epsilon(record: Mapping[str, Any]) -> float | None:
    privacy = record.get("privacy")
    return _number(privacy.get("epsilon")) if isinstance(privacy, Mapping) else None


def _plot_epsilon(runs: Sequence[RunEvidence]) -> str | None:
    items = [(run.label, *_series(run, _epsilon, False)) for run in runs]
    items = [item for item in items if item[1]]
    if not items:
        return None

    def draw(plt: Any) -> Any:
        figure, axis = plt.subplots(figsize=(8, 4.2))
        for label, xs, ys in items:
            axis.plot([0, *xs], [0.0, *ys], marker=".", label=_plot_label(label))
        axis.set_xlabel("round")
        axis.set_ylabel("ε spent (cumulative)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        return figure

    return _render(draw)


def _reputation(run: RunEvidence) -> dict[str, tuple[list[int], list[float]]]:
    """Per node: the rounds and reputation values the round records carry."""
    series: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for record in run.rounds:
        number = _number(record.get("server_round"))
        reputation = record.get("reputation")
        if number is None or not isinstance(reputation, Mapping):
            continue
        for node, value in reputation.items():
            score = _number(value)
            if score is not None:
                series[str(node)][0].append(int(number))
                series[str(node)][1].append(score)
    return dict(series)


def _decision(event: Mapping[str, Any]) -> str:
    details = event.get("details")
    decision = details.get("decision") if isinstance(details, Mapping) else None
    return str(decision or event.get("reason") or "")


def _quarantined_nodes(run: RunEvidence) -> set[str]:
    """Nodes a round record or a QUARANTINE event (decision ``quarantined``) names."""
    nodes: set[str] = set()
    for record in run.rounds:
        value = record.get("quarantined")
        if isinstance(value, list | tuple):
            nodes.update(str(item) for item in value)
    for event in run.events("quarantine"):
        if _decision(event) != "quarantined":
            continue  # deferred or released
        details = event.get("details")
        node = details.get("node") if isinstance(details, Mapping) else None
        for candidate in (event.get("node_id"), node):
            if candidate is not None:
                nodes.add(str(candidate))
    return nodes


def _plot_reputation(runs: Sequence[RunEvidence]) -> str | None:
    panels = [(run.label, _reputation(run), _quarantined_nodes(run)) for run in runs]
    panels = [panel for panel in panels if panel[1]]
    if not panels:
        return None

    def draw(plt: Any) -> Any:
        columns = min(2, len(panels))
        rows = (len(panels) + columns - 1) // columns
        figure, axes = plt.subplots(
            rows, columns, figsize=(5.6 * columns, 3.6 * rows), squeeze=False
        )
        for index, (label, series, quarantined) in enumerate(panels):
            axis = axes[index // columns][index % columns]
            legend = len(series) <= _MAX_NODES_IN_LEGEND
            for node, (xs, ys) in sorted(series.items()):
                flagged = node in quarantined
                axis.plot(
                    xs,
                    ys,
                    color="#cf222e" if flagged else "#57606a",
                    linewidth=1.8 if flagged else 0.8,
                    alpha=1.0 if flagged else 0.6,
                    label=_plot_label(node) if legend or flagged else None,
                )
            axis.set_title(_plot_label(label), fontsize=9)
            axis.set_xlabel("round")
            axis.set_ylabel("reputation")
            axis.grid(alpha=0.3)
            if axis.get_legend_handles_labels()[1]:
                axis.legend(fontsize=7, title="red: quarantined", title_fontsize=7)
        for index in range(len(panels), rows * columns):
            axes[index // columns][index % columns].axis("off")
        figure.tight_layout()
        return figure

    return _render(draw)


# ---------------------------------------------------------------- quarantine and refusals


def _short(value: object, limit: int = 200) -> str:
    """A detail for a table cell: numbers to 3 significant digits, bounded length."""
    if isinstance(value, list | tuple):
        text = "[" + ", ".join(_short(item, limit) for item in value) + "]"
    elif _number(value) is not None and not isinstance(value, int):
        text = f"{value:.3g}"
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _quarantine_section(runs: Sequence[RunEvidence]) -> str:
    rows = []
    for run in runs:
        for event in run.events("quarantine"):
            details = event.get("details")
            details = details if isinstance(details, Mapping) else {}
            node = event.get("node_id") if event.get("node_id") is not None else details.get("node")
            rows.append(
                "<tr>"
                f"<td>{_text(run.label)}</td><td>{_text(event.get('seq'))}</td>"
                f"<td>{_text(event.get('round') if event.get('round') is not None else '')}</td>"
                f"<td><code>{_text(node if node is not None else '')}</code></td>"
                f"<td>{_text(_decision(event))}</td>"
                f"<td>{_text(_short(details.get('reputation', '')))}</td>"
                f"<td>{_text(_short(details.get('rounds', '')))}</td>"
                f"<td>{_text(_short(details.get('scores', '')))}</td>"
                "</tr>"
            )
    unread = [run.label for run in runs if run.audit_records is None]
    warning = (
        f'<p class="empty">audit log unreadable for {_text(", ".join(unread))}: its events are '
        "not shown.</p>"
        if unread
        else ""
    )
    from_records = [
        f"<li>{_text(run.label)}: {_text(', '.join(sorted(_quarantined_nodes(run))))}</li>"
        for run in runs
        if _quarantined_nodes(run)
    ]
    if not rows:
        body = '<p class="empty">no quarantine events.</p>'
    else:
        body = (
            "<table><tr><th>run</th><th>audit seq</th><th>round</th><th>node</th>"
            "<th>decision</th><th>reputation</th><th>evidence rounds</th><th>scores</th></tr>"
            + "".join(rows)
            + "</table>"
        )
    listed = (
        "<p>Nodes named quarantined in the round records or events:</p>"
        f"<ul>{''.join(from_records)}</ul>"
        if from_records and not rows
        else ""
    )
    return (
        '<section id="quarantine">\n<h2>Quarantine events</h2>\n'
        f"{body}{listed}{warning}\n</section>"
    )


_REFUSAL_KINDS: Final = (
    ("refused", "update refused"),
    ("verification_failures", "model refused by client"),
)


def _refusal_counts(run: RunEvidence) -> Counter[str]:
    counts: Counter[str] = Counter()
    for record in run.rounds:
        for key, prefix in (
            ("refused", "update refused"),
            ("verification_failures", "model refused by client"),
        ):
            items = record.get(key)
            for item in items if isinstance(items, list) else []:
                if isinstance(item, Mapping):
                    counts[f"{prefix}: {item.get('reason', 'unknown')}"] += 1
    return counts


def _refusals_section(runs: Sequence[RunEvidence]) -> str:
    per_run = {run.label: _refusal_counts(run) for run in runs}
    total: Counter[str] = Counter()
    for counts in per_run.values():
        total.update(counts)
    if not total:
        return (
            '<section id="refusals">\n<h2>Refused updates by reason</h2>\n'
            '<p class="empty">no refused updates.</p>\n</section>'
        )
    reasons = [reason for reason, _ in total.most_common()]
    labels = [label for label, counts in per_run.items() if counts]
    header = "".join(f"<th>{_text(label)}</th>" for label in labels)
    rows = "".join(
        f"<tr><td>{_text(reason)}</td>"
        + "".join(f"<td>{per_run[label][reason]}</td>" for label in labels)
        + f"<td>{total[reason]}</td></tr>"
        for reason in reasons
    )
    image = _plot_refusals(total)
    return (
        '<section id="refusals">\n<h2>Refused updates by reason</h2>\n'
        + (
            f'<img src="data:image/png;base64,{image}" alt="refused updates by reason">'
            if image
            else ""
        )
        + f"<table><tr><th>reason</th>{header}<th>all runs</th></tr>{rows}</table>\n</section>"
    )


def _plot_refusals(total: Counter[str]) -> str:
    items = total.most_common(20)

    def draw(plt: Any) -> Any:
        figure, axis = plt.subplots(figsize=(8, 0.9 + 0.35 * len(items)))
        names = [_plot_label(name) for name, _ in items]
        axis.barh(range(len(items)), [count for _, count in items], color="#cf222e")
        axis.set_yticks(range(len(items)), names, fontsize=8)
        axis.invert_yaxis()
        axis.set_xlabel("refusals (all rounds, all runs)")
        axis.grid(alpha=0.3, axis="x")
        figure.tight_layout()
        return figure

    return _render(draw)
