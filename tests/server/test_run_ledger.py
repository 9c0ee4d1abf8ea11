"""The run's state folder: start, resume, reconciliation, and refusals to use damaged files.

Real files throughout: the SQLite audit log, the model store with signed
manifests and the state file. Every damaged file must be refused with an error
that names it — never taken for a fresh start.
"""

from __future__ import annotations

import shutil
import sqlite3
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from ztfl.server.ledger import (
    AUDIT_FILE,
    MODELS_DIR,
    REVOCATION_FILE,
    STATE_FILE,
    LedgerError,
    RunLedger,
)
from ztfl.server.run_state import CoordinatorState, StateFileError
from ztfl.trust.audit import AuditEventKind, AuditLogError
from ztfl.trust.keys import SigningKey, generate_signing_key
from ztfl.trust.model_store import ModelStoreError
from ztfl.trust.refusal import ModelRefusal, ModelRefusalReason
from ztfl.trust.revocation import RevocationList, sign_revocation_list
from ztfl.trust.rotation import rotate_key
from ztfl.trust.signing import SignedManifest, verify_signed_manifest
from ztfl.trust.verification import LineageState, TrustAnchor, verify_model

KEY = generate_signing_key()
CONFIG = {"pipeline": "mean", "num-server-rounds": 3}


def model(value: float) -> list[tuple[str, np.ndarray]]:
    return [("fc.weight", np.full((2, 3), value, dtype=np.float32))]


def start(state_dir: Path, key: SigningKey = KEY) -> RunLedger:
    return RunLedger.start(
        state_dir,
        key,
        config=CONFIG,
        initial=model(0.0),
        model_validity=timedelta(hours=1),
        pipeline="mean",
    )


def resume(state_dir: Path, config: dict[str, object] | None = None) -> RunLedger:
    return RunLedger.resume(
        state_dir,
        KEY,
        config=CONFIG if config is None else config,
        model_validity=timedelta(hours=1),
        pipeline="mean",
    )


def commit_state(ledger: RunLedger, server_round: int) -> None:
    ledger.commit_state(
        CoordinatorState(
            run_id=ledger.run_id,
            round=server_round,
            model_digest=ledger.model_digest,
            audit_head="0:" + "0" * 64,
            config=CONFIG,
            sampler={},
            aggregation_generator="00",
        )
    )


@pytest.fixture
def committed(tmp_path: Path) -> Path:
    """A run with rounds 0 and 1 committed (state file names round 1), closed."""
    state_dir = tmp_path / "state"
    ledger = start(state_dir)
    commit_state(ledger, 0)
    ledger.commit_model(1, model(1.0), participants=(1, 2), refused=())
    ledger.round_completed(1)
    commit_state(ledger, 1)
    ledger.close()
    return state_dir


def kinds(ledger: RunLedger) -> list[AuditEventKind]:
    return [record.kind for record in ledger.audit.records()]


def test_a_resume_continues_from_the_committed_model_and_round(committed: Path) -> None:
    ledger = resume(committed)
    assert ledger.state is not None
    assert ledger.state.round == 1
    np.testing.assert_array_equal(ledger.load_current()[0][1], model(1.0)[0][1])
    assert kinds(ledger)[-1] == AuditEventKind.RUN_RESUMED


def test_a_model_written_after_the_state_commit_is_set_aside_and_named(committed: Path) -> None:
    ledger = resume(committed)
    orphan = ledger.commit_model(2, model(2.0), participants=(1,), refused=())
    ledger.close()  # killed before the state named round 2
    ledger = resume(committed)
    assert ledger.model_digest != orphan.digest
    assert orphan.digest not in ledger.store
    assert (committed / "set-aside" / orphan.digest / "manifest.json").is_file()
    (reconciled,) = [r for r in ledger.audit.records() if r.kind == AuditEventKind.RECONCILED]
    assert reconciled.details["models_set_aside"] == [orphan.digest]
    # RUN_RESUMED and MODEL_COMMITTED of the first resume lie beyond the state's head.
    assert reconciled.details["audit_records_after_state"] == 2


def test_a_resume_with_another_configuration_records_each_change(committed: Path) -> None:
    ledger = resume(committed, {**CONFIG, "pipeline": "median"})
    (change,) = [r for r in ledger.audit.records() if r.kind == AuditEventKind.CONFIG_CHANGED]
    assert change.details == {"setting": "pipeline", "old": "mean", "new": "median"}


