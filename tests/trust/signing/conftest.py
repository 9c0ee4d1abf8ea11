"""Fixtures for the model-signing tests: real P-256 keys, small float32 models, a fixed clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from ztfl.trust.keys import SigningKey, generate_signing_key
from ztfl.trust.signing import SignedManifest, build_manifest, sign_manifest
from ztfl.trust.verification import TrustAnchor

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
RUN = "run-7f3a"
Arrays = list[tuple[str, np.ndarray]]
MakeSigned = Callable[..., tuple[Arrays, SignedManifest]]


def model_arrays(seed: int = 0) -> Arrays:
    """A small model: two weight matrices, a bias, an integer counter."""
    rng = np.random.default_rng(seed)
    return [
        ("fc1.weight", rng.standard_normal((8, 5)).astype(np.float32)),
        ("fc1.bias", rng.standard_normal(8).astype(np.float32)),
        ("fc2.weight", rng.standard_normal((3, 8)).astype(np.float32)),
        ("steps", np.array([seed], dtype=np.int64)),
    ]


@pytest.fixture
def now() -> datetime:
    """The tests' clock: every model is created at this time unless offset."""
    return NOW


@pytest.fixture(scope="session")
def key() -> SigningKey:
    return generate_signing_key()


@pytest.fixture(scope="session")
def other_key() -> SigningKey:
    return generate_signing_key()


@pytest.fixture
def anchor(key: SigningKey) -> TrustAnchor:
    return TrustAnchor(run_id=RUN, keys=(key.public_key(),))


@pytest.fixture
def make_signed(key: SigningKey) -> MakeSigned:
    """Build and sign round ``round``: weights seeded by the round unless ``seed`` is given,
    created at NOW + ``created_offset``."""

    def make(
        round: int = 1,
        parent: SignedManifest | None = None,
        *,
        signer: SigningKey | None = None,
        run_id: str = RUN,
        seed: int | None = None,
        created_offset: timedelta = timedelta(0),
        valid_for: timedelta = timedelta(hours=1),
    ) -> tuple[Arrays, SignedManifest]:
        arrays = model_arrays(round if seed is None else seed)
        manifest = build_manifest(
            arrays,
            run_id=run_id,
            round=round,
            parent_digest=None if parent is None else parent.digest,
            pipeline="nnm -> trimmed_mean(f=1)",
            participants=["101", "102", "103"],
            refused=[],
            privacy=None,
            audit_head="a" * 64,
            valid_for=valid_for,
            now=NOW + created_offset,
            code_version="ztfl test",
        )
        return arrays, sign_manifest(manifest, signer or key)

    return make
