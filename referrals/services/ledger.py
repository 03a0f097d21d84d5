"""The consent ledger: append events, seal them in checkpoints, verify everything.

Each consent's events form a hash chain (``seq`` 1, 2, 3…; each ``prev_hash`` is the previous
event's ``hash``). Checkpoints seal *all* events since the previous checkpoint under one Merkle
root, stored in the database and written as a JSON file to ``SPILLWAY_CHECKPOINT_DIR``.
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Min
from django.utils import timezone

from referrals import merkle
from referrals.models import Consent, ConsentEvent, LedgerCheckpoint

# PostgreSQL advisory lock key: appends hold it shared, a checkpoint holds it exclusively, so a
# checkpoint never seals past an event whose transaction has not committed yet (ids are assigned
# before commit and can commit out of order). SQLite has a single writer and needs nothing.
LEDGER_LOCK_KEY = 0x5350494C  # "SPIL"


def _share_ledger_lock() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", [LEDGER_LOCK_KEY])


def _exclusive_ledger_lock() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LEDGER_LOCK_KEY])


def build_event(
    *, consent_id, seq: int, type: str, occurred_at: datetime.datetime, payload: dict, prev_hash: str
) -> ConsentEvent:
    """An unsaved event with its hash computed (used for single appends and bulk intake)."""
    document = merkle.event_document(
        consent_id=consent_id, seq=seq, type=type, occurred_at=occurred_at, payload=payload, prev_hash=prev_hash
    )
    return ConsentEvent(
        consent_id=consent_id,
        seq=seq,
        type=type,
        occurred_at=occurred_at,
        payload=payload,
        prev_hash=prev_hash,
        hash=merkle.event_hash(document),
    )


def genesis_events(items: Iterable[tuple[Consent, str, dict, datetime.datetime]]) -> list[ConsentEvent]:
    """First events of new consents, for ``bulk_create`` inside the intake transaction."""
    _share_ledger_lock()
    return [
        build_event(
            consent_id=consent.pk, seq=1, type=type, occurred_at=at, payload=payload, prev_hash=merkle.GENESIS_HASH
        )
        for consent, type, payload, at in items
    ]


def ledger_append(
    *, consent: Consent, type: str, payload: dict, occurred_at: datetime.datetime | None = None
) -> ConsentEvent:
    """Append one event to a consent's chain.

    Locks the consent row, so two appends to the same consent cannot take the same ``seq``; the
    caller's transaction decides when it becomes visible (and may already hold the lock).
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("ledger_append must run inside a transaction")
    Consent.objects.select_for_update(no_key=True).filter(pk=consent.pk).values_list("pk", flat=True).first()
    _share_ledger_lock()
    last = ConsentEvent.objects.filter(consent_id=consent.pk).order_by("-seq").values_list("seq", "hash").first()
    seq, prev_hash = (last[0] + 1, last[1]) if last else (1, merkle.GENESIS_HASH)
    event = build_event(
        consent_id=consent.pk,
        seq=seq,
        type=type,
        occurred_at=occurred_at or timezone.now(),
        payload=payload,
        prev_hash=prev_hash,
    )
    event.save(force_insert=True)
    return event


# --- checkpoints ------------------------------------------------------------------------------
def checkpoint_dir() -> Path:
    return Path(settings.SPILLWAY_CHECKPOINT_DIR)


def checkpoint_document(checkpoint: LedgerCheckpoint) -> dict:
    """What the checkpoint file holds (and what an outside verifier compares roots with)."""
    return {
        "format": "spillway-ledger-checkpoint-v1",
        "checkpoint": checkpoint.pk,
        "first_event_id": checkpoint.first_event_id,
        "last_event_id": checkpoint.last_event_id,
        "event_count": checkpoint.event_count,
        "root": checkpoint.root,
        "previous_root": checkpoint.previous_root,
        "created_at": merkle.utc_iso(checkpoint.created_at),
        "tree": "RFC 6962 Merkle tree over the events' SHA-256 hashes in event id order",
    }


def _leaves(after_id: int | None, last_id: int) -> tuple[list[int], list[bytes]]:
    """Events with ``after_id < id ≤ last_id`` (no lower bound for the first checkpoint)."""
    rows = ConsentEvent.objects.filter(id__lte=last_id)
    if after_id is not None:
        rows = rows.filter(id__gt=after_id)
    rows = rows.order_by("id").values_list("id", "hash")
    ids, leaves = [], []
    for event_id, digest in rows.iterator(chunk_size=5000):
        ids.append(event_id)
        leaves.append(bytes.fromhex(digest))
    return ids, leaves


