"""Finance runs, reviews, approves (four-eyes, enforced by the service), issues and reconciles
statements; auditors read and export everything."""

from django.db import migrations

from config.roles import grant, revoke

READ = [
    "settlements.view_settlementrun",
    "settlements.view_statement",
    "settlements.view_statementline",
    "settlements.view_statementtransition",
    "settlements.view_reconciliation",
    "settlements.view_reconciliationitem",
]
PERMISSIONS = {
    "finance": [
        *READ,
        "settlements.run_settlement",
        "settlements.submit_statement",
        "settlements.approve_statement",
        "settlements.issue_statement",
        "settlements.reconcile_statement",
        "settlements.export_statement",
    ],
    "auditor": [*READ, "settlements.export_statement"],
}


def forwards(apps, schema_editor):
    grant(apps, PERMISSIONS)


def backwards(apps, schema_editor):
    revoke(apps, PERMISSIONS)


class Migration(migrations.Migration):
    dependencies = [("settlements", "0001_statements")]

    operations = [migrations.RunPython(forwards, backwards)]
