"""What ``ztfl run`` submits: the run config of one federated run, from a scenario or a file.

A *run-config file* is a flat TOML table of the Flower app's run-config keys
(``[tool.flwr.app.config]`` in pyproject.toml: ``num-server-rounds``, ``pipeline``…). A
*scenario* (``ztfl simulate``'s format, a file or a built-in name) gives the coordinator
settings of one of its defences; its simulated attackers have no meaning in a deployment
and are ignored. The service's ``state-dir`` and ``signing-key`` are added unless given,
and the result is checked as the ServerApp will check it, so a bad value fails here and
not minutes later in the SuperLink.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from ztfl.client.launch_error import LaunchError, LaunchErrorReason
from ztfl.server.config import ConfigError, CoordinatorConfig
from ztfl.server.control_channel import RunConfigValue, run_config_toml

__all__ = ["RUN_STARTED", "load_run_config", "parse_setting", "write_run_config"]

RUN_STARTED: Final = re.compile(r"Successfully started run (\d+)")
"""What ``flwr run`` prints once the SuperLink accepted the run."""


def parse_setting(text: str) -> tuple[str, RunConfigValue]:
    """``KEY=VALUE`` with a TOML value (``3``, ``0.5``, ``true``, ``"mean"``); a bare word is
    a string."""
    key, separator, raw = text.partition("=")
    key = key.strip()
    if not separator or not key:
        raise LaunchError(LaunchErrorReason.BAD_CONFIG, f"--set takes KEY=VALUE, got {text!r}")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    if not isinstance(value, bool | int | float | str):
        raise LaunchError(LaunchErrorReason.BAD_CONFIG, f"{key}: a number, boolean or string")
    return key, value


def _scenario_run_config(source: str, defence_label: str | None) -> dict[str, RunConfigValue]:
    from ztfl.simulations.scenario import ScenarioError, load_scenario

    try:
        scenario = load_scenario(Path(source))
    except ScenarioError as error:
        raise LaunchError(LaunchErrorReason.BAD_CONFIG, str(error)) from None
    defences = scenario.defences
    if not defences:
        raise LaunchError(LaunchErrorReason.BAD_CONFIG, f"{source}: the scenario has no defence")
    if defence_label is None:
        defence = defences[-1]
    else:
        matching = [d for d in defences if d.label == defence_label]
        if not matching:
            labels = ", ".join(repr(d.label) for d in defences)
            raise LaunchError(
                LaunchErrorReason.BAD_CONFIG,
                f"{source} has no defence {defence_label!r} (it has {labels})",
            )
        defence = matching[0]
    try:
        settings = scenario.coordinator_settings(defence).to_run_config()
    except ScenarioError as error:
        raise LaunchError(LaunchErrorReason.BAD_CONFIG, str(error)) from None
    config: dict[str, RunConfigValue] = {
        key: value for key, value in settings.items() if value is not None
    }
    config["federated-evaluation"] = True
    if scenario.partition_alpha is not None:
        config["partition-alpha"] = scenario.partition_alpha
    return config


def _file_run_config(path: Path) -> dict[str, RunConfigValue] | None:
    """The flat run config in ``path``; None when the file is a scenario."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise LaunchError(
            LaunchErrorReason.MISSING_FILE, f"cannot read {path}: {error.strerror or error}"
        ) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise LaunchError(LaunchErrorReason.BAD_CONFIG, f"{path}: {error}") from None
    if "scenario" in document:
        return None
    config: dict[str, RunConfigValue] = {}
    for key, value in document.items():
        if not isinstance(value, bool | int | float | str):
            raise LaunchError(
                LaunchErrorReason.BAD_CONFIG,
                f"{path}: {key} must be a number, boolean or string (a flat run-config table)",
            )
        config[key] = value
    return config


def load_run_config(
    source: str,
    *,
    defence: str | None = None,
    overrides: Mapping[str, RunConfigValue] | None = None,
    state_dir: Path | None = None,
    signing_key: Path | None = None,
) -> dict[str, RunConfigValue]:
    """The checked run config for ``source`` (a run-config file, a scenario file or name)."""
    path = Path(source)
    from_file = _file_run_config(path) if path.is_file() else None
    if from_file is None:
        config = _scenario_run_config(source, defence)
    elif defence is not None:
        raise LaunchError(LaunchErrorReason.BAD_CONFIG, "--defence applies to scenarios only")
    else:
        config = from_file
    config.update(overrides or {})
    if state_dir is not None:
        config.setdefault("state-dir", str(state_dir))
    if signing_key is not None:
        config.setdefault("signing-key", str(signing_key))
    for required in ("state-dir", "signing-key"):
        if not config.get(required):
            raise LaunchError(
                LaunchErrorReason.BAD_CONFIG,
                f"the run needs {required}: give it to `ztfl server up` or in the run config",
            )
    checked: dict[str, Any] = {k: v for k, v in config.items() if k != "partition-alpha"}
    try:
        CoordinatorConfig.from_run_config(checked)
    except (ConfigError, ValueError) as error:
        raise LaunchError(LaunchErrorReason.BAD_CONFIG, f"{source}: {error}") from None
    return config


def write_run_config(folder: Path, config: Mapping[str, RunConfigValue]) -> Path:
    """Write the run config where ``flwr run --run-config FILE`` reads it; returns the file."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = folder / f"{stamp}-run-config.toml"
    path.write_text(run_config_toml(config), encoding="utf-8")
    return path
