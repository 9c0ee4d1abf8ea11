"""The client's trust anchor, from its own configuration: ``trust-anchor = "<file>"``.

The anchor names what a client trusts before any model arrives: the
coordinator's public key(s), the ztfl run id, optionally a revocation list and
the tolerated clock skew. It comes from the node's configuration (Flower's
``--node-config``), never from a message — a message can only be checked
against it. The file is TOML::

    run-id = "3f9c…"                       # the ztfl run (not Flower's run id)
    public-keys = ["coordinator.pub.pem"]  # PEM files, relative to this file
    revocation-list = "revocations.json"   # optional, signed by a pinned key
    clock-skew-s = 300                     # optional, default 300

A node without an anchor refuses every round (``ClientErrorCode.NO_TRUST_ANCHOR``):
there is no "trust the first key you see" mode.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path

from ztfl.trust.keys import SigningKeyError, read_verifying_key
from ztfl.trust.refusal import ModelRefusal
from ztfl.trust.revocation import RevocationList
from ztfl.trust.verification import TrustAnchor

TRUST_ANCHOR_KEY = "trust-anchor"
"""The node-config key naming the trust-anchor file."""


class TrustAnchorError(ValueError):
    """The node has no usable trust anchor; the message names the file or the missing key."""


def read_trust_anchor(path: Path) -> TrustAnchor:
    """Parse a trust-anchor file; TrustAnchorError naming the file on any problem."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrustAnchorError(f"{path}: trust-anchor file missing") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise TrustAnchorError(f"{path}: cannot read the trust anchor: {error}") from None
    unknown = sorted(set(document) - {"run-id", "public-keys", "revocation-list", "clock-skew-s"})
    if unknown:
        raise TrustAnchorError(f"{path}: unknown key(s) {', '.join(unknown)}")
    run_id = document.get("run-id")
    key_files = document.get("public-keys")
    if not isinstance(run_id, str) or not run_id:
        raise TrustAnchorError(f"{path}: run-id must be a non-empty string")
    if not isinstance(key_files, list) or not key_files:
        raise TrustAnchorError(f"{path}: public-keys must list at least one PEM file")
    try:
        keys = tuple(read_verifying_key(_relative(path, item)) for item in key_files)
    except (SigningKeyError, TypeError) as error:
        raise TrustAnchorError(f"{path}: {error}") from None
    revocations = None
    if "revocation-list" in document:
        try:
            revocation_file = _relative(path, document["revocation-list"])
            revocations = RevocationList.from_bytes(revocation_file.read_bytes())
        except (OSError, TypeError, ModelRefusal) as error:
            raise TrustAnchorError(f"{path}: revocation-list: {error}") from None
    skew = document.get("clock-skew-s", 300)
    if not isinstance(skew, int | float) or isinstance(skew, bool):
        raise TrustAnchorError(f"{path}: clock-skew-s must be a number")
    try:
        return TrustAnchor(
            run_id, keys, revocations=revocations, clock_skew=timedelta(seconds=skew)
        )
    except (TypeError, ValueError) as error:
        raise TrustAnchorError(f"{path}: {error}") from None


def node_trust_anchor(node_config: Mapping[str, object]) -> TrustAnchor:
    """The anchor the node configuration names; TrustAnchorError when there is none."""
    value = node_config.get(TRUST_ANCHOR_KEY)
    if not isinstance(value, str) or not value:
        raise TrustAnchorError(
            "no trust anchor configured: start the SuperNode with "
            "--node-config \"trust-anchor='/path/to/trust-anchor.toml'\" (docs/signing.md)"
        )
    return read_trust_anchor(Path(value))


def write_trust_anchor(path: Path, run_id: str, public_keys: Sequence[Path]) -> None:
    """Write an anchor file for clients (key paths are written as given)."""
    keys = ", ".join(f'"{_toml_text(str(key))}"' for key in public_keys)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(
        "# ztfl trust anchor: give this file and the key files to every client node.\n"
        f'run-id = "{_toml_text(run_id)}"\npublic-keys = [{keys}]\n',
        encoding="utf-8",
    )
    temporary.replace(path)


def _relative(anchor_file: Path, value: object) -> Path:
    if not isinstance(value, str) or not value:
        raise TypeError("file names in a trust anchor must be non-empty strings")
    candidate = Path(value)
    return candidate if candidate.is_absolute() else anchor_file.parent / candidate


def _toml_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
