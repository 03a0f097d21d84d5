"""Make the consent ledger append-only in the database, and grant the roles their permissions.

Compliance officers read everything about consents, write consent texts, withdraw consents on
an applicant's behalf, reveal personal data (recorded) and export evidence (recorded). The
origination service account may create applicants and withdraw consents, nothing else.
"""

from django.db import migrations

from config.roles import grant, revoke
from referrals import triggers

READ = [
    "referrals.view_applicant",
    "referrals.view_consent",
    "referrals.view_consentrecipient",
    "referrals.view_consenttext",
    "referrals.view_consentevent",
    "referrals.view_ledgercheckpoint",
]
PERMISSIONS = {
    "compliance_officer": [
        *READ,
        "referrals.add_consenttext",
        "referrals.withdraw_consent",
        "referrals.reveal_pii",
        "referrals.export_evidence",
        "referrals.verify_ledger",
    ],
    "auditor": [*READ, "referrals.verify_ledger"],
    "operations": ["referrals.view_applicant", "referrals.view_consent", "referrals.view_consentrecipient"],
    "origination": ["referrals.add_applicant", "referrals.withdraw_consent"],
}


def install_triggers(apps, schema_editor):
    triggers.install(schema_editor.connection)


def drop_triggers(apps, schema_editor):
    triggers.drop(schema_editor.connection)


def forwards(apps, schema_editor):
    grant(apps, PERMISSIONS)


def backwards(apps, schema_editor):
    revoke(apps, PERMISSIONS)


class Migration(migrations.Migration):
    dependencies = [
        ("referrals", "0001_initial"),
        ("partners", "0002_roles"),
    ]

    operations = [
        migrations.RunPython(install_triggers, drop_triggers),
        migrations.RunPython(forwards, backwards),
    ]
