"""The consent ledger: append-only in the database, chained, sealed by checkpoints, verifiable."""

from __future__ import annotations

import datetime
import io
import itertools
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from referrals import merkle, triggers
from referrals.api.views import _validator
from referrals.models import Consent, ConsentEvent, LedgerCheckpoint
from referrals.services import consents as consent_services
from referrals.services import ledger
from referrals.services.intake import applicant_intake
from tests.factories import intake_payload


def make_consents(actor, text, n: int) -> list[Consent]:
    items = [intake_payload(text=text, partners=["PARTNER_A"], seq=i) for i in range(1, n + 1)]
    results = applicant_intake(actor=actor, items=items, validate=_validator())
    assert {r.status for r in results} == {201}, [r.errors for r in results]
    return list(Consent.objects.order_by("created_at", "id"))


@pytest.fixture
def consent(origination, text, partners):
    [consent] = make_consents(origination, text, 1)
    return consent


def add_events(consent, n: int, type_: str = "probe_sent"):
    for i in range(n):
        with transaction.atomic():
            ledger.ledger_append(
                consent=consent, type=type_, payload={"partner": "PARTNER_A", "fields": ["phone_hash"], "n": i}
            )


def verify(consent_id=None):
    out, err = io.StringIO(), io.StringIO()
    args = ["--consent", str(consent_id)] if consent_id else []
    try:
        call_command("verify_ledger", *args, stdout=out, stderr=err)
    except CommandError:
        return False, err.getvalue()
    return True, out.getvalue()


def raw(sql: str, params=()):
    """Do something behind the app's back, without the triggers in the way."""
    triggers.drop(connection)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
    finally:
        triggers.install(connection)


# --- the chain ----------------------------------------------------------------------------------
def test_events_form_a_hash_chain(consent):
    add_events(consent, 3)
    events = list(consent.events.order_by("seq"))
    assert [e.seq for e in events] == [1, 2, 3, 4]
    for previous, event in itertools.pairwise(events):
        assert event.prev_hash == previous.hash
    document = merkle.event_document(
        consent_id=events[2].consent_id, seq=3, type="probe_sent", occurred_at=events[2].occurred_at,
        payload=events[2].payload, prev_hash=events[2].prev_hash,
    )  # fmt: skip
    assert events[2].hash == merkle.event_hash(document)


@pytest.mark.django_db(transaction=True)
def test_append_needs_a_transaction(consent):
    with pytest.raises(RuntimeError):
        ledger.ledger_append(consent=consent, type="probe_sent", payload={})


# --- database protection ------------------------------------------------------------------------
def test_update_is_refused_by_the_database(consent):
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE referrals_consentevent SET payload = '{}'")


def test_delete_is_refused_by_the_database(consent):
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        ConsentEvent.objects.all().delete()


def test_orm_update_is_refused_too(consent):
    with pytest.raises(DatabaseError), transaction.atomic():
        ConsentEvent.objects.update(type="withdrawn")


def test_checkpoints_are_append_only(consent):
    ledger.ledger_checkpoint()
    with pytest.raises(DatabaseError), transaction.atomic():
        LedgerCheckpoint.objects.update(root="0" * 64)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)  # committed rows: no deferred FK checks pending in this transaction
def test_truncate_is_refused_on_postgresql(consent):
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("TRUNCATE referrals_consentevent CASCADE")


def test_flush_refuses_the_ledger_unless_the_test_suite_allows_it(consent, settings):
    settings.SPILLWAY_ALLOW_LEDGER_FLUSH = False
    with pytest.raises(CommandError, match="couldn't be flushed"), transaction.atomic():
        call_command("flush", interactive=False, verbosity=0)
    assert ConsentEvent.objects.exists()