def test_a_new_run_refuses_a_folder_that_holds_one(committed: Path) -> None:
    with pytest.raises(LedgerError, match="already holds a run"):
        start(committed)


def test_a_truncated_state_file_is_refused_naming_it(committed: Path) -> None:
    path = committed / STATE_FILE
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(StateFileError, match="truncated or corrupted") as error:
        resume(committed)
    assert error.value.path == path


def test_an_edited_state_file_is_refused_naming_it(committed: Path) -> None:
    path = committed / STATE_FILE
    path.write_text(path.read_text().replace('"round": 1', '"round": 2'))
    with pytest.raises(StateFileError, match="checksum mismatch") as error:
        resume(committed)
    assert error.value.path == path


def test_a_missing_state_file_is_refused_not_taken_for_a_fresh_start(committed: Path) -> None:
    (committed / STATE_FILE).unlink()
    with pytest.raises(StateFileError, match="missing") as error:
        resume(committed)
    assert error.value.path == committed / STATE_FILE


def test_a_corrupted_model_file_is_refused_naming_it(committed: Path) -> None:
    ledger = resume(committed)
    digest = ledger.model_digest
    ledger.close()
    tensor = committed / MODELS_DIR / digest / "tensors" / "000000.safetensors"
    data = bytearray(tensor.read_bytes())
    data[-1] ^= 0xFF
    tensor.write_bytes(bytes(data))
    with pytest.raises(ModelStoreError) as error:
        resume(committed)
    assert error.value.path == tensor


def test_a_truncated_audit_log_is_refused_naming_it(committed: Path) -> None:
    path = committed / AUDIT_FILE
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises((AuditLogError, LedgerError), match=str(path)):
        resume(committed)


def test_an_audit_log_cut_below_the_states_head_is_refused_naming_it(committed: Path) -> None:
    path = committed / AUDIT_FILE
    connection = sqlite3.connect(path)
    connection.execute("DROP TRIGGER audit_records_no_delete")
    connection.execute("DELETE FROM audit_records WHERE seq = (SELECT MAX(seq) FROM audit_records)")
    connection.commit()
    connection.close()
    with pytest.raises(LedgerError, match=f"{path}.*anchor_missing"):
        resume(committed)


def test_a_resume_under_a_key_the_pinned_key_does_not_reach_is_refused(committed: Path) -> None:
    with pytest.raises(LedgerError, match="neither the key clients pin"):
        RunLedger.resume(
            committed,
            generate_signing_key(),
            config=CONFIG,
            model_validity=timedelta(hours=1),
            pipeline="mean",
        )


def test_a_folder_prepared_for_another_signing_key_is_refused(committed: Path) -> None:
    (committed / STATE_FILE).unlink()
    (committed / AUDIT_FILE).unlink()
    shutil.rmtree(committed / MODELS_DIR)
    with pytest.raises(LedgerError, match="another signing key"):
        start(committed, generate_signing_key())


# ------------------------------------------------------------------ key rotation

NEW_KEY = generate_signing_key()


def rotation_file(folder: Path) -> Path:
    path = folder / "rotation.json"
    path.write_bytes(rotate_key(KEY, NEW_KEY.public_key()).to_bytes())
    return path


def resume_with(state_dir: Path, key: SigningKey, rotations: list[Path]) -> RunLedger:
    return RunLedger.resume(
        state_dir,
        key,
        config=CONFIG,
        model_validity=timedelta(hours=1),
        pipeline="mean",
        key_rotations=rotations,
    )


def test_a_run_resumes_under_a_rotated_key_and_records_the_rotation(committed: Path) -> None:
    statement = rotation_file(committed.parent)
    ledger = resume_with(committed, NEW_KEY, [statement])
    (rotated,) = [r for r in ledger.audit.records() if r.kind == AuditEventKind.KEY_ROTATED]
    assert rotated.details["previous_key_id"] == KEY.public_key().key_id
    assert rotated.details["signing_key_id"] == NEW_KEY.public_key().key_id
    np.testing.assert_array_equal(ledger.load_current()[0][1], model(1.0)[0][1])
    signed = ledger.commit_model(2, model(2.0), participants=(1,), refused=())
    assert verify_signed_manifest(signed, [NEW_KEY.public_key()]) == NEW_KEY.public_key()
    assert ledger.rotations() == [statement.read_bytes()]