def checkpoint_leaves(checkpoint: LedgerCheckpoint) -> tuple[list[int], list[bytes]]:
    """The event ids and leaf data a checkpoint sealed, in tree order."""
    return _leaves(checkpoint.first_event_id - 1, checkpoint.last_event_id)


def ledger_checkpoint(*, now: datetime.datetime | None = None) -> LedgerCheckpoint | None:
    """Seal every event since the previous checkpoint. ``None`` when there is nothing new."""
    with transaction.atomic():
        _exclusive_ledger_lock()
        previous = LedgerCheckpoint.objects.order_by("-id").first()
        after = previous.last_event_id if previous else None
        newer = ConsentEvent.objects.all() if after is None else ConsentEvent.objects.filter(id__gt=after)
        last_id = newer.order_by("-id").values_list("id", flat=True).first()
        if last_id is None:
            return None
        ids, leaves = _leaves(after, last_id)
        checkpoint = LedgerCheckpoint(
            first_event_id=ids[0],
            last_event_id=ids[-1],
            event_count=len(ids),
            root=merkle.merkle_root(leaves),
            previous_root=previous.root if previous else merkle.GENESIS_HASH,
            created_at=now or timezone.now(),
        )
        checkpoint.save(force_insert=True)
        # Written before the commit: if writing fails, there is no checkpoint without its file.
        _write_checkpoint_file(checkpoint)
        return checkpoint


def checkpoint_file_name(checkpoint: LedgerCheckpoint) -> str:
    # The root is in the name: a checkpoint whose transaction rolled back after its file was written
    # (an id SQLite may hand out again) leaves a file that cannot be mistaken for the next one.
    return f"checkpoint-{checkpoint.pk:010d}-{checkpoint.root[:16]}.json"