# --- checkpoints --------------------------------------------------------------------------------
def test_checkpoint_seals_everything_since_the_previous_one(origination, text, partners, settings):
    consents = make_consents(origination, text, 3)
    first = ledger.ledger_checkpoint()
    assert first.event_count == 3
    assert ledger.ledger_checkpoint() is None  # nothing new
    add_events(consents[0], 2)
    second = ledger.ledger_checkpoint()
    assert (second.event_count, second.previous_root) == (2, first.root)
    assert second.first_event_id == first.last_event_id + 1
    sealed = json.loads((settings.SPILLWAY_CHECKPOINT_DIR / ledger.checkpoint_file_name(second)).read_text())
    assert sealed["root"] == second.root
    _ids, leaves = ledger.checkpoint_leaves(second)
    assert merkle.merkle_root(leaves) == second.root


def test_checkpoint_files_are_never_overwritten(consent, settings):
    checkpoint = ledger.ledger_checkpoint()
    with pytest.raises(FileExistsError):
        ledger._write_checkpoint_file(checkpoint)


# --- verify_ledger and tampering ----------------------------------------------------------------
@pytest.fixture
def sealed(origination, text, partners):
    """Three consents with a few events each, checkpointed, then one more event after it."""
    consents = make_consents(origination, text, 3)
    for consent in consents:
        add_events(consent, 2)
    ledger.ledger_checkpoint()
    add_events(consents[1], 1)
    return consents


def test_untouched_ledger_verifies(sealed):
    ok, output = verify()
    assert ok, output
    assert "10 event(s)" in output
    assert "1 checkpoint(s)" in output


def test_verify_one_consent(sealed):
    ok, output = verify(sealed[0].pk)
    assert ok, output
    assert "1 consent(s), 3 event(s)" in output


def test_tampered_payload_is_found_and_named(sealed):
    target = sealed[1].events.get(seq=2)
    raw(
        "UPDATE referrals_consentevent SET payload = %s WHERE id = %s",
        [json.dumps({"partner": "PARTNER_Z"}), target.pk],
    )
    ok, output = verify()
    assert not ok
    assert f"consent {sealed[1].pk} event #2 (id {target.pk})" in output.splitlines()[0]
    assert "altered" in output


def test_deleted_event_is_found(sealed):
    target = sealed[2].events.get(seq=2)
    raw("DELETE FROM referrals_consentevent WHERE id = %s", [target.pk])
    ok, output = verify()
    assert not ok
    assert f"consent {sealed[2].pk} event #3" in output  # the next one no longer links
    assert f"checkpoint #{LedgerCheckpoint.objects.get().pk}" in output  # and the sealed root no longer matches


def test_reordered_events_are_found(sealed):
    consent = sealed[0]
    two, three = consent.events.get(seq=2), consent.events.get(seq=3)
    raw("UPDATE referrals_consentevent SET seq = 99 WHERE id = %s", [two.pk])
    raw("UPDATE referrals_consentevent SET seq = 2 WHERE id = %s", [three.pk])
    raw("UPDATE referrals_consentevent SET seq = 3 WHERE id = %s", [two.pk])
    ok, output = verify()
    assert not ok
    assert f"consent {consent.pk} event #2" in output.splitlines()[0]


def test_forged_insert_with_a_correct_looking_hash_is_found(sealed):
    # A forger who knows the algorithm appends a perfectly chained event inside the sealed range
    # (an id below the checkpoint's last): the chain is fine, the checkpoint is not.
    consent = sealed[2]
    last = consent.events.order_by("-seq").first()
    checkpoint = LedgerCheckpoint.objects.get()
    forged = ledger.build_event(
        consent_id=consent.pk, seq=last.seq + 1, type="withdrawn", occurred_at=last.occurred_at,
        payload={"forged": True}, prev_hash=last.hash,
    )  # fmt: skip
    consent_key = consent.pk.hex if connection.vendor == "sqlite" else consent.pk
    raw(
        "INSERT INTO referrals_consentevent (id, consent_id, seq, type, occurred_at, payload, prev_hash, hash,"
        " recorded_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [
            checkpoint.first_event_id - 1, consent_key, forged.seq, forged.type, forged.occurred_at,
            json.dumps(forged.payload), forged.prev_hash, forged.hash, forged.occurred_at,
        ],
    )  # fmt: skip
    ok, output = verify()
    assert not ok
    assert f"checkpoint #{LedgerCheckpoint.objects.get().pk}" in output


