"""Grant the roles what they may do with referrals, dispatches, callbacks and loans.

Operations watches the queues, retries or cancels referrals, pauses partners and resets circuits;
compliance and auditors read everything; finance reads what becomes money; partnership managers
read referrals and loans to follow partner performance.
"""

from django.db import migrations

from config.roles import grant, revoke

ALL_READ = [
    "referrals.view_referral",
    "referrals.view_routingdecision",
    "referrals.view_dispatch",
    "referrals.view_dispatchattempt",
    "referrals.view_callbackevent",
    "referrals.view_loan",
    "referrals.view_repayment",
    "referrals.view_loanoverdue",
    "partners.view_partnercircuit",
]
MONEY_READ = [
    "referrals.view_referral",
    "referrals.view_callbackevent",
    "referrals.view_loan",
    "referrals.view_repayment",
    "referrals.view_loanoverdue",
]
PERMISSIONS = {
    "operations": [*ALL_READ, "referrals.retry_referral", "partners.operate_partner"],
    "compliance_officer": ALL_READ,
    "auditor": ALL_READ,
    "finance": MONEY_READ,
    "partnership_manager": ["referrals.view_referral", "referrals.view_loan", "referrals.view_repayment"],
}


def forwards(apps, schema_editor):
    grant(apps, PERMISSIONS)


def backwards(apps, schema_editor):
    revoke(apps, PERMISSIONS)


class Migration(migrations.Migration):
    dependencies = [
        ("referrals", "0004_consent_text_code_rule"),
        ("partners", "0003_partnercircuit_alter_partner_options_and_more"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
