"""Least privilege: operations watches queues, pauses partners and retries referrals; it has no
need to read the applicant and consent registers (the referral pages show the applicant masked
without them). Found by tests/config/test_role_matrix.py."""

from django.db import migrations

from config.roles import grant, revoke

WITHDRAWN = {
    "operations": ["referrals.view_applicant", "referrals.view_consent", "referrals.view_consentrecipient"],
}


def forwards(apps, schema_editor):
    revoke(apps, WITHDRAWN)


def backwards(apps, schema_editor):
    grant(apps, WITHDRAWN)


class Migration(migrations.Migration):
    dependencies = [("referrals", "0009_job")]
    operations = [migrations.RunPython(forwards, backwards)]