def test_forged_insert_into_the_middle_of_a_chain_is_found(sealed):
    consent = sealed[0]
    one = consent.events.get(seq=1)
    forged = ledger.build_event(
        consent_id=consent.pk, seq=4, type="withdrawn", occurred_at=one.occurred_at, payload={}, prev_hash=one.hash
    )
    with transaction.atomic():
        forged.save(force_insert=True)
    ok, output = verify()
    assert not ok
    assert f"consent {consent.pk} event #4" in output


def test_replaced_checkpoint_file_is_found(sealed, settings):
    checkpoint = LedgerCheckpoint.objects.get()
    path = settings.SPILLWAY_CHECKPOINT_DIR / ledger.checkpoint_file_name(checkpoint)
    document = json.loads(path.read_text())
    document["root"] = "f" * 64
    path.write_text(json.dumps(document))
    ok, output = verify()
    assert not ok
    assert f"checkpoint #{LedgerCheckpoint.objects.get().pk}" in output
    assert "differs" in output


def test_missing_checkpoint_file_is_found(sealed, settings):
    checkpoint = LedgerCheckpoint.objects.get()
    (settings.SPILLWAY_CHECKPOINT_DIR / ledger.checkpoint_file_name(checkpoint)).unlink()
    ok, output = verify()
    assert not ok
    assert "missing" in output


def test_tampered_checkpoint_row_is_found(sealed):
    raw("UPDATE referrals_ledgercheckpoint SET root = %s", ["e" * 64])
    ok, output = verify()
    assert not ok
    assert f"checkpoint #{LedgerCheckpoint.objects.get().pk}" in output


# --- property: random histories always verify ------------------------------------------------
ACTIONS = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2),
        st.sampled_from(["probe_sent", "application_sent", "withdraw", "expire", "checkpoint", "reveal"]),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=ACTIONS)
def test_random_histories_verify_and_checkpoints_cover_exactly_the_new_events(
    actions, origination, compliance_officer, text, partners, settings, tmp_path_factory
):
    settings.SPILLWAY_CHECKPOINT_DIR = tmp_path_factory.mktemp("checkpoints")
    with transaction.atomic():
        consents = make_consents(origination, text, 3)
        sealed_ids: list[int] = []
        for which, action in actions:
            consent = Consent.objects.get(pk=consents[which].pk)
            if action == "withdraw":
                consent_services.consent_withdraw(actor=origination, consent=consent, channel="app", reason="不需要了")
            elif action == "expire":
                Consent.objects.filter(pk=consent.pk).update(
                    expires_at=consent.granted_at + datetime.timedelta(seconds=1)
                )
                consent_services.consents_expire_due()
            elif action == "checkpoint":
                before = set(ConsentEvent.objects.values_list("id", flat=True)) - set(sealed_ids)
                checkpoint = ledger.ledger_checkpoint()
                if checkpoint is None:
                    assert not before
                else:
                    covered = set(ledger.checkpoint_leaves(checkpoint)[0])
                    assert covered == before  # exactly the events since the previous one
                    sealed_ids.extend(covered)
            elif action == "reveal":
                consent_services.applicant_reveal(
                    actor=compliance_officer, applicant=consent.applicant, fields=["phone"], reason="客户投诉核实"
                )
            else:
                with transaction.atomic():
                    ledger.ledger_append(consent=consent, type=action, payload={"partner": "PARTNER_A"})
        report = ledger.ledger_verify()
        assert report.ok, report.problems
        for consent in consents:
            seqs = list(ConsentEvent.objects.filter(consent=consent).order_by("seq").values_list("seq", flat=True))
            assert seqs == list(range(1, len(seqs) + 1))
        transaction.set_rollback(True)
