"""The HTML run report: self-contained, escaped, honest about verification, and rendered by a
real browser.

The run folder is built like ``ztfl simulate`` leaves it — ``metrics.json`` next to
``state/runs/NNN`` coordinator state folders written by a real RunLedger (signed models,
hash-chained audit log, checksummed state) — and tampered with as an attacker with file
access would. The browser test drives Debian's headless Chromium over the DevTools
protocol on a pipe (no extra Python package), so it checks what a person would see: the
page loads without errors or network requests and every plot decodes.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from ztfl.aggregation import RefusalReason
from ztfl.cli.report import report
from ztfl.server.evidence import RunFolderError
from ztfl.server.history import RefusedUpdate, RoundRecord, RunHistory
from ztfl.server.ledger import MODELS_DIR, RunLedger
from ztfl.server.run_state import CoordinatorState
from ztfl.simulations.report import REPORT_FILE, write_report
from ztfl.trust.keys import generate_signing_key
from ztfl.trust.signing import MANIFEST_FILE

KEY = generate_signing_key()
ROUNDS = 3
HOSTILE = '<script>alert("x")</script><img src="https://example.invalid/x.png">'
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def model(value: float) -> list[tuple[str, np.ndarray]]:
    return [("fc.weight", np.full((2, 3), value, dtype=np.float32))]


def write_state_dir(
    state_dir: Path,
    *,
    private: bool,
    monitored: bool = False,
    refusal_reason: str = "norm_above_cap",
) -> None:
    """A finished run. ``monitored``: round records carry reputation and quarantine (the
    coordinator's monitoring fields) and the log a QUARANTINE event for node 9."""
    config = {"pipeline": "median", "num-server-rounds": ROUNDS, "dp": private}
    ledger = RunLedger.start(
        state_dir,
        KEY,
        config=config,
        initial=model(0.0),
        model_validity=timedelta(hours=1),
        pipeline="median",
    )
    history = RunHistory(initial_metrics={"accuracy": 0.1, "loss": 2.3})
    rounds: list[dict[str, Any]] = []
    for server_round in range(1, ROUNDS + 1):
        privacy = (
            {"epsilon": 0.4 * server_round, "delta": 1e-5, "noise_multiplier": 1.0}
            if private
            else None
        )
        refused = (RefusedUpdate(9, RefusalReason.NORM_ABOVE_CAP, "norm 1e9"),)
        ledger.round_started(server_round, (1, 2, 9))
        ledger.updates_refused(server_round, refused)
        ledger.commit_model(
            server_round,
            model(float(server_round)),
            participants=(1, 2),
            refused=[(9, "norm_above_cap")],
            privacy=privacy,
        )
        ledger.round_completed(server_round)
        record = RoundRecord(
            server_round=server_round,
            sampled_nodes=(1, 2, 9),
            num_replies=3,
            accepted_nodes=(1, 2),
            refused=refused,
            pipeline="median",
            committed=True,
            central_metrics={"accuracy": 0.1 + 0.2 * server_round, "loss": 2.0 / server_round},
            model_digest=ledger.model_digest,
            privacy=privacy,
            anomaly_scores={"1": 0.1, "2": 0.2, "9": 3.0} if monitored else None,
            reputation=(
                {"1": 1.0, "2": 0.95, "9": 1.0 - 0.3 * server_round} if monitored else None
            ),
            quarantined=(9,) if monitored and server_round == ROUNDS else (),
        ).to_json()
        record["refused"][0]["reason"] = refusal_reason
        rounds.append(record)
        if monitored and server_round == ROUNDS:
            # What the coordinator's incidents record; the third one's details were edited.
            for node, reason, stated in (
                (9, "quarantined", "quarantined"),
                (2, "deferred", "deferred"),
                (1, "released", HOSTILE),
            ):
                ledger.quarantine_decided(
                    server_round,
                    node,
                    reason,
                    {
                        "node": str(node),
                        "decision": stated,
                        "reputation": 0.3,
                        "rounds": [2, 3],
                        "scores": [2.9, 3.0],
                    },
                )
        ledger.commit_state(
            CoordinatorState(
                run_id=ledger.run_id,
                round=server_round,
                model_digest=ledger.model_digest,
                audit_head="0:" + "0" * 64,
                config=config,
                sampler={},
                aggregation_generator="00",
                history={**history.to_json(), "rounds": rounds},
            )
        )
    ledger.close()


def write_run_folder(
    root: Path, runs: list[dict[str, Any]], *, monitored: bool = False, refusal_reason: str = ""
) -> Path:
    """A ztfl simulate folder: metrics.json describing ``runs``, one state folder per run."""
    for index, run in enumerate(runs):
        write_state_dir(
            root / "state" / "runs" / f"{index:03d}",
            private=bool(run.get("private")),
            monitored=monitored,
            refusal_reason=refusal_reason or "norm_above_cap",
        )
    metrics = {"scenario": {"name": "unit"}, "runs": runs}
    (root / "metrics.json").write_text(json.dumps(metrics))
    return root


DP_RUN = {"label": "DP ε ≤ 1", "attack": "none", "pipeline": "mean", "private": True}
ALIE_RUN = {"label": "median | alie | seed 0", "attack": "alie", "pipeline": "median"}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A DP run and an ALIE run; every round refuses one update."""
    return write_run_folder(tmp_path / "run", [DP_RUN, ALIE_RUN])


class _Page(HTMLParser):
    """What the page asks a browser to do: element names, img sources, links, styles."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.urls: list[str] = []
        self.sections: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        if tag == "section":
            self.sections.append(values.get("id") or "")
        self.urls += [value or "" for name, value in attrs if name in ("href", "src", "action")]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def section_text(path: Path, section: str) -> str:
    html = path.read_text(encoding="utf-8")
    start = html.index(f'<section id="{section}">')
    return html[start : html.index("</section>", start)]


# ---------------------------------------------------------------- the page


def test_report_is_written_into_the_run_folder(run_dir: Path) -> None:
    result = write_report(run_dir)
    assert result.path == run_dir / REPORT_FILE
    assert result.path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_report_embeds_its_plots_and_fetches_nothing(run_dir: Path) -> None:
    page = parse(write_report(run_dir).path)
    assert "script" not in page.tags
    assert "link" not in page.tags
    assert page.images
    for source in page.images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert all(url.startswith("data:") for url in page.urls)


def test_report_forbids_scripts_and_fetches_by_content_security_policy(run_dir: Path) -> None:
    html = write_report(run_dir).path.read_text(encoding="utf-8")
    assert "Content-Security-Policy" in html
    assert "default-src 'none'; img-src data:" in html


def test_report_shows_accuracy_epsilon_and_refusal_plots(run_dir: Path) -> None:
    path = write_report(run_dir).path
    for section in ("accuracy", "privacy", "refusals"):
        assert '<img src="data:image/png;base64,' in section_text(path, section), section
    assert "update refused: norm_above_cap" in section_text(path, "refusals")


def test_report_escapes_labels_and_reasons_from_the_run_folder(tmp_path: Path) -> None:
    hostile_run = {**ALIE_RUN, "label": HOSTILE, "attack": HOSTILE}
    run_dir = write_run_folder(tmp_path / "run", [hostile_run], refusal_reason=HOSTILE)
    html = write_report(run_dir).path.read_text(encoding="utf-8")
    assert "<script>" not in html
    assert 'example.invalid/x.png">' not in html
    assert html.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") >= 3
    assert all(url.startswith("data:") for url in parse(run_dir / REPORT_FILE).urls)


def test_report_says_verification_passed_for_an_untouched_run(run_dir: Path) -> None:
    result = write_report(run_dir)
    assert result.verified
    verification = section_text(result.path, "verification")
    assert "Verification PASSED" in verification
    assert "FAILED" not in verification


def test_report_marks_a_tampered_manifest_failed(run_dir: Path) -> None:
    models = run_dir / "state" / "runs" / "001" / MODELS_DIR
    manifest = next(path for path in models.iterdir() if len(path.name) == 64) / MANIFEST_FILE
    manifest.write_bytes(manifest.read_bytes().replace(b'"round":', b'"round": '))
    result = write_report(run_dir)
    assert not result.verified
    verification = section_text(result.path, "verification")
    assert "Verification FAILED" in verification
    assert "3 ok, 1 failed" in verification


def test_report_marks_an_edited_audit_record_failed(run_dir: Path) -> None:
    connection = sqlite3.connect(run_dir / "state/runs/000/audit.db", isolation_level=None)
    for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
        connection.execute(f"DROP TRIGGER {name}")
    connection.execute("UPDATE audit_records SET reason = 'edited' WHERE seq = 4")
    connection.close()
    result = write_report(run_dir)
    assert not result.verified
    assert "audit chain hash_mismatch at record 4" in section_text(result.path, "verification")


def test_report_says_no_quarantine_events_when_none_were_recorded(run_dir: Path) -> None:
    path = write_report(run_dir).path
    assert "no quarantine events" in section_text(path, "quarantine")
    assert "no reputation recorded" in section_text(path, "reputation")


def test_report_shows_reputation_and_quarantine_events_when_recorded(tmp_path: Path) -> None:
    run_dir = write_run_folder(tmp_path / "run", [ALIE_RUN], monitored=True)
    path = write_report(run_dir).path
    assert '<img src="data:image/png;base64,' in section_text(path, "reputation")
    quarantine = section_text(path, "quarantine")
    assert "no quarantine events" not in quarantine
    assert "<td><code>9</code></td><td>quarantined</td>" in quarantine
    assert "<td><code>2</code></td><td>deferred</td>" in quarantine
    assert "<td>0.3</td><td>[2, 3]</td><td>[2.9, 3]</td>" in quarantine
    assert "&lt;script&gt;" in quarantine
    assert "<script>" not in quarantine


def test_report_says_the_robust_rule_not_detection_defends_against_alie(run_dir: Path) -> None:
    runs = section_text(write_report(run_dir).path, "runs")
    assert "ALIE" in runs
    assert "the robust aggregation rule is" in runs


def test_report_has_no_alie_note_without_an_alie_run(tmp_path: Path) -> None:
    run_dir = write_run_folder(tmp_path / "run", [DP_RUN])
    assert "robust aggregation rule is" not in write_report(run_dir).path.read_text()


def test_report_works_on_a_coordinator_state_folder(tmp_path: Path) -> None:
    state_dir = tmp_path / "state-dir"
    write_state_dir(state_dir, private=True)
    result = write_report(state_dir, tmp_path / "out.html")
    assert result.verified
    assert '<img src="data:image/png;base64,' in section_text(result.path, "privacy")


def test_report_refuses_a_folder_that_holds_no_run(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError):
        write_report(tmp_path)


def test_report_cli_writes_the_page_and_exits_1_when_verification_fails(run_dir: Path) -> None:
    connection = sqlite3.connect(run_dir / "state/runs/000/audit.db", isolation_level=None)
    connection.execute("DROP TRIGGER audit_records_no_delete")
    connection.execute("DELETE FROM audit_records WHERE seq = 2")
    connection.close()
    cli = typer.Typer()
    cli.command()(report)
    result = CliRunner().invoke(cli, [str(run_dir)])
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output
    assert (run_dir / REPORT_FILE).is_file()


# ---------------------------------------------------------------- a real browser


class DevTools:
    """Chromium's DevTools protocol over ``--remote-debugging-pipe`` (fds 3 and 4)."""

    def __init__(self, executable: str, profile: Path) -> None:
        command_read, self._command_write = os.pipe()
        self._reply_read, reply_write = os.pipe()
        # The browser expects its pipe on fds 3 and 4; dup ours above them so that the
        # shell's redirections never close one it still has to move.
        child_read, child_write = (
            fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (command_read, reply_write)
        )
        os.close(command_read)
        os.close(reply_write)
        self._process = subprocess.Popen(
            [
                "bash",  # dash redirects single-digit descriptors only
                "-c",
                f'exec "$0" "$@" 3<&{child_read} 4>&{child_write} {child_read}<&- {child_write}>&-',
                executable,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "--window-size=1200,2400",
                "about:blank",
            ],
            pass_fds=(child_read, child_write),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(child_read)
        os.close(child_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str = "") -> Any:
        """Call ``method``; return its result (RuntimeError on a protocol error)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._command_write, json.dumps(message).encode() + b"\0")
        expected = self._next_id
        reply = self.wait_for(lambda item: item.get("id") == expected)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait_for(self, matches: Any, timeout_s: float = 30.0) -> dict[str, Any]:
        """The next message ``matches`` accepts; every other message is kept as an event."""
        deadline = time.monotonic() + timeout_s
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if matches(message):
                    return dict(message)
                self.events.append(message)
            ready, _, _ = select.select([self._reply_read], [], [], deadline - time.monotonic())
            if not ready:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._reply_read, 1 << 20)
            if not chunk:
                raise EOFError("Chromium closed the DevTools pipe")
            self._buffer += chunk

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, TimeoutError, RuntimeError):
            self.send("Browser.close")
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, 9)
            self._process.wait()
        os.close(self._command_write)
        os.close(self._reply_read)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip(
            "Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)"
        )
    devtools = DevTools(executable, tmp_path / "profile")
    try:
        yield devtools
    finally:
        devtools.close()


def test_report_loads_in_headless_chromium_with_every_plot_drawn(
    tmp_path: Path, browser: DevTools
) -> None:
    run_dir = write_run_folder(tmp_path / "run", [DP_RUN, ALIE_RUN], monitored=True)
    page = write_report(run_dir).path
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"
    ]
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.send(f"{domain}.enable", session=session)
    browser.send("Page.navigate", {"url": page.as_uri()}, session=session)
    browser.wait_for(lambda message: message.get("method") == "Page.loadEventFired")
    images = browser.send(
        "Runtime.evaluate",
        {
            "expression": "JSON.stringify(Array.from(document.images).map("
            "i => [i.complete, i.naturalWidth, i.naturalHeight]))",
            "returnByValue": True,
        },
        session=session,
    )
    screenshot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)

    loaded = json.loads(images["result"]["value"])
    assert len(loaded) == 4  # accuracy and loss, ε, reputation, refusals
    assert all(complete and width > 100 and height > 100 for complete, width, height in loaded)
    methods = [event.get("method") for event in browser.events]
    assert "Runtime.exceptionThrown" not in methods
    errors = [
        event["params"]["entry"]
        for event in browser.events
        if event.get("method") == "Log.entryAdded" and event["params"]["entry"]["level"] == "error"
    ]
    assert errors == []
    requested = [
        event["params"]["request"]["url"]
        for event in browser.events
        if event.get("method") == "Network.requestWillBeSent"
    ]
    assert requested
    assert all(url.startswith(("file:", "data:")) for url in requested), requested
    assert "Network.loadingFailed" not in methods
    from PIL import Image

    shot = Image.open(io.BytesIO(base64.b64decode(screenshot["data"]))).convert("RGB")
    assert len(shot.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50  # not blank


# ---------------------------------------------------------------- ztfl simulate


@pytest.mark.slow
def test_simulate_writes_a_verified_report_with_its_quarantine_events(tmp_path: Path) -> None:
    scenario = tmp_path / "flip.toml"
    scenario.write_text(
        '[scenario]\nname = "flip"\nnum-clients = 10\nnum-byzantine = 2\nrounds = 6\n'
        'attack = "sign_flip(scale=5)"\nlocal-epochs = 1\nclean-reference = false\n'
        'seeds = [0]\n[[defence]]\nlabel = "median"\npipeline = "median"\nnum-byzantine = 2\n'
        "quarantine = true\n"
    )
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    completed = subprocess.run(
        [sys.executable, "-m", "ztfl.cli.main", "simulate", str(scenario), "--out", str(tmp_path)],
        capture_output=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout.decode() + completed.stderr.decode()
    (run_dir,) = (path for path in tmp_path.iterdir() if path.is_dir())
    path = run_dir / REPORT_FILE
    assert "Verification PASSED" in section_text(path, "verification")
    assert '<img src="data:image/png;base64,' in section_text(path, "reputation")
    assert "<td>quarantined</td>" in section_text(path, "quarantine")
