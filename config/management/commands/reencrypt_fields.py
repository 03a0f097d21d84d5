"""Move every encrypted value to the newest key of SPILLWAY_ENCRYPTION_KEYS (key rotation).

Rotation: put the new key first in SPILLWAY_ENCRYPTION_KEYS (keep the old ones after it), restart,
run this command, then remove the old keys. Rows already on the newest key are left alone, so the
command can be interrupted and run again.
"""

from __future__ import annotations

from django.apps import apps
from django.core.management.base import BaseCommand
from django.db import connection, transaction

from config.crypto import EncryptedTextField, decrypt, encrypt, key_id_of, keyring


class Command(BaseCommand):
    help = "Re-encrypt every encrypted field with the newest key (run after adding a key)."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=500)
        parser.add_argument("--dry-run", action="store_true", help="Count what would change; write nothing.")

    def handle(self, *args, batch_size: int, dry_run: bool, **options):
        current = keyring().current_id
        total = 0
        for model in apps.get_models():
            fields = [f for f in model._meta.concrete_fields if isinstance(f, EncryptedTextField)]
            if not fields:
                continue
            for field in fields:
                changed = self._rotate(model, field, current, batch_size, dry_run)
                total += changed
                self.stdout.write(f"{model._meta.label}.{field.name}: {changed} value(s) moved to key {current}")
        verb = "would be" if dry_run else "were"
        self.stdout.write(self.style.SUCCESS(f"{total} value(s) {verb} re-encrypted with key {current}."))

    def _rotate(self, model, field, current: str, batch_size: int, dry_run: bool) -> int:
        # Read the stored ciphertext itself (the ORM would hand back plaintext) to see its key id.
        table, column, pk = model._meta.db_table, field.column, model._meta.pk.column
        qn = connection.ops.quote_name
        context = f"{table}.{column}"
        changed = 0
        last = None
        while True:
            sql = (
                f"SELECT {qn(pk)}, {qn(column)} FROM {qn(table)} WHERE {qn(column)} IS NOT NULL AND {qn(column)} <> ''"  # noqa: S608
            )
            params: list = []
            if last is not None:
                sql += f" AND {qn(pk)} > %s"
                params.append(last)
            sql += f" ORDER BY {qn(pk)} LIMIT %s"
            params.append(batch_size)
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                rows = cursor.fetchall()
            if not rows:
                return changed
            last = rows[-1][0]
            stale = [(row_pk, value) for row_pk, value in rows if key_id_of(value) != current]
            if not stale or dry_run:
                changed += len(stale)
                continue
            with transaction.atomic(), connection.cursor() as cursor:
                for row_pk, value in stale:
                    fresh = encrypt(decrypt(value, context=context), context=context)
                    cursor.execute(
                        f"UPDATE {qn(table)} SET {qn(column)} = %s WHERE {qn(pk)} = %s AND {qn(column)} = %s",  # noqa: S608
                        [fresh, row_pk, value],
                    )
                    changed += cursor.rowcount