# ------------------------------------------------------------------ revoking set-aside models


def accepted_by_a_node(
    ledger: RunLedger, signed: SignedManifest, lineage: LineageState
) -> LineageState:
    """What a node's verification leaves after it accepted ``signed`` (real ``verify_model``)."""
    arrays, _ = ledger.store.load(signed.digest)
    anchor = TrustAnchor(ledger.run_id, (KEY.public_key(),))
    return verify_model(arrays, signed, anchor=anchor, lineage=lineage)


def crash_after_model_write(committed: Path) -> tuple[LineageState, str]:
    """Round 2 is written and evaluated by a node, then the coordinator dies before the state."""
    ledger = resume(committed)
    lineage = accepted_by_a_node(
        ledger, ledger.signed_manifest(ledger.model_digest), LineageState()
    )
    orphan = ledger.commit_model(2, model(2.0), participants=(1,), refused=())
    lineage = accepted_by_a_node(ledger, orphan, lineage)
    ledger.close()
    return lineage, orphan.digest


def rerun(ledger: RunLedger, lineage: LineageState, *, with_revocations: bool) -> LineageState:
    """The resumed coordinator's round 2, as the node that accepted the set-aside model gets it."""
    signed = ledger.commit_model(2, model(2.5), participants=(1, 2), refused=())
    revocations = ledger.revocations() if with_revocations else None
    return verify_model(
        model(2.5),
        signed,
        anchor=TrustAnchor(ledger.run_id, (KEY.public_key(),)),
        lineage=lineage,
        chain=ledger.chain_for(None),
        revocations=None if revocations is None else RevocationList.from_bytes(revocations),
    )


def test_a_resume_revokes_the_models_it_set_aside_and_records_it(committed: Path) -> None:
    _, orphan = crash_after_model_write(committed)
    ledger = resume(committed)
    (revoked,) = [r for r in ledger.audit.records() if r.kind == AuditEventKind.MODEL_REVOKED]
    assert revoked.details == {
        "models_revoked": [orphan],
        "sequence": 1,
        "revocation_list": REVOCATION_FILE,
    }
    revocations = ledger.revocations()
    assert revocations == (committed / REVOCATION_FILE).read_bytes()
    listed = RevocationList.from_bytes(revocations)
    assert listed.digests == {orphan}
    assert listed.verify([KEY.public_key()]) == KEY.public_key()


def test_a_node_that_accepted_a_set_aside_model_accepts_the_rerun_with_the_revocation(
    committed: Path,
) -> None:
    lineage, orphan = crash_after_model_write(committed)
    ledger = resume(committed)
    after = rerun(ledger, lineage, with_revocations=True)
    assert after.last is not None
    assert after.last.digest == ledger.model_digest
    assert orphan in after.revoked


def test_without_the_revocation_the_node_refuses_the_rerun_as_another_model_of_its_round(
    committed: Path,
) -> None:
    lineage, _ = crash_after_model_write(committed)
    ledger = resume(committed)
    with pytest.raises(ModelRefusal) as refusal:
        rerun(ledger, lineage, with_revocations=False)
    assert refusal.value.reason is ModelRefusalReason.ROUND_DIGEST_MISMATCH


def test_the_coordinators_revocation_list_extends_the_configured_one(committed: Path) -> None:
    configured = committed.parent / "revocations.json"
    earlier = "e" * 64
    run_id = (committed / "run-id").read_text().strip()
    configured.write_bytes(sign_revocation_list(run_id, 3, [earlier], KEY).to_bytes())
    _, orphan = crash_after_model_write(committed)
    ledger = RunLedger.resume(
        committed,
        KEY,
        config=CONFIG,
        model_validity=timedelta(hours=1),
        pipeline="mean",
        revocation_list=configured,
    )
    listed = RevocationList.from_bytes(ledger.revocations() or b"")
    assert (listed.sequence, listed.digests) == (4, frozenset({earlier, orphan}))


def test_a_later_resume_keeps_sending_the_revocation_without_signing_another(
    committed: Path,
) -> None:
    crash_after_model_write(committed)
    first = resume(committed).revocations()
    ledger = resume(committed)
    assert ledger.revocations() == first
    assert len([r for r in ledger.audit.records() if r.kind == AuditEventKind.MODEL_REVOKED]) == 1
