"""Who does what with reclaims: compliance reviews and decides; operations and partnership managers
may propose a candidate for review (and cannot approve it); auditors and finance read; the
origination service account picks reclaimed borrowers up, in clear (each read recorded)."""

from django.db import migrations

from config.roles import grant, revoke

READ = ["referrals.view_reclaim", "referrals.view_reclaimtransition", "referrals.view_reclaimnearmiss"]
PERMISSIONS = {
    "compliance_officer": [*READ, "referrals.propose_reclaim", "referrals.approve_reclaim"],
    "operations": [*READ, "referrals.propose_reclaim"],
    "partnership_manager": [*READ, "referrals.propose_reclaim"],
    "auditor": READ,
    "finance": ["referrals.view_reclaim"],
    "origination": ["referrals.view_reclaim", "referrals.receive_reclaimed_pii"],
}


def forwards(apps, schema_editor):
    grant(apps, PERMISSIONS)


def backwards(apps, schema_editor):
    revoke(apps, PERMISSIONS)


class Migration(migrations.Migration):
    dependencies = [("referrals", "0006_reclaims")]

    operations = [migrations.RunPython(forwards, backwards)]