def _write_checkpoint_file(checkpoint: LedgerCheckpoint) -> None:
    folder = checkpoint_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / checkpoint_file_name(checkpoint)
    data = json.dumps(checkpoint_document(checkpoint), indent=2, sort_keys=True).encode()
    # "x": never overwrite a checkpoint file; a clash means something is badly wrong.
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
    with open(tmp, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.link(tmp, path)  # fails if the file exists
    tmp.unlink()


# --- verification -----------------------------------------------------------------------------
@dataclass
class LedgerReport:
    """What ``verify_ledger`` found: counts, and the problems in the order met (first = first broken)."""

    consents: int = 0
    events: int = 0
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _verify_chains(queryset, report: LedgerReport) -> None:
    current, expected_seq, prev_hash = None, 1, merkle.GENESIS_HASH
    rows = queryset.order_by("consent_id", "seq", "id").values_list(
        "id", "consent_id", "seq", "type", "occurred_at", "payload", "prev_hash", "hash"
    )
    for event_id, consent_id, seq, type_, occurred_at, payload, stored_prev, stored_hash in rows.iterator(
        chunk_size=5000
    ):
        if consent_id != current:
            current, expected_seq, prev_hash = consent_id, 1, merkle.GENESIS_HASH
            report.consents += 1
        report.events += 1
        where = f"consent {consent_id} event #{seq} (id {event_id})"
        if seq != expected_seq:
            report.problems.append(
                f"{where}: sequence is {seq}, expected {expected_seq} (an event is missing or reordered)"
            )
        if stored_prev != prev_hash:
            report.problems.append(f"{where}: prev_hash does not match the previous event's hash")
        document = merkle.event_document(
            consent_id=consent_id, seq=seq, type=type_, occurred_at=occurred_at, payload=payload, prev_hash=stored_prev
        )
        if merkle.event_hash(document) != stored_hash:
            report.problems.append(f"{where}: hash does not match its content (the event was altered)")
        expected_seq, prev_hash = seq + 1, stored_hash


def _verify_checkpoints(
    checkpoints: Iterable[LedgerCheckpoint], report: LedgerReport, *, partial: bool = False
) -> None:
    previous_root, previous_last, previous_id = merkle.GENESIS_HASH, None, 0
    for checkpoint in checkpoints:
        if partial and checkpoint.pk != previous_id + 1:
            # A gap in a partial check: take the chain of roots from the checkpoint just before.
            before = LedgerCheckpoint.objects.filter(id__lt=checkpoint.pk).order_by("-id").first()
            previous_root = before.root if before else merkle.GENESIS_HASH
            previous_last = before.last_event_id if before else None
        previous_id = checkpoint.pk
        report.checkpoints += 1
        where = f"checkpoint #{checkpoint.pk}"
        if checkpoint.previous_root != previous_root:
            report.problems.append(f"{where}: previous_root does not match checkpoint #{checkpoint.pk - 1}")
        # Every event after the previous checkpoint up to this one's last must be in it: a forged
        # insert with an old id, or a deleted event, changes the count and the root.
        ids, leaves = _leaves(previous_last, checkpoint.last_event_id)
        if len(ids) != checkpoint.event_count or (ids and ids[0] != checkpoint.first_event_id):
            report.problems.append(
                f"{where}: covers {checkpoint.event_count} events from id {checkpoint.first_event_id}, "
                f"the database now has {len(ids)} in that range"
            )
        if merkle.merkle_root(leaves) != checkpoint.root:
            report.problems.append(f"{where}: Merkle root of the events does not match the sealed root")
        path = checkpoint_dir() / checkpoint_file_name(checkpoint)
        rivals = sorted(
            p.name for p in checkpoint_dir().glob(f"checkpoint-{checkpoint.pk:010d}-*.json") if p.name != path.name
        )
        if rivals:
            report.problems.append(
                f"{where}: other files claim the same checkpoint with another root: {', '.join(rivals)}"
            )
        try:
            sealed = json.loads(path.read_text())
        except (OSError, ValueError):
            report.problems.append(f"{where}: checkpoint file {path} is missing or unreadable")
        else:
            if sealed != checkpoint_document(checkpoint):
                report.problems.append(f"{where}: checkpoint file {path} differs from the database record")
        previous_root, previous_last = checkpoint.root, checkpoint.last_event_id


def ledger_verify(*, consent_id=None) -> LedgerReport:
    """Recompute every chain (or one consent's) and every checkpoint; report what does not match."""
    report = LedgerReport()
    events = ConsentEvent.objects.all()
    if consent_id is not None:
        events = events.filter(consent_id=consent_id)
    _verify_chains(events, report)
    checkpoints = LedgerCheckpoint.objects.order_by("id")
    if consent_id is not None:
        # Only the checkpoints that seal this consent's events (and the one before each, for the
        # chain of roots): a consent page stays cheap however long the ledger grows.
        span = events.aggregate(low=Min("id"), high=Max("id"))
        if span["low"] is None:
            covering = []
        else:
            covering = list(
                checkpoints.filter(last_event_id__gte=span["low"], first_event_id__lte=span["high"]).values_list(
                    "id", flat=True
                )
            )
        checkpoints = checkpoints.filter(id__in=covering)
    _verify_checkpoints(checkpoints.iterator(), report, partial=consent_id is not None)
    return report


def ledger_verify_chunked(
    *, on_chunk: Callable[[LedgerReport], None], consents_per_chunk: int = 1000, checkpoints_per_chunk: int = 50
) -> LedgerReport:
    """The whole ledger, checked as ``ledger_verify()`` checks it (same problems, same order), but a
    chunk of consents' chains and then a chunk of checkpoints at a time, each its own short query;
    ``on_chunk`` gets the report so far after each, for a background job to show its progress."""
    report = LedgerReport()
    after = None
    while True:
        consents = Consent.objects.order_by("pk").values_list("pk", flat=True)
        batch = list((consents if after is None else consents.filter(pk__gt=after))[:consents_per_chunk])
        if not batch:
            break
        # A range, not a list: an event whose consent id falls between two consents is still read.
        events = ConsentEvent.objects.filter(consent_id__lte=batch[-1])
        _verify_chains(events if after is None else events.filter(consent_id__gt=after), report)
        after = batch[-1]
        on_chunk(report)
    last_id = 0
    while True:
        batch = list(LedgerCheckpoint.objects.filter(id__gt=last_id).order_by("id")[:checkpoints_per_chunk])
        if not batch:
            break
        # "partial": the chunk's first checkpoint takes the chain of roots from the one before it.
        _verify_checkpoints(batch, report, partial=True)
        last_id = batch[-1].pk
        on_chunk(report)
    return report
