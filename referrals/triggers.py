"""Database-level protection of the consent ledger: UPDATE, DELETE (and TRUNCATE) are refused.

Installed by a migration on SQLite and PostgreSQL. The hash chains and checkpoints make tampering
*evident*; these triggers make accidental or casual tampering *impossible* from the app's own
database role. (Someone who can drop triggers can change rows — and ``verify_ledger`` shows it.)
"""

from __future__ import annotations

PROTECTED_TABLES = ("referrals_consentevent", "referrals_ledgercheckpoint")
MESSAGE = "the consent ledger is append-only"


def _sqlite_install(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_update BEFORE UPDATE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END",
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_delete BEFORE DELETE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END",
    ]


def _sqlite_drop(table: str) -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {table}_no_update", f"DROP TRIGGER IF EXISTS {table}_no_delete"]


PG_FUNCTION = f"""
CREATE OR REPLACE FUNCTION spillway_ledger_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '{MESSAGE} (% on %)', TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END
$$ LANGUAGE plpgsql
"""


def _pg_install(table: str) -> list[str]:
    return [
        f"DROP TRIGGER IF EXISTS {table}_no_change ON {table}",
        f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION spillway_ledger_append_only()",
        f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION spillway_ledger_append_only()",
    ]


def _pg_drop(table: str) -> list[str]:
    return [
        f"DROP TRIGGER IF EXISTS {table}_no_change ON {table}",
        f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}",
    ]


def install_statements(vendor: str) -> list[str]:
    if vendor == "sqlite":
        return [sql for table in PROTECTED_TABLES for sql in _sqlite_install(table)]
    if vendor == "postgresql":
        return [PG_FUNCTION] + [sql for table in PROTECTED_TABLES for sql in _pg_install(table)]
    raise NotImplementedError(f"no ledger triggers for database vendor {vendor!r}")


def drop_statements(vendor: str) -> list[str]:
    drop = _sqlite_drop if vendor == "sqlite" else _pg_drop
    return [sql for table in PROTECTED_TABLES for sql in drop(table)]


def install(connection) -> None:
    with connection.cursor() as cursor:
        for sql in install_statements(connection.vendor):
            cursor.execute(sql)


def drop(connection) -> None:
    """Remove the protection (tests that empty the database, tamper tests). Never in production."""
    with connection.cursor() as cursor:
        for sql in drop_statements(connection.vendor):
            cursor.execute(sql)


def installed(connection) -> bool:
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'referrals_%'")
            return cursor.fetchone()[0] == 2 * len(PROTECTED_TABLES)
        cursor.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'referrals_%%' AND NOT tgisinternal")
        return cursor.fetchone()[0] == 2 * len(PROTECTED_TABLES)
